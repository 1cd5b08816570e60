"""The hostile inputs of tests/reliability/hostile.py, as data: SSRF URL spellings, image files
that lie, ZIP archives that attack the extractor, JSON values of every wrong type.

Only generators live here (no stack, no HTTP), so the corpus can be read, and grown, on its
own. Each input says what a clean outcome is: the error codes a job or ZIP entry may end with.
"""
from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from urllib.parse import quote

from PIL import Image

from tests.core.test_archive import Raw, bomb_entry, raw_entry, raw_zip, zipcrypto_entry

# Codes a worker uses for a refused or unusable URL (core/errors.py): the SSRF corpus must end there.
SSRF_CODES = frozenset({"FORBIDDEN_ADDRESS", "INVALID_URL"})
# Codes that say "this file is not an image we take" (fetch sniffing, Pillow header checks).
IMAGE_CODES = frozenset({"NOT_AN_IMAGE", "IMAGE_TOO_LARGE"})


@dataclass(frozen=True)
class UrlCase:
    """A photo URL and the error codes its job may end with (None: refused at submit only)."""

    label: str
    url: str
    codes: frozenset[str] = SSRF_CODES


def ssrf_urls(canary_port: int, api_port: int, redis_port: int, redirector: str, full: bool) -> list[UrlCase]:
    """Direct and redirected URLs to loopback, private, link-local and metadata addresses.

    Loopback spellings point at the canary port, so a fetch that got through would be counted
    by the canary server; the API's and Redis's own ports are targets too.
    """
    c = canary_port
    loopback = [
        f"http://127.0.0.1:{c}/", f"http://localhost:{c}/", f"http://LocalHost:{c}/", f"http://127.1:{c}/",
        f"http://2130706433:{c}/", f"http://0177.0.0.1:{c}/", f"http://0x7f.1:{c}/", f"http://0x7f000001:{c}/",
        f"http://017700000001:{c}/", f"http://127.000.000.001:{c}/", f"http://0x7F.0.0.1:{c}/",
        f"http://[::1]:{c}/", f"http://[::ffff:127.0.0.1]:{c}/", f"http://[::ffff:7f00:1]:{c}/",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{c}/", f"http://[::127.0.0.1]:{c}/", f"http://[64:ff9b::7f00:1]:{c}/",
        f"http://0.0.0.0:{c}/", f"http://0:{c}/", f"http://[::]:{c}/", f"https://127.0.0.1:{c}/",
        f"http://127.0.0.1:{api_port}/api/worker/health", f"http://127.0.0.1:{redis_port}/",
    ]
    internal = [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://169.254.169.254/computeMetadata/v1/", "http://2852039166/latest/meta-data/",
        "http://0xa9fea9fe/latest/meta-data/", "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/", "http://100.100.100.200/latest/meta-data/",
        "http://169.254.170.2/v2/credentials", "http://10.0.0.1/", "http://172.16.0.1/", "http://192.168.1.1/",
        "http://100.64.0.1/", "http://198.18.0.1/", "http://224.0.0.1/", "http://255.255.255.255/",
        "http://[fc00::1]/", "http://[fe80::1]/", "http://[ff02::1]/", "http://[2002:7f00:1::]/",
        "http://[2001:db8::1]/",
    ]
    cases = [UrlCase(f"direct {url}", url) for url in loopback + internal]
    # Refused before anything is queued (validate_photo_url): 400 at submit is the clean answer.
    refused_at_submit = [
        "file:///etc/passwd", f"gopher://127.0.0.1:{redis_port}/_INFO", f"dict://127.0.0.1:{redis_port}/info",
        "ftp://127.0.0.1/", "ldap://127.0.0.1/", "jar:http://127.0.0.1!/", "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)", f"http://user:pw@127.0.0.1:{c}/", f"http://127.0.0.2@127.0.0.1:{c}/",
        "http://[::1", f"http://127.0.0.1:{c}:80/", "http://127.0.0.1:99999/", "http://127.0.0.1:0/",
        f"http://①②⑦.0.0.1:{c}/", f"http://127。0。0。1:{c}/", "http:///etc/passwd", "//127.0.0.1/",
        f"http://127.0.0.1%00.example.com:{c}/", f"http://ex ample.com:{c}/", "",
    ]
    cases += [UrlCase(f"refused {url!r}", url, frozenset()) for url in refused_at_submit]
    # Parser confusion: whichever host wins, the worker must refuse it or find nothing.
    confusion = [f"http://127.0.0.1:{c}\\@{redirector.removeprefix('http://')}/img/missing",
                 f"http://127.0.0.1:{c}/\r\nX-Injected: 1", f"http://127.0.0.1:{c}/#@{redirector}"]
    cases += [UrlCase(f"confusion {url!r}", url, SSRF_CODES | {"IMAGE_NOT_FOUND"}) for url in confusion]
    targets = [
        f"http://127.0.0.1:{c}/", f"http://localhost:{c}/", f"http://[::1]:{c}/", f"http://2130706433:{c}/",
        f"http://0177.0.0.1:{c}/", f"http://[::ffff:127.0.0.1]:{c}/", "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/", f"http://0.0.0.0:{c}/", "file:///etc/passwd", f"gopher://127.0.0.1:{redis_port}/_INFO",
        f"//127.0.0.1:{c}/scheme-relative", f"http://127.0.0.1:{api_port}/api/worker/health",
    ]
    codes = [302] + ([301, 303, 307, 308] if full else [307])
    for status in codes:
        for target in targets if status in (302, 307) else targets[:4]:
            url = f"{redirector}/r/{status}?to={quote(target, safe='')}"
            cases.append(UrlCase(f"redirect {status} -> {target}", url))
    # A chain that ends at loopback after several hops, and a loop past FETCH_MAX_REDIRECTS.
    hop = f"http://127.0.0.1:{c}/"
    for _ in range(3):
        hop = f"{redirector}/r/302?to={quote(hop, safe='')}"
    cases.append(UrlCase("redirect chain of 3 -> loopback", hop))
    cases.append(UrlCase("redirect loop", f"{redirector}/loop", frozenset({"IMAGE_NOT_FOUND"})))
    return cases


# --- images ----------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bilevel(width: int, height: int, extra_chunks: bytes = b"") -> bytes:
    """A 1-bit greyscale PNG of zeros: tiny file, ``width*height`` pixels (a decompression bomb)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    data = bytearray()
    block = row * 64
    for _ in range(height // 64):
        data += comp.compress(block)
    data += comp.compress(row * (height % 64)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + extra_chunks + _png_chunk(b"IDAT", bytes(data))
            + _png_chunk(b"IEND", b""))


def gradient(fmt: str, size: tuple[int, int] = (320, 240)) -> bytes:
    """A face-less photo-like image (a grey ramp) encoded as ``fmt``."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header claims ``width`` x ``height`` pixels."""
    data = bytearray(gradient("JPEG", (16, 16)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen is ``width`` x ``height`` with one 1x1 image in it."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def webp_canvas(width: int, height: int) -> bytes:
    """A WebP VP8X header claiming a huge canvas, with no frame."""
    vp8x = struct.pack("<B3x", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def svg_billion_laughs() -> bytes:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    return (f'<?xml version="1.0"?><!DOCTYPE svg [{entities}<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            '<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"><text>&lol9;&xxe;</text></svg>'
            ).encode()


@dataclass(frozen=True)
class ImageCase:
    """A file served as a photo (and put in ZIPs): its bytes, what the server claims it is,
    the codes a job may end with, and whether completing is also fine (a valid image that
    merely has a wrong name or Content-Type)."""

    name: str
    data: bytes
    content_type: str = "image/jpeg"
    codes: frozenset[str] = IMAGE_CODES
    may_complete: bool = False
    claimed_length: int | None = None  # a Content-Length that lies


def image_cases(full: bool) -> list[ImageCase]:
    """Decompression bombs, truncated and mislabelled files, formats we do not take."""
    photo = gradient("JPEG", (640, 480))
    png = gradient("PNG")
    ztxt_bomb = _png_chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"\x00" * (64 * 1024 * 1024), 9))
    cases = [
        ImageCase("bomb-30000x30000.png", png_bilevel(30000, 30000), "image/png", frozenset({"IMAGE_TOO_LARGE"})),
        ImageCase("over-limit-8000x8000.png", png_bilevel(8000, 8000), "image/png", frozenset({"IMAGE_TOO_LARGE"})),
        ImageCase("claims-65535x65535.jpg", jpeg_claiming(65535, 65535), codes=frozenset({"IMAGE_TOO_LARGE"})),
        ImageCase("claims-0x0.jpg", jpeg_claiming(0, 0), codes=frozenset({"NOT_AN_IMAGE"})),
        ImageCase("truncated.jpg", photo[: len(photo) // 3], codes=frozenset({"NOT_AN_IMAGE", "NO_FACE"})),
        ImageCase("truncated.png", png[: len(png) // 2], "image/png", frozenset({"NOT_AN_IMAGE", "NO_FACE"})),
        ImageCase("header-only.jpg", photo[:600], codes=frozenset({"NOT_AN_IMAGE"})),
        ImageCase("png-named.jpg", png, "image/jpeg", frozenset({"NO_FACE"}), may_complete=True),
        ImageCase("text.jpg", b"just some text, not a photo\n" * 40, codes=frozenset({"NOT_AN_IMAGE"})),
        ImageCase("page.jpg", b"<!doctype html><html><body>login</body></html>" * 20, "text/html",
                  frozenset({"NOT_AN_IMAGE"})),
        ImageCase("laughs.svg", svg_billion_laughs(), "image/svg+xml", frozenset({"NOT_AN_IMAGE"})),
        ImageCase("empty.jpg", b"", codes=frozenset({"NOT_AN_IMAGE"})),
        ImageCase("screen-65535.gif", gif_screen(65535, 65535), "image/gif", frozenset({"NOT_AN_IMAGE"})),
        ImageCase("canvas-16383.webp", webp_canvas(16383, 16383), "image/webp", IMAGE_CODES),
        ImageCase("magic-then-junk.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
                  codes=frozenset({"NOT_AN_IMAGE"})),
        ImageCase("ztxt-bomb.png", png_bilevel(64, 64, ztxt_bomb), "image/png",
                  frozenset({"NOT_AN_IMAGE", "NO_FACE"})),
        ImageCase("lying-length.jpg", photo, claimed_length=400 * 1024 * 1024, codes=frozenset({"IMAGE_TOO_LARGE"})),
    ]
    if full:
        cases += [
            ImageCase("pdf.jpg", b"%PDF-1.4\n" + b"0" * 2000, codes=frozenset({"NOT_AN_IMAGE"})),
            ImageCase("gzip.jpg", b"\x1f\x8b" + zlib.compress(b"x" * 10000),
                      codes=frozenset({"NOT_AN_IMAGE", "NESTED_ARCHIVE"})),  # in a ZIP: an archive by magic
            ImageCase("heic.jpg", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 600, codes=frozenset({"NOT_AN_IMAGE"})),
            ImageCase("bmp.jpg", gradient("BMP"), codes=frozenset({"NOT_AN_IMAGE"})),
            ImageCase("tiff.jpg", gradient("TIFF"), codes=frozenset({"NOT_AN_IMAGE"})),
            ImageCase("claims-65500x1.jpg", jpeg_claiming(65500, 1), codes=frozenset({"NOT_AN_IMAGE", "NO_FACE"})),
            ImageCase("bomb-60000x60000.png", png_bilevel(60000, 60000), "image/png",
                      frozenset({"IMAGE_TOO_LARGE"})),
        ]
    return cases


# --- ZIP archives ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZipCase:
    """An upload for POST /api/batch/upload-zip and how each of its entries may end.

    ``refused``: the upload itself must get a 4xx. ``batch_codes``: codes a failed batch may
    carry. ``entry_codes``: per entry name, the codes its result row may carry (rows not named
    must still be failed or skipped with a code). ``slip``: names that try to leave UPLOAD_DIR.
    """

    label: str
    data: bytes
    refused: bool = False
    batch_codes: frozenset[str] = frozenset()
    entry_codes: dict[str, frozenset[str]] = field(default_factory=dict)


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buf.getvalue()


def _symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (0o120777 << 16)
    return info


def slip_names(token: str) -> list[str]:
    """Entry names that try to write outside the extraction folder; each carries ``token``."""
    deep = "../" * 12
    return [f"../../iq-slip-{token}-1.jpg", f"{deep}tmp/iq-slip-{token}-2.jpg", f"/tmp/iq-slip-{token}-3.jpg",
            f"..\\..\\..\\..\\tmp\\iq-slip-{token}-4.jpg", f"C:\\tmp\\iq-slip-{token}-5.jpg",
            f"ok/./../../../iq-slip-{token}-6.jpg", f"ok/../../{deep}tmp/iq-slip-{token}-7.jpg"]


def zip_cases(token: str, jpeg: bytes, images: list[ImageCase], full: bool) -> list[ZipCase]:
    """Bombs, traversal, symlinks, encryption, truncation, lies about format and structure.

    ``jpeg`` is a real (face-less) photo, so that a guard that failed would really write a file.
    """
    in_zip = [case for case in images if case.claimed_length is None and len(case.data) < 8 << 20]
    image_entry_codes = {case.name: case.codes | ({"NO_FACE"} if case.may_complete else set()) for case in in_zip}
    slip = slip_names(token)
    slip_zip = raw_zip([raw_entry(name, jpeg) for name in slip]
                       + [raw_entry(f"iq-slip-{token}-8.jpg\x00.png".encode(), jpeg)])
    symlinks = _zip([(_symlink(f"iq-slip-{token}-link.jpg", "/etc/passwd"), b"/etc/passwd"),
                     (_symlink("dir-link", "/tmp"), b"/tmp")])
    nested = _zip([("inner.zip", _zip([("x.jpg", jpeg)])), ("inner.jar", _zip([("y.jpg", jpeg)]))])
    photos = _zip([(f"p{i}.jpg", jpeg) for i in range(3)])
    bomb_mib = 1024 if full else 200
    cases = [
        ZipCase("honest bomb (declares its size)", raw_zip([bomb_entry("bomb.jpg", bomb_mib, bomb_mib << 20)]),
                batch_codes=frozenset({"NO_IMAGES", "ARCHIVE_TOO_LARGE"}),
                entry_codes={"bomb.jpg": frozenset({"ENTRY_TOO_LARGE", "COMPRESSION_RATIO"})}),
        ZipCase("lying bomb (declares 1 KiB)", raw_zip([bomb_entry("liar.jpg", bomb_mib, 1024,
                                                                   prefix=b"\xff\xd8\xff\xe0")]),
                batch_codes=frozenset({"NO_IMAGES", "ARCHIVE_TOO_LARGE"}),
                entry_codes={"liar.jpg": frozenset({"ENTRY_TOO_LARGE", "COMPRESSION_RATIO", "CORRUPT_ENTRY"})}),
        ZipCase("too many entries", _zip([(f"e{i}.txt", b"") for i in range(1500 if full else 1100)],
                                         zipfile.ZIP_STORED), batch_codes=frozenset({"TOO_MANY_ENTRIES"})),
        ZipCase("nested archives", nested, batch_codes=frozenset({"NO_IMAGES"}),
                entry_codes={"inner.zip": frozenset({"NESTED_ARCHIVE"}), "inner.jar": frozenset({"NESTED_ARCHIVE"})}),
        ZipCase("zip-slip names", slip_zip, batch_codes=frozenset({"NO_IMAGES"}),
                entry_codes={name: frozenset({"UNSAFE_PATH"}) for name in slip}),
        ZipCase("symlink entries", symlinks, batch_codes=frozenset({"NO_IMAGES"})),
        ZipCase("encrypted entry", raw_zip([zipcrypto_entry("secret.jpg", jpeg)]), batch_codes=frozenset({"NO_IMAGES"}),
                entry_codes={"secret.jpg": frozenset({"ENCRYPTED"})}),
        ZipCase("unsupported compression (LZMA id)",
                raw_zip([replace_method(raw_entry("lzma.jpg", jpeg), 14)]), batch_codes=frozenset({"NO_IMAGES"}),
                entry_codes={"lzma.jpg": frozenset({"UNSUPPORTED_COMPRESSION", "CORRUPT_ENTRY"})}),
        ZipCase("CRC mismatch", raw_zip([replace_crc(raw_entry("crc.jpg", jpeg))]),
                batch_codes=frozenset({"NO_IMAGES"}),
                entry_codes={"crc.jpg": frozenset({"CORRUPT_ENTRY"})}),
        ZipCase("truncated", photos[: len(photos) // 2],
                batch_codes=frozenset({"TRUNCATED_ARCHIVE", "CORRUPT_ARCHIVE"}),
                entry_codes={"p0.jpg": frozenset({"NO_FACE"}), "p1.jpg": frozenset({"NO_FACE"})}),
        ZipCase("only the end record", b"PK\x05\x06" + b"\x00" * 18, batch_codes=frozenset({"NO_IMAGES"})),
        ZipCase("end record that lies", b"PK\x05\x06" + struct.pack("<4H2LH", 0, 0, 9999, 9999, 10**6, 10**6, 0),
                batch_codes=frozenset({"NO_IMAGES", "CORRUPT_ARCHIVE", "TRUNCATED_ARCHIVE", "TOO_MANY_ENTRIES"})),
        ZipCase("ZIP64 entries", _zip64([("z64.txt", b"not an image")]), batch_codes=frozenset({"NO_IMAGES"})),
        ZipCase("hostile images inside", _zip([(case.name, case.data) for case in in_zip]),
                batch_codes=frozenset({"NO_IMAGES"}), entry_codes=image_entry_codes),
        ZipCase("unicode names", _zip([("photo\u202egpj.exe", b"MZ"), ("\U0001f600" * 60 + ".jpg", b"x"),
                                       ("n" * 1000 + ".jpg", b"y"), ("\ufeff.jpg", b"z")]),
                batch_codes=frozenset({"NO_IMAGES"})),
        ZipCase("raw non-UTF-8 name", raw_zip([raw_entry(b"\xff\xfe\x80bad.jpg", b"not an image")]),
                batch_codes=frozenset({"NO_IMAGES"})),
        ZipCase("a JPEG labelled .zip", jpeg, refused=True),
        ZipCase("a gzip labelled .zip", b"\x1f\x8b\x08" + b"\x00" * 64, refused=True),
        ZipCase("a RAR labelled .zip", b"Rar!\x1a\x07\x00" + b"\x00" * 64, refused=True),
        ZipCase("an empty file", b"", refused=True),
        ZipCase("spanned-archive marker", b"PK\x07\x08" + photos, refused=True),
        ZipCase("text", b"hello, I am not a ZIP", refused=True),
    ]
    if full:
        cases += [
            ZipCase("many small non-images", _zip([(f"n{i}.jpg", b"x") for i in range(600)], zipfile.ZIP_STORED),
                    batch_codes=frozenset({"NO_IMAGES"})),
            ZipCase("bomb then photo", raw_zip([bomb_entry("b.jpg", 300, 300 << 20), raw_entry("after.jpg", jpeg)]),
                    batch_codes=frozenset({"NO_IMAGES"}),
                    entry_codes={"b.jpg": frozenset({"ENTRY_TOO_LARGE", "COMPRESSION_RATIO"}),
                                 "after.jpg": frozenset({"NO_FACE"})}),
        ]
    return cases


def replace_method(entry: Raw, method: int) -> Raw:
    """The same entry with another compression method id (one the reader does not support)."""
    return replace(entry, method=method)


def replace_crc(entry: Raw) -> Raw:
    """The same entry with a wrong CRC-32."""
    return replace(entry, crc=entry.crc ^ 0xFFFF)


def _zip64(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name, data in entries:
            with archive.open(name, "w", force_zip64=True) as handle:
                handle.write(data)
    return buf.getvalue()


# --- JSON -------------------------------------------------------------------------------------
def wrong_values(full: bool) -> list[object]:
    """Values of every wrong type and the unicode edge cases, for any JSON field."""
    values: list[object] = [
        None, True, 0, 1e308, [], {}, "", "a" * 5000, "\x00", "\ud800", "\u202eevil", "\U0001f600" * 50,
        "../../etc/passwd", {"$gt": ""},
    ]
    if full:
        values += [-1, 1.5, " ", "%00", [None], "'; DROP TABLE records; --", False, 10**30,
                   -1e308, "\udfff\ud800", "a\nb", "<script>alert(1)</script>", "\ufeff",
                   "\u0000" * 100, "ｆｕｌｌｗｉｄｔｈ", "null", "true", "0", [[[]]], {"a": {"b": {"c": {}}}},
                   "${jndi:ldap://127.0.0.1/a}", "\U0010ffff", "x" * 129]
    return values


def raw_bodies(full: bool) -> list[tuple[str, bytes, str]]:
    """(label, body, Content-Type) that are not a usable JSON object."""
    bodies = [
        ("empty", b"", "application/json"), ("null", b"null", "application/json"),
        ("array", b"[]", "application/json"), ("number", b"1", "application/json"),
        ("string", b'"x"', "application/json"), ("true", b"true", "application/json"),
        ("unterminated", b"{", "application/json"), ("trailing comma", b'{"a":1,}', "application/json"),
        ("invalid UTF-8", b'{"recordId":"\xff\xfe\xc3"}', "application/json"),
        ("nested arrays 10k", b"[" * 10000 + b"]" * 10000, "application/json"),
        ("nested objects 10k", b'{"a":' * 10000 + b"1" + b"}" * 10000, "application/json"),
        ("nested in a field 50k", b'{"recordId":' + b"[" * 50000 + b"]" * 50000 + b"}", "application/json"),
        ("huge body 2 MiB", json.dumps({"recordId": "x" * (2 << 20)}).encode(), "application/json"),
        ("5000-digit number", b'{"priority":' + b"9" * 5000 + b"}", "application/json"),
        ("NaN", b'{"priority":NaN,"recordId":NaN}', "application/json"),
        ("BOM", b"\xef\xbb\xbf{}", "application/json"),
        ("UTF-16", '{"recordId":"a"}'.encode("utf-16"), "application/json; charset=utf-16"),
        ("unknown charset", b"{}", "application/json; charset=ebcdic-xx"),
        ("text/plain JSON", b'{"recordId":"a"}', "text/plain"),
        ("form encoded", b"recordId=a&projectId=b", "application/x-www-form-urlencoded"),
        ("no content type", b'{"recordId":"a"}', ""),
        ("multipart", b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
         "multipart/form-data; boundary=x"),
        ("XML", b"<?xml version='1.0'?><a/>", "application/xml"),
    ]
    if full:
        bodies += [
            ("duplicate keys", b'{"recordId":"a","recordId":{"x":1}}', "application/json"),
            ("lone surrogate pair escapes", b'{"recordId":"\\udfff\\ud800"}', "application/json"),
            ("NUL in JSON", b'{"recordId":"a\x00"}', "application/json"),
            ("1 MiB of whitespace", b" " * (1 << 20) + b"{}", "application/json"),
            ("content type with NUL", b"{}", "application/json\x00x"),
            ("Infinity", b'{"priority":Infinity}', "application/json"),
            ("10k keys", json.dumps({f"k{i}": i for i in range(10000)}).encode(), "application/json"),
        ]
    return bodies
