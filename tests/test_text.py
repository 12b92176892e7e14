"""The neutral text package: the term analyzer's two configurations, and what text/ and guard/ may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import archivist
from archivist.text.analyzer import ANSWER_TERMS, BM25_TERMS, Analyzer, analyzer, overlap

PACKAGE = Path(archivist.__file__).parent


def test_bm25_terms_keep_unicode_words_short_words_and_drop_very_long_tokens() -> None:
    a = Analyzer(BM25_TERMS)
    assert a.terms("How do I rotate the API keys?") == ["rotat", "api", "key"]
    # Single letters and digits count, non-ASCII words are tokens, a 64-character token is not a word.
    assert a.terms(f"x 7 Müller café {'a' * 63} {'b' * 64}") == ["x", "7", "müller", "café", "a" * 63]
    # Words only BM25 keeps (not on its stopword list) and words only answers keep.
    assert a.terms("also many being") == ["also", "mani"]
    assert Analyzer().rules is BM25_TERMS  # the index's analyzer is the default


def test_answer_terms_keep_ascii_content_words_and_numbers() -> None:
    a = analyzer(ANSWER_TERMS)
    assert a.terms("How do I rotate the API keys?") == ["rotat", "api", "key"]
    # Non-ASCII letters split words, single letters go (the "m" of "Müller") but single digits stay, "also" and
    # "many" are stopwords here, and long tokens are kept.
    assert a.terms(f"x 7 Müller café also many being {'b' * 64}") == ["7", "ller", "caf", "be", "b" * 64]
    assert analyzer(ANSWER_TERMS) is a  # one per configuration: stemming is pure


def test_term_sets_stem_each_distinct_token_once_and_filter_by_initials() -> None:
    for rules in (BM25_TERMS, ANSWER_TERMS):
        a = Analyzer(rules)
        text = "Descaling the Kettles: how is limescale (CaCO3) removed? Kettle descaled, kettles descaling; x 7"
        assert a.term_set(text) == set(a.terms(text))
        assert a.term_set(text, frozenset("dk")) == {t for t in a.terms(text) if t[0] in "dk"}


def test_overlap_is_the_share_of_distinct_query_terms_found() -> None:
    assert overlap(["a", "b", "b"], ["b", "c"]) == pytest.approx(0.5)
    assert overlap([], ["a"]) == 0.0


@pytest.mark.parametrize(
    ("package", "below"),
    [
        ("text", {"types"}),
        # The guards sit on layer 2: they read settings, sentences, embeddings and stored records, nothing above.
        ("guard", {"types", "config", "text", "embed", "store"}),
    ],
)
def test_low_layer_packages_import_only_what_lies_below_them(package: str, below: set[str]) -> None:
    imported: set[str] = set()
    for path in (PACKAGE / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {m for m in imported if m == "archivist" or m.startswith("archivist.")}
    allowed = {m for m in ours if [*m.split("."), ""][1] in below | {package}}
    assert ours == allowed, sorted(ours - allowed)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a mean of 5.0 days [3] . Then", "a mean of 5.0 days (ref. 3). Then"),
        ("11-13 days [12, 13] , while", "11-13 days (refs. 12, 13), while"),
        ("older patients [12–14] .", "older patients (refs. 12–14)."),
        ("see [1;5 - 7] and [ 4 ]", "see (refs. 1; 5–7) and (ref. 4)"),
        # Not reference marks: inline code, a link's text, words in brackets.
        ("index `x[0]` then [see the docs](https://x.io/a) or [draft]", "index `x[0]` then see the docs or [draft]"),
    ],
)
def test_a_documents_reference_marks_read_as_plain_text_in_answer_prose(text: str, shown: str) -> None:
    from archivist.text.prose import prose

    assert prose(text) == shown


def test_sentence_start_reads_the_text_before_an_offset() -> None:
    from archivist.text.sentences import sentence_start

    text = "Smith et al. Found it. Lines wrap\nhere mid-sentence.\n\nA new paragraph."
    assert sentence_start(text, text.index("Found")) == 0  # "et al." ends no sentence
    assert sentence_start(text, text.index("Lines")) == text.index("Lines")
    assert sentence_start(text, text.index("here")) == text.index("Lines")  # a soft wrap continues it
    assert sentence_start(text, text.index("new")) == text.index("A new")
