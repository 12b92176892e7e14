"""Text as an attacker meant it to read: what a question or task says once the tricks that hide an injection from a
detector, but not from a model, are undone.

The detector scores a question's own text and, when it differs, this plain reading of it (the higher score counts):
compatibility forms folded (fullwidth "ＩＧＮＯＲＥ", mathematical letters), invisible format characters dropped,
lookalike letters of other scripts inside Latin words read as the Latin letters they pose as (Cyrillic "о" in
"ignоre"; Unicode's confusables table, through `confusable_homoglyphs`), letters spaced out one by one joined
("i g n o r e"), and line breaks read as spaces (an instruction split across lines).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from confusable_homoglyphs import confusables

# Zero-width and other invisible format characters a model reads straight past.
_INVISIBLE = re.compile(r"[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
# A word of letters from more than one script: Latin letters with non-ASCII letters among them.
_MIXED_WORD = re.compile(r"\b(?=\w*[A-Za-z])(?=\w*[^\W\d_A-Za-z])\w+\b")
# Five or more single letters each followed by one separator: "i g n o r e", "I.G.N.O.R.E".
_SPACED = re.compile(r"(?<![\w])(?:[A-Za-z][ ._*\-]){4,}[A-Za-z](?![\w])")
_SPACE = re.compile(r"\s+")


@lru_cache(maxsize=4096)
def _latin(char: str) -> str:
    """Return the Latin letter a letter of another script poses as, or the letter itself."""
    name = unicodedata.name(char, "")
    if char.isascii() or not char.isalpha() or name.startswith("LATIN"):
        return char  # accented Latin letters ("ö", "ß") are the word's own
    # "CYRILLIC SMALL LETTER O" names its Latin twin; the case comes with the name.
    tail = name.rsplit(" ", 1)[-1]
    if len(tail) == 1 and tail.isalpha() and tail.isascii():
        return tail.lower() if char.islower() else tail
    found = confusables.is_confusable(char, greedy=True, preferred_aliases=["latin"]) or []
    letters = [h["c"] for f in found for h in f["homoglyphs"] if len(h["c"]) == 1 and h["c"].isascii()]
    letters = [c for c in letters if c.isalpha()]
    return letters[0] if letters else char


def plain_reading(text: str) -> str | None:
    """Return the text with lookalike letters, invisible characters, spaced-out letters and line breaks undone;
    None when that changes nothing that the detector reads differently."""
    out = unicodedata.normalize("NFKC", text)
    out = _INVISIBLE.sub("", out)
    out = _MIXED_WORD.sub(lambda m: "".join(_latin(c) for c in m.group(0)), out)
    out = _SPACED.sub(lambda m: re.sub(r"[ ._*\-]", "", m.group(0)), out)
    out = _SPACE.sub(" ", out).strip()
    return None if out == text.strip() else out
