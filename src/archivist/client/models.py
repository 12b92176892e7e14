"""What the Archivist API returns, as the client's own pydantic models.

They keep fields a newer server adds (`extra="allow"`), so an older client still reads a newer server.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    """A response object: its declared fields typed, any others kept as they came."""

    model_config = ConfigDict(extra="allow")


class Hit(Model):
    """A retrieved chunk with its fused score, and each retriever's score and rank (None where it did not find it)."""

    chunk_id: int
    document_id: str
    collection: str
    source: str
    title: str
    heading_path: list[str]
    text: str
    start: int
    end: int
    page: int | None
    score: float
    metadata: dict[str, Any]
    dense_score: float | None = None
    dense_rank: int | None = None
    bm25_score: float | None = None
    bm25_rank: int | None = None
    #: the injection scan's score of the chunk at ingest (None: not scanned, or an older server)
    guard_score: float | None = None
    #: the scan flagged the chunk as instructions to its reader (and no person cleared it): untrusted text
    guard_flagged: bool = False


class SearchResult(Model):
    """The hits of a search, best first."""

    hits: list[Hit]
    took_ms: float
    warnings: list[str] = []


class Citation(Model):
    """A numbered source of an answer: the document, where in its text (`span`), and the exact quote."""

    n: int
    document: str
    collection: str
    source: str
    title: str
    heading_path: list[str]
    page: int | None
    span: list[int]
    quote: str
    support: float


class TextSegment(Model):
    """A run of the answer's own text."""

    type: Literal["text"]
    text: str


class CitationSegment(Model):
    """A citation mark: `n` numbers one of the answer's citations."""

    type: Literal["citation"]
    n: int


Segment = Annotated[TextSegment | CitationSegment, Field(discriminator="type")]


class Answer(Model):
    """A grounded answer with `[n]` marks and its checked citations, or a refusal (`refused`)."""

    question: str
    answer: str
    citations: list[Citation]
    segments: list[Segment] | None = None
    support: float
    refused: bool
    mode: str
    usage: dict[str, Any]
    prompt_version: str
    trace_id: str
    evidence: float
    sources: list[dict[str, Any]]
    unsupported: list[dict[str, Any]]
    warnings: list[str]
    timings_ms: dict[str, float]
    verification: str


class RetrievalEvent(Model):
    """The first event of a streamed answer: the evidence retrieved, before any text."""

    type: Literal["retrieval"] = "retrieval"
    hits: list[Hit]


class TokenEvent(Model):
    """A piece of the answer as it is generated."""

    type: Literal["token"] = "token"
    text: str


class CitationsEvent(Model):
    """The checked answer text and its citations."""

    type: Literal["citations"] = "citations"
    answer: str
    citations: list[Citation]
    support: float
    refused: bool
    unsupported: list[dict[str, Any]]


class DoneEvent(Model):
    """The last event: the whole answer, as `Client.answer` returns it."""

    type: Literal["done"] = "done"
    answer: Answer


AnswerEvent = RetrievalEvent | TokenEvent | CitationsEvent | DoneEvent


class Collection(Model):
    """A collection, how many documents it holds, and its guard policy (only the keys set on it)."""

    name: str
    description: str
    created_at: str
    documents: int
    policy: dict[str, str] = Field(default_factory=dict)


class DocumentSummary(Model):
    """A stored document, without its text."""

    id: str
    collection: str
    source: str
    title: str
    media_type: str
    metadata: dict[str, Any]
    chunk_count: int
    char_count: int
    version: int
    created_at: str
    updated_at: str


class DocumentList(Model):
    """A page of a collection's documents, and how many there are in all."""

    total: int
    offset: int
    documents: list[DocumentSummary]


class ChunkSpan(Model):
    """Where a chunk lies in its document's text."""

    id: int
    ordinal: int
    start: int
    end: int
    heading_path: list[str]
    page: int | None
    token_count: int


class Document(DocumentSummary):
    """A document with its text and its chunks (citation spans index into `text`)."""

    text: str
    chunks: list[ChunkSpan]


class JobAccepted(Model):
    """A queued upload: wait for `job_id` to see what it produced."""

    job_id: str
    status: str
    collection: str


class Progress(Model):
    """How far a job got."""

    done: int
    total: int


JobStatus = Literal["queued", "running", "succeeded", "failed"]


class Job(Model):
    """An ingestion job: its status, progress and, once finished, its result or error."""

    id: str
    kind: str
    collection: str
    status: JobStatus
    progress: Progress
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: str
    updated_at: str

    @property
    def finished(self) -> bool:
        """Return whether the job has ended (succeeded or failed)."""
        return self.status in ("succeeded", "failed")


class Abilities(Model):
    """What the server lets a key do."""

    read: bool
    write: bool
    admin: bool


class Me(Model):
    """The calling key: its scopes, collections (None: all), limits, and what it may do."""

    id: str
    name: str
    scopes: list[str]
    collections: list[str] | None
    can: Abilities


class CollectionList(Model):
    """The collections a key may see."""

    collections: list[Collection]


class JobList(Model):
    """Recent jobs, newest first."""

    jobs: list[Job]


class Deleted(Model):
    """What a delete removed."""

    deleted: str


class AgentStep(Model):
    """One journaled step of an agent run: a model call (`data`: text, tool_calls) or a tool call (`arguments`;
    `data`: status, result)."""

    seq: int
    kind: str
    name: str
    call_id: str | None = None
    arguments: dict[str, Any] | None = None
    data: dict[str, Any]
    tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    created_at: str


class AgentRun(Model):
    """An agent run: its task, where it stands (`status`, and why: `reason`), its limits and totals, and its
    `result` (answer, citations, unsupported claims) once it succeeded."""

    id: str
    task: str
    status: Literal["running", "paused", "succeeded", "failed"]
    reason: str | None
    collection: str | None
    limits: dict[str, Any]
    totals: dict[str, Any]
    result: dict[str, Any] | None
    tools: list[str]
    owner: str | None
    driven_by: str | None = None
    lease_until: str | None = None
    created_at: str
    updated_at: str

    @property
    def ended(self) -> bool:
        """Return whether the run has stopped: succeeded, failed, or paused for a person."""
        return self.status != "running"


class AgentRunDetail(AgentRun):
    """An agent run with its journal: steps, side effects (intent and outcome) and approvals."""

    steps: list[AgentStep]
    effects: list[dict[str, Any]]
    approvals: list[dict[str, Any]]


class AgentRunList(Model):
    runs: list[AgentRun]


class AgentRunEvent(Model):
    """The first event of a streamed run: the run as it starts (its `id`, to read it later if the stream is cut)."""

    type: Literal["run"] = "run"
    run: AgentRun


class AgentStepEvent(Model):
    """A step of the run, as it is journaled."""

    type: Literal["step"] = "step"
    step: AgentStep


class AgentDoneEvent(Model):
    """The last event: the run as it ended (succeeded, failed, or paused for a person)."""

    type: Literal["done"] = "done"
    run: AgentRun


AgentEvent = AgentRunEvent | AgentStepEvent | AgentDoneEvent
