"""Text as an attacker meant it to read: what a question or task says once the tricks that hide an injection from a
detector, but not from a model, are undone.

The detector scores a question's own text and, when it differs, this plain reading of it (the higher score counts):
compatibility forms folded (fullwidth "ＩＧＮＯＲＥ", mathematical letters), invisible format characters dropped,
lookalike letters of other scripts inside Latin words read as the Latin letters they pose as (Cyrillic "о" in
"ignоre"; Unicode's confusables table, through `confusable_homoglyphs`), letters spaced out one by one joined
("i g n o r e"), hyphens, dots and underscores inside a word dropped ("ig-nore pre-vious"), digits and symbols
standing for letters inside a word read as those letters ("1gn0re", "r3veal", "$ystem", "@ccess"), and line
breaks read as spaces (an instruction split across lines). Numbers stay numbers: a token is read as a word only when
letters outnumber its digits ("Python 3.11", "top 10", "v0.5.1" are unchanged).
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
# Digits and symbols that stand for letters; "1" is also "l", chosen in `_unleet`.
_LEET = str.maketrans({"1": "i", "0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_CHARS = "103457@$"
# A hyphen, dot or underscore between two letters, or a letter and a stand-in that itself touches a letter:
# "ig-nore", "r3-veal"; never inside a number ("3.5-fold", "COVID-19", "v0.5.1").
_INNER_SEPARATOR = re.compile(
    r"(?<=[A-Za-z])[-._](?=[A-Za-z]|[013457@$][A-Za-z])|(?<=[A-Za-z][013457@$])[-._](?=[A-Za-z])"
)
_TOKEN = re.compile(r"[A-Za-z0-9@$]+")
# A number with its suffix: "1st", "3rd", "10th", "50s", "4x", "10k".
_NUMERAL = re.compile(r"\$?\d+(st|nd|rd|th|s|x|k|m|px|ms|am|pm)?", re.IGNORECASE)


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


def _unleet(token: str) -> str:
    """Return a word with the digits and symbols that stand for letters read as letters; a token with a digit that
    stands for none ("covid19", "sha256", "h264"), or too short to tell ("v0", "3"), is returned as it is."""
    letters = sum(c.isascii() and c.isalpha() for c in token)
    if not letters or len(token) < 3 or not any(c in _LEET_CHARS for c in token):
        return token
    if any(c.isdigit() and c not in _LEET_CHARS for c in token) or _NUMERAL.fullmatch(token):
        return token
    # "1" reads as "l" when doubled ("a11") or before a, e, u, y ("ru1es", "f1ag", "on1y"), else as "i" ("1gn0re").
    token = re.sub(r"1(?=1)|(?<=1)1|1(?=[aeuyAEUY])", "l", token)
    return token.translate(_LEET)


def plain_reading(text: str) -> str | None:
    """Return the text with lookalike letters, invisible characters, spaced-out letters, separators inside words,
    digits standing for letters and line breaks undone;
    None when that changes nothing that the detector reads differently."""
    out = unicodedata.normalize("NFKC", text)
    out = _INVISIBLE.sub("", out)
    out = _MIXED_WORD.sub(lambda m: "".join(_latin(c) for c in m.group(0)), out)
    out = _SPACED.sub(lambda m: re.sub(r"[ ._*\-]", "", m.group(0)), out)
    out = _TOKEN.sub(lambda m: _unleet(m.group(0)), _INNER_SEPARATOR.sub("", out))
    out = _SPACE.sub(" ", out).strip()
    return None if out == text.strip() else out
