"""The ONNX cross-encoder reranker, run by onnxruntime on tiny graphs whose scores are known functions of the tokens."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model
from tokenizers import Tokenizer

from archivist.app import Archivist
from archivist.config import load_settings
from archivist.embed.minilm_onnx import MiniLMEmbedder, bundled_model_dir
from archivist.retrieve.cross_encoder import CrossEncoderReranker
from archivist.retrieve.llm_rerank import passage_text
from archivist.retrieve.rerank import Reranker
from archivist.store import open_store
from archivist.types import Hit, UsageError
from conftest import ingest_corpus

QUERY = "does vitamin d lower bone fracture risk"
SPECIAL = (0, 100, 101, 102, 103)  # [PAD] [UNK] [CLS] [SEP] [MASK] in the bundled BERT vocabulary


def hit(chunk_id: int, text: str) -> Hit:
    return Hit(chunk_id, f"doc{chunk_id}", f"file:{chunk_id}", "", (), text, 0, len(text), None, 0.0)


def _save(path: Path, nodes: list[helper.NodeProto], inputs: list[helper.ValueInfoProto], inits: list[object]) -> None:
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "tiny", inputs, [output], initializer=inits)
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def overlap_model(path: Path) -> None:
    """Write a graph scoring a pair by how many (query token, passage token) pairs share an id.

    Passage tokens are weighted by an embedding lookup that is 0 for special tokens and 1 for the rest.
    """
    weights = np.ones(30522, dtype=np.float32)
    weights[list(SPECIAL)] = 0.0
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "l"]) for n in ("input_ids",)]
    rest = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "l"]) for n in ("attention_mask", "token_type_ids")
    ]
    c = numpy_helper.from_array
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["t"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "t"], ["not_t"]),
        helper.make_node("Mul", ["m", "not_t"], ["qmask"]),  # query side: type 0, attended
        helper.make_node("Gather", ["w", "input_ids"], ["wt"]),
        helper.make_node("Mul", ["m", "t"], ["pm"]),
        helper.make_node("Mul", ["pm", "wt"], ["pmask"]),  # passage side: type 1, attended, not special
        helper.make_node("Unsqueeze", ["input_ids", "ax2"], ["ids_col"]),
        helper.make_node("Unsqueeze", ["input_ids", "ax1"], ["ids_row"]),
        helper.make_node("Equal", ["ids_col", "ids_row"], ["eq_b"]),
        helper.make_node("Cast", ["eq_b"], ["eq"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["qmask", "ax2"], ["q3"]),
        helper.make_node("Unsqueeze", ["pmask", "ax1"], ["p3"]),
        helper.make_node("Mul", ["eq", "q3"], ["eq_q"]),
        helper.make_node("Mul", ["eq_q", "p3"], ["pairs"]),
        helper.make_node("ReduceSum", ["pairs", "ax12"], ["s"], keepdims=0),
        helper.make_node("Unsqueeze", ["s", "ax1"], ["logits"]),  # (batch, 1), like a 1-label HF cross-encoder
    ]
    inits = [
        c(weights, "w"),
        c(np.array(1.0, dtype=np.float32), "one"),
        c(np.array([1], dtype=np.int64), "ax1"),
        c(np.array([2], dtype=np.int64), "ax2"),
        c(np.array([1, 2], dtype=np.int64), "ax12"),
    ]
    _save(path, nodes, ids + rest, inits)


def length_model(path: Path, extra_input: str | None = None) -> None:
    """Write a graph with int32 input_ids and attention_mask only, scoring a pair by its attended token count."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["b", "l"]) for n in ("input_ids", "attention_mask")]
    if extra_input:
        inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.INT32, ["b", "l"]))
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["live"]),
        helper.make_node("Greater", ["live", "zero"], ["is_token"]),
        helper.make_node("Cast", ["is_token"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "ax1"], ["logits"], keepdims=0),  # (batch,): one score per pair
    ]
    inits = [
        numpy_helper.from_array(np.array(0, dtype=np.int32), "zero"),
        numpy_helper.from_array(np.array([1]), "ax1"),
    ]
    _save(path, nodes, inputs, inits)


def model_dir(tmp_path: Path, build: str = "overlap") -> Path:
    folder = tmp_path / build
    folder.mkdir()
    shutil.copy(bundled_model_dir() / "tokenizer.json", folder / "tokenizer.json")
    (overlap_model if build == "overlap" else length_model)(folder / "model.onnx")
    return folder


def expected_overlap(query: str, passage: str) -> int:
    """Return the overlap graph's score, computed independently from the tokenizer's own ids."""
    tok = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    q = tok.encode(query, add_special_tokens=False).ids
    p = tok.encode(passage, add_special_tokens=False).ids
    return sum(1 for a in q for b in p if a == b)


PASSAGES = [
    "cats sleep for most of the day",
    "bone density in older adults",
    "vitamin d supplementation and the risk of hip fracture",
    "does vitamin d lower bone fracture risk? a meta-analysis of vitamin d trials",
]


def test_reranks_by_the_model_score(tmp_path: Path) -> None:
    reranker: Reranker = CrossEncoderReranker(model_dir(tmp_path), batch_size=3)
    hits = [hit(i, text) for i, text in enumerate(PASSAGES)]
    ranked = reranker.rerank(QUERY, hits, k=4)
    expected = [expected_overlap(QUERY, p) for p in PASSAGES]
    assert expected[3] > expected[2] > expected[1] > expected[0] == 0  # the fixture really discriminates
    assert [h.chunk_id for h in ranked] == [3, 2, 1, 0]
    assert [h.score for h in ranked] == [float(expected[i]) for i in (3, 2, 1, 0)]
    assert [h.text for h in ranked] == [PASSAGES[i] for i in (3, 2, 1, 0)]


def test_scores_map_back_to_their_passages_across_length_sorted_batches(tmp_path: Path) -> None:
    reranker = CrossEncoderReranker(model_dir(tmp_path), batch_size=1)
    passages = [*PASSAGES[::-1], "vitamin"]
    assert reranker.score(QUERY, passages) == [float(expected_overlap(QUERY, p)) for p in passages]


def test_pairs_are_truncated_to_max_length(tmp_path: Path) -> None:
    folder = model_dir(tmp_path, "length")
    short, long = "bone density", "bone " * 400
    reranker = CrossEncoderReranker(folder, max_length=16)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    full = len(tok.encode(QUERY, short).ids)
    assert full < 16
    # Padding in the shared batch is not counted (attention 0); the long pair is cut to exactly 16 tokens.
    assert reranker.score(QUERY, [long, short]) == [16.0, float(full)]
    feed = reranker.encode(QUERY, [long, short])
    assert set(feed) == {"input_ids", "attention_mask"}  # only what the graph declares
    assert feed["input_ids"].shape == (2, 16) and feed["input_ids"].dtype == np.int32


def test_truncation_can_cut_the_matching_words_off(tmp_path: Path) -> None:
    folder = model_dir(tmp_path)
    buried = "filler " * 60 + "vitamin fracture"
    assert CrossEncoderReranker(folder, max_length=256).score(QUERY, [buried]) == [2.0]
    assert CrossEncoderReranker(folder, max_length=32).score(QUERY, [buried]) == [0.0]


def test_hits_past_depth_follow_in_their_incoming_order(tmp_path: Path) -> None:
    reranker = CrossEncoderReranker(model_dir(tmp_path), depth=2)
    hits = [hit(i, text) for i, text in enumerate(PASSAGES)]  # depth 2: only the two off-topic ones are scored
    ranked = reranker.rerank(QUERY, hits, k=4)
    assert [h.chunk_id for h in ranked] == [1, 0, 2, 3]
    floor = ranked[1].score
    assert [h.score for h in ranked[2:]] == [floor - 1, floor - 2]
    assert [h.chunk_id for h in reranker.rerank(QUERY, hits, k=1)] == [1]
    assert reranker.rerank(QUERY, [], k=3) == []


def test_fingerprint_follows_the_weights_not_the_path(tmp_path: Path) -> None:
    a = CrossEncoderReranker(model_dir(tmp_path), depth=7).fingerprint()
    b = CrossEncoderReranker(model_dir(tmp_path, "length"), depth=7).fingerprint()
    assert a["name"] == "cross-encoder" and a["depth"] == 7 and a["max_length"] == 256
    assert a["weights_sha256"] != b["weights_sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "overlap", copy)
    assert CrossEncoderReranker(copy, depth=7).fingerprint()["weights_sha256"] == a["weights_sha256"]


def test_a_folder_without_the_model_files_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a folder"):
        CrossEncoderReranker(tmp_path / "nowhere")
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    with pytest.raises(UsageError, match=r"lacks tokenizer\.json"):
        CrossEncoderReranker(folder)
    shutil.copy(bundled_model_dir() / "tokenizer.json", folder / "tokenizer.json")
    (folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(UsageError, match="cannot load"):
        CrossEncoderReranker(folder)


def test_a_graph_with_inputs_a_cross_encoder_lacks_is_a_usage_error(tmp_path: Path) -> None:
    folder = model_dir(tmp_path, "length")
    length_model(folder / "model.onnx", extra_input="pixel_values")
    with pytest.raises(UsageError, match="pixel_values"):
        CrossEncoderReranker(folder)


def test_the_search_pipeline_reranks_with_the_configured_cross_encoder(
    tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    root = ingest_corpus(tmp_path, {f"p{i}.txt": text for i, text in enumerate(PASSAGES)}, embedder)
    settings = load_settings(
        store=f"sqlite:///{root / 'store.db'}", reranker="cross-encoder", cross_encoder_dir=str(model_dir(tmp_path))
    )
    with Archivist(settings, open_store(settings.store), embedder) as app:
        outcome = app.searcher().search(QUERY, k=4)
        reranker = app.reranker()
        assert isinstance(reranker, CrossEncoderReranker)
        scores = reranker.score(QUERY, [passage_text(h, reranker.max_passage_chars) for h in outcome.hits])
    assert outcome.reranker == "cross-encoder" and not outcome.warnings
    assert [h.score for h in outcome.hits] == scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert outcome.hits[0].source.endswith("p3.txt")
