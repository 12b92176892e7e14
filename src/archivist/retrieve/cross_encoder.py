"""A cross-encoder reranker on local ONNX weights the user points at (nothing is ever downloaded).

The folder holds `model.onnx` and `tokenizer.json`, e.g. an ONNX export of cross-encoder/ms-marco-MiniLM-L-6-v2.
Each (query, passage) pair is encoded together, truncated to `max_length` tokens, and the model's first output
(a relevance logit per pair) is the score.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from archivist.retrieve.llm_rerank import passage_text
from archivist.retrieve.rerank import reorder
from archivist.types import ArchivistError, Hit, UsageError

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
#: the inputs a BERT-style cross-encoder graph may declare; each is fed only if the graph asks for it
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CrossEncoderReranker:
    """Reorders the top `depth` hits by a local ONNX cross-encoder's score; hits past depth keep their order."""

    name = "cross-encoder"

    def __init__(
        self,
        model_dir: Path | str,
        *,
        depth: int = 50,
        batch_size: int = 16,
        max_length: int = 256,
        max_passage_chars: int = 4000,
        score_index: int = 0,
        threads: int | None = None,
    ) -> None:
        if depth < 1 or batch_size < 1 or max_length < 4:
            raise ValueError("depth and batch_size must be >= 1 and max_length >= 4")
        self.model_dir = Path(model_dir).expanduser()
        missing = [f for f in (MODEL_FILE, TOKENIZER_FILE) if not (self.model_dir / f).is_file()]
        if not self.model_dir.is_dir() or missing:
            what = "is not a folder" if not self.model_dir.is_dir() else "lacks " + " and ".join(missing)
            raise UsageError(
                f"cross-encoder model folder {self.model_dir} {what}: it needs {MODEL_FILE} and {TOKENIZER_FILE} "
                "(an ONNX export of a cross-encoder, e.g. cross-encoder/ms-marco-MiniLM-L-6-v2)"
            )
        self.depth = depth
        self.batch_size = batch_size
        self.max_length = max_length
        # Characters past what max_length tokens can hold only cost tokenizer time.
        self.max_passage_chars = max_passage_chars
        self.score_index = score_index
        self._tokenizer = self._load_tokenizer()
        self._session = self._load_session(threads)
        self._inputs = self._check_inputs()
        self._digest: str | None = None
        # The padding tokenizer keeps per-call state; the onnxruntime session itself is thread-safe.
        self._lock = threading.Lock()

    def _load_tokenizer(self) -> Tokenizer:
        try:
            tok = Tokenizer.from_file(str(self.model_dir / TOKENIZER_FILE))
        except Exception as exc:  # the tokenizers library raises bare Exceptions for malformed files
            raise UsageError(f"cannot read {self.model_dir / TOKENIZER_FILE}: {exc}") from exc
        # Exported tokenizer.json files often bake fixed padding and truncation in: pad to each batch's longest.
        pad = tok.padding or {}
        tok.enable_truncation(self.max_length, strategy="longest_first")
        tok.enable_padding(pad_id=int(pad.get("pad_id", 0)), pad_token=str(pad.get("pad_token", "[PAD]")))
        return tok

    def _load_session(self, threads: int | None) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        opts.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(self.model_dir / MODEL_FILE), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise UsageError(f"cannot load {self.model_dir / MODEL_FILE}: {exc}") from exc

    def _check_inputs(self) -> dict[str, npt.DTypeLike]:
        """Return the graph's inputs by name with the integer type each wants; raise if one is unknown."""
        inputs: dict[str, npt.DTypeLike] = {}
        for arg in self._session.get_inputs():
            if arg.name not in KNOWN_INPUTS:
                raise UsageError(
                    f"{self.model_dir / MODEL_FILE} declares input {arg.name!r}; a cross-encoder takes only "
                    + ", ".join(KNOWN_INPUTS)
                )
            inputs[arg.name] = np.int32 if arg.type == "tensor(int32)" else np.int64
        if "input_ids" not in inputs:
            raise UsageError(f"{self.model_dir / MODEL_FILE} has no input_ids input")
        return inputs

    def fingerprint(self) -> dict[str, Any]:
        """Return the settings and the weights' digest that decide this reranker's order."""
        if self._digest is None:
            # Content, not path: the same folder re-exported with other weights must read as another model.
            parts = (_sha256_file(self.model_dir / f) for f in (MODEL_FILE, TOKENIZER_FILE))
            self._digest = hashlib.sha256("".join(parts).encode()).hexdigest()[:16]
        return {
            "name": self.name,
            "model": self.model_dir.name,
            "weights_sha256": self._digest,
            "depth": self.depth,
            "max_length": self.max_length,
            "max_passage_chars": self.max_passage_chars,
            "score_index": self.score_index,
        }

    def encode(self, query: str, passages: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """Return the model inputs for (query, passage) pairs: padded to the longest, at most max_length tokens."""
        with self._lock:
            encs = self._tokenizer.encode_batch([(query, p) for p in passages])
        arrays = {
            "input_ids": [e.ids for e in encs],
            "attention_mask": [e.attention_mask for e in encs],
            "token_type_ids": [e.type_ids for e in encs],
        }
        return {name: np.asarray(arrays[name], dtype=dtype) for name, dtype in self._inputs.items()}

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Return the model's relevance score for each passage against the query."""
        scores = np.empty(len(passages), dtype=np.float64)
        # Similar lengths share a batch, so little of each batch is padding.
        order = sorted(range(len(passages)), key=lambda i: len(passages[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            feed = self.encode(query, [passages[i] for i in idx])
            out = np.asarray(self._session.run(None, feed)[0], dtype=np.float64)
            if out.ndim == 2:
                out = out[:, self.score_index]
            if out.shape != (len(idx),):
                raise ArchivistError(f"cross-encoder output has shape {out.shape}; expected one score per pair")
            scores[idx] = out
        return [float(s) for s in scores]

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """Return at most k hits: the top `depth` by cross-encoder score, then the rest in incoming order."""
        head, tail = list(hits[: self.depth]), list(hits[self.depth :])
        if k <= 0 or not head:
            return []
        scores = self.score(query, [passage_text(h, self.max_passage_chars) for h in head])
        ranked = reorder(head, scores, k)
        # Logits can be any real number: place the tail below the lowest one, still decreasing.
        floor = min(scores)
        ranked += [replace(hit, score=floor - (j + 1)) for j, hit in enumerate(tail[: k - len(ranked)])]
        return ranked
