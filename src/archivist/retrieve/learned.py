"""Learned fusion: a small tree ensemble, evaluated in numpy, that re-scores the best z-score candidates.

The model (a JSON file, by default `models/fusion.json`, written by
`benchmarks/train_fusion_model.py` from SciFact's train queries and the COVID-QA questions that
`eval answers` does not report on) reads cheap features of each candidate chunk: its z-scored dense,
chunk-BM25 and document-BM25 scores, the z-score fusion of those, its rank among the candidates, how
well the query's terms cover its title and text, its document's best dense score and number of
candidate chunks, the query's length, and how many candidates each document has on average (abstracts
and long papers want different rankings). It re-orders
the top `rerank_depth` chunks of the z-score fusion; the chunks below keep their z-score order
under them, so recall at depth is that of z-score fusion.

The evaluator needs nothing but numpy: no training library is a runtime dependency.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from archivist.store.records import CandidateScores, ChunkPlace, StoredChunk
from archivist.text.analyzer import Analyzer
from archivist.types import UsageError

MODEL_FORMAT = "archivist-tree-ensemble"
MODEL_VERSION = 1
DEFAULT_MODEL = Path(__file__).with_name("models") / "fusion.json"
# The z-score fusion weights the "zfused" feature is built with (the z-score defaults; fixed, not configurable,
# so a model sees the same feature whatever ARCHIVIST_*_WEIGHT say).
FEATURE_WEIGHTS = (0.75, 0.15, 0.10)
# Added to the model's score times z_fused: equal model scores (a flat region of the trees) keep z-score order.
TIE_BREAK = 1e-6

FEATURES: tuple[str, ...] = (
    "z_dense",  # chunk cosine, standardised over the corpus for this query
    "z_bm25",  # chunk BM25, standardised
    "z_doc_bm25",  # BM25 of the chunk's whole document, standardised over documents
    "z_fused",  # 0.75 / 0.15 / 0.10 weighted sum of the three
    "cosine",  # raw cosine: how close in absolute terms
    "dense_spread",  # the query's cosine spread over the corpus (a query-level feature)
    "query_terms",  # number of BM25 terms in the query
    "title_coverage",  # share of the query's distinct terms found in the document title
    "text_coverage",  # share of the query's distinct terms found in the chunk (title and headings included)
    "doc_best_z_dense",  # best z_dense among the document's candidate chunks
    "doc_chunks",  # how many of the document's chunks are among the candidates
    "ordinal",  # the chunk's position in its document (capped at 10)
    "rank_fused",  # log(1 + rank) by z_fused among the candidates
    "rank_dense",  # log(1 + rank) by z_dense among the candidates
    "gap_fused",  # z_fused minus the best z_fused among the candidates
    "gap_dense",  # z_dense minus the best z_dense among the candidates
    # candidates per distinct document (a query-level feature): about 1 on a corpus of abstracts, far more on
    # long papers, so one model can rank both kinds of corpus differently
    "pool_chunks_per_doc",
)

FloatArray = npt.NDArray[np.float64]


class ModelError(UsageError):
    """A learned-fusion model file is missing or malformed."""


@dataclass(frozen=True, slots=True)
class TreeEnsemble:
    """Regression trees whose leaf values are summed, plus an optional linear term (the boosting's start).

    All nodes of all trees sit in flat arrays. An internal node sends a row to `child[2 * node]` when
    `x[feature] <= threshold`, else to `child[2 * node + 1]`; a leaf points to itself twice (threshold
    +inf), so every row can take the same number of steps, `max_depth`, without masks.
    """

    features: tuple[str, ...]
    feature: npt.NDArray[np.int64]  # (nodes,)
    threshold: FloatArray
    child: npt.NDArray[np.int64]  # (2 * nodes,)
    value: FloatArray  # leaf value per node (0 for internal nodes)
    roots: npt.NDArray[np.int64]  # (trees,)
    base_score: float
    max_depth: int
    linear: FloatArray | None = None  # per-feature weights added to the trees' sum (None: no linear term)
    # deeper[s]: how many trees are deeper than s splits (trees sorted deepest first; None: step every tree)
    deeper: npt.NDArray[np.int64] | None = None

    @property
    def n_trees(self) -> int:
        return int(self.roots.size)

    def predict(self, x: npt.ArrayLike) -> FloatArray:
        """Return the ensemble's score for each row of a (rows, features) matrix."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"expected a (rows, {len(self.features)}) feature matrix, got shape {x.shape}")
        rows = x.shape[0]
        start: FloatArray = np.full(rows, self.base_score) if self.linear is None else x @ self.linear + self.base_score
        if rows == 0 or self.n_trees == 0:
            return start
        flat = np.ascontiguousarray(x).ravel()
        row_base = (np.arange(rows, dtype=np.int64) * x.shape[1])[:, None]
        node = np.broadcast_to(self.roots, (rows, self.n_trees)).copy()
        for step in range(self.max_depth):
            # Trees are stored deepest first: after `step` splits only the first `deeper[step]` can still move.
            a = self.n_trees if self.deeper is None else int(self.deeper[step])
            part = node[:, :a]
            go_right = flat.take(row_base + self.feature.take(part)) > self.threshold.take(part)
            node[:, :a] = self.child.take(2 * part + go_right)
        total: FloatArray = start + self.value.take(node).sum(axis=1)
        return total


@dataclass(frozen=True, slots=True)
class LearnedFusionModel:
    """A tree ensemble over FEATURES, the depth of z-score candidates it re-orders, and its file's hash."""

    ensemble: TreeEnsemble
    rerank_depth: int
    sha256: str
    path: str
    meta: Mapping[str, Any]

    def fingerprint(self) -> dict[str, Any]:
        """Return what identifies the model in an eval run's fingerprint."""
        return {"model": Path(self.path).name, "model_sha256": self.sha256[:16], "rerank_depth": self.rerank_depth}


def _int_list(tree: Mapping[str, Any], key: str, where: str) -> list[int]:
    value = tree.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ModelError(f"{where}: '{key}' must be a list of integers")
    return value


def _float_list(tree: Mapping[str, Any], key: str, where: str) -> list[float]:
    value = tree.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ModelError(f"{where}: '{key}' must be a list of numbers")
    if not all(math.isfinite(v) for v in value):
        raise ModelError(f"{where}: '{key}' holds a non-finite number")
    return [float(v) for v in value]


def ensemble_from_dict(data: Mapping[str, Any], where: str = "model") -> TreeEnsemble:
    """Build and validate a TreeEnsemble from the model file's JSON object."""
    features = data.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features) or not features:
        raise ModelError(f"{where}: 'features' must be a non-empty list of names")
    trees = data.get("trees")
    if not isinstance(trees, list):
        raise ModelError(f"{where}: 'trees' must be a list")
    base_score = data.get("base_score", 0.0)
    if not isinstance(base_score, int | float) or isinstance(base_score, bool) or not math.isfinite(base_score):
        raise ModelError(f"{where}: 'base_score' must be a finite number")
    linear = data.get("linear")
    if linear is not None:
        linear = _float_list(data, "linear", where)
        if len(linear) != len(features):
            raise ModelError(f"{where}: 'linear' needs one weight per feature")
    parsed = []
    max_depth = 1
    for t, tree in enumerate(trees):
        w = f"{where}: tree {t}"
        if not isinstance(tree, dict):
            raise ModelError(f"{w} is not an object")
        feat = _int_list(tree, "feature", w)
        left, right = _int_list(tree, "left", w), _int_list(tree, "right", w)
        thr = _float_list(tree, "threshold", w)
        leaves = _float_list(tree, "leaf_value", w)
        n = len(feat)
        if not (len(thr) == len(left) == len(right) == n) or len(leaves) != n + 1:
            raise ModelError(f"{w}: a tree with n splits needs n features, thresholds, left, right and n + 1 leaves")
        if any(not 0 <= f < len(features) for f in feat):
            raise ModelError(f"{w}: feature index out of range")
        if any((c >= n) if c >= 0 else (~c >= len(leaves)) for c in (*left, *right)):
            raise ModelError(f"{w}: child index out of range")
        depth = _depth(left, right) if n else 0
        max_depth = max(max_depth, depth)
        parsed.append((depth, feat, thr, left, right, leaves))
    # Deepest first, so each step of `predict` works on a prefix of the trees (their leaf sum is order-free).
    parsed.sort(key=lambda tree: -tree[0])
    depths = np.asarray([tree[0] for tree in parsed], dtype=np.int64)
    feature_a: list[int] = []
    threshold_a: list[float] = []
    child: list[int] = []
    value: list[float] = []
    roots: list[int] = []
    for _, feat, thr, left, right, leaves in parsed:
        base, n = len(feature_a), len(feat)
        roots.append(base)  # node 0, or the only leaf of a one-leaf tree

        def node_id(c: int, base: int = base, n: int = n) -> int:
            return base + c if c >= 0 else base + n + ~c

        feature_a += feat
        threshold_a += thr
        value += [0.0] * n
        for i in range(n):
            child += [node_id(left[i]), node_id(right[i])]
        for j, v in enumerate(leaves):
            feature_a.append(0)
            threshold_a.append(math.inf)
            child += [base + n + j] * 2
            value.append(v)
    return TreeEnsemble(
        tuple(features),
        np.asarray(feature_a, dtype=np.int64),
        np.asarray(threshold_a, dtype=np.float64),
        np.asarray(child, dtype=np.int64),
        np.asarray(value, dtype=np.float64),
        np.asarray(roots, dtype=np.int64),
        float(base_score),
        max_depth=max_depth,
        linear=None if linear is None else np.asarray(linear, dtype=np.float64),
        deeper=np.asarray([(depths > step).sum() for step in range(max_depth)], dtype=np.int64),
    )


def _depth(left: Sequence[int], right: Sequence[int]) -> int:
    """Return a tree's depth (number of splits on its longest path); raise on cycles or unreachable nodes."""
    seen: set[int] = set()
    depth = 0
    stack = [(0, 1)]
    while stack:
        node, d = stack.pop()
        if node in seen:
            raise ModelError("a tree's nodes must form a tree (a node is reached twice)")
        seen.add(node)
        depth = max(depth, d)
        stack.extend((c, d + 1) for c in (left[node], right[node]) if c >= 0)
    if len(seen) != len(left):
        raise ModelError("a tree has unreachable nodes")
    return depth


def lightgbm_trees(dump: Mapping[str, Any]) -> list[dict[str, list[Any]]]:
    """Return the trees of a LightGBM `Booster.dump_model()` as this module's flat arrays.

    Only numerical `<=` splits are supported; features are never missing (NaN) here, so LightGBM's
    missing-value routing never applies (a split that treats zero as missing is refused).
    """
    return [_flatten(info["tree_structure"]) for info in dump["tree_info"]]


def _flatten(root: Mapping[str, Any]) -> dict[str, list[Any]]:
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    leaves: dict[int, float] = {}

    def visit(node: Mapping[str, Any]) -> int:
        if "leaf_value" in node:
            index = int(node.get("leaf_index", 0))
            leaves[index] = float(node["leaf_value"])
            return ~index
        if node["decision_type"] != "<=" or node.get("missing_type") == "Zero":
            raise ModelError(f"unsupported split: {node['decision_type']} / {node.get('missing_type')}")
        i = len(feature)
        feature.append(int(node["split_feature"]))
        threshold.append(float(node["threshold"]))
        left.append(0)
        right.append(0)
        left[i] = visit(node["left_child"])
        right[i] = visit(node["right_child"])
        return i

    visit(root)
    return {
        "feature": feature,
        "threshold": threshold,
        "left": left,
        "right": right,
        "leaf_value": [leaves[i] for i in range(len(leaves))],
    }


def load_model(path: str | Path | None = None) -> LearnedFusionModel:
    """Load and validate a learned-fusion model file (the bundled one when path is None); cached per file."""
    p = Path(path) if path is not None else DEFAULT_MODEL
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ModelError(f"learned fusion model not readable: {p}: {e.strerror or e}") from None
    return _parse(raw, str(p))


@lru_cache(maxsize=8)
def _parse(raw: bytes, path: str) -> LearnedFusionModel:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"learned fusion model {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise ModelError(f"learned fusion model {path}: not an {MODEL_FORMAT!r} file")
    if data.get("version") != MODEL_VERSION:
        raise ModelError(f"learned fusion model {path}: unsupported version {data.get('version')!r}")
    if data.get("features") != list(FEATURES):
        raise ModelError(
            f"learned fusion model {path} reads features {data.get('features')!r}, this code computes {list(FEATURES)}"
        )
    ensemble = ensemble_from_dict(data, f"learned fusion model {path}")
    depth = data.get("rerank_depth")
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ModelError(f"learned fusion model {path}: 'rerank_depth' must be a positive integer")
    meta = data.get("meta", {})
    return LearnedFusionModel(
        ensemble, depth, hashlib.sha256(raw).hexdigest(), path, meta if isinstance(meta, dict) else {}
    )


def zscores(scores: CandidateScores) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return the candidates' dense, chunk-BM25 and document-BM25 scores standardised over the corpus."""
    zd = (np.asarray(scores.dense, dtype=np.float64) - scores.dense_mean) / scores.dense_std
    zb = (np.asarray(scores.bm25, dtype=np.float64) - scores.bm25_mean) / scores.bm25_std
    zdoc = (np.asarray(scores.doc_bm25, dtype=np.float64) - scores.doc_bm25_mean) / scores.doc_bm25_std
    return zd, zb, zdoc


def fused_zscore(scores: CandidateScores) -> FloatArray:
    """Return the candidates' z-score fusion with the fixed feature weights."""
    zd, zb, zdoc = zscores(scores)
    wd, wb, wdoc = FEATURE_WEIGHTS
    return wd * zd + wb * zb + wdoc * zdoc


def features(
    query: str,
    ids: Sequence[int],
    scores: CandidateScores,
    chunks: Mapping[int, StoredChunk] | Mapping[int, ChunkPlace],
    analyzer: Analyzer,
) -> FloatArray:
    """Return the (candidates, FEATURES) matrix of the given chunks (the ones re-ordered) for a query."""
    n = len(ids)
    zd, zb, zdoc = zscores(scores)
    wd, wb, wdoc = FEATURE_WEIGHTS
    zf = wd * zd + wb * zb + wdoc * zdoc
    q_terms = set(analyzer.terms(query))
    initials = frozenset(t[0] for t in q_terms)
    nq = max(len(q_terms), 1)
    # The index counted each candidate's query terms in the text it indexes (title, headings and text, through the
    # same analyzer): the same share, without splitting every chunk's text again here. (It holds a first heading
    # equal to the title once, compared under Unicode case folding, where the text below read both: "Straße" over
    # "STRASSE" is the whole difference.)
    matched = scores.terms_matched
    title_cov = np.zeros(n)
    text_cov = np.zeros(n)
    ordinal = np.zeros(n)
    docs: list[str] = []
    title_terms: dict[str, set[str]] = {}
    for i, cid in enumerate(ids):
        c = chunks.get(cid)
        if c is None:
            docs.append(f"?{cid}")
            continue
        docs.append(c.document_id)
        if c.document_id not in title_terms:
            title_terms[c.document_id] = analyzer.term_set(c.title, initials)
        title_cov[i] = len(q_terms & title_terms[c.document_id]) / nq
        if matched is not None:
            text_cov[i] = matched[i] / nq
        elif isinstance(c, StoredChunk):
            chunk_terms = analyzer.term_set(" ".join((c.title, *c.heading_path, c.text)), initials)
            text_cov[i] = len(q_terms & chunk_terms) / nq
        else:
            raise ValueError("learned fusion needs the chunks' text when the index does not count query terms")
        ordinal[i] = min(c.ordinal, 10)
    _, owner = np.unique(np.asarray(docs, dtype=object).astype(str), return_inverse=True)
    doc_best = np.full(owner.max() + 1 if n else 0, -np.inf)
    np.maximum.at(doc_best, owner, zd)
    doc_count = np.bincount(owner) if n else np.zeros(0, dtype=np.int64)

    def log_rank(values: FloatArray) -> FloatArray:
        order = np.argsort(-values, kind="stable")
        rank = np.empty(n)
        rank[order] = np.arange(1, n + 1)
        return np.log1p(rank)

    x = np.empty((n, len(FEATURES)))
    if n == 0:
        return x
    x[:, 0], x[:, 1], x[:, 2], x[:, 3] = zd, zb, zdoc, zf
    x[:, 4] = np.asarray(scores.dense, dtype=np.float64)
    x[:, 5] = scores.dense_std
    x[:, 6] = len(q_terms)
    x[:, 7], x[:, 8] = title_cov, text_cov
    x[:, 9] = doc_best[owner]
    x[:, 10] = doc_count[owner]
    x[:, 11] = ordinal
    x[:, 12], x[:, 13] = log_rank(zf), log_rank(zd)
    x[:, 14], x[:, 15] = zf - zf.max(), zd - zd.max()
    x[:, 16] = n / doc_count.size
    return x


def _documents_by_model_chunks_by_zscore(
    ranked: Sequence[tuple[int, float]],
    head_ids: Sequence[int],
    chunks: Mapping[int, StoredChunk] | Mapping[int, ChunkPlace],
) -> list[tuple[int, float]]:
    """Return the model's ranking with each document's chunks put back in z-score order on its document's ranks.

    The model was trained on document labels (every chunk of a relevant document counts alike), so it knows which
    documents go where but not which of a document's chunks reads best: the document keeps the ranks the model gave
    it (document-level metrics are unchanged) and its chunks fill them best z-score first.
    """

    def doc(cid: int) -> str:
        c = chunks.get(cid)
        return c.document_id if c is not None else f"?{cid}"

    by_doc: dict[str, deque[int]] = {}
    for cid in head_ids:  # in z-score order
        by_doc.setdefault(doc(cid), deque()).append(cid)
    return [(by_doc[doc(cid)].popleft(), score) for cid, score in ranked]


def learned_fusion(
    query: str,
    ids: Sequence[int],
    scores: CandidateScores,
    chunks: Mapping[int, StoredChunk] | Mapping[int, ChunkPlace],
    model: LearnedFusionModel,
    analyzer: Analyzer,
) -> list[tuple[int, float]]:
    """Return (id, score) pairs, best first: the model's order for the top z-score candidates, then the rest.

    The model orders documents; within a document, chunks keep their z-score order. `chunks` must hold at least
    the top `model.rerank_depth` candidates by z-score fusion.
    """
    if not ids:
        return []
    zf = fused_zscore(scores)
    order = sorted(range(len(ids)), key=lambda i: (-zf[i], ids[i]))
    head, tail = order[: model.rerank_depth], order[model.rerank_depth :]
    head_ids = [ids[i] for i in head]
    head_scores = scores.subset(head)
    predicted = model.ensemble.predict(features(query, head_ids, head_scores, chunks, analyzer))
    predicted = predicted + TIE_BREAK * zf[head]
    ranked = sorted(zip(head_ids, (float(p) for p in predicted), strict=True), key=lambda kv: (-kv[1], kv[0]))
    ranked = _documents_by_model_chunks_by_zscore(ranked, head_ids, chunks)
    if tail:
        # Below the re-ordered head, in z-score order: every tail score is under the lowest head score.
        floor = ranked[-1][1] - 1.0
        top_tail = zf[tail[0]]
        ranked.extend((ids[i], floor - float(top_tail - zf[i])) for i in tail)
    return ranked
