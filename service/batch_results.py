"""A batch's results: the listing rows (JSON lines, CSV) and the results ZIP, all streamed.

``results_zip`` builds ``GET /api/batch/<id>/results.zip`` while it is sent (stream-zip): every
finished output under a stable name, then ``results.jsonl``, ``results.csv`` and ``batch.json``.
Items are read a page at a time and outputs one at a time, so the API's memory stays flat
whatever the batch size (scripts/bench_results_zip.py measures it). The ZIP can be taken while
the batch runs: it holds what was done when each page was read, and ``batch.json`` says whether
the batch was finished (``complete``).

Output names: a ZIP batch's image keeps its entry path, with the output's extension added when
it differs (``photos/anna.jpg`` -> ``outputs/photos/anna.jpg`` for a JPEG crop,
``outputs/photos/anna.jpg.png`` for a cut-out): entry paths are unique in their ZIP, so these
names are too, with no name kept in memory. A URL batch's image is named by its recordId
(``outputs/rec-1.png``). The listing's ``file`` column gives each one's name in the ZIP (empty
when the image has no output in it).
"""
from __future__ import annotations

import collections
import csv
import io
import json
import logging
import posixpath
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
import stream_zip as stream_zip_module
from stream_zip import NO_COMPRESSION_64, ZIP_64, stream_zip
from werkzeug.security import safe_join

from core.config import Settings
from core.db.batches import BATCH_FINAL, ITEM_COMPLETED
from core.db.database import Database

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("seq", "recordId", "entry", "status", "outputUrl", "faceDetected", "faceCount", "faceBox",
                  "width", "height", "errorCode", "errorMessage", "attempts", "thumbnailUrl", "sourceThumbnailUrl",
                  "faces", "rollDegrees", "sourceWidth", "sourceHeight")
_JSON_COLUMNS = ("faceBox", "faces")  # JSON text in the CSV
ZIP_COLUMNS = (*RESULT_COLUMNS, "file")
PAGE = 1000  # items read per query
_PERMS = stat.S_IFREG | 0o644
_EXTENSIONS = {"jpg", "jpeg", "png", "webp"}


class SpooledDirectory:
    """Where stream-zip keeps the ZIP's central directory until the end: a temporary file, not a deque.

    A ZIP's central directory comes after every member, so a streaming writer must remember one
    record (~100 bytes, ~330 with Python's object overhead) per member: 33 MB for 100,000 entries
    in stream-zip's own deque. Spooled to a file (in memory up to 1 MiB), the API's memory stays
    flat whatever the batch size. stream-zip only appends, counts and iterates once at the end.
    """

    _SIZES = struct.Struct("<III")

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115 (closed after iterating)
        self._count = 0

    def append(self, entry: tuple[bytes, bytes, bytes]) -> None:
        """Keep one member's central-directory record."""
        self._file.write(self._SIZES.pack(*(len(part) for part in entry)) + b"".join(entry))
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[bytes, bytes, bytes]]:
        self._file.seek(0)
        for _ in range(self._count):
            header, name, extra = self._SIZES.unpack(self._file.read(self._SIZES.size))
            yield self._file.read(header), self._file.read(name), self._file.read(extra)
        self._file.close()


# stream-zip (pinned in requirements.in and its lock) makes its central directory with the module's `deque()`
# and nothing else; SpooledDirectory takes its place. If a later stream-zip changes that, the
# ZIPs stay correct and only the memory grows again (scripts/bench_results_zip.py shows it).
if getattr(stream_zip_module, "deque", None) is collections.deque:
    setattr(stream_zip_module, "deque", SpooledDirectory)  # noqa: B010 (a module attribute mypy types as deque)


def result_row(item: dict[str, Any]) -> dict[str, Any]:
    """One item as the results listing shows it."""
    return {"seq": item["seq"], "recordId": item["record_id"], "entry": item["entry_name"],
            "status": item["status"], "outputUrl": item["output_url"], "faceDetected": item["face_detected"],
            "faceCount": item["face_count"], "faceBox": item["face_box"], "width": item["output_width"],
            "height": item["output_height"], "errorCode": item["error_code"],
            "errorMessage": item["error_message"], "attempts": item["attempts"],
            "thumbnailUrl": item.get("thumbnail_url"), "sourceThumbnailUrl": item.get("source_thumbnail_url"),
            "faces": item.get("faces_json"), "rollDegrees": item.get("roll_degrees"),
            "sourceWidth": item.get("source_width"), "sourceHeight": item.get("source_height")}


def items(db: Database, batch_id: str) -> Iterator[dict[str, Any]]:
    """Every item of the batch in order, read a page at a time."""
    after = -1
    while True:
        page = db.batch_items(batch_id, after_seq=after, limit=PAGE)
        if not page:
            return
        yield from page
        after = page[-1]["seq"]


def csv_lines(rows: Iterator[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[str]:
    """The rows as CSV text, header first, in pieces of about 64 KiB."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        for column in _JSON_COLUMNS:
            row[column] = json.dumps(row[column]) if row.get(column) else ""
        writer.writerow(["" if row.get(column) is None else row[column] for column in columns])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def output_name(item: dict[str, Any]) -> str:
    """The stable name of an item's output inside the results ZIP."""
    extension = posixpath.splitext(urlsplit(item["output_url"] or "").path)[1].lstrip(".").lower()
    if extension not in _EXTENSIONS:
        extension = "bin"
    if item.get("entry_name"):
        # Entry paths were checked at ingest (no '..', no absolute paths); drop empty parts anyway.
        parts = [part for part in item["entry_name"].replace("\\", "/").split("/") if part not in ("", ".", "..")]
        path = "/".join(parts) or f"{item['seq']:07d}"
        own = posixpath.splitext(path)[1].lstrip(".").lower()
        same = own == extension or {own, extension} == {"jpg", "jpeg"}
        return f"outputs/{path}" if same else f"outputs/{path}.{extension}"
    return f"outputs/{item['record_id'] or format(item['seq'], '07d')}.{extension}"


class OutputReader:
    """Reads a stored output by its URL: from STORAGE_DIR for local storage, else over HTTP."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.local = settings.effective_storage_backend == "local"
        self.root = Path(settings.storage_dir)
        self.session = session or requests.Session()
        self.timeout = (5.0, 60.0)

    def read(self, url: str) -> bytes | None:
        """The output's bytes, or None when it cannot be read (logged; the listing says so)."""
        try:
            if self.local:
                path = urlsplit(url).path
                key = unquote(path.split("/files/", 1)[1]) if "/files/" in path else ""
                target = safe_join(str(self.root), key) if key else None
                return None if target is None else Path(target).read_bytes()
            with self.session.get(url, timeout=self.timeout, stream=True) as response:
                response.raise_for_status()
                return response.content
        except (OSError, requests.RequestException) as exc:
            log.warning("results zip: cannot read output %s: %s", url, exc)
            return None

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()


def results_zip(db: Database, batch: dict[str, Any], reader: OutputReader,
                now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Iterator[bytes]:
    """The batch's results ZIP, as the bytes to send, built while they are sent."""
    batch_id = batch["batch_id"]
    included = bytearray()  # one bit per seq: was its output put in the ZIP (flat: 125 KB per million)
    stamp = now()

    def mark(seq: int) -> None:
        byte = seq // 8
        if byte >= len(included):
            included.extend(b"\0" * (byte + 1 - len(included)))
        included[byte] |= 1 << (seq % 8)

    def is_marked(seq: int) -> bool:
        byte = seq // 8
        return byte < len(included) and bool(included[byte] & (1 << (seq % 8)))

    def outputs() -> Iterator[tuple[str, datetime, int, Any, Any]]:
        for item in items(db, batch_id):
            if item["status"] != ITEM_COMPLETED or not item["output_url"]:
                continue
            data = reader.read(item["output_url"])
            if data is None:
                continue
            mark(item["seq"])
            yield output_name(item), stamp, _PERMS, NO_COMPRESSION_64(len(data), zlib.crc32(data)), (data,)

    def listing_rows() -> Iterator[dict[str, Any]]:
        for item in items(db, batch_id):
            row = result_row(item)
            row["file"] = output_name(item) if is_marked(item["seq"]) else None
            yield row

    def jsonl() -> Iterator[bytes]:
        for row in listing_rows():
            yield (json.dumps(row, separators=(",", ":")) + "\n").encode()

    def as_csv() -> Iterator[bytes]:
        for text in csv_lines(listing_rows(), ZIP_COLUMNS):
            yield text.encode()

    def summary() -> Iterator[bytes]:
        current = db.get_batch(batch_id) or batch
        yield json.dumps({
            "batchId": batch_id, "projectId": current["project_id"], "status": current["status"],
            "operation": current.get("operation"), "complete": current["status"] in BATCH_FINAL,
            "imageCount": int(current["image_count"]), "processed": int(current["processed"]),
            "failed": int(current["failed"]), "canceled": int(current.get("canceled") or 0),
            "skipped": int(current["skipped"]), "generatedAt": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "note": "Outputs are the images completed when the ZIP was built; results.jsonl and results.csv list "
                    "every item, with 'file' naming its output inside this ZIP (empty when it has none here).",
        }, indent=2).encode()

    def members() -> Iterator[tuple[str, datetime, int, Any, Any]]:
        try:
            yield from outputs()
        finally:
            reader.close()
        yield "results.jsonl", stamp, _PERMS, ZIP_64, jsonl()
        yield "results.csv", stamp, _PERMS, ZIP_64, as_csv()
        yield "batch.json", stamp, _PERMS, ZIP_64, summary()

    return iter(stream_zip(members()))
