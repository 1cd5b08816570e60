"""jobs.fetch against real HTTP servers on loopback: formats, errors, limits, redirects, SSRF.

Two servers: one on 127.0.0.1 (the "allowed" host in most tests) and one on 127.0.0.2 (a
loopback address the redirect tests leave out of FETCH_ALLOW_NETWORKS). Every refusal must
happen before a connection, so those tests assert the servers saw none. Nothing here may
connect beyond loopback: URLs that name other addresses are ones fetch must refuse first.
"""
from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image
from requests_hardened.ip_filter import InvalidIPAddress

from core.config import Settings
from core.errors import (
    FETCH_FAILED,
    FORBIDDEN_ADDRESS,
    IMAGE_NOT_FOUND,
    IMAGE_TOO_LARGE,
    INVALID_URL,
    NOT_AN_IMAGE,
    JobError,
    PermanentJobError,
    TransientJobError,
)
from jobs import fetch, pinned_http
from jobs.fetch import (
    FetchedImage,
    describe_content,
    fetch_image,
    sniff_image_type,
)
from jobs.pinned_http import ForbiddenAddress, address_refusal, parse_allow_networks, resolve_host

MAX_BYTES = 64 * 1024
READ_TIMEOUT_S = 0.3
HTML = b"<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>nope</body></html>\n"


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 80, 20)).save(buf, fmt)
    return buf.getvalue()


IMAGES = {"jpeg": _image("JPEG"), "png": _image("PNG"), "webp": _image("WEBP")}
BIG = b"\xff\xd8\xff\xe0" + b"\x00" * (4 * MAX_BYTES)  # looks like a JPEG, far over the cap


def settings(allow: tuple[str, ...] = ("127.0.0.0/8",), **overrides: Any) -> Settings:
    """Small limits so the tests are fast; loopback allowed unless ``allow`` says otherwise."""
    values: dict[str, Any] = dict(
        fetch_allow_networks=allow,
        fetch_max_bytes=MAX_BYTES,
        fetch_connect_timeout_s=0.5,
        fetch_read_timeout_s=READ_TIMEOUT_S,
        fetch_max_redirects=3,
    )
    values.update(overrides)
    return Settings(**values)


ONLY_127_0_0_1 = ("127.0.0.1/32",)


# --- the servers ----------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        owner = self.server.owner
        owner.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        parts = urlsplit(self.path)
        route = ROUTES.get(parts.path)
        if route is None and parts.path.startswith("/chain/"):
            route = _chain
        try:
            (route or _not_found)(self, parse_qs(parts.query))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, which is what several tests want

    def send(self, status: int, body: bytes = b"", content_type: str = "application/octet-stream",
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    owner: Server

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.owner.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-response are expected here


class Server:
    """A threaded HTTP server on one loopback address, recording what reached it."""

    def __init__(self, host: str, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.scheme = "https" if tls else "http"
        self.connections = 0
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.server_names: list[str | None] = []  # TLS SNI, one per handshake
        self.stop = threading.Event()
        self.httpd = _Server((host, 0), _Handler)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def reset(self) -> None:
        self.connections = 0
        self.seen.clear()
        self.server_names.clear()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


Route = Callable[[_Handler, dict[str, list[str]]], None]


def _not_found(h: _Handler, q: dict[str, list[str]]) -> None:
    h.send(404, HTML, "text/html")


def _status(code: int) -> Route:
    return lambda h, q: h.send(code, b"status page", "text/plain")


def _image_route(fmt: str, content_type: str) -> Route:
    return lambda h, q: h.send(200, IMAGES[fmt], content_type)


def _redirect(h: _Handler, q: dict[str, list[str]]) -> None:
    h.send(int(q.get("code", ["302"])[0]), headers={"Location": q["to"][0]})


def _chain(h: _Handler, q: dict[str, list[str]]) -> None:
    left = int(h.path.rsplit("/", 1)[1])
    if left == 0:
        h.send(200, IMAGES["jpeg"], "image/jpeg")
    else:
        h.send(301, headers={"Location": f"/chain/{left - 1}"})


def _slow_headers(h: _Handler, q: dict[str, list[str]]) -> None:
    h.server.owner.stop.wait(3 * READ_TIMEOUT_S + 1)
    h.send(200, IMAGES["jpeg"], "image/jpeg")


def _slow_body(h: _Handler, q: dict[str, list[str]]) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(IMAGES["jpeg"])))
    h.end_headers()
    h.wfile.write(IMAGES["jpeg"][:100])
    h.wfile.flush()
    h.server.owner.stop.wait(3 * READ_TIMEOUT_S + 1)


def _big_with_length(h: _Handler, q: dict[str, list[str]]) -> None:
    h.send(200, BIG, "image/jpeg")


def _big_until_close(h: _Handler, q: dict[str, list[str]]) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Connection", "close")
    h.end_headers()
    h.close_connection = True
    h.wfile.write(BIG)


def _big_chunked(h: _Handler, q: dict[str, list[str]]) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for start in range(0, len(BIG), 8192):
        piece = BIG[start:start + 8192]
        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    h.wfile.write(b"0\r\n\r\n")


def _huge_claim(h: _Handler, q: dict[str, list[str]]) -> None:
    # Claims 10 GB, sends a little, then stalls: only an early Content-Length check is fast.
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Content-Length", str(10**10))
    h.end_headers()
    h.wfile.write(BIG[:1000])
    h.wfile.flush()
    h.server.owner.stop.wait(3 * READ_TIMEOUT_S + 1)


def _set_cookie(h: _Handler, q: dict[str, list[str]]) -> None:
    h.send(302, headers={"Location": "/photo.jpg", "Set-Cookie": "sid=secret; Path=/"})


ROUTES: dict[str, Route] = {
    "/photo.jpg": _image_route("jpeg", "image/jpeg"),
    "/photo.png": _image_route("png", "image/png"),
    "/photo.webp": _image_route("webp", "image/webp"),
    "/png-as-text": _image_route("png", "text/plain"),
    "/page.html": lambda h, q: h.send(200, HTML, "text/html; charset=utf-8"),
    "/html-as-jpeg": lambda h, q: h.send(200, HTML, "image/jpeg"),
    "/gif": lambda h, q: h.send(200, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif"),
    "/empty": lambda h, q: h.send(200, b"", "image/jpeg"),
    "/big-content-length": _big_with_length,
    "/big-until-close": _big_until_close,
    "/big-chunked": _big_chunked,
    "/huge-claim": _huge_claim,
    "/slow-headers": _slow_headers,
    "/slow-body": _slow_body,
    "/redirect": _redirect,
    "/relative": lambda h, q: h.send(302, headers={"Location": "photo.png"}),
    "/loop": lambda h, q: h.send(302, headers={"Location": "/loop"}),
    "/cookie": _set_cookie,
    "/no-location": _status(304),
    **{f"/status/{code}": _status(code) for code in (400, 403, 404, 408, 410, 429, 500, 502, 503)},
}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    main, other = Server("127.0.0.1"), Server("127.0.0.2")
    yield main, other
    main.close()
    other.close()


@pytest.fixture
def server(servers: tuple[Server, Server]) -> Server:
    """The 127.0.0.1 server, its records cleared."""
    for each in servers:
        each.reset()
    return servers[0]


@pytest.fixture
def other(servers: tuple[Server, Server], server: Server) -> Server:
    """The 127.0.0.2 server, never in the allow-list of the tests that use it."""
    return servers[1]


def redirect_to(server: Server, target: str, code: int = 302) -> str:
    return server.url(f"/redirect?code={code}&to={quote(target, safe='')}")


def expect(error: type[JobError], code: str, url: str, settings_: Settings) -> JobError:
    with pytest.raises(error) as info:
        fetch_image(url, settings_)
    assert info.value.code == code, info.value
    return info.value


# --- fetching images ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_fetches_real_images_and_sniffs_their_type(server: Server, fmt: str) -> None:
    url = server.url(f"/photo.{'jpg' if fmt == 'jpeg' else fmt}")
    got = fetch_image(url, settings())
    assert got == FetchedImage(IMAGES[fmt], f"image/{fmt}", url)
    Image.open(io.BytesIO(got.data)).verify()
    ((_path, headers),) = server.seen
    assert headers["user-agent"] == "image-queue/1.0"
    assert headers["host"] == f"127.0.0.1:{server.port}"


def test_content_type_header_is_ignored_for_images(server: Server) -> None:
    assert fetch_image(server.url("/png-as-text"), settings()).content_type == "image/png"


@pytest.mark.parametrize(
    ("path", "seen"),
    [("/html-as-jpeg", "HTML"), ("/page.html", "HTML"), ("/gif", "GIF"), ("/empty", "empty body")],
)
def test_non_images_are_refused_saying_what_they_look_like(server: Server, path: str, seen: str) -> None:
    error = expect(PermanentJobError, NOT_AN_IMAGE, server.url(path), settings())
    assert f"looks like {'an ' if seen == 'empty body' else ''}" in error.message
    assert seen in error.message


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_client_errors_are_permanent(server: Server, status: int) -> None:
    error = expect(PermanentJobError, IMAGE_NOT_FOUND, server.url(f"/status/{status}"), settings())
    assert f"HTTP {status}" in error.message


def test_a_3xx_without_location_is_permanent(server: Server) -> None:
    error = expect(PermanentJobError, IMAGE_NOT_FOUND, server.url("/no-location"), settings())
    assert "HTTP 304" in error.message


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_server_errors_and_throttling_are_transient(server: Server, status: int) -> None:
    error = expect(TransientJobError, FETCH_FAILED, server.url(f"/status/{status}"), settings())
    assert f"HTTP {status}" in error.message


@pytest.mark.parametrize("path", ["/slow-headers", "/slow-body"])
def test_a_server_slower_than_the_read_timeout_is_transient(server: Server, path: str) -> None:
    started = time.monotonic()
    error = expect(TransientJobError, FETCH_FAILED, server.url(path), settings())
    assert "FETCH_READ_TIMEOUT_S" in error.message
    assert time.monotonic() - started < 3 * READ_TIMEOUT_S


def test_connection_refused_is_transient(server: Server) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the fetch: nothing listens there
    expect(TransientJobError, FETCH_FAILED, f"http://127.0.0.1:{port}/photo.jpg", settings())


# --- size cap -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/big-content-length", "/big-until-close", "/big-chunked"])
def test_bodies_over_the_cap_are_refused(server: Server, path: str) -> None:
    error = expect(PermanentJobError, IMAGE_TOO_LARGE, server.url(path), settings())
    assert f"FETCH_MAX_BYTES={MAX_BYTES}" in error.message


def test_content_length_over_the_cap_is_refused_before_reading(server: Server) -> None:
    started = time.monotonic()
    error = expect(PermanentJobError, IMAGE_TOO_LARGE, server.url("/huge-claim"), settings())
    assert "Content-Length" in error.message
    assert time.monotonic() - started < READ_TIMEOUT_S  # never waited on the stalled body


def test_a_body_exactly_at_the_cap_is_accepted(server: Server) -> None:
    data = IMAGES["png"]
    assert fetch_image(server.url("/photo.png"), settings(fetch_max_bytes=len(data))).data == data
    expect(PermanentJobError, IMAGE_TOO_LARGE, server.url("/photo.png"),
           settings(fetch_max_bytes=len(data) - 1))


# --- redirects ------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_follows_redirects_to_an_allowed_image(server: Server, code: int) -> None:
    target = server.url("/photo.webp")
    got = fetch_image(redirect_to(server, target, code), settings())
    assert (got.content_type, got.final_url) == ("image/webp", target)
    assert [path for path, _ in server.seen][-1] == "/photo.webp"


def test_follows_relative_redirects(server: Server) -> None:
    assert fetch_image(server.url("/relative"), settings()).final_url == server.url("/photo.png")


def test_follows_up_to_the_redirect_limit(server: Server) -> None:
    got = fetch_image(server.url("/chain/3"), settings(fetch_max_redirects=3))
    assert got.final_url == server.url("/chain/0")


def test_one_redirect_past_the_limit_is_refused(server: Server) -> None:
    error = expect(PermanentJobError, IMAGE_NOT_FOUND, server.url("/chain/4"), settings(fetch_max_redirects=3))
    assert "FETCH_MAX_REDIRECTS=3" in error.message
    assert [path for path, _ in server.seen] == ["/chain/4", "/chain/3", "/chain/2", "/chain/1"]


def test_a_redirect_loop_stops_at_the_limit(server: Server) -> None:
    expect(PermanentJobError, IMAGE_NOT_FOUND, server.url("/loop"), settings(fetch_max_redirects=5))
    assert len(server.seen) == 6


def test_cookies_are_not_kept_across_redirects(server: Server) -> None:
    fetch_image(server.url("/cookie"), settings())
    assert [path for path, _ in server.seen] == ["/cookie", "/photo.jpg"]
    assert "cookie" not in server.seen[1][1]


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("{other}/photo.jpg", "127.0.0.2"),  # loopback, but not in the allow-list
        ("http://2130706434:{other_port}/photo.jpg", "2130706434"),  # 127.0.0.2 spelt in decimal
        ("http://0x7f.2:{other_port}/photo.jpg", "0x7f.2"),
        ("http://[::ffff:127.0.0.2]:{other_port}/photo.jpg", "::ffff:127.0.0.2"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://10.0.0.1/photo.jpg", "10.0.0.1"),
        ("http://100.64.0.1/photo.jpg", "100.64.0.1"),
        ("http://[fd00::1]/photo.jpg", "fd00::1"),
    ],
)
def test_redirects_to_refused_addresses_are_stopped_before_connecting(
    server: Server, other: Server, target: str, host: str
) -> None:
    target = target.format(other=other.url(""), other_port=other.port)
    error = expect(PermanentJobError, FORBIDDEN_ADDRESS, redirect_to(server, target), settings(ONLY_127_0_0_1))
    assert host in error.message and "FETCH_ALLOW_NETWORKS" in error.message
    assert len(server.seen) == 1  # the redirect itself
    assert other.connections == 0


def test_the_metadata_endpoint_is_named_in_the_refusal(server: Server) -> None:
    target = "http://169.254.169.254/latest/meta-data/"
    error = expect(PermanentJobError, FORBIDDEN_ADDRESS, redirect_to(server, target), settings())
    assert "cloud metadata" in error.message


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://127.0.0.1/photo.jpg", "http://user:pw@127.0.0.1/photo.jpg"]
)
def test_redirects_to_unusable_urls_are_invalid(server: Server, target: str) -> None:
    expect(PermanentJobError, INVALID_URL, redirect_to(server, target), settings())
    assert len(server.seen) == 1


# --- refusals without the allow-list ----------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "LocalHost", "2130706433", "0177.0.0.1", "0x7f.1", "0x7f000001",
     "127.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"],
)
def test_loopback_in_any_spelling_is_refused_without_the_allow_list(server: Server, host: str) -> None:
    url = f"http://{host}:{server.port}/photo.jpg"
    error = expect(PermanentJobError, FORBIDDEN_ADDRESS, url, settings(allow=()))
    assert "loopback" in error.message and "FETCH_ALLOW_NETWORKS" in error.message
    assert host.strip("[]").lower() in error.message.lower()
    assert server.connections == 0 and server.seen == []


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.1", "localhost"])
def test_odd_spellings_really_reach_loopback_when_it_is_allowed(server: Server, host: str) -> None:
    got = fetch_image(f"http://{host}:{server.port}/photo.jpg", settings())
    assert got.data == IMAGES["jpeg"]
    assert server.seen[0][1]["host"] == f"{host}:{server.port}"  # Host keeps the URL's name


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x.jpg", "file:///etc/passwd", "http://user:pw@127.0.0.1/x.jpg", "http://:80/x",
     "not a url", "", "http://127.0.0.1:99999/x.jpg", "javascript:alert(1)"],
)
def test_unusable_urls_are_invalid(server: Server, url: str) -> None:
    expect(PermanentJobError, INVALID_URL, url, settings())
    assert server.connections == 0


# --- DNS: the address checked is the address connected to ----------------------------------------
class FakeDNS:
    """Stands in for getaddrinfo in jobs.fetch, answering each call from a list in turn."""

    def __init__(self, *answers: list[str] | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int | None) -> list[Any]:
        self.calls.append(host)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port or 80))
            for ip in answer
        ]


def test_the_connection_goes_to_the_ip_that_was_checked(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding name: first answer loopback (allowed), any later answer the metadata service.
    # Only the fake knows the name, so a second lookup anywhere else would fail the fetch.
    dns = FakeDNS(["127.0.0.1"], ["169.254.169.254"])
    monkeypatch.setattr(pinned_http, "_getaddrinfo", dns)
    url = f"http://images.rebind.test:{server.port}/photo.jpg"
    assert fetch_image(url, settings(ONLY_127_0_0_1)).data == IMAGES["jpeg"]
    assert dns.calls == ["images.rebind.test"]
    assert server.seen[0][1]["host"] == f"images.rebind.test:{server.port}"


def test_each_redirect_hop_is_resolved_and_checked_again(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    dns = FakeDNS(["127.0.0.1"], ["169.254.169.254"])
    monkeypatch.setattr(pinned_http, "_getaddrinfo", dns)
    target = f"http://images.rebind.test:{server.port}/photo.jpg"
    first = f"http://images.rebind.test:{server.port}/redirect?to={quote(target, safe='')}"
    error = expect(PermanentJobError, FORBIDDEN_ADDRESS, first, settings(ONLY_127_0_0_1))
    assert "169.254.169.254" in error.message and "images.rebind.test" in error.message
    assert dns.calls == ["images.rebind.test", "images.rebind.test"]
    assert len(server.seen) == 1


def test_a_name_with_any_refused_address_is_refused(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pinned_http, "_getaddrinfo", FakeDNS(["127.0.0.1", "10.1.2.3"]))
    error = expect(PermanentJobError, FORBIDDEN_ADDRESS, f"http://mixed.test:{server.port}/photo.jpg",
                   settings(ONLY_127_0_0_1))
    assert "10.1.2.3" in error.message and "private" in error.message
    assert server.connections == 0


def test_a_name_that_does_not_resolve_is_transient(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pinned_http, "_getaddrinfo", FakeDNS(socket.gaierror(socket.EAI_NONAME, "not known")))
    error = expect(TransientJobError, FETCH_FAILED, "http://nowhere.test/photo.jpg", settings())
    assert "nowhere.test" in error.message


# --- HTTPS: pinned to the IP, verified against the name -------------------------------------------
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names images.rebind.test."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=images.rebind.test",
         "-addext", "subjectAltName=DNS:images.rebind.test"],
        check=True, capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Server("127.0.0.1", tls=context)
    yield server, cert
    server.close()


@pytest.fixture
def trusting_the_test_certificate(tls_server: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch) -> Server:
    """fetch's sessions trust only the test certificate; its server's records cleared."""
    server, cert = tls_server
    server.reset()
    real_session = fetch._session

    def session(settings_: Settings) -> Any:
        made = real_session(settings_)
        made.verify = str(cert)
        return made

    monkeypatch.setattr(fetch, "_session", session)
    return server


def test_https_verifies_the_certificate_and_sends_sni_for_the_name(
    trusting_the_test_certificate: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = trusting_the_test_certificate
    monkeypatch.setattr(pinned_http, "_getaddrinfo", FakeDNS(["127.0.0.1"], ["169.254.169.254"]))
    url = f"https://images.rebind.test:{server.port}/photo.png"
    assert fetch_image(url, settings(ONLY_127_0_0_1)).data == IMAGES["png"]
    assert server.server_names == ["images.rebind.test"]
    assert server.seen[0][1]["host"] == f"images.rebind.test:{server.port}"


def test_https_with_a_certificate_for_another_name_is_transient(
    trusting_the_test_certificate: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = trusting_the_test_certificate
    monkeypatch.setattr(pinned_http, "_getaddrinfo", FakeDNS(["127.0.0.1"]))
    url = f"https://other.rebind.test:{server.port}/photo.png"
    error = expect(TransientJobError, FETCH_FAILED, url, settings(ONLY_127_0_0_1))
    assert "other.rebind.test" in error.message
    assert server.seen == []


# --- the address checker --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"),
        ("fc00::1", "unique local"),
        ("fd12:3456:789a::1", "unique local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1, which is loopback"),
        ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254, which is the cloud metadata"),
        ("64:ff9b::a00:1", "NAT64 of 10.0.0.1"),
        ("64:ff9b:1::a00:1", "local-use NAT64"),
        ("2002:7f00:1::1", "6to4"),
        ("2001::1", "Teredo"),
        ("2001:db8::1", "documentation"),
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "allow", "allowed"),
    [
        ("127.0.0.1", ("127.0.0.0/8",), True),
        ("::ffff:127.0.0.1", ("127.0.0.0/8",), True),  # the same host, reached over IPv6
        ("10.0.0.5", ("10.0.0.0/8",), True),
        ("10.0.0.5", ("127.0.0.0/8",), False),
        ("169.254.169.254", ("127.0.0.0/8",), False),
        ("::1", ("127.0.0.0/8",), False),
        ("::1", ("::1/128",), True),
        ("127.0.0.2", ("127.0.0.1/32",), False),
    ],
)
def test_the_allow_list(address: str, allow: tuple[str, ...], allowed: bool) -> None:
    refusal = address_refusal(ipaddress.ip_address(address), parse_allow_networks(allow))
    assert (refusal is None) is allowed


@pytest.mark.parametrize(
    "spelling", ["2130706433", "0177.0.0.1", "0x7f.1", "0x7f000001", "017700000001", "127.1", "0x7f.0.0.1"]
)
def test_odd_ipv4_spellings_resolve_to_loopback_and_are_refused(spelling: str) -> None:
    with pytest.raises(ForbiddenAddress) as info:
        resolve_host(spelling, 80, ())
    assert info.value.ip == ipaddress.ip_address("127.0.0.1")
    assert isinstance(info.value, InvalidIPAddress)  # still requests-hardened's error class
    assert resolve_host(spelling, 80, parse_allow_networks(("127.0.0.0/8",))) == "127.0.0.1"


@pytest.mark.parametrize("spelling", ["::ffff:127.0.0.1", "::ffff:7f00:1", "::1", "64:ff9b::7f00:1"])
def test_ipv6_forms_of_loopback_are_refused(spelling: str) -> None:
    with pytest.raises(ForbiddenAddress, match="loopback"):
        resolve_host(spelling, 80, ())


def test_ipv6_answers_are_pinned_in_brackets() -> None:
    assert resolve_host("::1", 80, parse_allow_networks(("::1/128",))) == "[::1]"


def test_a_bad_allow_list_entry_names_the_setting() -> None:
    with pytest.raises(ValueError, match="FETCH_ALLOW_NETWORKS"):
        parse_allow_networks(("127.0.0.0/8", "not-a-network"))


# --- sniffing -------------------------------------------------------------------------------
def test_sniffing() -> None:
    assert [sniff_image_type(IMAGES[f]) for f in ("jpeg", "png", "webp")] == [
        "image/jpeg", "image/png", "image/webp"
    ]
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_image_type(HTML) is None
    assert describe_content(b"\xef\xbb\xbf  <html><body>") == "HTML"
    assert describe_content(b"<?xml version='1.0'?><svg xmlns='...'>") == "an SVG image"
    assert describe_content(b'{"error": "nope"}') == "JSON or text"
    assert describe_content(b"%PDF-1.7") == "a PDF"
    assert describe_content(b"\x00\x01\x02\x03\x04\x05\x06\x07\x08").startswith("unrecognised bytes 00 01")
