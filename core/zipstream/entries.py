"""What one ZIP entry is, from its name and first bytes: the rules core.zipstream.archive applies.

Stdlib only (stream-unzip is imported only to classify its exceptions). Skip codes are what a
batch's per-entry report shows; the reasons say what the vendor can do about it.
"""
from __future__ import annotations

import re

from core.contracts import sniff_image_type as sniff_image

# SkippedEntry codes (one entry; the batch goes on). NOT_AN_IMAGE is core.errors' code.
from core.errors import (  # noqa: F401 (the skip codes, re-exported where entries are classified)
    COMPRESSION_RATIO,
    CORRUPT_ENTRY,
    ENCRYPTED,
    ENTRY_TOO_LARGE,
    NESTED_ARCHIVE,
    NOT_AN_IMAGE,
    UNSAFE_PATH,
    UNSUPPORTED_COMPRESSION,
)
from core.zipstream import directory as zd

SNIFF_BYTES = 262  # JPEG/PNG/WebP magic, and tar's "ustar" at 257
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_ARCHIVE_EXTENSIONS = (".zip", ".zipx", ".jar", ".tar", ".tgz", ".gz", ".bz2", ".tbz2", ".xz", ".txz",
                       ".zst", ".7z", ".rar", ".cab", ".lz", ".lzma", ".z", ".iso")
_ARCHIVE_MAGIC = ((b"PK\x03\x04", "a ZIP"), (b"PK\x05\x06", "a ZIP"), (b"PK\x07\x08", "a split ZIP"),
                  (b"\x1f\x8b", "a gzip"), (b"BZh", "a bzip2"), (b"\xfd7zXZ\x00", "an xz"),
                  (b"7z\xbc\xaf\x27\x1c", "a 7z"), (b"Rar!\x1a\x07", "a RAR"),
                  (b"\x28\xb5\x2f\xfd", "a zstd"), (b"MSCF", "a CAB"))
_METHODS = {6: "Implode", 14: "LZMA", 18: "IBM TERSE", 19: "LZ77", 93: "Zstandard", 95: "xz",
            96: "JPEG variant", 97: "WavPack", 98: "PPMd", 99: "AES"}
_DRIVE = re.compile(r"[A-Za-z]:")
IGNORE = ("", "")  # verdict: skip without a report
_NESTED_BY_NAME = NESTED_ARCHIVE, "archives inside the ZIP are not opened; add their images to the ZIP itself"


def decode_name(raw: bytes, flags: int | None) -> str:
    """Decode as the UTF-8 flag says; unknown flags (no directory): UTF-8 if valid, else cp437."""
    if flags is not None:
        return raw.decode("utf-8", "replace") if flags & zd.FLAG_UTF8 else raw.decode("cp437")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def name_verdict(name: str) -> tuple[str, str] | None:
    """None to read the entry, IGNORE to skip it silently, else (code, reason) to report."""
    if ("\x00" in name or "\\" in name or "/." in name or name.endswith("/") or name[1:2] == ":"
            or name.startswith((".", "/", "__MACOSX"))):
        return _unusual_name_verdict(name)
    if name.lower().endswith(_ARCHIVE_EXTENSIONS):
        return _NESTED_BY_NAME
    return None


def _unusual_name_verdict(name: str) -> tuple[str, str] | None:
    """name_verdict for names with anything that may be unsafe, a directory or hidden."""
    if "\x00" in name:
        return UNSAFE_PATH, "the name contains a NUL byte"
    path = name.replace("\\", "/")
    if path.startswith("/"):
        return UNSAFE_PATH, "absolute path"
    if _DRIVE.match(path):
        return UNSAFE_PATH, "the name starts with a drive letter"
    parts = path.split("/")
    if ".." in parts:
        return UNSAFE_PATH, "path traversal ('..' segment)"
    if path.endswith("/"):
        return IGNORE  # a directory
    parts = [part for part in parts if part not in ("", ".")]
    if not parts or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
        return IGNORE
    if parts[-1].lower().endswith(_ARCHIVE_EXTENSIONS):
        return _NESTED_BY_NAME
    return None




def content_verdict(head: bytes) -> tuple[str, str]:
    """The skip for an entry whose first bytes are not an image."""
    if not head:
        return NOT_AN_IMAGE, "the entry is empty"
    for magic, what in _ARCHIVE_MAGIC:
        if head.startswith(magic):
            return NESTED_ARCHIVE, f"the entry is {what} archive; add its images to the ZIP itself"
    if head[257:262] == b"ustar":
        return NESTED_ARCHIVE, "the entry is a tar archive; add its images to the ZIP itself"
    return NOT_AN_IMAGE, "the content is not a JPEG, PNG or WebP image"


def describe_non_zip(head: bytes) -> str:
    """Why an upload starting with ``head`` is refused as not a ZIP."""
    if not head:
        return "the upload is empty: expected a ZIP archive"
    what = sniff_image(head)
    if what:
        return f"the upload is an image ({what}), not a ZIP archive"
    if head.startswith((b"PK\x07\x08", b"PK00")):
        return "split (multi-part) ZIP archives are not supported: upload one ZIP file"
    for magic, kind in _ARCHIVE_MAGIC:
        if head.startswith(magic):
            return f"the upload is {kind} archive: only ZIP is accepted"
    return "the upload is not a ZIP archive (it does not start with a ZIP header)"


def header_verdict(exc: Exception) -> tuple[str, str]:
    """The skip for an entry whose local header stream-unzip refused."""
    import stream_unzip as su

    if isinstance(exc, su.UnsupportedFlagsError):
        bits: tuple[int, ...] = tuple(exc.args[0]) if exc.args else ()
        if len(bits) > 6 and (bits[0] or bits[6]):
            return ENCRYPTED, "the entry is encrypted (strong encryption); re-zip it without a password"
        return UNSUPPORTED_COMPRESSION, "the entry uses ZIP features we cannot read; re-zip with Deflate"
    if isinstance(exc, su.UnsupportedCompressionTypeError):
        method = exc.args[0] if exc.args else "?"
        label = f"{method} ({_METHODS[method]})" if isinstance(method, int) and method in _METHODS else f"{method}"
        return UNSUPPORTED_COMPRESSION, f"compression method {label} is not supported; re-zip with Deflate"
    if isinstance(exc, su.MissingPasswordError | su.PasswordError | su.MissingAESExtraError
                  | su.TruncatedAESExtraError | su.InvalidAESKeyLengthError):
        return ENCRYPTED, "the entry is password-protected; re-zip it without a password"
    return CORRUPT_ENTRY, f"the entry's header is unreadable ({type(exc).__name__})"


def corrupt_reason(exc: Exception) -> str:
    import stream_unzip as su

    if isinstance(exc, su.CRC32IntegrityError):
        return "CRC mismatch: the entry's data is damaged"
    if isinstance(exc, su.SizeIntegrityError):
        return "the entry's size does not match its header"
    if isinstance(exc, su.UnexpectedSignatureError):
        return "the entry's data descriptor is damaged"
    return f"the entry's compressed data is damaged ({type(exc).__name__})"
