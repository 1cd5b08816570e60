"""SSRF-safe, size-capped image download: the one way workers read a vendor's photo URL.

Built on requests-hardened's ``HTTPSession`` and its IP-pinning adapter: the host is resolved
once, the addresses are checked, and the connection goes to the checked IP while the Host
header, TLS SNI and certificate check keep the URL's host name, so a DNS answer that changes
between check and connect (rebinding) cannot redirect us. requests-hardened's own filter knows
only "private or not" plus an ``allow_loopback`` switch, so ``_PinningAdapter`` keeps its pinning
scheme and swaps in our policy (``address_refusal``) with FETCH_ALLOW_NETWORKS. Redirects are
followed here, one hop at a time, each hop re-validated and re-pinned.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, cast
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import requote_uri
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress
from requests_hardened.ip_filter_adapter import IPFilterAdapter
from urllib3.exceptions import ReadTimeoutError

from core.config import Settings
from core.contracts import InvalidField, sniff_image_type, validate_photo_url
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

logger = logging.getLogger(__name__)

USER_AGENT = "image-queue/1.0"
ACCEPT = "image/webp,image/png,image/jpeg;q=0.9,*/*;q=0.1"
_CHUNK_BYTES = 64 * 1024
_SNIFF_BYTES = 512  # enough to tell an image from HTML; non-images are dropped after this

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FetchedImage:
    """A downloaded image: its bytes, the type sniffed from them, and the URL after redirects."""

    data: bytes
    content_type: str  # sniffed: image/jpeg, image/png, image/webp
    final_url: str


# --- address policy -----------------------------------------------------------------------
def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in pairs)


# First match wins, so specific entries come before the ranges that contain them.
_REFUSED_V4 = _nets(
    ("169.254.169.254/32", "the cloud metadata endpoint"),
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (incl. broadcast)"),
)
_REFUSED_V6 = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("::/8", "reserved"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignments (incl. Teredo)"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6)"),
    ("fc00::/7", "unique local (ULA, private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
# The well-known NAT64 prefix: the translator connects to the IPv4 address in the low 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_refusal(ip: IPAddress, allow_networks: Sequence[IPNetwork] = ()) -> str | None:
    """Why connecting to ``ip`` is refused, or None when it may be fetched from."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 host itself
    if any(ip in net for net in allow_networks):
        return None
    return _policy_refusal(ip)


def _policy_refusal(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64:
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        reason = _policy_refusal(inner)
        return None if reason is None else f"NAT64 of {inner}, which is {reason}"
    for net, reason in _REFUSED_V4 if ip.version == 4 else _REFUSED_V6:
        if ip in net:
            return f"{reason} ({net})"
    # Backstop for whatever else the ipaddress module knows to be special.
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not a globally routable address"
    return None


@functools.lru_cache(maxsize=32)
def parse_allow_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """FETCH_ALLOW_NETWORKS as network objects; a bad entry is a configuration error."""
    try:
        return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)
    except ValueError as exc:
        raise ValueError(f"FETCH_ALLOW_NETWORKS has an invalid CIDR: {exc}") from None


class ForbiddenAddress(InvalidIPAddress):
    """The host resolves to an address the policy refuses; raised before any connection."""

    def __init__(self, host: str, ip: IPAddress, reason: str) -> None:
        super().__init__(
            f"refusing to connect to {host}: it resolves to {ip}, which is {reason}; "
            "add its network to FETCH_ALLOW_NETWORKS only if workers should reach it"
        )
        self.host, self.ip, self.reason = host, ip, reason


def _getaddrinfo(host: str, port: int | None) -> list[Any]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def resolve_host(host: str, port: int | None, allow_networks: Sequence[IPNetwork]) -> str:
    """Resolve ``host`` once, refuse unless every address passes, return the IP to connect to.

    getaddrinfo also decodes odd IPv4 spellings (2130706433, 0177.0.0.1, 0x7f.1), so the
    policy always sees the real address.
    """
    try:
        infos = _getaddrinfo(host, port)
    except socket.gaierror as exc:
        raise requests.ConnectionError(f"could not resolve {host}: {exc}") from exc
    addresses = [
        ipaddress.ip_address(sockaddr[0])
        for family, _type, _proto, _name, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]
    if not addresses:
        raise requests.ConnectionError(f"{host} has no IPv4 or IPv6 address")
    # Any refused address refuses the host: a name mixing public and internal answers is hostile.
    for ip in addresses:
        reason = address_refusal(ip, allow_networks)
        if reason is not None:
            logger.warning("fetch refused: %s resolves to %s (%s)", host, ip, reason)
            raise ForbiddenAddress(host, ip, reason)
    pinned = addresses[0]
    logger.debug("fetch: %s pinned to %s", host, pinned)
    return f"[{pinned}]" if pinned.version == 6 else str(pinned)


class _PinningAdapter(IPFilterAdapter):
    """requests-hardened's pinning adapter with our address policy and allow-list.

    Its ``build_connection_pool_key_attributes`` calls a module-level ``filter_host`` whose only
    knob is ``allow_loopback``; this override does the same steps (Host header, TLS names from
    the URL, connect to the resolved IP) but resolves through ``resolve_host``.
    """

    def __init__(self, *, is_https_proto: bool, allow_networks: tuple[IPNetwork, ...]) -> None:
        super().__init__(is_https_proto=is_https_proto, allow_loopback=False)
        self._allow_networks = allow_networks

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        params, kwargs = HTTPAdapter.build_connection_pool_key_attributes(self, request, verify, cert)
        host_params, pool_kwargs = cast(dict[str, Any], params), cast(dict[str, Any], kwargs)
        hostname: str = host_params["host"]
        port: int | None = host_params["port"]
        # Copy before mutating: callers may share one headers mapping between requests.
        request.headers = CaseInsensitiveDict(request.headers or {})
        host_header = f"[{hostname}]" if ":" in hostname else hostname
        request.headers["Host"] = host_header if port is None else f"{host_header}:{port}"
        if self._is_https_proto:
            # Verify the certificate (and send SNI) for the name, not the pinned IP.
            pool_kwargs["assert_hostname"] = hostname
            pool_kwargs["server_hostname"] = hostname
        host_params["host"] = resolve_host(hostname, port, self._allow_networks)
        return host_params, pool_kwargs


def _session(settings: Settings) -> requests.Session:
    session = HTTPSession(
        Config(
            ip_filter_enable=True,
            ip_filter_allow_loopback_ips=False,
            never_redirect=True,  # we follow redirects ourselves, re-checking each hop
            default_timeout=(settings.fetch_connect_timeout_s, settings.fetch_read_timeout_s),
            user_agent_override=USER_AGENT,
        )
    )
    # No proxies (a proxy would resolve the name itself, defeating the pin) and no ~/.netrc.
    session.trust_env = False
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # keep no cookies
    session.headers["Accept"] = ACCEPT
    allow = parse_allow_networks(tuple(settings.fetch_allow_networks))
    session.mount("http://", _PinningAdapter(is_https_proto=False, allow_networks=allow))
    session.mount("https://", _PinningAdapter(is_https_proto=True, allow_networks=allow))
    return session


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
    content_type = sniff_image_type(data)
    if content_type is None:
        claimed = response.headers.get("Content-Type", "none")
        raise PermanentJobError(
            f"{url} is not a JPEG, PNG or WebP image: it looks like {describe_content(data)} "
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
    """Download an image URL safely; raise Permanent/TransientJobError with a code otherwise."""
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
