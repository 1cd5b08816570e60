"""Read a ZIP's central directory without loading it: the map core.zipstream.archive uses to skip entries.

Stdlib only and forward-only: records are parsed straight out of 1 MiB reads, one at a time,
so a directory of a million entries costs the same memory as one of ten (``zipfile.ZipFile``
would build a ``ZipInfo`` per entry, hundreds of MB for such an archive). Handles ZIP64 (end
record, locator and per-entry extra fields); refuses multi-disk archives and directories that
do not end exactly where the end record starts (data prepended or appended, or a cut file).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, right before the end record
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header, 46 bytes
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header, 30 bytes
_EOCD_SIG = b"PK\x05\x06"
_EOCD64_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64_SIG = b"PK\x06\x06"
_CENTRAL_SIG = b"PK\x01\x02"
LOCAL_SIG = b"PK\x03\x04"
_MAX_COMMENT = 0xFFFF
_READ_BYTES = 1024 * 1024
_FFFF = 0xFFFF
_FFFFFFFF = 0xFFFFFFFF

FLAG_ENCRYPTED = 0x1
FLAG_UTF8 = 0x800


class BadDirectory(ValueError):
    """The central directory is missing, malformed, or does not match the file."""


class NoEndRecord(BadDirectory):
    """No end-of-central-directory record: the file was cut short (or is not a ZIP)."""


class Record(NamedTuple):
    """One central directory entry, sizes and offset already resolved through ZIP64 extras."""

    name: bytes
    flags: int
    method: int
    crc: int
    compressed_size: int
    file_size: int
    header_offset: int


class LocalHeader(NamedTuple):
    """The parts of a local file header needed to find and check an entry's data."""

    name: bytes
    flags: int
    method: int
    data_offset: int


@dataclass(frozen=True)
class Directory:
    """Where the central directory lies and how many records its end record declares."""

    offset: int
    size: int
    count: int


def find_directory(f: BinaryIO, file_size: int) -> Directory:
    """Locate the central directory through the (ZIP64) end record; BadDirectory if impossible."""
    tail_len = min(file_size, _EOCD.size + _MAX_COMMENT + _EOCD64_LOCATOR.size)
    f.seek(file_size - tail_len)
    tail = f.read(tail_len)
    pos = tail.rfind(_EOCD_SIG)
    if pos < 0 or pos + _EOCD.size > len(tail):
        raise NoEndRecord("no end-of-central-directory record: the file is cut short")
    eocd_at = file_size - tail_len + pos
    _, disk, cd_disk, disk_count, count, size, offset, _ = _EOCD.unpack_from(tail, pos)
    end = eocd_at
    if pos >= _EOCD64_LOCATOR.size and tail[pos - 20:pos - 16] == _EOCD64_LOCATOR_SIG:
        _, _, eocd64_at, _ = _EOCD64_LOCATOR.unpack_from(tail, pos - 20)
        if eocd64_at + _EOCD64.size > eocd_at - 20:
            raise BadDirectory("the ZIP64 end record lies past its locator")
        f.seek(eocd64_at)
        record = f.read(_EOCD64.size)
        if len(record) < _EOCD64.size or record[:4] != _EOCD64_SIG:
            raise BadDirectory("the ZIP64 locator does not point at a ZIP64 end record")
        _, _, _, _, disk, cd_disk, disk_count, count, size, offset = _EOCD64.unpack(record)
        end = eocd64_at
    elif _FFFF in (count, disk_count) or _FFFFFFFF in (size, offset):
        raise BadDirectory("the end record asks for ZIP64 values but has no ZIP64 locator")
    if disk != 0 or cd_disk != 0 or disk_count != count:
        raise BadDirectory("multi-disk (split) archives are not supported")
    if offset + size != end:
        raise BadDirectory("the central directory does not end where the end record starts")
    return Directory(offset=offset, size=size, count=count)


def iter_records(f: BinaryIO, directory: Directory) -> Iterator[Record]:
    """Each central directory record in order; BadDirectory on a malformed one."""
    f.seek(directory.offset)
    remaining = directory.size
    buf = b""
    pos = 0
    number = 0
    while True:
        if len(buf) - pos < _CENTRAL.size:
            if remaining == 0 and pos == len(buf):
                return
            buf, pos, remaining = _refill(f, buf, pos, remaining, _CENTRAL.size)
        (sig, _, _, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
         _, _, _, header_offset) = _CENTRAL.unpack_from(buf, pos)
        if sig != _CENTRAL_SIG:
            raise BadDirectory(f"central directory record {number} has a bad signature")
        need = _CENTRAL.size + name_len + extra_len + comment_len
        if len(buf) - pos < need:
            buf, pos, remaining = _refill(f, buf, pos, remaining, need)
        name_at = pos + _CENTRAL.size
        name = buf[name_at:name_at + name_len]
        if _FFFFFFFF in (usize, csize, header_offset):
            extra = buf[name_at + name_len:name_at + name_len + extra_len]
            usize, csize, header_offset = _zip64_values(extra, usize, csize, header_offset)
        pos += need
        number += 1
        yield Record(name, flags, method, crc, csize, usize, header_offset)


def read_local_header(f: BinaryIO, offset: int) -> LocalHeader:
    """The local header at ``offset``; BadDirectory if there is none."""
    f.seek(offset)
    head = f.read(_LOCAL.size)
    if len(head) < _LOCAL.size or head[:4] != LOCAL_SIG:
        raise BadDirectory(f"no local file header at offset {offset}")
    _, _, _, flags, method, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack(head)
    name = f.read(name_len)
    if len(name) < name_len:
        raise BadDirectory(f"the local file header at offset {offset} is cut short")
    return LocalHeader(name, flags, method, offset + _LOCAL.size + name_len + extra_len)


def _refill(f: BinaryIO, buf: bytes, pos: int, remaining: int, need: int) -> tuple[bytes, int, int]:
    buf = buf[pos:]
    while len(buf) < need and remaining:
        more = f.read(min(_READ_BYTES, remaining))
        if not more:
            raise BadDirectory("the central directory runs past the end of the file")
        remaining -= len(more)
        buf += more
    if len(buf) < need:
        raise BadDirectory("the central directory ends inside a record")
    return buf, 0, remaining


def _zip64_values(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Resolve 0xFFFFFFFF sizes/offset from the ZIP64 extra field (values present in that order)."""
    at = 0
    while at + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4:at + 4 + size]
        at += 4 + size
        if tag != 1:
            continue
        values = iter(struct.unpack_from(f"<{len(body) // 8}Q", body))
        try:
            if usize == _FFFFFFFF:
                usize = next(values)
            if csize == _FFFFFFFF:
                csize = next(values)
            if offset == _FFFFFFFF:
                offset = next(values)
        except StopIteration:
            raise BadDirectory("a ZIP64 extra field is too short") from None
        return usize, csize, offset
    raise BadDirectory("a record needs ZIP64 values but has no ZIP64 extra field")
