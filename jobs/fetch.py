"""SSRF-safe, size-capped image download: the one way workers read a vendor's photo URL.

Built on requests-hardened's ``HTTPSession`` and its IP-pinning adapter: the host is resolved
once, the addresses are checked, and the connection goes to the checked IP while the Host
header, TLS SNI and certificate check keep the URL's host name, so a DNS answer that changes
between check and connect (rebinding) cannot redirect us. requests-hardened's own filter knows
only "private or not" plus an ``allow_loopback`` switch, so ``PinningAdapter`` keeps its pinning
scheme and swaps in our policy (``address_refusal``) with FETCH_ALLOW_NETWORKS (jobs/pinned_http.py,
shared with webhook delivery). Redirects are
followed here, one hop at a time, each hop re-validated and re-pinned.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urljoin

import requests
from requests.utils import requote_uri
from requests_hardened.ip_filter import InvalidIPAddress
from urllib3.exceptions import ReadTimeoutError

from core.config import Settings
from core.contracts import (  # sniff_image_type: tests import it from here
    UPLOAD_SCHEME,
    InvalidField,
    sniff_image_type,  # noqa: F401
    sniff_photo_type,
    validate_photo_url,
)
from core.errors import (
    FETCH_FAILED,
    FORBIDDEN_ADDRESS,
    IMAGE_NOT_FOUND,
    IMAGE_TOO_LARGE,
    INVALID_URL,
    NOT_AN_IMAGE,
    PermanentJobError,
    TransientJobError,
)
from jobs.pinned_http import pinned_session

logger = logging.getLogger(__name__)

USER_AGENT = "image-queue/1.0"
ACCEPT = "image/webp,image/png,image/jpeg;q=0.9,*/*;q=0.1"
_CHUNK_BYTES = 64 * 1024
_SNIFF_BYTES = 512  # enough to tell an image from HTML; non-images are dropped after this

@dataclass(frozen=True)
class FetchedImage:
    """A downloaded image: its bytes, the type sniffed from them, and the URL after redirects."""

    data: bytes
    content_type: str  # sniffed: image/jpeg, image/png, image/webp (HEIC and AVIF arrive as image/png)
    final_url: str


def _session(settings: Settings) -> requests.Session:
    return pinned_session(timeout=(settings.fetch_connect_timeout_s, settings.fetch_read_timeout_s),
                          user_agent=USER_AGENT, allow_networks=settings.fetch_allow_networks,
                          headers={"Accept": ACCEPT})


# --- content sniffing ---------------------------------------------------------------------


def describe_content(data: bytes) -> str:
    """A short human guess at what non-image bytes are, for error messages."""
    head = data[:_SNIFF_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not data:
        return "an empty body"
    if head.startswith((b"<!doctype html", b"<html")) or any(
        tag in head for tag in (b"<html", b"<head", b"<body")
    ):
        return "HTML"
    if b"<svg" in head:
        return "an SVG image"
    if head.startswith(b"<?xml"):
        return "XML"
    if head.startswith((b"{", b"[")):
        return "JSON or text"
    known = {
        b"GIF87a": "a GIF image", b"GIF89a": "a GIF image", b"%PDF-": "a PDF",
        b"BM": "a BMP image", b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image",
        b"PK\x03\x04": "a ZIP archive", b"\x1f\x8b": "gzip data",
    }
    for magic, name in known.items():
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return f"an ISO media file (brand {data[8:12].decode('latin-1')!r}, e.g. HEIC/AVIF)"
    return f"unrecognised bytes {data[:8].hex(' ')}"


# --- the download -------------------------------------------------------------------------
def _checked_url(url: str, what: str) -> str:
    try:
        return validate_photo_url(url, what)
    except InvalidField as exc:
        raise PermanentJobError(f"{what} {url!r} {exc.message}", code=INVALID_URL) from None


def _check_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    said = f"{url} answered HTTP {status} {response.reason or ''}".rstrip()
    if status in (408, 429) or status >= 500:
        raise TransientJobError(f"{said}; will retry", code=FETCH_FAILED)
    if not 200 <= status < 300:
        raise PermanentJobError(f"{said}; check the photo URL", code=IMAGE_NOT_FOUND)


def _read_capped(response: requests.Response, url: str, max_bytes: int) -> FetchedImage:
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise PermanentJobError(
            f"{url} is {int(declared)} bytes (Content-Length), over FETCH_MAX_BYTES={max_bytes}",
            code=IMAGE_TOO_LARGE,
        )
    body = bytearray()
    content_type: str | None = None
    for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise PermanentJobError(
                f"{url} sent more than FETCH_MAX_BYTES={max_bytes} bytes", code=IMAGE_TOO_LARGE
            )
        if content_type is None and len(body) >= _SNIFF_BYTES:
            content_type = _sniffed_or_raise(bytes(body), response, url)  # stop early on HTML
    data = bytes(body)
    return FetchedImage(data, content_type or _sniffed_or_raise(data, response, url), url)


def _sniffed_or_raise(data: bytes, response: requests.Response, url: str) -> str:
    content_type = sniff_photo_type(data)
    if content_type is None:
        claimed = response.headers.get("Content-Type", "none")
        raise PermanentJobError(
            f"{url} is not a JPEG, PNG, WebP, HEIC or AVIF image: it looks like {describe_content(data)} "
            f"(server's Content-Type: {claimed})",
            code=NOT_AN_IMAGE,
        )
    return content_type


def _fetch_hop(session: requests.Session, url: str, settings: Settings) -> FetchedImage | str:
    """One request: the image, or the next URL when the answer is a redirect."""
    timeout = (settings.fetch_connect_timeout_s, settings.fetch_read_timeout_s)
    with session.get(url, stream=True, allow_redirects=False, timeout=timeout) as response:
        target = session.get_redirect_target(response)
        if target is not None:
            return urljoin(url, requote_uri(target))
        _check_status(response, url)
        return _read_capped(response, url, settings.fetch_max_bytes)


def _translate(exc: requests.RequestException, url: str, settings: Settings) -> Exception:
    if isinstance(exc, InvalidIPAddress):
        return PermanentJobError(f"{url}: {exc}", code=FORBIDDEN_ADDRESS)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                        requests.exceptions.MissingSchema)):
        return PermanentJobError(f"{url} is not a usable URL: {exc}", code=INVALID_URL)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return TransientJobError(
            f"{url}: no connection within FETCH_CONNECT_TIMEOUT_S={settings.fetch_connect_timeout_s}",
            code=FETCH_FAILED,
        )
    # A stall mid-body surfaces as ConnectionError(ReadTimeoutError), before the body as ReadTimeout.
    if isinstance(exc, requests.exceptions.ReadTimeout) or (
        exc.args and isinstance(exc.args[0], ReadTimeoutError)
    ):
        return TransientJobError(
            f"{url}: no data for FETCH_READ_TIMEOUT_S={settings.fetch_read_timeout_s} s",
            code=FETCH_FAILED,
        )
    return TransientJobError(f"{url}: {type(exc).__name__}: {exc}", code=FETCH_FAILED)


def fetch_image(url: str, settings: Settings) -> FetchedImage:
    """Download an image URL safely (or read a photo sent as a file, ``upload:<name>``); HEIC and
    AVIF come back as PNG (jobs/phone_photos.py). Raise Permanent/TransientJobError with a code."""
    from jobs import phone_photos

    if url.startswith(UPLOAD_SCHEME):
        data = phone_photos.read_upload(settings, url)
        content_type = sniff_photo_type(data)
        if content_type is None:
            raise PermanentJobError(f"the uploaded photo is not a JPEG, PNG, WebP, HEIC or AVIF image: it looks "
                                    f"like {describe_content(data)}", code=NOT_AN_IMAGE)
        fetched = FetchedImage(data, content_type, url)
    else:
        fetched = _fetch_url(url, settings)
    if fetched.content_type in phone_photos.PHONE_TYPES:
        png = phone_photos.to_png(fetched.data, fetched.content_type, settings.max_image_pixels)
        return FetchedImage(png, "image/png", fetched.final_url)
    return fetched


def _fetch_url(url: str, settings: Settings) -> FetchedImage:
    current = _checked_url(url, "photo URL")
    logger.info("fetch: %s", current)
    with _session(settings) as session:
        for hop in range(settings.fetch_max_redirects + 1):
            try:
                result = _fetch_hop(session, current, settings)
            except requests.RequestException as exc:
                error = _translate(exc, current, settings)
                logger.warning("fetch failed: %s", error)
                raise error from exc
            if isinstance(result, FetchedImage):
                logger.info("fetched %s: %d bytes of %s", current, len(result.data), result.content_type)
                return result
            logger.info("fetch: %s redirects to %s (%d/%d)", current, result, hop + 1,
                        settings.fetch_max_redirects)
            current = _checked_url(result, f"redirect from {current} to")
    raise PermanentJobError(
        f"{url}: more than FETCH_MAX_REDIRECTS={settings.fetch_max_redirects} redirects",
        code=IMAGE_NOT_FOUND,
    )
