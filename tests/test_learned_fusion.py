"""Learned fusion: the numpy tree evaluator, model files, and the `learned` fusion mode on a real store."""

from __future__ import annotations

import copy
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder
from archivist.evals.retrieval import RetrievalEvalConfig, fingerprint
from archivist.retrieve.hybrid import HybridRetriever, RetrievalSettings
from archivist.retrieve.learned import (
    DEFAULT_MODEL,
    FEATURES,
    MODEL_FORMAT,
    MODEL_VERSION,
    ModelError,
    ensemble_from_dict,
    learned_fusion,
    lightgbm_trees,
    load_model,
)
from archivist.store import open_store
from archivist.store.records import CandidateScores, ChunkPlace, StoredChunk
from archivist.text.analyzer import Analyzer
from archivist.types import UsageError
from conftest import ingest_corpus

Z_DENSE, TITLE = FEATURES.index("z_dense"), FEATURES.index("title_coverage")


def tiny_model(**overrides: Any) -> dict[str, Any]:
    """Two trees: z_dense <= 1 → -1, else title_coverage <= 0.5 → 0.5 else 2.0; plus a constant 0.25 leaf."""
    model: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "features": list(FEATURES),
        "rerank_depth": 2,
        "base_score": 0.1,
        "trees": [
            {
                "feature": [Z_DENSE, TITLE],
                "threshold": [1.0, 0.5],
                "left": [~0, ~1],
                "right": [1, ~2],
                "leaf_value": [-1.0, 0.5, 2.0],
            },
            {"feature": [], "threshold": [], "left": [], "right": [], "leaf_value": [0.25]},
        ],
    }
    model.update(overrides)
    return model


def write(path: Path, model: dict[str, Any]) -> Path:
    path.write_text(json.dumps(model))
    return path


def rows(*pairs: tuple[float, float]) -> np.ndarray:
    x = np.zeros((len(pairs), len(FEATURES)))
    for i, (zd, title) in enumerate(pairs):
        x[i, Z_DENSE], x[i, TITLE] = zd, title
    return x


def test_hand_written_trees_give_known_scores() -> None:
    ensemble = ensemble_from_dict(tiny_model())
    # At the threshold a row goes left; the constant tree and the base score add 0.35 to every row.
    got = ensemble.predict(rows((0.5, 1.0), (1.0, 1.0), (2.0, 0.2), (2.0, 0.5), (2.0, 0.9)))
    assert got == pytest.approx([-0.65, -0.65, 0.85, 0.85, 2.35], abs=1e-12)
    assert ensemble.predict(np.zeros((0, len(FEATURES)))).shape == (0,)


def test_numpy_evaluator_matches_lightgbm() -> None:
    lgb = pytest.importorskip("lightgbm", reason="lightgbm trains the model but is not a project dependency")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, len(FEATURES)))
    y = ((x[:, 0] + 0.5 * x[:, 7] + rng.normal(scale=0.5, size=2000)) > 1).astype(float)
    params = {"objective": "lambdarank", "num_leaves": 7, "min_data_in_leaf": 10, "verbosity": -1, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(x, y, group=[20] * 100, feature_name=list(FEATURES)), 30)
    model = tiny_model(trees=lightgbm_trees(booster.dump_model()), base_score=0.0)
    fresh = rng.normal(size=(500, len(FEATURES)))
    assert np.max(np.abs(ensemble_from_dict(model).predict(fresh) - booster.predict(fresh))) < 1e-6


def test_the_bundled_model_loads_and_is_small() -> None:
    model = load_model()
    assert DEFAULT_MODEL.stat().st_size < 1_000_000
    assert model.ensemble.n_trees > 0 and model.rerank_depth >= 10
    assert model.sha256 == hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert np.all(np.isfinite(model.ensemble.predict(np.zeros((3, len(FEATURES))))))


def test_the_vectorised_evaluator_matches_a_plain_walk_of_every_tree() -> None:
    # Trees are stored deepest first and shallow ones stop stepping early: the sum must not change.
    data = json.loads(DEFAULT_MODEL.read_text())
    model = load_model()
    rows = np.random.default_rng(0).normal(size=(20, len(FEATURES))) * 2

    def walk(tree: dict[str, Any], x: np.ndarray) -> float:
        node = 0
        if not tree["feature"]:
            return float(tree["leaf_value"][0])
        while True:
            node = tree["left"][node] if x[tree["feature"][node]] <= tree["threshold"][node] else tree["right"][node]
            if node < 0:
                return float(tree["leaf_value"][~node])

    expected = [sum(walk(t, x) for t in data["trees"]) + float(np.dot(data["linear"], x)) for x in rows]
    assert model.ensemble.predict(rows) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not readable"),
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "something-else"}), "not an 'archivist-tree-ensemble' file"),
        (json.dumps(tiny_model(version=99)), "unsupported version"),
        (json.dumps(tiny_model(features=["z_dense"])), "reads features"),
        (json.dumps(tiny_model(rerank_depth=0)), "rerank_depth"),
        (json.dumps(tiny_model(trees=[{"feature": [0], "threshold": [1.0]}])), "'left' must be a list"),
        (
            json.dumps(
                tiny_model(
                    trees=[{"feature": [0], "threshold": [1.0], "left": [~0], "right": [~5], "leaf_value": [1, 2]}]
                )
            ),
            "child index out of range",
        ),
        (
            json.dumps(
                tiny_model(
                    trees=[{"feature": [99], "threshold": [1.0], "left": [~0], "right": [~1], "leaf_value": [1, 2]}]
                )
            ),
            "feature index out of range",
        ),
    ],
)
def test_a_missing_or_malformed_model_file_gives_a_clear_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "model.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ModelError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, UsageError)  # the CLI reports it as a usage error, not a crash


def test_term_sets_match_the_bm25_analyzer() -> None:
    analyzer = Analyzer()
    text = "Descaling the Kettles: how is limescale (CaCO3) removed? Kettle descaled, kettles descaling; é-accents"
    assert analyzer.term_set(text) == set(analyzer.terms(text))
    initials = frozenset("dk")
    assert analyzer.term_set(text, initials) == {t for t in analyzer.terms(text) if t[0] in initials}
    words = "dying lying tying skies skis idly gently early only news yelling yes ÿ über _x 2020s"
    assert {t[0] for t in analyzer.terms(words)} <= {w[0] for w in words.split()}  # stems keep the first letter


def chunk(cid: int, doc: str, title: str, text: str) -> StoredChunk:
    return StoredChunk(cid, doc, 0, text, (), 0, len(text), None, None, 10, f"{doc}.md", title)


def test_the_model_reorders_the_head_and_keeps_the_tail_in_zscore_order(tmp_path: Path) -> None:
    model = load_model(write(tmp_path / "m.json", tiny_model()))
    ids = [1, 2, 3, 4]
    # By z-score fusion: 1 > 2 > 3 > 4. The model's head is 1 and 2; only chunk 2 has the query in its title.
    scores = CandidateScores(
        dense=[0.9, 0.8, 0.7, 0.6],
        bm25=[0.0] * 4,
        dense_mean=0.5,
        dense_std=0.1,
        bm25_mean=0.0,
        bm25_std=1.0,
        doc_bm25=[0.0] * 4,
        doc_bm25_mean=0.0,
        doc_bm25_std=1.0,
    )
    chunks = {
        1: chunk(1, "a", "Unrelated", "kettle"),
        2: chunk(2, "b", "Descaling kettles", "kettle"),
    }
    ranked = learned_fusion("descaling kettle", ids, scores, chunks, model, Analyzer())
    assert [cid for cid, _ in ranked] == [2, 1, 3, 4]
    assert ranked[0][1] == pytest.approx(2.35, abs=1e-5) and ranked[1][1] == pytest.approx(0.85, abs=1e-5)
    assert ranked[1][1] > ranked[2][1] > ranked[3][1]


def test_the_model_orders_documents_and_each_document_keeps_its_chunks_in_zscore_order(tmp_path: Path) -> None:
    # One tree: a chunk holding all the query's terms scores 2, any other 0. Trained on document labels, such a
    # model knows which document to put first, not which of its chunks reads best.
    text = FEATURES.index("text_coverage")
    tree = {"feature": [text], "threshold": [0.5], "left": [~0], "right": [~1], "leaf_value": [0.0, 2.0]}
    model = load_model(write(tmp_path / "m.json", tiny_model(rerank_depth=3, trees=[tree], base_score=0.0)))
    scores = CandidateScores(
        dense=[0.9, 0.8, 0.7],  # z-score order: 2 (document b), 1 (a), 3 (a)
        bm25=[0.0] * 3,
        dense_mean=0.5,
        dense_std=0.1,
        bm25_mean=0.0,
        bm25_std=1.0,
        doc_bm25=[0.0] * 3,
        doc_bm25_mean=0.0,
        doc_bm25_std=1.0,
    )
    chunks = {
        2: chunk(2, "b", "Bread", "a starter ferments"),
        1: chunk(1, "a", "Kettles", "vinegar and water, boiled"),
        3: chunk(3, "a", "Kettles", "descaling a kettle"),
    }
    ranked = learned_fusion("descaling kettle", [2, 1, 3], scores, chunks, model, Analyzer())
    # The model puts document a first (its chunk 3 matches); a's best chunk by z-score, 1, takes that rank.
    assert [cid for cid, _ in ranked] == [1, 2, 3]
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    # With the index's count of each chunk's query terms (as both stores give it), where each chunk sits is all the
    # model needs of it: the same ranking, to the last bit, without any chunk's text.
    counted = replace(scores, terms_matched=[0, 1, 2])
    places = {c.id: ChunkPlace(c.document_id, c.title, c.ordinal) for c in chunks.values()}
    assert learned_fusion("descaling kettle", [2, 1, 3], counted, places, model, Analyzer()) == ranked
    assert learned_fusion("descaling kettle", [2, 1, 3], counted, chunks, model, Analyzer()) == ranked
    with pytest.raises(ValueError, match="needs the chunks' text"):
        learned_fusion("descaling kettle", [2, 1, 3], scores, places, model, Analyzer())


DOCS = {
    "kettle.md": "# Descaling a kettle\n\nFill the kettle with equal parts water and white vinegar, boil, and rinse. "
    "Limescale builds up fastest in hard water areas.",
    "bread.md": "# Sourdough bread\n\nA starter of flour and water ferments for days; the dough proves overnight "
    "before it is baked in a hot Dutch oven.",
    "bikes.md": "# Fixing a bicycle puncture\n\nLever the tyre off the rim, find the hole in the inner tube, "
    "patch it with glue and a rubber patch, then pump it back up.",
    "tea.md": "# Brewing green tea\n\nWater just off the boil scalds green tea: let it cool to about 80 degrees "
    "and steep the leaves for two minutes.",
}


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLMEmbedder) -> Path:
    return ingest_corpus(tmp_path_factory.mktemp("learned"), DOCS, embedder)


def test_learned_fusion_searches_a_real_store(store_root: Path, embedder: MiniLMEmbedder) -> None:
    settings = load_settings(store=f"sqlite:///{store_root / 'store.db'}", fusion="learned")
    with Archivist(settings, open_store(settings.store), embedder) as app:
        for query, expected in [
            ("how do I remove limescale from a kettle", "kettle.md"),
            ("repair a flat tyre", "bikes.md"),
            ("what temperature for green tea", "tea.md"),
        ]:
            hits = app.search(query, k=4)
            assert Path(hits[0].source).name == expected, [h.source for h in hits]
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            assert all(h.dense_score is not None and h.bm25_score is not None for h in hits)
        fp = fingerprint(app, RetrievalEvalConfig())
    assert fp["retriever"]["fusion"] == "learned"
    assert (
        fp["retriever"]["fusion_model"]["model_sha256"] == hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()[:16]
    )


def test_zscore_fingerprints_do_not_name_a_model(store_root: Path, embedder: MiniLMEmbedder) -> None:
    settings = load_settings(store=f"sqlite:///{store_root / 'store.db'}", fusion="zscore")
    with Archivist(settings, open_store(settings.store), embedder) as app:
        assert "fusion_model" not in fingerprint(app, RetrievalEvalConfig())["retriever"]


def test_a_retrained_model_changes_the_fingerprint_and_a_missing_one_fails_the_search(
    store_root: Path, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    store = open_store(f"sqlite:///{store_root / 'store.db'}")
    other = copy.deepcopy(tiny_model(rerank_depth=50))
    with ThreadPoolExecutor(2) as pool:
        custom = HybridRetriever(
            store,
            lambda: embedder,
            RetrievalSettings(fusion="learned", fusion_model=str(write(tmp_path / "custom.json", other))),
            pool,
        )
        assert custom.fusion_fingerprint()["fusion_model"]["rerank_depth"] == 50
        assert custom.search("green tea", k=2)
        missing = HybridRetriever(
            store, lambda: embedder, RetrievalSettings(fusion="learned", fusion_model=str(tmp_path / "nope.json")), pool
        )
        with pytest.raises(ModelError, match=r"nope\.json"):
            missing.search("green tea", k=2)
    store.close()
