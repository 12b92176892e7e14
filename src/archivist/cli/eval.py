"""`archivist eval …`: run retrieval, answer, agent and guard evals, list and compare runs, gate regressions, write
reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from archivist.cli._app import open_app
from archivist.cli._command import App
from archivist.cli._errors import fail, usage
from archivist.cli._options import JsonOpt, ModeOpt, StoreOpt, parse_mode
from archivist.cli._output import emit_json, err, out
from archivist.cli._progress import stage_progress
from archivist.types import UsageError

if TYPE_CHECKING:
    from archivist.app import Archivist
    from archivist.evals.answers import AnswerEvalConfig
    from archivist.evals.datasets import Slice
    from archivist.evals.guard import GuardEvalConfig
    from archivist.evals.retrieval import RetrievalEvalConfig

app = App(
    name="eval",
    help="Evaluate retrieval, answers, the agent and the guards; compare runs, gate regressions.",
    no_args_is_help=True,
)

CacheOpt = Annotated[
    Path,
    typer.Option(
        "--cache-dir", envvar="ARCHIVIST_EVAL_CACHE", metavar="DIR", help="Where each dataset's own store is kept."
    ),
]
MetricOpt = Annotated[
    list[str] | None, typer.Option("--metric", "-m", metavar="METRIC", help="e.g. ndcg@10; repeatable.")
]
SplitOpt = Annotated[str, typer.Option("--split", metavar="SPLIT", help="test or train.")]
TagOpt = Annotated[str | None, typer.Option("--tag", metavar="TAG", help="A label stored with the run.")]
SaveBaselineOpt = Annotated[
    Path | None, typer.Option("--save-baseline", metavar="FILE", help="Also write the run here.")
]
DatasetArg = typer.Argument(metavar="DATASET", help="A BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels.tsv.")
QADatasetHelp = "A QA dataset folder: corpus, queries, qrels and answers.jsonl."
SliceHelp = "QUERIES:DISTRACTORS subset, e.g. 30:400."


def _pair(spec: str, option: str, shape: str) -> tuple[int, int]:
    """Return the two integers of an `A:B` option value, or raise UsageError naming the option."""
    try:
        a, b = (int(x) for x in spec.split(":"))
    except ValueError:
        raise UsageError(f"bad {option} {spec!r}: expected {shape}") from None
    return a, b


def _parse_slice(spec: str | None) -> Slice | None:
    from archivist.evals.datasets import Slice

    if not spec:
        return None
    q, d = _pair(spec, "--slice", "QUERIES:DISTRACTORS, e.g. 30:400")
    if q < 1 or d < 0:
        raise UsageError("--slice needs at least 1 query and 0 or more distractors")
    return Slice(q, d)


def _parse_leave_out(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    a, u = _pair(spec, "--leave-out", "ANSWERABLE:UNANSWERABLE, e.g. 400:200")
    if a < 0 or u < 0:
        raise UsageError("--leave-out counts cannot be negative")
    return a, u


def _metrics(names: list[str] | None, k: int | None) -> list[str]:
    from archivist.evals.metrics import DEFAULT_METRICS, parse_metric

    chosen = list(names) if names else list(DEFAULT_METRICS)
    if k is not None:
        chosen = [m if "@" not in m or m.startswith("recall@100") else f"{m.split('@')[0]}@{k}" for m in chosen]
    for m in chosen:
        parse_metric(m)
    return list(dict.fromkeys(chosen))


def _run_eval(
    archivist: Archivist,
    dataset: Path,
    split: str,
    slice_: Slice | None,
    config: RetrievalEvalConfig | AnswerEvalConfig,
    cache_dir: Path,
) -> dict[str, Any]:
    """Return a retrieval or answer eval run (by the config's type), stored."""
    from archivist.evals.answers import AnswerEvalConfig, run_answer_eval
    from archivist.evals.datasets import load_dataset
    from archivist.evals.retrieval import run_retrieval_eval

    ds = load_dataset(dataset, split, slice_, work_dir=cache_dir)
    with stage_progress() as show:

        def hook(stage: str, done: int, total: int) -> None:
            show(stage, done, total, "")

        if isinstance(config, AnswerEvalConfig):
            record = run_answer_eval(archivist.settings, ds, config, cache_dir=cache_dir, progress=hook)
        else:
            record = run_retrieval_eval(archivist.settings, ds, config, cache_dir=cache_dir, progress=hook)
    archivist.store.save_eval_run(record)
    return record


def _save_baseline(record: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    err.print(f"baseline written to {path}")


def _print_metrics_table(title: str, metrics: dict[str, float]) -> None:
    table = Table(title=title, box=None)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    out.print(table)


def _print_metrics(record: dict[str, Any]) -> None:
    _print_metrics_table(f"{record['dataset']} ({record['split']}) · run {record['id']}", record["metrics"])
    t = record["timings"]
    out.print(
        f"[dim]{record['n_queries']} queries · ingest {t['ingest_s']}s · search {t['search_s']}s "
        f"(p50 {t['query_p50_ms']} ms) · fingerprint {record['fingerprint_hash']}[/]"
    )


@app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[Path, DatasetArg],
    split: SplitOpt = "test",
    k: Annotated[
        int | None, typer.Option("--k", min=1, metavar="N", help="Cutoff for the @k metrics (recall@100 is kept).")
    ] = None,
    metrics: MetricOpt = None,
    mode: ModeOpt = "hybrid",
    depth: Annotated[int, typer.Option("--depth", min=1, max=5000, help="Chunk hits fetched per query.")] = 300,
    slice_spec: Annotated[str | None, typer.Option("--slice", metavar="Q:D", help=SliceHelp)] = None,
    tag: TagOpt = None,
    save_baseline: SaveBaselineOpt = None,
    cache_dir: CacheOpt = Path(".archivist/evals"),
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest the dataset's corpus into its own cached store, run its queries, store and print metrics."""
    from archivist.evals.retrieval import RetrievalEvalConfig

    retrieval_mode = parse_mode(mode)
    with open_app(store) as archivist:
        config = RetrievalEvalConfig(mode=retrieval_mode, depth=depth, metrics=_metrics(metrics, k), tag=tag)
        record = _run_eval(archivist, dataset, split, _parse_slice(slice_spec), config, cache_dir)
    if save_baseline:
        _save_baseline(record, save_baseline)
    if as_json:
        emit_json({k: v for k, v in record.items() if k not in ("per_query", "queries")})
    else:
        _print_metrics(record)


@app.command("runs")
def eval_runs(
    dataset: Annotated[
        str | None, typer.Option("--dataset", metavar="NAME", help="Only runs of this dataset name.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List stored eval runs, newest first."""
    with open_app(store, existing=True) as archivist:
        runs = archivist.store.list_eval_runs(dataset=dataset, limit=limit)
    summaries = [
        {
            k: r.get(k)
            for k in (
                "id",
                "kind",
                "dataset",
                "split",
                "slice",
                "tag",
                "created_at",
                "fingerprint_hash",
                "metrics",
                "n_queries",
            )
        }
        for r in runs
    ]
    if as_json:
        emit_json(summaries)
        return
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False)
    # The id is what `eval compare` and `eval report` take, and the fingerprint tells configurations apart: neither
    # is ever cut; the other columns wrap to make room on a narrow terminal.
    table.add_column("id", no_wrap=True)
    table.add_column("dataset", overflow="fold")
    table.add_column("split", overflow="fold")
    table.add_column("date", min_width=10)  # a day on one line; the time goes under it when space is short
    table.add_column("fingerprint", no_wrap=True)
    table.add_column("tag", overflow="fold")
    table.add_column("ndcg@10", justify="right", no_wrap=True)
    table.add_column("recall@100", justify="right", no_wrap=True)
    for r in summaries:
        m = r["metrics"] or {}
        table.add_row(
            str(r["id"]),
            str(r["dataset"]),
            str(r["split"]),
            _short_date(str(r["created_at"])),
            str(r["fingerprint_hash"]),
            str(r["tag"] or ""),
            _fmt(m.get("ndcg@10")),
            _fmt(m.get("recall@100")),
        )
    out.print(table, soft_wrap=False)  # soft wrapping lets a table run one column past the terminal


def _short_date(created_at: str) -> str:
    """Return an ISO timestamp as `YYYY-MM-DD HH:MM` (UTC, as stored): enough to tell one day's runs apart."""
    return created_at[:16].replace("T", " ")


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) else "–"


def _is_run_file(ref: str) -> bool:
    return ref.endswith(".json") and Path(ref).is_file()


def _load_run(archivist: Archivist, ref: str) -> dict[str, Any]:
    """Return a run by id (or unique prefix) from the store, or from a JSON file path."""
    if _is_run_file(ref):
        data: dict[str, Any] = json.loads(Path(ref).read_text())
        return data
    run = archivist.store.get_eval_run(ref)
    if run is None:
        raise UsageError(f"no eval run {ref!r} (see `archivist eval runs`)")
    return run


@app.command("compare")
def eval_compare(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", help="Baseline run id (or a run JSON file).")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="Candidate run id (or a run JSON file).")],
    metrics: MetricOpt = None,
    show: Annotated[int, typer.Option("--show", min=0, help="How many per-query wins and losses to list.")] = 5,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-metric deltas with a paired randomization test, and the queries that won and lost most."""
    from archivist.evals.significance import compare

    with open_app(store, existing=not (_is_run_file(run_a) and _is_run_file(run_b))) as archivist:
        a, b = _load_run(archivist, run_a), _load_run(archivist, run_b)
        # By default, every metric measured per query (a run's aggregate-only metrics, e.g. refusal precision,
        # have nothing to pair).
        per_query = {m for v in a["per_query"].values() for m in v}
        names = metrics or [m for m in a["metrics"] if m in per_query and m in b["metrics"]]
        comps = [compare(a["per_query"], b["per_query"], m) for m in names]
    focus = names[0]
    deltas = sorted(
        (
            (q, b["per_query"][q][focus] - v[focus])
            for q, v in a["per_query"].items()
            if focus in v and focus in b["per_query"].get(q, {})
        ),
        key=lambda t: t[1],
    )
    texts = {**a.get("queries", {}), **b.get("queries", {})}
    losses = [{"query_id": q, "query": texts.get(q, ""), "delta": d} for q, d in deltas[:show] if d < 0]
    best = reversed(deltas[-show:]) if show else iter(())
    wins = [{"query_id": q, "query": texts.get(q, ""), "delta": d} for q, d in best if d > 0]
    if a["fingerprint_hash"] != b["fingerprint_hash"]:
        changed = sorted(k for k in a["fingerprint"] if a["fingerprint"].get(k) != b["fingerprint"].get(k))
    else:
        changed = []
    if as_json:
        emit_json(
            {
                "a": a["id"],
                "b": b["id"],
                "changed": changed,
                "comparisons": [c.__dict__ for c in comps],
                "wins": wins,
                "losses": losses,
            }
        )
        return
    table = Table("metric", "A", "B", "Δ", "95% CI", "p", "wins/losses/ties", box=None)
    for c in comps:
        table.add_row(
            c.metric,
            f"{c.mean_a:.4f}",
            f"{c.mean_b:.4f}",
            f"{c.delta:+.4f}",
            f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
            f"{c.p_value:.4f}",
            f"{c.wins}/{c.losses}/{c.ties}",
        )
    out.print(table)
    if changed:
        out.print(f"[dim]fingerprint differs in: {', '.join(changed)}[/]")
    for title, rows in (("biggest losses", losses), ("biggest wins", wins)):
        if rows:
            out.print(f"[bold]{title}[/] ({focus})")
            for r in rows:
                out.print(f"  {r['delta']:+.3f}  {escape(r['query_id'])}  {escape(r['query'][:90])}")


@app.command("gate")
def eval_gate(
    baseline: Annotated[
        Path, typer.Option("--baseline", metavar="FILE", help="A run JSON written by --save-baseline.")
    ],
    max_drop: Annotated[float, typer.Option("--max-drop", min=0.0, help="Largest tolerated drop in a metric.")] = 0.01,
    metrics: MetricOpt = None,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Significance level.")] = 0.05,
    run_ref: Annotated[
        str | None, typer.Option("--run", metavar="RUN", help="Gate this stored run instead of running anew.")
    ] = None,
    cache_dir: CacheOpt = Path(".archivist/evals"),
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Exit 1 when a metric dropped by more than --max-drop and significantly; print the queries that got worse."""
    from archivist.evals.answers import AnswerEvalConfig
    from archivist.evals.datasets import Slice
    from archivist.evals.gate import run_gate
    from archivist.evals.retrieval import RetrievalEvalConfig

    if not baseline.is_file():
        fail(f"no baseline file at {baseline}", 2)
    if json.loads(baseline.read_text()).get("kind") == "guard":
        _gate_guard(baseline, [], store, as_json)
        return
    with open_app(store) as archivist:
        base = json.loads(baseline.read_text())
        answers = base.get("kind") == "answers"
        if run_ref:
            current = _load_run(archivist, run_ref)
        elif base.get("kind") == "agent":
            current = _run_agent_eval(
                archivist, Path(base["dataset_path"]), base["config"]["max_steps"], "gate", cache_dir
            )
        elif base.get("kind") == "golden":
            current = _run_golden_eval(
                archivist, Path(base["dataset_path"]), Path(base["config"]["corpus"]), "gate", cache_dir
            )
        else:
            sl = base.get("slice")
            where = (Path(base["dataset_path"]), base["split"], Slice(**sl) if sl else None)
            if answers:
                c = base["config"]
                current = _run_eval(
                    archivist,
                    *where,
                    AnswerEvalConfig(
                        k=c["k"],
                        limit=c["limit"],
                        unanswerable=Path(c["unanswerable"]) if c["unanswerable"] else None,
                        unanswerable_limit=c["unanswerable_limit"],
                        gold_removed=c["gold_removed"],
                        tag="gate",
                        judge=False,  # a sampled judge is noise to a gate; its metric is compared by hand
                    ),
                    cache_dir,
                )
            else:
                config = RetrievalEvalConfig(
                    mode=base["config"]["mode"],
                    depth=base["config"]["depth"],
                    metrics=base["config"]["metrics"],
                    tag="gate",
                )
                current = _run_eval(archivist, *where, config, cache_dir)
        if current.get("kind", "retrieval") != base.get("kind", "retrieval"):
            raise UsageError(f"cannot gate a {current.get('kind')} run against a {base.get('kind')} baseline")
        names = metrics or _gated_metrics(base.get("kind", "retrieval"))
        names = [m for m in names if m in base["metrics"]]
        if not names:
            # A gate that checks nothing must not pass.
            raise UsageError(f"none of the metrics to gate is in the baseline ({', '.join(sorted(base['metrics']))})")
        exact = False
        # Like against like: a run with a model and one without measure different things.
        mode_of = {
            "agent": ("agent", "in {} mode", "a workflow"),
            "golden": ("answerer", "with {} answers", "an extractive"),
        }
        if base.get("kind") in mode_of:
            section, wording, plain = mode_of[str(base["kind"])]
            modes = [r.get("fingerprint", {}).get(section, {}).get("mode") for r in (base, current)]
            if modes[0] != modes[1]:
                raise UsageError(
                    f"the baseline was measured {wording.format(modes[0])} and this run {wording.format(modes[1])}:"
                    f" gate like against like (unset ARCHIVIST_LLM_URL for {plain} baseline, or save a baseline with"
                    " the model)"
                )
        if base.get("kind") == "agent":
            # A workflow has no model in it: the same task file gives the same scores, so any drop is a regression.
            # (A golden run is not `exact`: extractive answers are deterministic, but any edit of the corpus moves
            # its statistics and can flip a near tie, so one question's change is not yet a regression.)
            exact = modes[0] == "workflow"
        result = run_gate(base, current, names, max_drop=max_drop, alpha=alpha, exact=exact)
    if as_json:
        emit_json(
            {
                "passed": result.passed,
                "baseline": base["id"],
                "run": current["id"],
                "checks": [{**c.comparison.__dict__, "failed": c.failed, "reason": c.reason} for c in result.checks],
                "worse_queries": result.worse,
            }
        )
    else:
        for c in result.checks:
            mark = "[red]FAIL[/]" if c.failed else "[green]ok[/]"
            out.print(
                f"{mark} {c.comparison.metric}: {c.comparison.mean_a:.4f} → {c.comparison.mean_b:.4f}  {c.reason}"
            )
        if result.worse:
            out.print(f"[bold]queries that got worse[/] ({result.worse[0]['metric']}):")
            for w in result.worse:
                out.print(f"  {w['before']:.3f} → {w['after']:.3f}  {escape(w['query_id'])}  {escape(w['query'][:80])}")
    if not result.passed:
        raise typer.Exit(1)


def _gated_metrics(kind: str) -> list[str]:
    """Return the metrics `eval gate` checks by default on a baseline of this kind."""
    from archivist.evals.agent import GATED_METRICS
    from archivist.evals.golden import GATED_METRICS as GOLDEN_GATED

    defaults = {
        "answers": ["gold_doc_cited", "span_in_cited"],
        "agent": list(GATED_METRICS),
        "golden": list(GOLDEN_GATED),
    }
    return defaults.get(kind, ["ndcg@10", "recall@100"])


@app.command("report")
def eval_report(
    run_ref: Annotated[str, typer.Argument(metavar="RUN", help="Run id (or prefix).")],
    html_path: Annotated[Path, typer.Option("--html", metavar="FILE", help="Where to write the HTML report.")],
    metric: Annotated[str, typer.Option("--metric", metavar="METRIC", help="The metric charted.")] = "ndcg@10",
    store: StoreOpt = None,
) -> None:
    """Write an HTML report: metrics, per-query distribution, the metric over time for this dataset."""
    from archivist.evals.metrics import parse_metric
    from archivist.evals.report import render_report

    with open_app(store, existing=True) as archivist:
        parse_metric(metric)
        run = _load_run(archivist, run_ref)
        history = [
            r
            for r in archivist.store.list_eval_runs(dataset=run["dataset"], limit=200)
            if r["split"] == run["split"] and r.get("slice") == run.get("slice")
        ]
    history.reverse()
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_report(run, history, metric), encoding="utf-8")
    out.print(f"wrote {html_path}")


@app.command("calibrate-refusal")
def eval_calibrate_refusal(
    dataset: Annotated[
        Path, typer.Argument(metavar="DATASET", help="A QA dataset folder whose questions its corpus answers.")
    ],
    unanswerable: Annotated[
        Path,
        typer.Option("--unanswerable", metavar="DATASET", help="A dataset whose questions this corpus cannot answer."),
    ],
    split: SplitOpt = "test",
    limit: Annotated[int | None, typer.Option("--limit", min=2, help="Ask only N questions (evenly spread).")] = None,
    unanswerable_limit: Annotated[int, typer.Option("--unanswerable-limit", min=2)] = 200,
    min_precision: Annotated[
        float, typer.Option("--min-precision", min=0.0, max=1.0, help="Refusals that must be right.")
    ] = 0.9,
    slice_spec: Annotated[str | None, typer.Option("--slice", metavar="Q:D", help=SliceHelp)] = None,
    leave_out: Annotated[
        str | None,
        typer.Option(
            "--leave-out",
            metavar="A:U",
            help="Leave out the questions `eval answers --limit A --unanswerable-limit U` asks, so it can measure "
            "the threshold on questions it was not chosen on.",
        ),
    ] = None,
    cache_dir: CacheOpt = Path(".archivist/evals"),
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure the refusal threshold for your documents: best refusal recall at a minimum precision, checked on a
    held-out half. Set it as ARCHIVIST_REFUSAL_THRESHOLD or `refusal_threshold` in archivist.toml."""
    from archivist.evals.calibrate import calibrate_refusal
    from archivist.evals.datasets import load_dataset

    left = usage(_parse_leave_out, leave_out)
    with open_app(store) as archivist:
        ds = load_dataset(dataset, split, _parse_slice(slice_spec), work_dir=cache_dir)
        with stage_progress() as show:

            def hook(stage: str, done: int, total: int) -> None:
                show(stage, done, total, "")

            result = calibrate_refusal(
                archivist.settings,
                ds,
                unanswerable,
                limit=limit,
                unanswerable_limit=unanswerable_limit,
                min_precision=min_precision,
                leave_out=left,
                cache_dir=cache_dir,
                progress=hook,
            )
    if as_json:
        emit_json(result)
    if result["threshold"] is None:
        fail(
            f"no threshold refuses any unanswerable question at precision >= {min_precision} "
            f"({result['n_answerable']} answerable, {result['n_unanswerable']} unanswerable questions): "
            "the two kinds of question score alike on this corpus",
            1,
        )
    if as_json:
        return
    tuning, held = result["tuning_half"], result["held_out_half"]
    table = Table(title=f"refusal threshold {result['threshold']} · {result['dataset']}", box=None)
    for column in ("half", "precision", "recall", "answerable refused"):
        table.add_column(column, justify="right" if column != "half" else "left")
    for name, pr in (("tuning (chose it)", tuning), ("held out", held)):
        table.add_row(name, f"{pr['precision']:.3f}", f"{pr['recall']:.3f}", f"{pr['answerable_refused_rate']:.3f}")
    out.print(table)
    out.print(
        f"[dim]{result['n_answerable']} answerable, {result['n_unanswerable']} unanswerable questions · "
        f"set ARCHIVIST_REFUSAL_THRESHOLD={result['threshold']} (or refusal_threshold in archivist.toml)[/]"
    )


@app.command("answers")
def eval_answers(
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help=QADatasetHelp)],
    split: SplitOpt = "test",
    k: Annotated[
        int, typer.Option("--k", min=1, max=50, metavar="N", help="Chunks retrieved as evidence per question.")
    ] = 12,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Ask only N questions (evenly spread).")] = None,
    slice_spec: Annotated[str | None, typer.Option("--slice", metavar="Q:D", help=SliceHelp)] = None,
    unanswerable: Annotated[
        Path | None,
        typer.Option("--unanswerable", metavar="DATASET", help="A dataset whose questions this corpus cannot answer."),
    ] = None,
    unanswerable_limit: Annotated[int, typer.Option("--unanswerable-limit", min=1)] = 100,
    gold_removed: Annotated[
        int, typer.Option("--gold-removed", min=0, help="Also ask N questions with their gold document removed.")
    ] = 0,
    leave_out: Annotated[
        str | None,
        typer.Option(
            "--leave-out",
            metavar="A:U",
            help="Ask none of the questions a run with --limit A --unanswerable-limit U asks (e.g. to tune on them).",
        ),
    ] = None,
    tag: TagOpt = None,
    judge: Annotated[
        bool | None,
        typer.Option(
            "--judge/--no-judge",
            help="Rate faithfulness by LLM-as-judge (default: on when a model is configured).",
            show_default=False,
        ),
    ] = None,
    judge_samples: Annotated[
        int | None,
        typer.Option("--judge-samples", min=1, max=20, help="Judge samples per answered question [default: 3]."),
    ] = None,
    save_baseline: SaveBaselineOpt = None,
    cache_dir: CacheOpt = Path(".archivist/evals"),
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer the dataset's questions from its own cached store; score answers, citations and refusal; store the run."""
    from archivist.evals.answers import AnswerEvalConfig
    from archivist.evals.judge import DEFAULT_SAMPLES

    if judge is False and judge_samples is not None:
        raise UsageError("--judge-samples has no effect with --no-judge")
    left = usage(_parse_leave_out, leave_out)
    with open_app(store) as archivist:
        config = AnswerEvalConfig(
            k=k,
            limit=limit,
            unanswerable=unanswerable,
            unanswerable_limit=unanswerable_limit,
            gold_removed=gold_removed,
            leave_out=left,
            tag=tag,
            judge=judge,
            judge_samples=judge_samples or DEFAULT_SAMPLES,
        )
        record = _run_eval(archivist, dataset, split, _parse_slice(slice_spec), config, cache_dir)
    if save_baseline:
        _save_baseline(record, save_baseline)
    if as_json:
        emit_json({k: v for k, v in record.items() if k not in ("per_query", "queries")})
        return
    _print_metrics_table(f"{record['dataset']} answers · run {record['id']}", record["metrics"])
    t = record["timings"]
    out.print(
        f"[dim]{record['n_queries']} questions · answer p50 {t['answer_p50_ms']} ms · "
        f"prompt {record['fingerprint']['prompt_versions']['answer']} · fingerprint {record['fingerprint_hash']}[/]"
    )
    j = record["judge"]
    if j["enabled"] and "judge_faithfulness" in record["metrics"]:
        out.print(
            f"[dim]judge {j['prompt_version']} · {j['samples']} samples × {j['questions_judged']} questions · "
            f"{j['samples_failed']} failed samples[/]"
        )
    else:
        out.print(f"[dim]judge_faithfulness not measured: {escape(str(j['reason']))}[/]")


def _run_agent_eval(
    archivist: Archivist, tasks: Path, max_steps: int, tag: str | None, cache_dir: Path
) -> dict[str, Any]:
    """Return an agent eval run over a task file, stored."""
    from archivist.evals.agent import AgentEvalConfig, run_agent_eval

    config = AgentEvalConfig(max_steps=max_steps, tag=tag)
    return _stored_run(
        archivist, lambda hook: run_agent_eval(archivist, tasks, config, cache_dir=cache_dir, progress=hook)
    )


def _saved_or_emitted(record: dict[str, Any], save_baseline: Path | None, as_json: bool) -> bool:
    """Save the run as a baseline when asked; print it as JSON (without its query texts) and return True with
    --json, else return False for the caller to print its table."""
    if save_baseline:
        _save_baseline(record, save_baseline)
    if as_json:
        emit_json({k: v for k, v in record.items() if k != "queries"})
    return as_json


def _stored_run(
    archivist: Archivist, run: Callable[[Callable[[str, int, int], None]], dict[str, Any]]
) -> dict[str, Any]:
    """Return the record of an eval run made with a progress display of its stages, stored."""
    with stage_progress() as show:

        def hook(stage: str, done: int, total: int) -> None:
            show(stage, done, total, "")

        record = run(hook)
    archivist.store.save_eval_run(record)
    return record


@app.command("agent")
def eval_agent(
    tasks: Annotated[
        Path,
        typer.Argument(
            metavar="TASKS", help="A JSON Lines task file: id, task, facts (and must_call, max_steps…) a line."
        ),
    ],
    max_steps: Annotated[
        int, typer.Option("--max-steps", min=1, metavar="N", help="Step limit of a task that sets none.")
    ] = 30,
    tag: TagOpt = None,
    save_baseline: SaveBaselineOpt = None,
    cache_dir: CacheOpt = Path(".archivist/evals"),
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give the agent each task of the file; score facts, tool calls, citations, steps, tokens, cost and latency;
    store the run."""
    with open_app(store) as archivist:
        record = _run_agent_eval(archivist, tasks, max_steps, tag, cache_dir)
    if _saved_or_emitted(record, save_baseline, as_json):
        return
    table = Table(title=f"{record['dataset']} agent tasks · run {record['id']}", box=None)
    for column in ("task", "status", "success", "facts", "citations", "steps", "tokens", "ms"):
        table.add_column(column, justify="left" if column in ("task", "status") else "right", overflow="fold")
    for task_id, row in record["per_query"].items():
        table.add_row(
            escape(task_id),
            escape(record["runs"][task_id]["status"]),
            "yes" if row["success"] else "no",
            f"{row['fact_recall']:.2f}",
            f"{row['citation_correctness']:.2f}",
            f"{row['steps']:.0f}",
            f"{row['tokens']:.0f}",
            f"{row['latency_ms']:.0f}",
        )
    out.print(table)
    _print_metrics_table("aggregate", record["metrics"])
    fp = record["fingerprint"]["agent"]
    models = f" ({escape(', '.join(fp['models']))})" if fp["models"] else ""
    out.print(
        f"[dim]{record['n_queries']} tasks · {fp['mode']} mode{models} · ingest {record['timings']['ingest_s']}s · "
        f"fingerprint {record['fingerprint_hash']}[/]"
    )


def _run_golden_eval(
    archivist: Archivist, path: Path, corpus: Path, tag: str | None, cache_dir: Path
) -> dict[str, Any]:
    """Return a golden-set eval run over a corpus, stored."""
    from archivist.evals.golden import run_golden_eval

    return _stored_run(
        archivist, lambda hook: run_golden_eval(archivist, path, corpus, tag=tag, cache_dir=cache_dir, progress=hook)
    )


@app.command("golden")
def eval_golden(
    golden: Annotated[
        Path,
        typer.Argument(
            metavar="SET",
            help="A golden set (JSON Lines: id, question, answerable, and source, span, facts when answerable).",
        ),
    ],
    corpus: Annotated[
        Path, typer.Option("--corpus", metavar="PATH", help="The folder or file the set was written from.")
    ],
    tag: TagOpt = None,
    save_baseline: SaveBaselineOpt = None,
    cache_dir: CacheOpt = Path(".archivist/evals"),
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask each question of a golden set of the corpus; score answered, correct (every fact in the quotes), gold
    source cited and refusals; store the run."""
    with open_app(store) as archivist:
        record = _run_golden_eval(archivist, golden, corpus, tag, cache_dir)
    if _saved_or_emitted(record, save_baseline, as_json):
        return
    table = Table(title=f"{record['dataset']} golden set · run {record['id']}", box=None)
    for column in ("question", "refused", "correct", "cited", "missing facts"):
        table.add_column(column, justify="left", overflow="fold")
    for qid, row in record["per_query"].items():
        went_right = row["refused"] == 1.0 if "answered" not in row else row["correct"] == row["source_cited"] == 1.0
        if went_right:
            continue  # the table lists what went wrong
        seen = record["answers"][qid]
        table.add_row(
            escape(qid),
            "yes" if seen["refused"] else "no",
            "-" if "correct" not in row else ("yes" if row["correct"] else "no"),
            "-" if "source_cited" not in row else ("yes" if row["source_cited"] else "no"),
            escape(", ".join(seen["missing_facts"])),
        )
    out.print(table)
    _print_metrics_table("aggregate", record["metrics"])
    out.print(f"[dim]{record['n_queries']} questions · fingerprint {record['fingerprint_hash']}[/]")


@app.command("pii")
def eval_pii(
    dataset: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DATASET]",
            help="presidio_synth_pii's folder or its JSON file (default: the --baseline run's dataset).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, metavar="N", help="Only the first N sentences (default: all).")
    ] = None,
    level: Annotated[
        str, typer.Option("--level", metavar="LEVEL", help="ner (the pii extra's model) or patterns (regex only).")
    ] = "ner",
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", metavar="FILE", help="Exit 1 when a figure dropped below this run's (FILE)."),
    ] = None,
    max_drop: Annotated[float, typer.Option("--max-drop", min=0.0, help="Largest tolerated drop in a figure.")] = 0.01,
    tag: TagOpt = None,
    save_baseline: SaveBaselineOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure PII detection on labelled sentences: precision, recall and F1 per kind (exact and overlapping spans),
    sentences per second; store the run, gate it against a baseline."""
    from dataclasses import asdict

    from archivist.evals.pii import PiiEvalConfig, gate_pii, run_pii_eval
    from archivist.guard.pii import PiiDetector

    if level not in ("ner", "patterns"):
        fail(f"unknown --level {level!r}: use ner or patterns", 2)
    base = None
    if baseline is not None:
        if not baseline.is_file():
            fail(f"no baseline file at {baseline}", 2)
        base = json.loads(baseline.read_text())
        dataset = dataset or Path(base["dataset_path"])
        limit = limit if limit is not None else base["config"]["limit"]
    if dataset is None:
        fail("give a DATASET (presidio_synth_pii's folder), or a --baseline whose dataset is used", 2)
    with open_app(store) as archivist:
        detector = PiiDetector(ner=level == "ner")
        with stage_progress() as show:

            def hook(stage: str, done: int, total: int) -> None:
                show(stage, done, total, "")

            record = run_pii_eval(detector, dataset, PiiEvalConfig(limit=limit, tag=tag), progress=hook)
        checks = gate_pii(base, record, max_drop=max_drop) if base is not None else []
        archivist.store.save_eval_run(record)
    if save_baseline:
        # The gate reads the figures only; each sentence's findings stay in the stored run.
        _save_baseline({k: v for k, v in record.items() if k not in ("per_query", "found")}, save_baseline)
    failed = [c for c in checks if c.failed]
    if as_json:
        summary = {k: v for k, v in record.items() if k not in ("per_query", "found")}
        if base is not None:
            summary["gate"] = {"passed": not failed, "baseline": base["id"], "checks": [asdict(c) for c in checks]}
        emit_json(summary)
    else:
        table = Table(title=f"{record['dataset']} PII · run {record['id']}", box=None)
        for column in ("kind", "labels", "found", "P exact", "R exact", "F1 exact", "P overlap", "R overlap", "F1 ov."):
            table.add_column(column, justify="left" if column == "kind" else "right")
        for kind, row in [*record["per_kind"].items(), ("all (micro)", record["overall"])]:
            cells = [f"{row[how][m]:.3f}" for how in ("exact", "overlap") for m in ("precision", "recall", "f1")]
            table.add_row(kind, str(row["labels"]), str(row["found"]), *cells)
        out.print(table)
        m, fp = record["metrics"], record["fingerprint"]["pii"]
        out.print(
            f"[dim]{record['n_queries']} sentences · {m['sentences_per_s']} sentences/s · clean sentences flagged "
            f"{m['clean_flagged']:.3f} · level {fp['level']} · fingerprint {record['fingerprint_hash']}[/]"
        )
        for c in checks:
            mark = "[red]FAIL[/]" if c.failed else "[green]ok[/]"
            out.print(f"{mark} {c.metric}: {c.baseline:.4f} → {c.current:.4f}")
    if failed:
        raise typer.Exit(1)


def _run_guard_eval(archivist: Archivist, datasets: list[Path], config: GuardEvalConfig) -> dict[str, Any]:
    """Return a guard eval run of the shipped injection detector over the datasets, stored."""
    from archivist.embed.minilm_onnx import MODEL_ID, MiniLMEmbedder
    from archivist.evals.guard import run_guard_eval
    from archivist.guard.injection import load_injection_detector

    # The detector reads MiniLM vectors: a store embedded by another model still gets them from the bundled one.
    embedder = archivist.embedder if archivist.embedding_model == MODEL_ID else MiniLMEmbedder()
    detector = load_injection_detector(embedder)
    with stage_progress() as show:

        def hook(stage: str, done: int, total: int) -> None:
            show(stage, done, total, "")

        record = run_guard_eval(detector, datasets, config, progress=hook)
    archivist.store.save_eval_run(record)
    return record


def _gate_guard(baseline: Path, datasets: list[Path], store: str | None, as_json: bool) -> None:
    """Run the guard eval a baseline describes (or over `datasets`), gate it, print the checks; exit 1 on a
    regression."""
    from dataclasses import asdict

    from archivist.evals.guard import GuardEvalConfig, gate_guard, parse_split

    base = json.loads(baseline.read_text())
    if base.get("kind") != "guard":
        fail(f"{baseline} is a {base.get('kind', 'retrieval')} baseline, not a guard one", 2)
    c = base["config"]
    config = GuardEvalConfig(
        split=parse_split(c["split"]),
        sample=c["sample"],
        contexts_per_attack=c["contexts_per_attack"],
        seed=c["seed"],
        tag="gate",
    )
    with open_app(store) as archivist:
        current = _run_guard_eval(archivist, datasets or [Path(p) for p in c["datasets"]], config)
    checks = gate_guard(base, current)
    passed = not any(ch.failed for ch in checks)
    if as_json:
        emit_json(
            {
                "passed": passed,
                "baseline": base["id"],
                "run": current["id"],
                "checks": [asdict(ch) for ch in checks],
            }
        )
    else:
        for ch in checks:
            mark = "[red]FAIL[/]" if ch.failed else "[green]ok[/]"
            now = "–" if ch.current is None else f"{ch.current:.4f}"
            out.print(f"{mark} {escape(ch.name)}: {ch.baseline:.4f} → {now}  {ch.reason}")
    if not passed:
        raise typer.Exit(1)


@app.command("guard")
def eval_guard(
    datasets: Annotated[
        list[Path],
        typer.Argument(
            metavar="DATASET...",
            help="Labelled prompts (.jsonl; Tensor Trust and jailbreak files as published), a BEIR folder (its "
            "questions, benign) or a BIPIA folder (attacks inserted into contexts).",
        ),
    ],
    split: Annotated[
        str,
        typer.Option("--split", help="all, holdout (the fifth the shipped model was never trained on) or train."),
    ] = "all",
    sample: Annotated[
        int | None, typer.Option("--sample", min=1, metavar="N", help="At most N attacks and N benign texts a dataset.")
    ] = None,
    contexts: Annotated[
        int, typer.Option("--contexts", min=1, metavar="N", help="BIPIA: contexts each attack is inserted into.")
    ] = 1,
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", metavar="FILE", help="Gate against this baseline: exit 1 when a rate regressed."),
    ] = None,
    tag: TagOpt = None,
    save_baseline: SaveBaselineOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score each dataset with the injection detector: detection and false-positive rates with Wilson 95% intervals,
    per dataset and attack category; store the run."""
    from archivist.evals.guard import GuardEvalConfig, dataset_kind, parse_split

    guard_split = usage(parse_split, split)
    for path in datasets:
        usage(dataset_kind, path)
    if baseline is not None:
        if not baseline.is_file():
            fail(f"no baseline file at {baseline}", 2)
        _gate_guard(baseline, datasets, store, as_json)
        return
    config = GuardEvalConfig(split=guard_split, sample=sample, contexts_per_attack=contexts, tag=tag)
    with open_app(store) as archivist:
        record = _run_guard_eval(archivist, datasets, config)
    if save_baseline:
        _save_baseline(record, save_baseline)
    if as_json:
        emit_json({k: v for k, v in record.items() if k not in ("per_query", "queries")})
        return
    table = Table(title=f"guard · run {record['id']} · threshold {record['fingerprint']['threshold']}", box=None)
    for column in ("dataset / category", "attacks", "detection", "95% CI", "benign", "FP rate", "95% CI "):
        table.add_column(column, justify="left" if column.startswith("dataset") else "right", overflow="fold")
    for name, r in record["per_dataset"].items():
        table.add_row(*_guard_row(escape(name), r))
        for category, cr in r["categories"].items():
            table.add_row(*_guard_row(f"  {escape(category)}", cr))
    out.print(table)
    t = record["timings"]
    out.print(
        f"[dim]{record['n_queries']} texts · p50 {t['p50_ms']} ms a text · {escape(record['fingerprint']['detector'])}"
        f" · fingerprint {record['fingerprint_hash']}[/]"
    )


def _guard_row(name: str, r: dict[str, Any]) -> list[str]:
    def ci(key: str) -> str:
        return f"[{r[key][0]:.3f}, {r[key][1]:.3f}]" if key in r else "–"

    return [
        name,
        str(r["n_attacks"]),
        f"{r['detection']:.3f}" if "detection" in r else "–",
        ci("detection_ci"),
        str(r["n_benign"]),
        f"{r['fp_rate']:.3f}" if "fp_rate" in r else "–",
        ci("fp_ci"),
    ]
