"""The regex level of PII detection: what is found without the `pii` extra (no NER model).

Emails, phone numbers, payment card numbers (Luhn-checked), IBANs (ISO 7064 mod-97 checked) and US social security
numbers (written with separators, area and group numbers that are issued). Names, addresses and organisations need
the NER model of the `pii` extra.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from archivist.guard._pii_spans import PiiKind, PiiSpan

# The local part without "/", which the RFC allows and URL paths are full of.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.!#$%&'*+=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])")
# An optional country code, then an area code (in brackets or not) and two or three groups of digits.
_PHONE = re.compile(
    r"(?<![\w+.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?![\w-]|\.\d)"
)
#: a dotted quad is an IP address, whatever a phone pattern makes of it
IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# 000, 666 and 900-999 are never issued as area numbers, nor 00 as a group or 0000 as a serial.
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")

#: scores of the regex level: checksummed numbers are near certain, the others are patterns only
_CHECKED = 1.0
_PATTERN = 0.6


def luhn_valid(digits: str) -> bool:
    """Return whether a string of digits passes the Luhn check (every payment card number does)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Return whether an IBAN (spaces allowed) passes its ISO 7064 mod-97 check."""
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _phone_ok(text: str) -> bool:
    return 9 <= len(_digits(text)) <= 15 and not IPV4.fullmatch(text)


def _card_ok(text: str) -> bool:
    return luhn_valid(_digits(text))


_RULES: tuple[tuple[PiiKind, re.Pattern[str], Callable[[str], bool] | None, float], ...] = (
    ("EMAIL", _EMAIL, None, _CHECKED),
    ("CREDIT_CARD", _CARD, _card_ok, _CHECKED),
    ("IBAN", _IBAN, iban_valid, _CHECKED),
    ("NATIONAL_ID", _SSN, None, _PATTERN),
    ("PHONE", _PHONE, _phone_ok, _PATTERN * 0.9),
)


def pattern_spans(text: str) -> Iterator[PiiSpan]:
    """Yield every regex-level PII span of `text` (overlapping ones included; `resolve` picks among them)."""
    for kind, pattern, valid, score in _RULES:
        for m in pattern.finditer(text):
            if valid is None or valid(m.group()):
                # A number after a country code is a phone number, surely: "+1 415 555 0199" is never "+1" and a
                # national id whose checksum its last ten digits happen to pass.
                sure = _CHECKED if kind == "PHONE" and m.group().startswith("+") else score
                yield PiiSpan(kind, m.start(), m.end(), sure)
