"""core.zipstream.archive: streamed ZIP ingest and its guards, on ZIPs built here (zipfile, pyzipper, by hand).

Hand-made archives (``raw_zip``) let a test lie where an attacker would: sizes in headers,
central directory offsets, names zipfile refuses to write. Bombs are built without ever holding
their inflated bytes: a deflate segment of 1 MiB of zeros ending in a full flush is byte-aligned
and self-contained, so repeating it N times inflates to N MiB.
"""
from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import pyzipper
from PIL import Image

from core.config import Settings
from core.errors import PermanentJobError
from core.zipstream import archive
from core.zipstream import entries as zip_entries
from core.zipstream.archive import (
    ARCHIVE_TOO_LARGE,
    COMPRESSION_RATIO,
    CORRUPT_ARCHIVE,
    CORRUPT_ENTRY,
    DEFAULT_LIMITS,
    ENCRYPTED,
    ENTRY_TOO_LARGE,
    NESTED_ARCHIVE,
    NOT_A_ZIP,
    NOT_AN_IMAGE,
    TOO_MANY_ENTRIES,
    TRUNCATED_ARCHIVE,
    UNSAFE_PATH,
    UNSUPPORTED_COMPRESSION,
    ArchiveError,
    ArchiveLimits,
    ImageEntry,
    SkippedEntry,
    count_image_entries,
    iter_archive,
)
from jobs import fetch

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


# --- images ---------------------------------------------------------------------------------
def _image(fmt: str, colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(out, format=fmt)
    return out.getvalue()


JPEG = _image("JPEG", (200, 30, 30))
PNG = _image("PNG", (30, 200, 30))
WEBP = _image("WEBP", (30, 30, 200))


# --- archives -------------------------------------------------------------------------------
def write(tmp_path: Path, data: bytes, name: str = "upload.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable stream: zipfile then writes data descriptors."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buf += data
        return len(data)


def make_zip(entries: Iterable[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED,
             streamed: bool = False) -> bytes:
    """A ZIP by zipfile; ``streamed`` writes it to a pipe (data descriptors, no sizes up front)."""
    target: Any = _Pipe() if streamed else io.BytesIO()
    with zipfile.ZipFile(target, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return bytes(target.buf) if streamed else target.getvalue()


@dataclass
class Raw:
    """One hand-made entry: what goes in the local header, the data and the central directory."""

    name: bytes
    payload: bytes  # as stored (compressed, encrypted)
    method: int = 0
    crc: int = 0
    usize: int = 0
    flags: int = 0
    local_sizes: bool = True  # False: zeros in the local header (with a data descriptor)
    descriptor: bytes = b""
    cd_name: bytes | None = None  # a central directory that lies about the name
    cd_usize: int | None = None
    cd_offset: int | None = None  # a central directory that lies about where the entry starts
    extra: bytes = field(default=b"")


def raw_entry(name: str | bytes, data: bytes, method: int = zipfile.ZIP_STORED, **kw: Any) -> Raw:
    """An honest entry for ``data``, STORED or DEFLATED."""
    payload = data
    if method == zipfile.ZIP_DEFLATED:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = comp.compress(data) + comp.flush()
    raw_name = name.encode() if isinstance(name, str) else name
    return Raw(raw_name, payload, method, zlib.crc32(data), len(data), **kw)


_LFH = struct.Struct("<4s2B4HL2L2H")
_CDH = struct.Struct("<4s4B4HL2L5H2L")
_EOCD = struct.Struct("<4s4H2LH")


def raw_zip(entries: Iterable[Raw], *, junk_after: dict[int, bytes] | None = None) -> bytes:
    """Local headers, data, central directory and end record, exactly as the entries say."""
    out = bytearray()
    central = bytearray()
    count = 0
    for i, e in enumerate(entries):
        offset = len(out)
        csize = len(e.payload)
        sizes = (e.crc, csize, e.usize) if e.local_sizes else (0, 0, 0)
        out += _LFH.pack(b"PK\x03\x04", 20, 0, e.flags, e.method, 0, 0x21, *sizes, len(e.name), len(e.extra))
        out += e.name + e.extra + e.payload + e.descriptor
        out += (junk_after or {}).get(i, b"")
        name = e.name if e.cd_name is None else e.cd_name
        usize = e.usize if e.cd_usize is None else e.cd_usize
        central += _CDH.pack(b"PK\x01\x02", 20, 3, 20, 0, e.flags, e.method, 0, 0x21, e.crc, csize, usize,
                             len(name), 0, 0, 0, 0, 0, offset if e.cd_offset is None else e.cd_offset) + name
        count += 1
    cd_offset = len(out)
    out += central
    out += _EOCD.pack(b"PK\x05\x06", 0, 0, count, count, len(central), cd_offset, 0)
    return bytes(out)


def zero_bomb(mib: int) -> bytes:
    """Raw deflate data that inflates to ``mib`` MiB of zeros, built in about 1 KiB per MiB."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = comp.compress(bytes(MiB)) + comp.flush(zlib.Z_FULL_FLUSH)
    return segment * mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def bomb_entry(name: str, mib: int, declared: int, prefix: bytes = b"") -> Raw:
    """A deflated entry of ``prefix`` + zeros declaring ``declared`` bytes (a lie unless equal).

    Its CRC is left 0: the guards must stop long before stream-unzip could check it, and if
    they did not, the entry would come out CORRUPT_ENTRY and fail the test.
    """
    payload = zero_bomb(mib)
    if prefix:
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH) + payload
    return Raw(name.encode(), payload, zipfile.ZIP_DEFLATED, 0, declared)


class _ZipCrypto:
    """PKWARE traditional encryption (APPNOTE 6.1), enough to write one encrypted entry."""

    def __init__(self, password: bytes) -> None:
        self.keys = [0x12345678, 0x23456789, 0x34567890]
        for byte in password:
            self._update(byte)

    @staticmethod
    def _crc(crc: int, byte: int) -> int:
        return zlib.crc32(bytes([byte]), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    def _update(self, byte: int) -> None:
        k0, k1, k2 = self.keys
        k0 = self._crc(k0, byte)
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = self._crc(k2, k1 >> 24)
        self.keys = [k0, k1, k2]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            temp = (self.keys[2] | 2) & 0xFFFF
            out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
            self._update(byte)
        return bytes(out)


def zipcrypto_entry(name: str, data: bytes, password: bytes = b"secret") -> Raw:
    honest = raw_entry(name, data, zipfile.ZIP_DEFLATED)
    header = bytes(random.Random(1).randrange(256) for _ in range(11)) + bytes([honest.crc >> 24])
    return replace(honest, payload=_ZipCrypto(password).encrypt(header + honest.payload), flags=0x1)


def read_all(path: Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> list[ImageEntry | SkippedEntry]:
    return list(iter_archive(path, limits))


def read_until_error(path: Path, limits: ArchiveLimits = DEFAULT_LIMITS
                     ) -> tuple[list[ImageEntry | SkippedEntry], ArchiveError | None]:
    seen: list[ImageEntry | SkippedEntry] = []
    try:
        for entry in iter_archive(path, limits):
            seen.append(entry)
    except ArchiveError as exc:
        return seen, exc
    return seen, None


def summary(entries: Iterable[ImageEntry | SkippedEntry]) -> list[tuple[int, str, str]]:
    """(index, name, content type or skip code) per entry."""
    return [(e.index, e.name, e.content_type if isinstance(e, ImageEntry) else e.code) for e in entries]


# --- plain archives -------------------------------------------------------------------------
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
@pytest.mark.parametrize("streamed", [False, True], ids=["seekable", "data-descriptors"])
def test_reads_every_image_whole_with_its_sniffed_type(tmp_path: Path, compression: int, streamed: bool) -> None:
    files = [("photos/a.jpg", JPEG), ("photos/b.png", PNG), ("c.webp", WEBP), ("no-extension", JPEG)]
    path = write(tmp_path, make_zip(files, compression, streamed))

    entries = read_all(path)

    assert summary(entries) == [(0, "photos/a.jpg", "image/jpeg"), (1, "photos/b.png", "image/png"),
                                (2, "c.webp", "image/webp"), (3, "no-extension", "image/jpeg")]
    assert [e.data for e in entries if isinstance(e, ImageEntry)] == [JPEG, PNG, WEBP, JPEG]
    assert count_image_entries(path) == 3  # by extension: the one without is not counted


def test_zip64_local_headers_are_read(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (("a.jpg", JPEG), ("b.png", PNG)):
            with zf.open(name, "w", force_zip64=True) as dest:
                dest.write(data)
    path = write(tmp_path, buf.getvalue())

    assert summary(read_all(path)) == [(0, "a.jpg", "image/jpeg"), (1, "b.png", "image/png")]


def test_names_decode_by_the_utf8_flag_else_cp437(tmp_path: Path) -> None:
    cp437 = raw_entry("caf\u00e9.jpg".encode("cp437"), JPEG)  # no UTF-8 flag: cp437 bytes
    utf8 = raw_entry("\u5199\u771f.jpg".encode(), JPEG, flags=0x800)
    path = write(tmp_path, raw_zip([cp437, utf8]))

    assert [e.name for e in read_all(path)] == ["caf\u00e9.jpg", "\u5199\u771f.jpg"]


def test_directories_macosx_and_hidden_files_are_ignored_silently(tmp_path: Path) -> None:
    files = [("photos/", b""), ("__MACOSX/photos/._a.jpg", b"\x00\x05\x16\x07"), ("photos/.DS_Store", b"\x00" * 64),
             (".hidden/x.jpg", JPEG), ("photos/a.jpg", JPEG), ("./b.jpg", PNG)]
    path = write(tmp_path, make_zip(files))

    # Indexes still count the ignored entries: they are positions in the archive.
    assert summary(read_all(path)) == [(4, "photos/a.jpg", "image/jpeg"), (5, "./b.jpg", "image/png")]
    assert count_image_entries(path) == 2


@pytest.mark.parametrize("name, reason", [
    ("../../etc/passwd.jpg", "traversal"),
    ("photos/../../up.jpg", "traversal"),
    ("/abs.jpg", "absolute"),
    ("..\\win.jpg", "traversal"),
    ("photos\\..\\..\\win.jpg", "traversal"),
    ("\\\\server\\share\\x.jpg", "absolute"),
    ("C:\\Windows\\x.jpg", "drive letter"),
    ("c:x.jpg", "drive letter"),
    ("x.jpg\x00.txt", "NUL"),
])
def test_unsafe_names_are_reported_and_the_archive_goes_on(tmp_path: Path, name: str, reason: str) -> None:
    path = write(tmp_path, raw_zip([raw_entry(name, JPEG), raw_entry("ok.jpg", JPEG)]))

    entries = read_all(path)

    assert summary(entries) == [(0, name, UNSAFE_PATH), (1, "ok.jpg", "image/jpeg")]
    assert isinstance(entries[0], SkippedEntry) and reason in entries[0].reason
    assert count_image_entries(path) == 1
    assert list(tmp_path.iterdir()) == [path]  # nothing is ever written


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("inside.jpg")
        info.size = len(JPEG)
        tar.addfile(info, io.BytesIO(JPEG))
    return buf.getvalue()


def test_nested_archives_are_skipped_by_extension_or_magic(tmp_path: Path) -> None:
    inner = make_zip([("inside.jpg", JPEG)])
    files = [("inner.zip", inner), ("more.tar.gz", b"whatever"), ("sneaky.jpg", inner),
             ("gz.jpg", zlib.compress(JPEG, wbits=31)), ("tar.png", _tar_bytes()),
             ("rar.webp", b"Rar!\x1a\x07\x01\x00" + bytes(100)), ("ok.png", PNG)]
    path = write(tmp_path, make_zip(files))

    assert summary(read_all(path)) == [(0, "inner.zip", NESTED_ARCHIVE), (1, "more.tar.gz", NESTED_ARCHIVE),
                                       (2, "sneaky.jpg", NESTED_ARCHIVE), (3, "gz.jpg", NESTED_ARCHIVE),
                                       (4, "tar.png", NESTED_ARCHIVE), (5, "rar.webp", NESTED_ARCHIVE),
                                       (6, "ok.png", "image/png")]


def test_non_images_and_empty_entries_are_reported(tmp_path: Path) -> None:
    files = [("notes.txt", b"hello"), ("fake.jpg", b"<html>not a photo</html>" * 20), ("empty.jpg", b""),
             ("a.gif", b"GIF89a" + bytes(50)), ("ok.jpg", JPEG)]
    path = write(tmp_path, make_zip(files))

    entries = read_all(path)

    assert summary(entries) == [(0, "notes.txt", NOT_AN_IMAGE), (1, "fake.jpg", NOT_AN_IMAGE),
                                (2, "empty.jpg", NOT_AN_IMAGE), (3, "a.gif", NOT_AN_IMAGE),
                                (4, "ok.jpg", "image/jpeg")]
    assert all(e.reason for e in entries if isinstance(e, SkippedEntry))


def test_unsupported_compression_is_skipped_and_the_archive_goes_on(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lzma.jpg", JPEG, compress_type=zipfile.ZIP_LZMA)
        zf.writestr("ok.jpg", JPEG, compress_type=zipfile.ZIP_DEFLATED)
    path = write(tmp_path, buf.getvalue())

    entries = read_all(path)

    assert summary(entries) == [(0, "lzma.jpg", UNSUPPORTED_COMPRESSION), (1, "ok.jpg", "image/jpeg")]
    assert isinstance(entries[0], SkippedEntry) and "LZMA" in entries[0].reason


# --- encryption -----------------------------------------------------------------------------
def test_zipcrypto_entry_is_skipped_and_the_archive_goes_on(tmp_path: Path) -> None:
    data = raw_zip([raw_entry("a.jpg", JPEG), zipcrypto_entry("secret.jpg", JPEG), raw_entry("c.png", PNG)])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # the fixture really is ZipCrypto-encrypted
        assert zf.read("secret.jpg", pwd=b"secret") == JPEG
    path = write(tmp_path, data)

    assert summary(read_all(path)) == [(0, "a.jpg", "image/jpeg"), (1, "secret.jpg", ENCRYPTED),
                                       (2, "c.png", "image/png")]
    assert count_image_entries(path) == 2


def test_aes_entry_is_skipped_and_the_archive_goes_on(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED) as zf:
        zf.writestr("a.jpg", JPEG)
        zf.setpassword(b"secret")
        zf.setencryption(pyzipper.WZ_AES, nbits=256)
        zf.writestr("secret.jpg", JPEG)
        zf.encryption, zf.pwd = None, None
        zf.writestr("c.png", PNG)
    path = write(tmp_path, buf.getvalue())

    assert summary(read_all(path)) == [(0, "a.jpg", "image/jpeg"), (1, "secret.jpg", ENCRYPTED),
                                       (2, "c.png", "image/png")]


def test_encrypted_entry_in_a_cut_archive_is_reported_then_the_archive_fails(tmp_path: Path) -> None:
    data = raw_zip([raw_entry("a.jpg", JPEG), zipcrypto_entry("secret.jpg", JPEG), raw_entry("c.png", PNG)])
    path = write(tmp_path, data[:-30])  # no end record: nothing tells where the encrypted entry ends

    seen, error = read_until_error(path)

    # stream-unzip refuses the header before giving its name, and there is no directory to ask.
    assert summary(seen) == [(0, "a.jpg", "image/jpeg"), (1, "#1", ENCRYPTED)]
    assert error is not None and error.code == TRUNCATED_ARCHIVE and "entry 1" in error.message
    assert count_image_entries(path) is None


# --- corruption and truncation --------------------------------------------------------------
def test_crc_mismatch_in_a_stored_entry_is_skipped(tmp_path: Path) -> None:
    data = bytearray(make_zip([("a.jpg", JPEG), ("b.png", PNG), ("c.webp", WEBP)], zipfile.ZIP_STORED))
    data[data.index(PNG) + 100] ^= 0xFF
    path = write(tmp_path, bytes(data))

    entries = read_all(path)

    assert summary(entries) == [(0, "a.jpg", "image/jpeg"), (1, "b.png", CORRUPT_ENTRY), (2, "c.webp", "image/webp")]
    assert isinstance(entries[1], SkippedEntry) and "CRC" in entries[1].reason


def test_crc_mismatch_in_a_cut_archive_still_reads_on_to_the_cut(tmp_path: Path) -> None:
    data = bytearray(make_zip([("a.jpg", JPEG), ("b.png", PNG), ("c.webp", WEBP)], zipfile.ZIP_STORED))
    data[data.index(PNG) + 100] ^= 0xFF
    cut = data.index(b"PK\x01\x02")  # the whole central directory is gone
    path = write(tmp_path, bytes(data[:cut]))

    seen, error = read_until_error(path)

    # Sizes come from the local headers, so the stream stays in step past the bad entry.
    assert summary(seen) == [(0, "a.jpg", "image/jpeg"), (1, "b.png", CORRUPT_ENTRY), (2, "c.webp", "image/webp")]
    assert error is not None and error.code == TRUNCATED_ARCHIVE


def test_crc_mismatch_in_a_stored_entry_without_sizes_is_skipped(tmp_path: Path) -> None:
    # zipfile writing STORED entries to a pipe: sizes only in data descriptors, read directly.
    data = bytearray(make_zip([("a.jpg", JPEG), ("b.png", PNG), ("c.webp", WEBP)], zipfile.ZIP_STORED, True))
    data[data.index(PNG) + 100] ^= 0xFF
    path = write(tmp_path, bytes(data))

    assert summary(read_all(path)) == [(0, "a.jpg", "image/jpeg"), (1, "b.png", CORRUPT_ENTRY),
                                       (2, "c.webp", "image/webp")]


def test_bad_crc_in_a_data_descriptor_is_skipped_via_the_central_directory(tmp_path: Path) -> None:
    data = bytearray(make_zip([("a.jpg", JPEG), ("b.png", PNG), ("c.webp", WEBP)], streamed=True))
    second_descriptor = data.index(b"PK\x07\x08", data.index(b"PK\x07\x08") + 4)
    data[second_descriptor + 4] ^= 0xFF
    path = write(tmp_path, bytes(data))

    assert summary(read_all(path)) == [(0, "a.jpg", "image/jpeg"), (1, "b.png", CORRUPT_ENTRY),
                                       (2, "c.webp", "image/webp")]


def test_damaged_deflate_data_is_skipped_via_the_central_directory(tmp_path: Path) -> None:
    noisy = JPEG + random.Random(2).randbytes(4000)
    entries = [raw_entry("a.jpg", JPEG, zipfile.ZIP_DEFLATED), raw_entry("b.jpg", noisy, zipfile.ZIP_DEFLATED),
               raw_entry("c.png", PNG, zipfile.ZIP_DEFLATED)]
    entries[1].payload = entries[1].payload[:50] + bytes([0xFF] * 64) + entries[1].payload[114:]
    path = write(tmp_path, raw_zip(entries))

    assert summary(read_all(path)) == [(0, "a.jpg", "image/jpeg"), (1, "b.jpg", CORRUPT_ENTRY),
                                       (2, "c.png", "image/png")]


def test_junk_between_entries_is_stepped_over_via_the_central_directory(tmp_path: Path) -> None:
    entries = [raw_entry("a.jpg", JPEG), raw_entry("b.png", PNG), raw_entry("c.webp", WEBP)]
    path = write(tmp_path, raw_zip(entries, junk_after={0: b"GARBAGE!" * 10}))

    assert summary(read_all(path)) == [(0, "a.jpg", "image/jpeg"), (1, "b.png", "image/png"),
                                       (2, "c.webp", "image/webp")]


def test_a_central_directory_that_lies_cannot_loop_or_mislead(tmp_path: Path) -> None:
    # The directory names another file for the encrypted entry, so it cannot be trusted to
    # find the next one: the entry is reported and the archive fails instead of guessing.
    secret = replace(zipcrypto_entry("secret.jpg", JPEG), cd_name=b"other.jpg")
    path = write(tmp_path, raw_zip([raw_entry("a.jpg", JPEG), secret, raw_entry("c.png", PNG)]))

    seen, error = read_until_error(path)

    assert summary(seen) == [(0, "a.jpg", "image/jpeg"), (1, "secret.jpg", ENCRYPTED)]
    assert error is not None and error.code == CORRUPT_ARCHIVE


@pytest.mark.parametrize("where", ["backwards", "at the skipped entry"])
def test_a_directory_pointing_back_cannot_make_the_reader_loop(tmp_path: Path, where: str) -> None:
    first = raw_entry("a.jpg", JPEG)
    secret = zipcrypto_entry("secret.jpg", JPEG)
    # The record after the encrypted entry points back at the first entry (name and all), or
    # at the encrypted entry itself under another name.
    if where == "backwards":
        last = raw_entry("c.png", PNG, cd_offset=0, cd_name=b"a.jpg")
    else:
        last = raw_entry("c.png", PNG, cd_offset=30 + len(first.name) + len(first.payload))
    path = write(tmp_path, raw_zip([first, secret, last]))

    seen, error = read_until_error(path)

    assert summary(seen) == [(0, "a.jpg", "image/jpeg"), (1, "secret.jpg", ENCRYPTED)]
    assert error is not None and error.code == CORRUPT_ARCHIVE


def test_a_directory_that_differs_from_the_stream_is_not_used(tmp_path: Path) -> None:
    renamed = raw_entry("a.jpg", JPEG, cd_name=b"other.jpg")
    entries = [renamed, raw_entry("b.png", PNG), raw_entry("c.txt", b"text")]
    path = write(tmp_path, raw_zip(entries))

    # Nothing needs the directory here: the stream alone reads every entry.
    assert summary(read_all(path)) == [(0, "a.jpg", "image/jpeg"), (1, "b.png", "image/png"),
                                       (2, "c.txt", NOT_AN_IMAGE)]

    # An encrypted entry later needs it to be skipped, but it stopped matching at entry 0.
    path = write(tmp_path, raw_zip([*entries[:2], zipcrypto_entry("secret.jpg", JPEG), entries[2]]))
    seen, error = read_until_error(path)
    assert summary(seen) == [(0, "a.jpg", "image/jpeg"), (1, "b.png", "image/png"), (2, "#2", ENCRYPTED)]
    assert error is not None and error.code == CORRUPT_ARCHIVE


def _cut_points(data: bytes) -> dict[str, int]:
    second_header = data.index(b"PK\x03\x04", 4)
    central = data.index(b"PK\x01\x02")
    end = data.index(b"PK\x05\x06")
    return {"inside the first entry": 40, "inside the second header": second_header + 10,
            "inside the second entry's data": second_header + 60, "at the central directory": central,
            "inside the central directory": central + 30, "inside the end record": end + 10}


@pytest.mark.parametrize("streamed", [False, True], ids=["sizes-in-headers", "data-descriptors"])
@pytest.mark.parametrize("where", list(_cut_points(make_zip([("a.jpg", JPEG), ("b.png", PNG)]))))
def test_truncated_archive_yields_the_complete_entries_then_fails(tmp_path: Path, where: str, streamed: bool) -> None:
    data = make_zip([("a.jpg", JPEG), ("b.png", PNG)], streamed=streamed)
    cut = _cut_points(data)[where]
    path = write(tmp_path, data[:cut])

    seen, error = read_until_error(path)

    complete = [(0, "a.jpg", "image/jpeg"), (1, "b.png", "image/png")]
    expected = complete[:0] if cut < data.index(b"PK\x03\x04", 4) else complete[:1]
    if cut >= data.index(b"PK\x01\x02"):
        expected = complete
    assert summary(seen) == expected
    assert error is not None and error.code == TRUNCATED_ARCHIVE
    assert "Upload the whole file again" in error.message
    assert count_image_entries(path) is None


@pytest.mark.parametrize("content, phrase", [
    (b"", "empty"),
    (JPEG, "an image"),
    (b"PK", "not a ZIP"),
    (random.Random(3).randbytes(5000), "not a ZIP"),
    (zlib.compress(b"x" * 100, wbits=31), "gzip"),
    (b"Rar!\x1a\x07\x00" + bytes(100), "RAR"),
    (b"PK\x07\x08" + bytes(100), "split"),
])
def test_not_a_zip_fails_before_streaming(tmp_path: Path, content: bytes, phrase: str) -> None:
    path = write(tmp_path, content)

    with pytest.raises(ArchiveError) as caught:
        next(iter_archive(path))

    assert caught.value.code == NOT_A_ZIP and phrase in caught.value.message
    assert isinstance(caught.value, PermanentJobError) and caught.value.permanent


def test_an_empty_zip_yields_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, make_zip([]))

    assert read_all(path) == []
    assert count_image_entries(path) == 0


# --- limits ---------------------------------------------------------------------------------
def test_too_many_entries_fails_up_front_from_the_central_directory(tmp_path: Path) -> None:
    path = write(tmp_path, make_zip([(f"{i}.jpg", JPEG) for i in range(11)]))

    seen, error = read_until_error(path, ArchiveLimits(max_entries=10))

    assert seen == []
    assert error is not None and error.code == TOO_MANY_ENTRIES and "ZIP_MAX_ENTRIES=10" in error.message
    assert len(read_all(path, ArchiveLimits(max_entries=11))) == 11


def test_too_many_entries_fails_while_streaming_without_a_directory(tmp_path: Path) -> None:
    data = make_zip([(f"d{i}/", b"") for i in range(8)] + [(f"{i}.jpg", JPEG) for i in range(3)])
    path = write(tmp_path, data[:data.index(b"PK\x01\x02")])

    seen, error = read_until_error(path, ArchiveLimits(max_entries=10))

    assert summary(seen) == [(8, "0.jpg", "image/jpeg"), (9, "1.jpg", "image/jpeg")]  # directories count
    assert error is not None and error.code == TOO_MANY_ENTRIES


def test_total_image_bytes_over_the_limit_fails_up_front(tmp_path: Path) -> None:
    path = write(tmp_path, make_zip([(f"{i}.jpg", JPEG) for i in range(3)]))

    seen, error = read_until_error(path, ArchiveLimits(max_total_bytes=int(len(JPEG) * 2.5)))

    assert seen == []
    assert error is not None and error.code == ARCHIVE_TOO_LARGE and "ZIP_MAX_TOTAL_BYTES" in error.message


def test_total_image_bytes_over_the_limit_fails_while_streaming(tmp_path: Path) -> None:
    # No image extensions, so the directory's estimate does not see them: the stream must.
    path = write(tmp_path, make_zip([(f"{i}.bin", JPEG) for i in range(3)]))

    seen, error = read_until_error(path, ArchiveLimits(max_total_bytes=int(len(JPEG) * 2.5)))

    assert summary(seen) == [(0, "0.bin", "image/jpeg"), (1, "1.bin", "image/jpeg")]
    assert error is not None and error.code == ARCHIVE_TOO_LARGE


@pytest.mark.parametrize("streamed", [False, True], ids=["sizes-in-headers", "data-descriptors"])
def test_entry_over_the_size_limit_is_skipped_without_reading_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool) -> None:
    big = JPEG + random.Random(4).randbytes(3 * MiB)
    path = write(tmp_path, make_zip([("big.jpg", big), ("ok.png", PNG)], zipfile.ZIP_STORED, streamed))

    entries, read, _ = _measure(monkeypatch, lambda: read_all(path, ArchiveLimits(max_entry_bytes=2 * MiB)))

    assert summary(entries) == [(0, "big.jpg", ENTRY_TOO_LARGE), (1, "ok.png", "image/png")]
    assert isinstance(entries[0], SkippedEntry) and "ZIP_MAX_ENTRY_BYTES" in entries[0].reason
    assert read < MiB  # its size is known (local header or central directory): jumped over


def test_entry_that_inflates_past_its_declared_size_is_cut_off(tmp_path: Path) -> None:
    # Declares 5 KiB but inflates to 8 MiB, under the ratio guard's reach: the size guard stops it.
    liar = bomb_entry("liar.jpg", 8, declared=5000, prefix=JPEG)
    path = write(tmp_path, raw_zip([liar, raw_entry("ok.png", PNG)]))

    assert summary(read_all(path, ArchiveLimits(max_entry_bytes=2 * MiB))) == [
        (0, "liar.jpg", ENTRY_TOO_LARGE), (1, "ok.png", "image/png")]


def test_limits_from_settings_and_environment() -> None:
    settings = Settings.from_env({"ZIP_MAX_ENTRIES": "7", "ZIP_MAX_TOTAL_BYTES": "1000",
                                  "ZIP_MAX_ENTRY_BYTES": "100", "ZIP_MAX_RATIO": "12.5"})

    assert ArchiveLimits.from_settings(settings) == ArchiveLimits(7, 1000, 100, 12.5)
    assert ArchiveLimits.from_settings(Settings()) == ArchiveLimits()


# --- bombs ----------------------------------------------------------------------------------
class _CountingOpen:
    """Stands in for open() inside core.zipstream.archive and counts the bytes the reader reads."""

    def __init__(self) -> None:
        self.read = 0

    def __call__(self, path: Any, mode: str = "r") -> Any:
        handle = open(path, mode)
        counter = self

        class Counted:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                handle.close()

            def read(self, size: int = -1) -> bytes:
                data = handle.read(size)
                counter.read += len(data)
                return data

            def __getattr__(self, name: str) -> Any:
                return getattr(handle, name)

        return Counted()


def _measure(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Any]) -> tuple[Any, int, int]:
    """run()'s result, the bytes core.zipstream.archive read from disk, and the peak of Python allocations."""
    counting = _CountingOpen()
    monkeypatch.setattr(archive, "open", counting, raising=False)
    tracemalloc.start()
    try:
        result = run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, counting.read, peak


def test_honest_one_gib_bomb_is_skipped_by_its_declared_size_without_inflating(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = bomb_entry("bomb.jpg", 1024, declared=1024 * MiB, prefix=JPEG)
    path = write(tmp_path, raw_zip([bomb, raw_entry("ok.png", PNG)]))

    entries, read, peak = _measure(monkeypatch, lambda: read_all(path))

    assert summary(entries) == [(0, "bomb.jpg", ENTRY_TOO_LARGE), (1, "ok.png", "image/png")]
    assert read < len(bomb.payload) // 2  # jumped over via the central directory
    assert peak < 4 * MiB


@pytest.mark.parametrize("prefix", [b"", JPEG], ids=["zeros", "jpeg-then-zeros"])
def test_lying_one_gib_bomb_is_stopped_by_the_ratio_guard(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: bytes) -> None:
    bomb = bomb_entry("bomb.jpg", 1024, declared=len(prefix) + 1000, prefix=prefix)  # lies in both headers
    path = write(tmp_path, raw_zip([bomb, raw_entry("ok.png", PNG)]))

    entries, read, peak = _measure(monkeypatch, lambda: read_all(path))

    assert summary(entries) == [(0, "bomb.jpg", COMPRESSION_RATIO), (1, "ok.png", "image/png")]
    assert isinstance(entries[0], SkippedEntry) and "ZIP_MAX_RATIO" in entries[0].reason
    assert read < len(bomb.payload) // 2  # a sliver of the 1 MiB of deflate data, then a jump
    # Zeros are known not to be an image at once; a JPEG-looking bomb is held until the guard trips.
    assert peak < (4 * MiB if not prefix else ArchiveLimits().max_entry_bytes)


def test_lying_bomb_in_a_cut_archive_fails_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = bomb_entry("bomb.jpg", 1024, declared=1000)
    data = raw_zip([raw_entry("a.jpg", JPEG), bomb, raw_entry("ok.png", PNG)])
    path = write(tmp_path, data[:-40])

    (seen, error), read, peak = _measure(monkeypatch, lambda: read_until_error(path))

    assert summary(seen) == [(0, "a.jpg", "image/jpeg"), (1, "bomb.jpg", COMPRESSION_RATIO)]
    assert error is not None and error.code == ARCHIVE_TOO_LARGE and "bomb.jpg" in error.message
    assert read < len(bomb.payload) // 2 and peak < 4 * MiB


def test_ratio_guard_catches_a_bomb_under_the_entry_size_limit(tmp_path: Path) -> None:
    flat = bomb_entry("flat.png", 30, declared=len(PNG) + 30 * MiB, prefix=PNG)  # honest, 30 MiB < 50 MiB

    path = write(tmp_path, raw_zip([flat, raw_entry("ok.jpg", JPEG)]))

    assert summary(read_all(path)) == [(0, "flat.png", COMPRESSION_RATIO), (1, "ok.jpg", "image/jpeg")]


def test_memory_stays_flat_over_a_large_archive(tmp_path: Path) -> None:
    photo = JPEG + random.Random(5).randbytes(3 * MiB)
    path = write(tmp_path, make_zip([(f"{i}.jpg", photo) for i in range(20)], zipfile.ZIP_STORED))
    assert path.stat().st_size > 60 * MiB

    tracemalloc.start()
    try:
        images = sum(1 for entry in iter_archive(path) if isinstance(entry, ImageEntry))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert images == 20
    assert peak < 3 * len(photo) + 2 * MiB  # one entry (chunks + joined copy), never the archive


# --- the rest of the contract ---------------------------------------------------------------
def test_stopping_early_closes_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, make_zip([("a.jpg", JPEG), ("b.png", PNG)]))

    entries = iter_archive(path)
    first = next(entries)
    entries.close()  # type: ignore[attr-defined]

    assert isinstance(first, ImageEntry) and first.name == "a.jpg"


def test_count_image_entries_reads_zip64_end_records(tmp_path: Path) -> None:
    # More than 65535 entries: zipfile writes ZIP64 end records.
    path = write(tmp_path, make_zip([(f"{i}.jpg" if i % 2 else f"{i}.txt", b"x") for i in range(70_000)],
                                    zipfile.ZIP_STORED))

    assert count_image_entries(path) == 35_000
    assert count_image_entries(path, ArchiveLimits(max_entries=1000)) == 500  # stops scanning early
    skipped = sum(1 for entry in iter_archive(path) if isinstance(entry, SkippedEntry))
    assert skipped == 70_000  # b"x" is no image; every entry was streamed and matched the directory


def test_count_image_entries_is_none_when_the_directory_is_unreadable(tmp_path: Path) -> None:
    data = make_zip([("a.jpg", JPEG)])
    assert count_image_entries(write(tmp_path, data[:-5], "cut.zip")) is None
    assert count_image_entries(write(tmp_path, JPEG, "photo.jpg")) is None
    wrong_offset = data[:-6] + struct.pack("<L", 7) + data[-2:]  # the end record points elsewhere
    assert count_image_entries(write(tmp_path, wrong_offset, "offset.zip")) is None
    assert count_image_entries(write(tmp_path, data + b"trailing junk", "junk.zip")) == 1  # as zipfile does


def test_sniffing_matches_jobs_fetch() -> None:
    samples = [JPEG, PNG, WEBP, b"", b"RIFF\x00\x00\x00\x00WEBP", b"RIFF\x00\x00\x00\x00WAVE", b"GIF89a",
               b"\xff\xd8", b"<html>", b"\x89PNG\r\n\x1a"]
    assert [zip_entries.sniff_image(s) for s in samples] == [fetch.sniff_image_type(s) for s in samples]


def test_importing_it_stays_light() -> None:
    code = ("import sys, core.zipstream.archive; "
            "heavy = [m for m in ('stream_unzip', 'Crypto', 'requests', 'cv2', 'numpy') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_throughput_of_tiny_entries(tmp_path: Path) -> None:
    """Entries/s for 20,000 tiny images (printed, not asserted: shared machines vary)."""
    n = 20_000
    path = write(tmp_path, make_zip([(f"photos/{i:05}.jpg", JPEG) for i in range(n)]))

    started = time.perf_counter()
    images = sum(1 for entry in iter_archive(path) if isinstance(entry, ImageEntry))
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    counted = count_image_entries(path)
    count_elapsed = time.perf_counter() - started

    assert images == n and counted == n
    print(f"\niter_archive: {n} entries of {len(JPEG)} B (deflated) in {elapsed:.2f} s = {n / elapsed:,.0f} "
          f"entries/s; count_image_entries: {count_elapsed * 1000:.0f} ms")


def test_the_file_is_only_read_never_written(tmp_path: Path) -> None:
    path = write(tmp_path, make_zip([("a.jpg", JPEG), ("../b.jpg", JPEG)]))
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)

    read_all(path)

    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.zip"]
