"""Uploads turned into ingestion jobs: a file name fit to store, and the job queued with the upload's bytes.

The bytes go into the store with the job, not onto the API server's disk, so a worker on any host can run it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Any

from archivist.store.protocols import JobQueue
from archivist.store.records import JobRecord

#: Longest stored file name, in UTF-8 bytes (file systems allow 255; room is left for a disambiguating hash).
MAX_NAME_BYTES = 200


def upload_name(name: str, fallback: str = "document.txt", *, is_path: bool = True) -> str:
    """Return the user's file name fit to be a source and a file name (see `_clean_name`); a name changed on the way
    gets a hash of the original, so two different names never become one."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1] if is_path else name
    cleaned = _clean_name(base)
    stem, suffix = _split_suffix(cleaned)
    if stem and cleaned == base and len(base.encode("utf-8")) <= MAX_NAME_BYTES and not _TAGGED.search(base):
        return base
    if not name:
        return fallback
    tag = "~" + hashlib.sha256((base or name).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if not stem:
        stem, fallback_suffix = _split_suffix(fallback)
        suffix = suffix or fallback_suffix
    room = MAX_NAME_BYTES - len((tag + suffix).encode("utf-8"))
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
    return f"{stem}{tag}{suffix}"


#: A name that already looks like one `upload_name` tagged: tagged again, so nobody can forge another's result.
_TAGGED = re.compile(r"~[0-9a-f]{8}(\.[^.]*)?$")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}$")


def _clean_name(name: str) -> str:
    """Return a name without control, format, surrogate (undecodable bytes), private-use or unassigned characters,
    slashes, surrounding spaces or leading dots (its stem may end up empty: ".md")."""
    kept = "".join("_" if ch in "/\\" else ch for ch in name if unicodedata.category(ch)[0] != "C")
    stem, suffix = _split_suffix(kept.strip())
    return stem.strip().lstrip(".").strip() + suffix


def _split_suffix(name: str) -> tuple[str, str]:
    """Return (stem, extension with its dot), the extension empty when the name has none."""
    m = _SUFFIX.search(name)
    return (name[: m.start()], m.group()) if m else (name, "")


def enqueue_upload(
    queue: JobQueue,
    collection: str,
    filename: str,
    data: bytes,
    *,
    source: str,
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
    key_id: str | None = None,
) -> JobRecord:
    """Queue the ingestion of an upload (`filename` as `upload_name` made it) under `source` (re-sending a source
    replaces it), its bytes kept with the job; return the job."""
    if "/" in filename or "\\" in filename or filename in ("", ".", "..") or len(filename.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"not a safe upload file name (make it with upload_name): {filename!r}")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    job = JobRecord(
        id=uuid.uuid4().hex[:16],
        kind="ingest",
        collection=collection,
        status="queued",
        payload={"file": filename, "source": source, "title": title, "metadata": metadata or {}},
        created_at=now,
        updated_at=now,
        total=1,
        key_id=key_id,
    )
    queue.create_job(job, data)
    return job
