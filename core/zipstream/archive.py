"""Streamed ZIP ingest with traversal, bomb and format guards: what the batch ingestion job reads.

``iter_archive(path)`` walks an uploaded ZIP on disk entry by entry with stream-unzip, fed
64 KiB reads, and yields an ``ImageEntry`` (whole bytes of one image) or a ``SkippedEntry``
(index, name, code, reason) per entry; whole-archive failures raise ``ArchiveError``. Only one
entry's bytes are held at a time, so memory stays flat whatever the archive's size.

How each guard answers (README "ZIP guards"):

* Ignored silently (not yielded): directories, ``__MACOSX/``, names with a segment starting
  with ``.`` (``.DS_Store``, ``._photo.jpg``).
* Skipped and reported (``SkippedEntry.code``): ``UNSAFE_PATH`` (``..`` segment, absolute
  path, drive letter, NUL; backslashes count as separators), ``NESTED_ARCHIVE`` (by extension
  or magic), ``ENCRYPTED``, ``NOT_AN_IMAGE`` (magic is not JPEG/PNG/WebP), ``ENTRY_TOO_LARGE``
  (over ``max_entry_bytes``, declared or while inflating), ``COMPRESSION_RATIO`` (inflated over
  1 MiB and over ``max_ratio`` times the compressed bytes fed so far plus 64 KiB that
  stream-unzip may hold buffered: a lower bound of the true ratio, so never a false alarm, but
  at 200 it cannot act before ~13 MiB are inflated), ``CORRUPT_ENTRY`` (CRC/size mismatch, bad
  deflate data), ``UNSUPPORTED_COMPRESSION`` (LZMA, zstd, ...).
* Fail the archive (``ArchiveError.code``): ``NOT_A_ZIP`` (magic checked before streaming),
  ``TOO_MANY_ENTRIES``, ``ARCHIVE_TOO_LARGE`` (images' total over ``max_total_bytes``; both are
  checked up front from the central directory and again while streaming),
  ``TRUNCATED_ARCHIVE`` and ``CORRUPT_ARCHIVE``.

Skipping without inflating. stream-unzip cannot step over an entry it cannot decode (encrypted,
unsupported method, a bomb abandoned half way, a data-descriptor entry with a bad CRC): its
stream is left mid-entry. So the central directory is read alongside (``core.zipstream.directory``,
checked name by name against the stream) and the stream is restarted at the next entry's
offset. Small skipped entries (<= 1 MiB) are read through instead, which is cheaper than a
restart. STORED entries written with a data descriptor and no sizes (Python's zipfile writing
to a pipe), which stream-unzip refuses, are read directly at the directory's offsets.

Truncated archives. Entries are yielded as they complete, so a cut file yields every complete
entry before the cut, then raises ``TRUNCATED_ARCHIVE`` (also when only the central directory
is cut; an image whose data descriptor is the last thing before the cut is checked against it
and yielded too). Without a readable central directory an entry that must be skipped without
reading it through (encrypted, a bomb, ...) cannot be stepped over: it is reported (as ``#<index>``
when stream-unzip refused its header before giving its name), then the archive fails
(``TRUNCATED_ARCHIVE``/``CORRUPT_ARCHIVE``, or ``ARCHIVE_TOO_LARGE`` for a bomb).

Importing this module is stdlib-only (the web tier calls ``count_image_entries``);
stream-unzip is imported on first iteration.
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from core.errors import (
    ARCHIVE_TOO_LARGE,
    CORRUPT_ARCHIVE,
    NOT_A_ZIP,
    NOT_AN_IMAGE,
    TOO_MANY_ENTRIES,
    TRUNCATED_ARCHIVE,
    PermanentJobError,
)
from core.zipstream import directory as zd
from core.zipstream.entries import (
    COMPRESSION_RATIO,
    CORRUPT_ENTRY,
    ENCRYPTED,
    ENTRY_TOO_LARGE,
    IGNORE,
    IMAGE_EXTENSIONS,
    NESTED_ARCHIVE,
    SNIFF_BYTES,
    UNSAFE_PATH,
    UNSUPPORTED_COMPRESSION,
    content_verdict,
    corrupt_reason,
    decode_name,
    describe_non_zip,
    header_verdict,
    name_verdict,
    sniff_image,
)

if TYPE_CHECKING:
    from core.config import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHIVE_TOO_LARGE", "COMPRESSION_RATIO", "CORRUPT_ARCHIVE", "CORRUPT_ENTRY", "ENCRYPTED",
    "ENTRY_TOO_LARGE", "NESTED_ARCHIVE", "NOT_AN_IMAGE", "NOT_A_ZIP", "TOO_MANY_ENTRIES",
    "TRUNCATED_ARCHIVE", "UNSAFE_PATH", "UNSUPPORTED_COMPRESSION", "ArchiveError", "ArchiveLimits",
    "DEFAULT_LIMITS", "ImageEntry", "SkippedEntry", "count_image_entries", "iter_archive",
]

_CHUNK = 64 * 1024  # file reads fed to stream-unzip, and its largest output chunk
_RATIO_FROM_BYTES = 1024 * 1024  # the ratio guard looks only at entries inflated past this
_SLACK = _CHUNK + 64  # compressed bytes stream-unzip may hold buffered when an entry starts
_READ_THROUGH_BYTES = 1024 * 1024  # skipped entries up to this are read through, not jumped


@dataclass(frozen=True)
class ArchiveLimits:
    """The guards' limits; ``from_settings`` reads the ZIP_MAX_* settings."""

    max_entries: int = 1_100_000  # entries of any kind
    max_total_bytes: int = 50 * 1024**3  # total uncompressed bytes of image entries
    max_entry_bytes: int = 50 * 1024**2  # one entry uncompressed
    max_ratio: float = 200.0  # uncompressed/compressed per entry, checked once > 1 MiB inflated

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        """The limits configured by ZIP_MAX_ENTRIES, _TOTAL_BYTES, _ENTRY_BYTES and _RATIO."""
        return cls(max_entries=settings.zip_max_entries, max_total_bytes=settings.zip_max_total_bytes,
                   max_entry_bytes=settings.zip_max_entry_bytes, max_ratio=settings.zip_max_ratio)


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ImageEntry:
    """An image found in the archive, whole."""

    index: int  # 0-based position in the archive (all entries counted)
    name: str  # the entry's path as given (UTF-8 flag, else cp437), for reporting only
    data: bytes
    content_type: str  # sniffed: image/jpeg, image/png, image/webp


@dataclass(frozen=True)
class SkippedEntry:
    """An entry that was not ingested, and why."""

    index: int
    name: str
    code: str  # UNSAFE_PATH, NESTED_ARCHIVE, ENCRYPTED, NOT_AN_IMAGE, ENTRY_TOO_LARGE, ...
    reason: str


class ArchiveError(PermanentJobError):
    """The archive as a whole cannot be ingested (retrying cannot help)."""

    code = CORRUPT_ARCHIVE


def iter_archive(path: str | os.PathLike[str], limits: ArchiveLimits = DEFAULT_LIMITS
                 ) -> Iterator[ImageEntry | SkippedEntry]:
    """Stream the ZIP at ``path``: one ImageEntry or SkippedEntry per entry; ArchiveError if unusable."""
    return _Reader(os.fspath(path), limits).run()


def count_image_entries(path: str | os.PathLike[str], limits: ArchiveLimits = DEFAULT_LIMITS) -> int | None:
    """Entries that look like images by name, from the central directory; None if it is unreadable.

    A quick estimate for the upload response: ignored and unsafe names, nested archives and
    encrypted entries are not counted; contents are not looked at. Stops after
    ``limits.max_entries + 1`` records (the ingest refuses such an archive anyway), so the
    answer is then a lower bound.
    """
    with open(path, "rb") as f:
        try:
            directory = zd.find_directory(f, os.fstat(f.fileno()).st_size)
            return _scan_directory(f, directory, limits)[1]
        except zd.BadDirectory:
            return None


def _scan_directory(f: BinaryIO, directory: zd.Directory, limits: ArchiveLimits) -> tuple[int, int, int]:
    """(records read, image-like entries, their declared bytes), reading at most max_entries + 1."""
    records = images = image_bytes = 0
    for rec in zd.iter_records(f, directory):
        records += 1
        if records > limits.max_entries:
            break
        if rec.flags & zd.FLAG_ENCRYPTED or rec.file_size > limits.max_entry_bytes:
            continue
        name = decode_name(rec.name, rec.flags)
        if name_verdict(name) is None and name.lower().endswith(IMAGE_EXTENSIONS):
            images += 1
            image_bytes += rec.file_size
    return records, images, image_bytes


class _DirectCorrupt(ValueError):
    """A directly read STORED entry failed its CRC or ran past the end of the file."""


# --- the reader -----------------------------------------------------------------------------
Entry = ImageEntry | SkippedEntry
_Resync = tuple[str, str] | None  # (code if the archive cannot be skipped past, why) or None


class _Reader:
    """One pass over one archive (see the module docstring)."""

    def __init__(self, path: str, limits: ArchiveLimits) -> None:
        self.path = path
        self.limits = limits
        self.count = 0  # entries met so far, of any kind (= the next entry's index)
        self.total = 0  # bytes of the images yielded
        self.fed = 0  # file offset stream-unzip has been fed up to
        self.f: BinaryIO
        self.directory: zd.Directory | None = None
        self.records: Iterator[zd.Record] = iter(())
        self.peeked: zd.Record | None = None
        self.trusted = False  # directory readable and matching the stream so far
        self.cd_problem = ""  # why the directory cannot be used
        self.cd_problem_code = TRUNCATED_ARCHIVE

    def run(self) -> Iterator[Entry]:
        with open(self.path, "rb") as f, open(self.path, "rb") as cd_file:
            self.f = f
            head = f.read(4)
            if head not in (zd.LOCAL_SIG, b"PK\x05\x06"):
                raise ArchiveError(describe_non_zip(head + f.read(SNIFF_BYTES)), code=NOT_A_ZIP)
            self._open_directory(cd_file)
            start: int | None = 0
            while start is not None:
                start = yield from self._stream(start)
            if self.directory is None and self.cd_problem_code == TRUNCATED_ARCHIVE:
                raise ArchiveError(f"the ZIP is incomplete: {self.cd_problem}; all {self.count} entries before "
                                   "the cut were read. Upload the whole file again", code=TRUNCATED_ARCHIVE)
            if self.trusted and self.peeked is None and next(self.records, None) is not None:
                logger.warning("archive %s: the central directory lists more entries than the %d streamed",
                               self.path, self.count)

    def _open_directory(self, cd_file: BinaryIO) -> None:
        """Read the central directory's end record and refuse too many entries/bytes up front."""
        try:
            self.directory = zd.find_directory(cd_file, os.fstat(cd_file.fileno()).st_size)
        except zd.BadDirectory as exc:
            self.cd_problem = str(exc)
            self.cd_problem_code = TRUNCATED_ARCHIVE if isinstance(exc, zd.NoEndRecord) else CORRUPT_ARCHIVE
            logger.warning("archive %s: central directory unusable: %s", self.path, exc)
            return
        if self.directory.count > self.limits.max_entries:
            raise self._too_many(self.directory.count)
        try:
            records, _, image_bytes = _scan_directory(cd_file, self.directory, self.limits)
        except zd.BadDirectory as exc:
            self._distrust(str(exc))
            return
        if records > self.limits.max_entries:
            raise self._too_many(records)
        if image_bytes > self.limits.max_total_bytes:
            raise ArchiveError(f"the images in the ZIP add up to {image_bytes} bytes uncompressed, over "
                               f"ZIP_MAX_TOTAL_BYTES={self.limits.max_total_bytes}; split it into smaller ZIPs",
                               code=ARCHIVE_TOO_LARGE)
        self.records = zd.iter_records(cd_file, self.directory)
        self.trusted = True

    def _too_many(self, count: int) -> ArchiveError:
        return ArchiveError(f"the ZIP has {count} or more entries, over ZIP_MAX_ENTRIES={self.limits.max_entries}; "
                            "split it into smaller ZIPs", code=TOO_MANY_ENTRIES)

    def _distrust(self, why: str) -> None:
        if self.trusted or not self.cd_problem:
            logger.warning("archive %s: not using the central directory: %s", self.path, why)
        self.trusted = False
        self.cd_problem = why
        self.cd_problem_code = CORRUPT_ARCHIVE

    def _next_record(self) -> zd.Record | None:
        if not self.trusted:
            return None
        rec, self.peeked = self.peeked, None
        try:
            rec = rec or next(self.records, None)
        except zd.BadDirectory as exc:
            self._distrust(str(exc))
            return None
        if rec is None:
            self._distrust("the central directory lists fewer entries than the archive holds")
        return rec

    def _begin_entry(self) -> int:
        if self.count >= self.limits.max_entries:
            raise self._too_many(self.count + 1)
        self.count += 1
        return self.count - 1

    def _feed(self, start: int) -> Iterator[bytes]:
        self.f.seek(start)
        self.fed = start
        while chunk := self.f.read(_CHUNK):
            self.fed += len(chunk)
            yield chunk

    def _stream(self, start: int) -> Generator[Entry, None, int | None]:
        """Run stream-unzip from ``start``; return where to restart it, or None at the end."""
        import stream_unzip as su

        entries = su.stream_unzip(self._feed(start), chunk_size=_CHUNK)
        try:
            while True:
                try:
                    raw_name, size, chunks = next(entries)
                except StopIteration:
                    return None
                except su.TruncatedDataError:
                    raise self._truncated(self.count) from None
                except su.UnexpectedSignatureError:
                    # Bytes that are not a header where the next entry should start.
                    return self._restart(start, CORRUPT_ARCHIVE, f"unexpected bytes where entry {self.count} "
                                         "should start")
                except su.NotStreamUnzippable as exc:
                    resync = yield from self._direct_entry(exc)
                    return self._restart(start, *resync)
                except (su.UnzipError, ValueError) as exc:
                    resync = yield from self._refused_entry(exc)
                    return self._restart(start, *resync)
                index = self._begin_entry()
                rec = self._next_record()
                if rec is not None and rec.name != raw_name:
                    self._distrust("the central directory's entries differ from the archive's")
                    rec = None
                name = decode_name(raw_name, rec.flags if rec else None)
                declared = size if size is not None else (rec.file_size if rec else None)
                outcome = yield from self._entry(index, name, declared, chunks, aligned=size is not None)
                if outcome is not None:
                    return self._restart(start, *outcome)
        finally:
            entries.close()

    def _refused_entry(self, exc: Exception) -> Generator[Entry, None, tuple[str, str]]:
        """An entry stream-unzip refused at its header: report it; the stream must restart."""
        index = self._begin_entry()
        code, reason = header_verdict(exc)
        rec = self._next_record()
        name = f"#{index}"  # stream-unzip does not say; only the directory can
        if rec is not None:
            try:
                local = zd.read_local_header(self.f, rec.header_offset)
            except zd.BadDirectory as bad:
                self._distrust(str(bad))
            else:
                name = decode_name(local.name, local.flags)
                if local.name != rec.name:
                    self._distrust("the central directory's entries differ from the archive's")
        yield from _report(index, name, name_verdict(name) or (code, reason))
        return self.cd_problem_code, f"entry {index} ({name!r}) cannot be skipped ({reason})"

    def _direct_entry(self, exc: Exception) -> Generator[Entry, None, tuple[str, str]]:
        """A STORED entry with a data descriptor and no sizes: read it at the directory's offsets."""
        index = self._begin_entry()
        rec = self._next_record()
        raw = exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else b""
        why = f"entry {index} ({decode_name(raw, None)!r}) is stored with no sizes in its header"
        if rec is None or rec.method != 0 or rec.name != raw:
            if rec is not None:
                self._distrust("the central directory's entries differ from the archive's")
            return self.cd_problem_code, why
        try:
            local = zd.read_local_header(self.f, rec.header_offset)
        except zd.BadDirectory as exc:
            self._distrust(str(exc))
            return self.cd_problem_code, why
        if local.name != rec.name:
            self._distrust("the central directory's entries differ from the archive's")
            return self.cd_problem_code, why
        resync = yield from self._entry(index, decode_name(rec.name, rec.flags), rec.file_size,
                                        self._read_stored(local.data_offset, rec), aligned=False)
        return resync or (CORRUPT_ARCHIVE, why)

    def _read_stored(self, offset: int, rec: zd.Record) -> Iterator[bytes]:
        self.f.seek(offset)
        self.fed = offset
        left, crc = rec.compressed_size, 0
        while left:
            chunk = self.f.read(min(_CHUNK, left))
            if not chunk:
                raise _DirectCorrupt("the entry runs past the end of the file")
            self.fed += len(chunk)
            left -= len(chunk)
            crc = zlib.crc32(chunk, crc)
            yield chunk
        if crc != rec.crc:
            raise _DirectCorrupt("CRC mismatch: the entry's data is damaged")

    def _can_jump(self, remaining: int | None) -> bool:
        """Whether skipping the rest of an entry by restarting beats reading it through."""
        return self.trusted and remaining is not None and remaining > _READ_THROUGH_BYTES

    def _entry(self, index: int, name: str, declared: int | None, chunks: Iterator[bytes],
               aligned: bool) -> Generator[Entry, None, _Resync]:
        """Read or skip one entry; return None if the stream can go on, else how to restart."""
        import stream_unzip as su

        limits = self.limits
        verdict = name_verdict(name)  # a skip decided before reading; the name's wins
        if verdict is None and declared is not None and declared > limits.max_entry_bytes:
            verdict = ENTRY_TOO_LARGE, (f"{declared} bytes uncompressed, over ZIP_MAX_ENTRY_BYTES="
                                        f"{limits.max_entry_bytes}")
        if verdict is not None and self._can_jump(declared):
            yield from _report(index, name, verdict)
            return CORRUPT_ARCHIVE, f"entry {index} ({name!r})"
        content: tuple[str, str] | None = None  # a skip decided by the first bytes
        parts: list[bytes] = []
        got = 0
        base = self.fed
        try:
            for chunk in chunks:
                got += len(chunk)
                trip = self._guard(got, base)
                if trip is not None:
                    yield from _report(index, name, verdict or trip)
                    return ARCHIVE_TOO_LARGE, f"entry {index} ({name!r}) {trip[1]}"
                if verdict is None and content is None:
                    parts.append(chunk)
                    if got >= SNIFF_BYTES and got - len(chunk) < SNIFF_BYTES:
                        head = parts[0] if len(parts) == 1 else b"".join(parts)
                        parts = [head]
                        if sniff_image(head) is None:
                            content, parts = content_verdict(head), []
                            if self._can_jump(None if declared is None else declared - got):
                                yield from _report(index, name, content)
                                return CORRUPT_ARCHIVE, f"entry {index} ({name!r})"
        except su.TruncatedDataError:
            if not self.trusted:
                if parts and self._ends_at_eof(parts):  # the cut fell after its data descriptor
                    yield from self._image(index, name, parts)
                raise self._truncated(index) from None
            yield from _report(index, name, verdict or (CORRUPT_ENTRY, "the entry's data runs past its end"))
            return CORRUPT_ARCHIVE, f"entry {index} ({name!r}) is damaged"
        except (su.UnzipError, ValueError) as exc:
            yield from _report(index, name, verdict or (CORRUPT_ENTRY, str(exc) if isinstance(exc, _DirectCorrupt)
                                                        else corrupt_reason(exc)))
            if (not self.trusted and aligned
                    and isinstance(exc, su.CRC32IntegrityError | su.UncompressedSizeIntegrityError)):
                return None  # sizes came from the local header: the stream is still in step
            return self.cd_problem_code, f"entry {index} ({name!r}) is damaged"
        if verdict is None and content is None:
            yield from self._image(index, name, parts)
        else:
            yield from _report(index, name, verdict or content)
        return None

    def _guard(self, got: int, base: int) -> tuple[str, str] | None:
        """The bomb guards, after ``got`` bytes inflated from data fed since ``base``."""
        if got > self.limits.max_entry_bytes:
            return ENTRY_TOO_LARGE, f"inflates past ZIP_MAX_ENTRY_BYTES={self.limits.max_entry_bytes}"
        # self.fed - base + _SLACK bounds the compressed bytes consumed from above, so this
        # compares against a lower bound of the true ratio: no false alarms.
        if got > _RATIO_FROM_BYTES and got > self.limits.max_ratio * (self.fed - base + _SLACK):
            return COMPRESSION_RATIO, (f"inflates over {self.limits.max_ratio:g} times its compressed size "
                                       "(ZIP_MAX_RATIO): a likely ZIP bomb")
        return None

    def _image(self, index: int, name: str, parts: list[bytes]) -> Iterator[Entry]:
        """The whole entry read: an ImageEntry if its bytes are one, else the skip."""
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        content_type = sniff_image(data)
        if content_type is None:
            yield SkippedEntry(index, name, *content_verdict(data))
            return
        if self.total + len(data) > self.limits.max_total_bytes:
            raise ArchiveError(f"the images in the ZIP add up to more than ZIP_MAX_TOTAL_BYTES="
                               f"{self.limits.max_total_bytes} bytes (at entry {index}, {name!r}); split it into "
                               "smaller ZIPs", code=ARCHIVE_TOO_LARGE)
        self.total += len(data)
        yield ImageEntry(index, name, data, content_type)

    def _ends_at_eof(self, parts: list[bytes]) -> bool:
        """Whether a data descriptor matching these bytes ends the (cut) file.

        stream-unzip reads 28 bytes to recognise a data descriptor, more than a file cut right
        after one still holds; the entry is complete if its CRC and size are there.
        """
        size = os.fstat(self.f.fileno()).st_size
        tail = os.pread(self.f.fileno(), 64, max(0, size - 64))
        crc = struct.pack("<L", zlib.crc32(b"".join(parts)) & 0xFFFFFFFF)
        length = sum(len(part) for part in parts)
        at = tail.find(crc)
        while at >= 0:
            if tail[at + 8:at + 12] == struct.pack("<L", length & 0xFFFFFFFF) or \
                    tail[at + 12:at + 20] == struct.pack("<Q", length):
                return True
            at = tail.find(crc, at + 1)
        return False

    def _restart(self, start: int, code: str, why: str) -> int:
        """Where the next unread entry starts per the central directory; ArchiveError if unknown.

        Every restart lands strictly past the previous one, so a lying directory cannot loop us.
        """
        target = 0
        if self.trusted and self.peeked is None:
            try:
                self.peeked = next(self.records, None)
            except zd.BadDirectory as exc:
                self._distrust(str(exc))
        if self.trusted and self.directory is not None:
            code = CORRUPT_ARCHIVE  # from here on, only a directory that lies can stop us
            target = self.peeked.header_offset if self.peeked else self.directory.offset
            if not start < target <= self.directory.offset:
                self._distrust("the central directory's offsets do not match the entries")
            elif self.peeked is not None:
                try:
                    local = zd.read_local_header(self.f, target)
                except zd.BadDirectory as exc:
                    self._distrust(str(exc))
                else:
                    if local.name != self.peeked.name:
                        self._distrust("the central directory's entries differ from the archive's")
        if not self.trusted:
            raise ArchiveError(f"{why}, and the archive cannot be skipped past it: {self.cd_problem}", code=code)
        return target

    def _truncated(self, index: int) -> ArchiveError:
        return ArchiveError(f"the ZIP is incomplete: it ends inside entry {index}; the entries before it were "
                            "read. Upload the whole file again", code=TRUNCATED_ARCHIVE)


def _report(index: int, name: str, verdict: tuple[str, str] | None) -> Iterator[SkippedEntry]:
    if verdict is not None and verdict is not IGNORE:
        yield SkippedEntry(index, name, *verdict)
