"""Turning a file's bytes into text: UTF-8 (or UTF-16/32 with a byte order mark), LF line ends, binary refused."""

from __future__ import annotations

import codecs

from archivist.ingest.loaders.reasons import Rejected, one_line

#: How much of a file is looked at to tell text from binary.
SNIFF_BYTES = 8192
UTF8_BOM = b"\xef\xbb\xbf"


def normalise_newlines(text: str) -> str:
    """Return text with CRLF and lone CR line ends turned into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def wide_encoding(head: bytes) -> str | None:
    """Return "utf-32" or "utf-16" when bytes start with that encoding's byte order mark, else None."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def bad_byte(error: UnicodeDecodeError) -> str:
    """Return the first undecodable byte of a decode error, as hex."""
    return f"byte 0x{error.object[error.start]:02x}"


def decode_text(data: bytes, fallback_encoding: str | None = None) -> str:
    """Return bytes decoded as UTF-8 (or UTF-16/32 with a byte order mark) with the BOM stripped and LF line ends,
    or raise `Rejected`."""
    wide = wide_encoding(data)
    if wide is not None:
        # Windows tools save text as UTF-16 with a BOM: its NUL bytes do not make it binary.
        try:
            text = data.decode(wide)
        except UnicodeDecodeError as error:
            raise Rejected(f"not valid {wide.upper()}: {one_line(error)}") from None
        if "\x00" in text[:SNIFF_BYTES]:
            raise Rejected("binary content, not text")
    elif b"\x00" in data[:SNIFF_BYTES]:
        raise Rejected("binary content, not text")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            text = _decode_fallback(data, fallback_encoding, error)
    text = normalise_newlines(text.removeprefix("\ufeff"))
    if not text.strip():
        raise Rejected("empty file")
    return text


def _decode_fallback(data: bytes, encoding: str | None, error: UnicodeDecodeError) -> str:
    """Return bytes decoded with a declared encoding, or reject them with the UTF-8 error."""
    if encoding is not None:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            pass
    raise Rejected(f"not valid UTF-8: {bad_byte(error)} at offset {error.start}") from None
