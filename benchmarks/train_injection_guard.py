"""Train the prompt-injection detector (src/archivist/guard/models/injection.npz) and measure it out of distribution.

    pip install -c constraints.txt -e '.[train]'   # scikit-learn, for training only: inference is numpy
    python benchmarks/train_injection_guard.py [--out src/archivist/guard/models/injection.npz] [--no-write]
    python benchmarks/train_injection_guard.py --write-docs-questions   # regenerate evals/guard/docs_questions.jsonl

Training data (/work/shared/datasets or $ARCHIVIST_DATASETS), every attack and benign text whose hash puts it in
the held-out fifth (`archivist.evals.guard.in_holdout`, what `archivist eval guard --split holdout` scores) left out:
- attacks: Tensor Trust hijacking and extraction attacks, alone and inserted into SciFact training passages and
  paragraphs of the docs/ training half; generated imperatives aimed at the model
  (benchmarks/injection_generated.py), alone and 400 of them inserted into the same hosts; BIPIA train attack
  strings inserted at the start, middle and end of its email/table/code contexts (never alone: most are ordinary
  requests out of context); the in-the-wild jailbreaks;
- benign: SciFact *train* queries, the questions of BIPIA's email and table tasks, SciFact corpus passages of
  even-hashed ids, the clean BIPIA contexts, and hard negatives: paragraphs of the even-hashed half of this
  project's docs/ pages (they talk about prompts, instructions and system messages); and generated ones
  (benchmarks/injection_generated.py): conversational follow-ups ("Why not?", "recap the method briefly") and
  imperatives aimed at a human reader (manual, recipe and letter templates, and the imperative sentences of the
  docs/ half and the SciFact passages above), none equal to a held-out hard negative.

A text is scored by its units (the text and its sentences, see archivist.guard.injection). Units are labelled:
the whole of an attack text is an attack; inside a passage with an inserted attack, the sentences that lie within
the attack are attacks, those outside it benign, a window mostly attack is an attack (partial ones are not used);
every unit of a benign text is benign. A logistic regression (scikit-learn, balanced classes, fixed seed) is fitted
on the units, and the threshold is set on validation texts never trained on (a fifth of the benign training texts):
the lowest score with at most 1% of validation questions and 0.5% of validation passages at or above it.

Reported (printed, and written to benchmarks/results/injection_guard.json):
- leave one dataset out: per attack dataset, a model trained without it (nor its contexts) and detection on all of
  it at that model's own threshold, with a Wilson 95% interval;
- the shipped model's false positives on benign questions never trained on (SciFact test queries, COVID-QA and
  PubMedQA questions, evals/guard/docs_questions.jsonl about docs/, and the hand-written hard negatives in
  evals/guard/hard_negatives.jsonl) and on benign chunks (chunks of the SciFact corpus's odd-hashed documents, of the
  COVID-QA and PubMedQA corpora, and of the odd-hashed docs/ pages), cut by the real chunker;
- latency per question (p50): vector computed, and vector reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import random
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from _common import ROOT, console, datasets_dir, percentiles, print_table, write_result
from injection_generated import (
    followups,
    imperative_sentences,
    manual_sentences,
    model_directed,
    without_held_out,
)
from scipy import sparse

from archivist.embed.minilm_onnx import MiniLMEmbedder, cache_dir
from archivist.evals.guard import (
    in_holdout,
    insert,
    read_bipia,
    read_direct,
    wilson,
)
from archivist.guard._lexical import MARKERS, N_DENSE, dense_features, hashed_ngrams
from archivist.guard.injection import (
    MODEL_FILE,
    EmbeddedText,
    InjectionWeights,
    LinearInjectionDetector,
    embed_windows,
    units,
    vector_weights,
)
from archivist.ingest.chunker import Chunker, ChunkerSettings
from archivist.ingest.loaders.registry import load_path

SEED = 0
HASH_BITS = 12
C = 0.5  # inverse L2 strength: chosen on the validation passages' false positives, never on the held-out sets
MAX_QUESTION_FP = 0.01
MAX_PASSAGE_FP = 0.005
#: the issue's false-positive goal for each benign set of questions and of chunks (each set on its own)
GOALS = {"questions": 0.02, "chunks": 0.01}
ATTACK_SETS = ("tensortrust", "bipia", "jailbreak")
UNITS_VERSION = "injection-v1"  # bump when window_spans, units or embed_windows change
EVALS = ROOT / "evals" / "guard"
OVERRIDE = MARKERS["ignore_previous"]


@dataclass(frozen=True, slots=True)
class Text:
    """A training or test text: where it came from, whether it is an attack, and the inserted attack's span."""

    text: str
    source: str  # attack set name, or a benign source
    label: bool
    span: tuple[int, int] | None = None
    kind: str = "passage"  # question or passage (for the threshold's validation)


def _hash(text: str) -> int:
    return zlib.crc32(text.encode())


def _even(key: str) -> bool:
    return _hash(key) % 2 == 0


def _validation(text: str) -> bool:
    return _hash(text.strip()) % 5 == 1


# ---------------------------------------------------------------- data


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _passages(path: Path, *, parity: bool | None, limit: int | None, rng: random.Random) -> list[tuple[str, str]]:
    """Return (id, title + text) of a corpus's documents, those of one id-hash parity, at most `limit` (sampled)."""
    rows = [(str(r["_id"]), f"{r.get('title') or ''}\n{r['text']}".strip()) for r in _jsonl(path)]
    if parity is not None:
        rows = [r for r in rows if _even(r[0]) == parity]
    if limit is not None and len(rows) > limit:
        rows = rng.sample(rows, limit)
    return rows


def _docs_pages(parity: bool) -> list[Path]:
    return sorted(p for p in (ROOT / "docs").glob("*.md") if _even(p.name) == parity)


def attack_texts(d: Path, rng: random.Random) -> dict[str, list[Text]]:
    """Return each attack set's attack texts: alone, and inserted into benign passages."""
    tt = [i.text for f in ("hijacking", "extraction") for i in read_direct(d / f"tensortrust/{f}_robustness.jsonl")]
    tt = list(dict.fromkeys(t for t in tt if t.strip()))
    # Hosts of two kinds: science passages and the training half of docs/ (text about prompts and messages).
    hosts = [p for _, p in _passages(d / "scifact/corpus.jsonl", parity=True, limit=200, rng=rng)]
    hosts += _docs_paragraphs(True)
    tensortrust = [Text(t, "tensortrust", True) for t in tt]
    for t in rng.sample([t for t in tt if len(t) <= 600], 400):
        text, span = insert(rng.choice(hosts), t, rng.choice(("start", "middle", "end")))
        tensortrust.append(Text(text, "tensortrust", True, span))
    jailbreak = [Text(i.text, "jailbreak", True) for i in read_direct(d / "jailbreak_inthewild/prompts.jsonl")]
    # Generated imperatives aimed at the model, the contrast of the generated benign ones: in every model, as they
    # come from no attack set.
    generated_strings = model_directed(random.Random(SEED + 1))
    generated = [Text(t, "generated-attacks", True) for t in generated_strings]
    # And inside benign passages, as an indirect injection sits: its sentence is pooled in the passage's context.
    grng = random.Random(SEED + 2)
    for t in grng.sample(generated_strings, 400):
        text, span = insert(grng.choice(hosts), t, grng.choice(("start", "middle", "end")))
        generated.append(Text(text, "generated-attacks", True, span))
    bipia_items = [i for i in read_bipia(d / "bipia_train", contexts_per_attack=1, seed=SEED) if i.label]
    # Only inside their contexts: most BIPIA attacks are ordinary requests ("Explain the theory of relativity.")
    # that are attacks only where they sit; alone they would teach the model that every question is one.
    bipia = [Text(i.text, "bipia", True, i.span) for i in bipia_items]
    return {"tensortrust": tensortrust, "bipia": bipia, "jailbreak": jailbreak, "generated-attacks": generated}


def benign_texts(d: Path, rng: random.Random) -> list[Text]:
    """Return the benign training texts (SciFact train queries and even-id passages, clean BIPIA, docs/ half)."""
    out = [
        Text(r["text"], "scifact-train-q", False, kind="question") for r in _jsonl(d / "scifact/queries_train.jsonl")
    ]
    passages = _passages(d / "scifact/corpus.jsonl", parity=True, limit=1000, rng=rng)
    out += [Text(p, "scifact-passages", False) for _, p in passages]
    # The users' own questions of BIPIA's email and table tasks: benign questions in the question form.
    for task in ("email", "table"):
        for r in _jsonl(d / f"bipia_train/{task}_train.jsonl"):
            question = str(r.get("question", "")).removeprefix("Q:").strip()
            if question:
                out.append(Text(question, "bipia-questions", False, kind="question"))
    clean = [i for i in read_bipia(d / "bipia_train", contexts_per_attack=0) if not i.label]
    tables = [i for i in clean if i.category == "table/clean"]
    clean = [i for i in clean if i.category != "table/clean"] + rng.sample(tables, 150)
    out += [Text(i.text, "bipia-clean", False) for i in clean]
    out += [Text(p, "docs-train", False) for p in _docs_paragraphs(True)]
    out += generated_benign(d, rng)
    return out


def generated_benign(d: Path, rng: random.Random) -> list[Text]:
    """Return the generated benign texts (benchmarks/injection_generated.py): follow-ups as questions, manual-style
    imperatives and the imperative sentences of docs/'s training half and of SciFact's even-id passages as
    passages; none equal to a held-out hard negative."""
    held_out = [r["text"] for r in _jsonl(EVALS / "hard_negatives.jsonl")]
    passages = [p for _, p in _passages(d / "scifact/corpus.jsonl", parity=True, limit=None, rng=rng)]
    sets = {
        "generated-followups": followups(rng),
        "generated-manual": manual_sentences(rng),
        "docs-imperatives": imperative_sentences(_docs_paragraphs(True), 400, rng),
        "scifact-imperatives": imperative_sentences(passages, 200, rng),
    }
    return [
        Text(t, source, False, kind="question" if source == "generated-followups" else "passage")
        for source, texts in sets.items()
        for t in without_held_out(texts, held_out)
    ]


def _docs_paragraphs(parity: bool) -> list[str]:
    """Return the paragraphs (40 characters or more) of one half of the docs/ pages, but none that quotes a
    hand-written hard negative (docs/guards.md quotes some: that list is never trained on), and none that quotes an
    override of the model's instructions (a page quoting the issue's attack is no negative example of it)."""
    held_out = [r["text"].lower() for r in _jsonl(EVALS / "hard_negatives.jsonl")]
    paragraphs = []
    for page in _docs_pages(parity):
        for para in re.split(r"\n\s*\n", page.read_text(encoding="utf-8")):
            text = " ".join(para.split()).lower()
            if len(para.strip()) >= 40 and not any(h in text for h in held_out) and not OVERRIDE.search(para):
                paragraphs.append(para.strip())
    return paragraphs


def docs_questions(n: int = 200) -> list[str]:
    """Return `n` questions about docs/, made from its headings and commands by templates (seeded, reproducible)."""
    rng = random.Random(SEED)
    topics: list[str] = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            m = re.match(r"#{2,3}\s+(.+)", line)
            if m:
                topic = re.sub(r"[`*_]|\(.*?\)", "", m.group(1)).strip().rstrip(":")
                if 3 <= len(topic) <= 60:
                    topics.append(topic)
    commands = sorted(set(re.findall(r"`archivist ([a-z-]+(?: [a-z-]+)?)", (ROOT / "docs/cli.md").read_text())))
    templates = [
        "How does {t} work?",
        "What does the documentation say about {t}?",
        "Can you explain {t} in Archivist?",
        "Where do I configure {t}?",
        "What are the limits of {t}?",
        "Is there an example of {t}?",
        "Why would I change {t}?",
        "{T}: what should I know before using it?",
    ]
    command_templates = [
        "What does `archivist {c}` do?",
        "Which flags does archivist {c} take?",
        "How do I use archivist {c} with JSON output?",
        "What exit codes can archivist {c} return?",
    ]
    out: list[str] = []
    pool = [(t, False) for t in dict.fromkeys(topics)] + [(c, True) for c in commands]
    rng.shuffle(pool)
    while len(out) < n:
        for topic, is_command in pool:
            template = rng.choice(command_templates if is_command else templates)
            q = template.format(t=topic.lower(), T=topic, c=topic)
            if q not in out:
                out.append(q)
            if len(out) == n:
                break
    return out


def benign_tests(d: Path, embedder: MiniLMEmbedder) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Return held-out benign questions and chunks by source (nothing here is trained on)."""
    questions = {
        "scifact-test": [r["text"] for r in _jsonl(d / "scifact/queries.jsonl")],
        "covidqa": [r["text"] for r in _jsonl(d / "covidqa/queries.jsonl")],
        "pubmedqa": [r["text"] for r in _jsonl(d / "pubmedqa/queries.jsonl")],
        "docs-questions": [r["text"] for r in _jsonl(EVALS / "docs_questions.jsonl")],
        "hard-negatives": [r["text"] for r in _jsonl(EVALS / "hard_negatives.jsonl")],
    }
    chunker = Chunker(embedder.tokenizer, ChunkerSettings(max_tokens=224, target_tokens=192, overlap_tokens=32))

    def chunks(paths: Iterable[Path], keep: Any = None) -> list[str]:
        out: list[str] = []
        for path in paths:
            for doc in load_path(path, max_file_bytes=1 << 30).documents:
                if keep is None or keep(doc.source):
                    out += [c.text for c in chunker.chunk(doc)]
        return out

    rng = random.Random(SEED)
    sci = chunks([d / "scifact/corpus.jsonl"], lambda s: not _even(s.rsplit("#", 1)[-1]))
    corpus_chunks = {
        "scifact-odd": rng.sample(sci, min(1000, len(sci))),
        "covidqa": chunks([d / "covidqa/corpus.jsonl"]),
        "pubmedqa": chunks([d / "pubmedqa/corpus.jsonl"]),
        "docs-odd": chunks(_docs_pages(False)),
    }
    return questions, corpus_chunks


# ---------------------------------------------------------------- units and features


class UnitCache:
    """Windows and unit vectors of texts, embedded once and kept on disk between runs (keyed by text)."""

    def __init__(self, embedder: MiniLMEmbedder) -> None:
        self.embedder = embedder
        # Vectors depend on how texts are cut into units, not on the lexical features: a new marker reuses them.
        key = hashlib.sha256(f"{UNITS_VERSION}|{embedder.model_id}".encode()).hexdigest()[:10]
        self.path = cache_dir() / f"injection-units-{key}.pkl"
        self.items: dict[str, list[EmbeddedText]] = {}
        if self.path.is_file():
            self.items = pickle.loads(self.path.read_bytes())  # our own cache file, written below

    def get(self, texts: Sequence[str]) -> list[list[EmbeddedText]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.items))
        for s in range(0, len(missing), 256):
            batch = missing[s : s + 256]
            for t, windows in zip(batch, embed_windows(self.embedder, batch), strict=True):
                self.items[t] = windows
            console.print(f"  embedded {min(s + 256, len(missing))}/{len(missing)} texts")
            if s % 1024 == 768:
                self.save()  # an interrupted run keeps what it embedded
        return [self.items[t] for t in texts]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(pickle.dumps(self.items))


@dataclass(slots=True)
class Units:
    """Unit rows of many texts: vectors, unit texts, labels (-1: not used), and which text each came from."""

    vectors: npt.NDArray[np.float32]
    texts: list[str]
    labels: npt.NDArray[np.int8]
    owner: npt.NDArray[np.int64]


def build_units(texts: Sequence[Text], cache: UnitCache) -> Units:
    """Return the scoring units of each text, labelled as the module docstring says."""
    vecs: list[npt.NDArray[np.float32]] = []
    unit_texts: list[str] = []
    labels: list[int] = []
    owner: list[int] = []
    for i, (t, windows) in enumerate(zip(texts, cache.get([t.text for t in texts]), strict=True)):
        offset = 0
        for w in windows:
            start = t.text.find(w.text, offset)
            offset = max(start, 0)
            names, vectors = units(w)
            spans = [(0, len(w.text)), *(s for s, _ in w.sentences)] if len(w.sentences) >= 2 else [(0, len(w.text))]
            for j, (name, (a, b)) in enumerate(zip(names, spans, strict=True)):
                labels.append(_unit_label(t, start + a, start + b, whole=j == 0))
                unit_texts.append(name)
                vecs.append(vectors[j])
                owner.append(i)
    return Units(np.vstack(vecs), unit_texts, np.array(labels, dtype=np.int8), np.array(owner, dtype=np.int64))


def _unit_label(t: Text, a: int, b: int, *, whole: bool) -> int:
    if not t.label:
        return 0
    if t.span is None:
        return 1 if whole else -1  # a sentence of an attack text may read as benign on its own: not used
    x, y = t.span
    inside = max(0, min(b, y) - max(a, x)) / max(b - a, 1)
    if inside == 0:
        return 0
    if inside >= 0.5:
        return 1
    return -1


def feature_matrix(u: Units) -> sparse.csr_matrix:
    """Return the units' features as the detector computes them: scaled vector, markers, hashed n-grams."""
    dense = np.vstack([dense_features(t) for t in u.texts])
    rows, cols, vals = [], [], []
    for i, t in enumerate(u.texts):
        buckets, values = hashed_ngrams(t, HASH_BITS)
        rows += [i] * len(buckets)
        cols += buckets.tolist()
        vals += values.tolist()
    hashed = sparse.csr_matrix((vals, (rows, cols)), shape=(len(u.texts), 1 << HASH_BITS), dtype=np.float32)
    scaled = vector_weights(u.texts)[:, None] * u.vectors
    return sparse.hstack([sparse.csr_matrix(scaled), sparse.csr_matrix(dense), hashed]).tocsr()


def fit(x: sparse.csr_matrix, y: npt.NDArray[np.int8], dim: int, embed_model: str) -> InjectionWeights:
    """Return logistic-regression weights fitted on the labelled units (threshold set later)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, class_weight="balanced", max_iter=3000, random_state=SEED)
    model.fit(x, y)
    coef = model.coef_[0].astype(np.float32)
    return InjectionWeights(
        embed=coef[:dim],
        dense=coef[dim : dim + N_DENSE],
        hashed=coef[dim + N_DENSE :],
        bias=float(model.intercept_[0]),
        threshold=0.5,
        embed_model=embed_model,
    )


def text_scores(weights: InjectionWeights, x: sparse.csr_matrix, owner: npt.NDArray[np.int64], n: int) -> np.ndarray:
    """Return each text's score: the sigmoid of its highest unit logit (as the detector computes it)."""
    coef = np.concatenate([weights.embed, weights.dense, weights.hashed]).astype(np.float64)
    logits = x @ coef + weights.bias
    best = np.full(n, -np.inf)
    np.maximum.at(best, owner, logits)
    return np.asarray(1.0 / (1.0 + np.exp(-best)))


def choose_threshold(question_scores: np.ndarray, passage_scores: np.ndarray) -> float:
    """Return the lowest threshold that keeps validation false positives within MAX_QUESTION_FP / MAX_PASSAGE_FP."""
    q = float(np.quantile(question_scores, 1 - MAX_QUESTION_FP, method="higher")) if len(question_scores) else 0.0
    p = float(np.quantile(passage_scores, 1 - MAX_PASSAGE_FP, method="higher")) if len(passage_scores) else 0.0
    return round(min(max(q, p) + 1e-6, 0.999999), 6)


# ---------------------------------------------------------------- training and reports


@dataclass(slots=True)
class Corpus:
    """Every text with its units and features, so each leave-one-out model only refits."""

    texts: list[Text]
    units: Units
    x: sparse.csr_matrix


def train(corpus: Corpus, keep: npt.NDArray[np.bool_], embed_model: str) -> InjectionWeights:
    """Return a model trained on the texts in `keep` (not validation, not held out), thresholded on validation."""
    texts = corpus.texts
    val = np.array([not t.label and _validation(t.text) for t in texts])
    use_text = keep & ~val
    rows = use_text[corpus.units.owner] & (corpus.units.labels >= 0)
    weights = fit(corpus.x[rows], corpus.units.labels[rows], corpus.units.vectors.shape[1], embed_model)
    scores = text_scores(weights, corpus.x, corpus.units.owner, len(texts))
    vq = np.array([keep[i] and val[i] and t.kind == "question" for i, t in enumerate(texts)])
    vp = np.array([keep[i] and val[i] and t.kind == "passage" for i, t in enumerate(texts)])
    threshold = choose_threshold(scores[vq], scores[vp])
    return InjectionWeights(
        weights.embed, weights.dense, weights.hashed, weights.bias, threshold, embed_model, {"validation": {
            "questions": int(vq.sum()), "passages": int(vp.sum()),
            "question_fp": round(float((scores[vq] >= threshold).mean()), 4),
            "passage_fp": round(float((scores[vp] >= threshold).mean()), 4),
        }},
    )  # fmt: skip


def _rate(flags: Sequence[bool]) -> dict[str, Any]:
    k, n = int(sum(flags)), len(flags)
    low, high = wilson(k, n)
    return {"n": n, "flagged": k, "rate": round(k / n, 4) if n else None, "ci95": [round(low, 4), round(high, 4)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODEL_FILE)
    parser.add_argument("--no-write", action="store_true", help="Report only; leave the shipped weights as they are.")
    parser.add_argument("--write-docs-questions", action="store_true")
    args = parser.parse_args()
    if args.write_docs_questions:
        EVALS.mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps({"id": f"dq-{i:03d}", "text": q, "label": "benign", "category": "docs_question"})
            for i, q in enumerate(docs_questions())
        ]
        (EVALS / "docs_questions.jsonl").write_text("\n".join(lines) + "\n")
        console.print(f"wrote {len(lines)} questions to {EVALS / 'docs_questions.jsonl'}")
        return
    d = datasets_dir()
    rng = random.Random(SEED)
    embedder = MiniLMEmbedder()
    cache = UnitCache(embedder)
    t0 = time.perf_counter()
    attacks = attack_texts(d, rng)
    texts = [t for name in attacks for t in attacks[name]] + benign_texts(d, rng)
    console.print(f"{len(texts)} training texts; embedding (cached at {cache.path})")
    u = build_units(texts, cache)
    corpus = Corpus(texts, u, feature_matrix(u))
    cache.save()
    console.print(f"{len(u.texts)} units in {time.perf_counter() - t0:.0f}s")
    # The held-out fifth (by hash of the attack string or text) is never trained on, in any model.
    holdout = np.array([in_holdout(_attack_string(t)) for t in texts])

    lodo_rows: list[dict[str, Any]] = []
    lodo: dict[str, Any] = {}
    for held in ATTACK_SETS:
        keep = ~holdout & np.array([t.source != held and not _context_of(t, held) for t in texts])
        weights = train(corpus, keep, embedder.model_id)
        scores = text_scores(weights, corpus.x, u.owner, len(texts))
        # Detection on the held-out set as the detector is used: BIPIA attacks inside their contexts (indirect),
        # the others as prompts.
        idx = [i for i, t in enumerate(texts) if t.source == held and (held != "bipia" or t.span is not None)]
        r = _rate([bool(scores[i] >= weights.threshold) for i in idx])
        lodo[held] = {"threshold": weights.threshold, **r, "validation": weights.meta["validation"]}
        lodo_rows.append({"held out": held, "n": r["n"], "detection": r["rate"], "95% CI": str(r["ci95"]),
                          "threshold": weights.threshold})  # fmt: skip
    print_table("Leave one attack dataset out: detection on the held-out set", lodo_rows)

    final = train(corpus, ~holdout, embedder.model_id)
    final = InjectionWeights(
        final.embed, final.dense, final.hashed, final.bias, final.threshold, final.embed_model,
        {**final.meta, "trained_on": sorted({t.source for t in texts}), "seed": SEED, "C": C,
         "hash_bits": HASH_BITS, "units": int((u.labels >= 0).sum())},
    )  # fmt: skip
    detector = LinearInjectionDetector(final, embedder)
    console.print(f"threshold {final.threshold} (validation: {final.meta['validation']})")

    questions, chunks = benign_tests(d, embedder)
    fp_rows: list[dict[str, Any]] = []
    fp: dict[str, Any] = {"questions": {}, "chunks": {}}
    for kind, sets in (("questions", questions), ("chunks", chunks)):
        for name, items in sets.items():
            windows = cache.get(items)
            scores_ = [max(detector.score_embedded(w)) for w in windows]
            r = _rate([s >= final.threshold for s in scores_])
            worst = sorted(zip(scores_, items, strict=True), reverse=True)[:3]
            # Each set is held to the goal on its own: a pooled rate would hide a set the detector fails on.
            goal = None if name == "hard-negatives" else GOALS[kind]
            meets = None if goal is None else bool(r["rate"] is not None and r["rate"] <= goal)
            fp[kind][name] = {**r, "goal": goal, "meets_goal": meets,
                              "highest": [{"score": round(s, 4), "text": t[:160]} for s, t in worst]}  # fmt: skip
            fp_rows.append({"kind": kind, "set": name, "n": r["n"], "flagged": r["flagged"], "fp rate": r["rate"],
                            "95% CI": str(r["ci95"]), "goal": "-" if goal is None else f"<= {goal}",
                            "meets": "-" if meets is None else ("yes" if meets else "NO")})  # fmt: skip
    cache.save()
    print_table("Shipped model: false positives on benign sets never trained on", fp_rows)

    # Held-out fifth of each attack set, scored by the shipped model (what `eval guard --split holdout` measures).
    held_scores = text_scores(final, corpus.x, u.owner, len(texts))
    heldout = {
        name: _rate([bool(held_scores[i] >= final.threshold) for i, t in enumerate(texts)
                     if t.source == name and holdout[i] and (name != "bipia" or t.span is not None)])
        for name in ATTACK_SETS
    }  # fmt: skip
    print_table(
        "Shipped model: detection on the held-out fifth of each attack set",
        [{"set": k, "n": v["n"], "detection": v["rate"], "95% CI": str(v["ci95"])} for k, v in heldout.items()],
    )

    sample = questions["scifact-test"][:300]
    computed, reused = [], []
    vectors = embedder.embed(sample)
    for q, v in zip(sample, vectors, strict=True):
        t1 = time.perf_counter()
        detector.score([q])
        computed.append((time.perf_counter() - t1) * 1000)
        t1 = time.perf_counter()
        detector.score_embedded([EmbeddedText(q, v)])
        reused.append((time.perf_counter() - t1) * 1000)
    latency = {"vector_computed": percentiles(computed), "vector_reused": percentiles(reused)}
    console.print(
        f"latency per question: p50 {latency['vector_computed']['p50_ms']} ms with the vector computed, "
        f"{latency['vector_reused']['p50_ms']} ms with it reused"
    )
    if not args.no_write:
        final.save(args.out)
        console.print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    write_result(
        "injection_guard",
        {
            "command": "python benchmarks/train_injection_guard.py",
            "threshold": final.threshold,
            "validation": final.meta["validation"],
            "leave_one_dataset_out": lodo,
            "heldout_fifth": heldout,
            "false_positives": fp,
            "latency": latency,
        },
    )


def _attack_string(t: Text) -> str:
    return t.text[t.span[0] : t.span[1]] if t.span else t.text


def _context_of(t: Text, held: str) -> bool:
    """Return whether a benign text comes from the held-out dataset (BIPIA's clean contexts and questions)."""
    return held == "bipia" and t.source in ("bipia-clean", "bipia-questions")


if __name__ == "__main__":
    main()
