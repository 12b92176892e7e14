"""An in-process llama.cpp provider: any GGUF file, run on this machine's CPU through `llama-cpp-python`.

`llama-cpp-python` is an optional extra (`pip install 'archivist[llamacpp]'`, or `make llamacpp`): it builds
llama.cpp from source, which takes minutes, so it is imported only when this provider is built.

- Prompt format: the chat template stored in the GGUF (`tokenizer.chat_template`), rendered the way
  llama-cpp-python renders it. A model without one (a base model such as gemma-3-270m) gets a plain-text
  transcript instead: system text first, then `User: ...` / `Assistant: ...` turns, ending with `Assistant:`;
  generation stops at the next `User:` line.
- Tokens: prompt tokens are the exact tokens evaluated, from the model's own tokenizer; completion tokens are
  the returned text re-tokenized by that tokenizer (the end-of-turn token itself is not counted).
- Deadline: checked before the call, while waiting for the model (one call at a time), between chunks of prompt
  evaluation and after every generated token. When it passes, `chat` raises DeadlineExceeded rather than return
  a truncated answer that would look complete (and be cached); `stream` raises DeadlineExceeded before any text,
  or StreamBroken with the partial text after some.
- Tools: not supported. A request with tools (or tool messages) is refused with RequestRejected, so the gateway
  moves on to the next provider in the chain instead of returning an answer that ignored the tools.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archivist.llm.base import ChatRequest, Completion, Deadline, DoneEvent, Message, StreamEvent, TokenEvent, Usage
from archivist.llm.errors import Cancelled, DeadlineExceeded, LLMError, ProviderError, RequestRejected, StreamBroken
from archivist.types import ArchivistError, UsageError

#: The answer length when the request sets no max_tokens (llama-cpp-python's own default is 16 tokens).
DEFAULT_MAX_TOKENS = 512
#: The prompt is evaluated in chunks this long so the deadline is checked between them, not only after all.
PREFILL_CHUNK = 64
#: The plain-text transcript for models without a chat template stops where the model starts the user's turn.
PLAIN_STOPS = ("\nUser:", "\nSystem:")


def _llama_cpp() -> Any:
    """Return the `llama_cpp` module, or raise an ArchivistError saying how to install it."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise ArchivistError(
            "the llamacpp provider needs llama-cpp-python: pip install 'archivist[llamacpp]' (or `make llamacpp`)"
        ) from exc


def plain_prompt(messages: tuple[Message, ...]) -> str:
    """Return a plain-text transcript of the conversation, for models whose GGUF has no chat template."""
    system = [m.content for m in messages if m.role == "system"]
    turns = [f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}" for m in messages if m.role != "system"]
    return "\n\n".join([*system, *turns, "Assistant:"])


@dataclass(frozen=True, slots=True)
class _Prompt:
    """A formatted prompt: its tokens and the strings that end the answer."""

    tokens: list[int]
    stops: list[str]


@dataclass(slots=True)
class _Run:
    """What one generation produced so far."""

    text: list[str] = field(default_factory=list)
    finish: str = "stop"
    expired: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LlamaCpp:
    """A GGUF model run in this process by llama.cpp, plain or streamed; one call at a time."""

    #: tool calls are refused (see the module's docstring): an agent over this model writes them in text
    supports_tools = False

    def __init__(
        self,
        name: str,
        model_path: str | Path,
        *,
        model: str | None = None,
        n_ctx: int = 4096,
        # One thread by default. Measured here: with 2 threads, llama.cpp fell from 75 to 0.4 tok/s as soon as
        # another process (the embedder, an eval) busied one core, because its threads spin-wait on each other;
        # with n_threads=1 it kept 44-46 tok/s under the same load. Raise it only on a machine with idle cores.
        n_threads: int = 1,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise UsageError(f"llamacpp provider {name!r}: model_path {str(path)!r} is not a file")
        llama_cpp = _llama_cpp()
        self.name = name
        self.model = model or path.stem
        self.model_path = path
        self._default_max_tokens = default_max_tokens
        #: calls that reached the model, past the deadline and busy checks (what a server's request log would show)
        self.runs = 0
        # llama.cpp contexts are not thread-safe: every use of the model holds this lock.
        self._lock = threading.Lock()
        try:
            # Prompt evaluation uses the same thread count, for the same reason as generation.
            self._llm: Any = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False
            )
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"llamacpp provider {name!r}: cannot load {str(path)!r} as a GGUF model: {exc}") from exc
        self._formatter = self._chat_formatter(llama_cpp)

    def _chat_formatter(self, llama_cpp: Any) -> Any:
        """Return a formatter for the GGUF's chat template, or None when the file has none."""
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        chat_format = importlib.import_module("llama_cpp.llama_chat_format")
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        return chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos),
            bos_token=self._token_text(bos),
            stop_token_ids=[eos],
        )

    def _token_text(self, token: int) -> str:
        """Return a special token's text ("" for none), as chat templates insert it."""
        if token < 0:
            return ""
        return bytes(self._llm.detokenize([token], special=True)).decode("utf-8", "replace")

    @property
    def has_chat_template(self) -> bool:
        """Return whether the GGUF carries a chat template (else the plain-text transcript is used)."""
        return self._formatter is not None

    def count_tokens(self, text: str) -> int:
        """Return how many tokens the model's own tokenizer makes of `text`."""
        # No lock: tokenizing only reads the vocabulary, so it need not wait for a generation in progress.
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _prompt(self, request: ChatRequest) -> _Prompt:
        """Return the request's prompt tokens and stop strings (raises RequestRejected if it cannot be run)."""
        if request.tools or any(m.role == "tool" or m.tool_calls for m in request.messages):
            raise RequestRejected(
                "tool calls are not supported by the llamacpp provider: use an openai or anthropic provider",
                provider=self.name,
            )
        if self._formatter is None:
            tokens = self._llm.tokenize(plain_prompt(request.messages).encode("utf-8"), add_bos=True, special=False)
            return _Prompt(list(tokens), list(PLAIN_STOPS))
        try:
            result = self._formatter(messages=[{"role": m.role, "content": m.content} for m in request.messages])
        except Exception as exc:  # a template may refuse a conversation (raise_exception), or fail to render
            raise RequestRejected(f"the model's chat template refused the messages: {exc}", provider=self.name) from exc
        # A template that writes the BOS token itself must not get a second one from the tokenizer.
        tokens = self._llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stops = [result.stop] if isinstance(result.stop, str) else list(result.stop or [])
        return _Prompt(list(tokens), [s for s in stops if s])

    def _acquire(self, deadline: Deadline) -> None:
        """Take the model, waiting at most until the deadline (raises DeadlineExceeded)."""
        left = deadline.remaining()
        if left <= 0:
            raise DeadlineExceeded("deadline passed before the call", provider=self.name)
        if not self._lock.acquire(timeout=left):
            raise DeadlineExceeded("deadline passed while the model was busy with another call", provider=self.name)

    def _prefill(self, tokens: list[int], deadline: Deadline) -> None:
        """Evaluate all but the last prompt token in chunks, checking the deadline between them."""
        # Generation then finds this prefix already evaluated and evaluates only the last token: done in one
        # piece it could not be interrupted, and a long prompt on a slow CPU can take longer than the deadline.
        self._llm.reset()
        for start in range(0, len(tokens) - 1, PREFILL_CHUNK):
            if deadline.cancelled:
                raise Cancelled(f"cancelled evaluating the prompt ({start} tokens)", provider=self.name)
            if deadline.remaining() <= 0:
                raise DeadlineExceeded(f"deadline passed evaluating the prompt ({start} tokens)", provider=self.name)
            self._llm.eval(tokens[start : min(start + PREFILL_CHUNK, len(tokens) - 1)])

    def _generate(self, request: ChatRequest, deadline: Deadline, run: _Run) -> Iterator[str]:
        """Yield pieces of the answer (also kept in `run`) while holding the model; `run.expired` marks the deadline."""
        self._acquire(deadline)
        try:
            self.runs += 1
            prompt = self._prompt(request)
            n_ctx = int(self._llm.n_ctx())
            room = n_ctx - len(prompt.tokens)
            if room <= 0:
                raise RequestRejected(
                    f"the prompt has {len(prompt.tokens)} tokens; the context holds {n_ctx}", provider=self.name
                )
            run.prompt_tokens = len(prompt.tokens)
            self._prefill(prompt.tokens, deadline)
            wanted = request.max_tokens if request.max_tokens is not None else self._default_max_tokens
            stopping = _llama_cpp().StoppingCriteriaList([lambda _ids, _logits: self._expired(deadline, run)])
            chunks = self._llm.create_completion(
                prompt=prompt.tokens,
                max_tokens=max(1, min(wanted, room)),
                temperature=request.temperature,
                stop=prompt.stops,
                stopping_criteria=stopping,
                stream=True,
            )
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    if choice.get("text"):
                        run.text.append(str(choice["text"]))
                        yield run.text[-1]
                    if choice.get("finish_reason"):
                        run.finish = str(choice["finish_reason"])
            finally:
                chunks.close()  # a caller that stops reading stops generation, and frees the model
            text = "".join(run.text).encode("utf-8")
            run.completion_tokens = len(self._llm.tokenize(text, add_bos=False, special=False)) if text else 0
        except (RuntimeError, ValueError) as exc:
            raise ProviderError(f"llama.cpp failed: {exc}", provider=self.name) from exc
        finally:
            self._lock.release()

    @staticmethod
    def _expired(deadline: Deadline, run: _Run) -> bool:
        """Return True (stop generating) once the deadline has passed or the work was cancelled (nobody reads the
        rest: the model is freed for the next call), and remember that it did."""
        if deadline.remaining() <= 0 or deadline.cancelled:
            run.expired = True
        return run.expired

    def _completion(self, run: _Run, started: float, ttft: float | None) -> Completion:
        """Return the completion of a finished run."""
        return Completion(
            text="".join(run.text),
            tool_calls=[],
            finish_reason=run.finish,
            usage=Usage(run.prompt_tokens, run.completion_tokens),
            provider=self.name,
            model=self.model,
            latency_s=time.monotonic() - started,
            ttft_s=ttft,
        )

    def chat(self, request: ChatRequest, deadline: Deadline) -> Completion:
        """Return the model's completion, or raise an LLMError (DeadlineExceeded if the deadline passes first)."""
        started = time.monotonic()
        run = _Run()
        ttft: float | None = None
        for _ in self._generate(request, deadline, run):
            if ttft is None:
                ttft = time.monotonic() - started
        if run.expired:
            raise DeadlineExceeded(f"deadline passed after {len(run.text)} pieces of the answer", provider=self.name)
        return self._completion(run, started, ttft)

    def stream(self, request: ChatRequest, deadline: Deadline) -> Iterator[StreamEvent]:
        """Yield text as it is generated, then a DoneEvent; raise StreamBroken if the deadline passes mid-answer."""
        started = time.monotonic()
        run = _Run()
        ttft: float | None = None
        try:
            for piece in self._generate(request, deadline, run):
                if ttft is None:
                    ttft = time.monotonic() - started
                yield TokenEvent(piece)
        except LLMError as exc:
            if run.text:
                raise StreamBroken(f"stream broke: {exc}", provider=self.name, partial_text="".join(run.text)) from exc
            raise
        if run.expired:
            if run.text:
                raise StreamBroken(
                    f"deadline passed after {len(run.text)} pieces", provider=self.name, partial_text="".join(run.text)
                )
            raise DeadlineExceeded("deadline passed before the first token", provider=self.name)
        yield DoneEvent(self._completion(run, started, ttft))

    def close(self) -> None:
        """Free the model and its context."""
        with self._lock:
            self._llm.close()
