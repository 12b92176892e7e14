"""BEIR-layout datasets: `corpus.jsonl`, `queries[_SPLIT].jsonl`, `qrels[_SPLIT].tsv`, optional `answers.jsonl`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from archivist.types import UsageError

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class Slice:
    """A deterministic subset: the first `queries` judged queries (by id) and a corpus of their
    relevant documents plus the first `distractors` other corpus lines. Small and fast, for CI."""

    queries: int
    distractors: int

    def label(self) -> str:
        """Return a short name of the slice for run records."""
        return f"q{self.queries}+d{self.distractors}"


@dataclass(slots=True)
class Dataset:
    """Queries, relevance judgments and the corpus file of one split of a BEIR-layout dataset."""

    name: str
    path: Path
    split: str
    corpus: Path
    queries: dict[str, str]
    qrels: Qrels
    slice: Slice | None = None


def _split_file(root: Path, stem: str, suffix: str, split: str) -> Path:
    """Return the file of a split: `qrels.tsv` / `qrels/test.tsv` for test, `qrels_train.tsv` for train."""
    candidates = [root / f"{stem}_{split}{suffix}", root / stem / f"{split}{suffix}"]
    if split == "test":
        candidates.insert(0, root / f"{stem}{suffix}")
    for c in candidates:
        if c.is_file():
            return c
    names = ", ".join(str(c.relative_to(root)) for c in candidates)
    raise UsageError(f"dataset {root} has no {split} split: looked for {names}")


def read_qrels(path: Path) -> Qrels:
    """Return the relevance judgments of a BEIR `qrels` TSV (header `query-id corpus-id score`)."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                raise UsageError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(parts)}")
            try:
                score = int(parts[2])
            except ValueError:
                raise UsageError(f"{path}:{lineno}: score {parts[2]!r} is not an integer") from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def read_queries(path: Path) -> dict[str, str]:
    """Return {query id: text} from a BEIR `queries.jsonl`."""
    out: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["_id"])] = str(row["text"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"{path}:{lineno}: not a query record ({exc})") from exc
    return out


def load_dataset(path: Path, split: str = "test", slice_: Slice | None = None, work_dir: Path | None = None) -> Dataset:
    """Return a dataset split, optionally sliced (the sliced corpus is written under `work_dir`)."""
    if not path.is_dir():
        raise UsageError(f"no dataset folder at {path}")
    corpus = path / "corpus.jsonl"
    if not corpus.is_file():
        raise UsageError(f"dataset {path} has no corpus.jsonl")
    queries = read_queries(_split_file(path, "queries", ".jsonl", split))
    qrels = read_qrels(_split_file(path, "qrels", ".tsv", split))
    judged = {q: rel for q, rel in qrels.items() if q in queries and any(v > 0 for v in rel.values())}
    missing = sorted(set(qrels) - set(queries))
    if missing and not judged:
        raise UsageError(f"dataset {path}: none of the judged queries are in the queries file (e.g. {missing[0]})")
    ds = Dataset(path.name, path, split, corpus, {q: queries[q] for q in judged}, judged)
    if slice_ is not None:
        ds = _sliced(ds, slice_, work_dir or Path(".archivist") / "evals")
    return ds


def _sliced(ds: Dataset, s: Slice, work_dir: Path) -> Dataset:
    keep = sorted(ds.qrels)[: s.queries]
    qrels = {q: ds.qrels[q] for q in keep}
    wanted = {d for rel in qrels.values() for d in rel}
    lines: list[str] = []
    distractors = 0
    with ds.corpus.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            doc_id = str(json.loads(line).get("_id", json.loads(line).get("id")))
            if doc_id in wanted:
                lines.append(line)
            elif distractors < s.distractors:
                lines.append(line)
                distractors += 1
    work_dir.mkdir(parents=True, exist_ok=True)
    corpus = work_dir / f"{ds.name}-{ds.split}-{s.label()}.jsonl"
    text = "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)
    # Rewrite only on change: the file's hash is part of incremental ingestion's bookkeeping.
    if not corpus.exists() or corpus.read_text(encoding="utf-8") != text:
        corpus.write_text(text, encoding="utf-8")
    return Dataset(ds.name, ds.path, ds.split, corpus, {q: ds.queries[q] for q in keep}, qrels, s)
