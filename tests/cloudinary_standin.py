"""A local stand-in for Cloudinary's Upload API, Admin API lookup and delivery URLs.

Point the real SDK at it with ``CLOUDINARY_URL=<standin.cloudinary_url>``, which carries the
SDK's ``upload_prefix`` option: ``cloudinary://KEY:SECRET@CLOUD?upload_prefix=http://127.0.0.1:PORT``.
The SDK then POSTs to ``{upload_prefix}/v1_1/{cloud}/image/upload``.

What it checks, as Cloudinary does: the cloud name, the API key, the request signature (hash of
the sorted ``key=value`` parameters joined by ``&`` plus the API secret; ``file``, ``api_key``,
``resource_type``, ``cloud_name`` and ``signature`` are not signed) and that ``timestamp`` is
within an hour. Uploads are stored in memory under their public_id (``overwrite`` honoured) and
served back at the ``secure_url`` the answer names. ``fail_next`` and ``stall_next`` make the
next requests fail or hang, for retry and timeout tests.

Run ``python -m tests.cloudinary_standin [PORT]`` to serve it on its own (prints CLOUDINARY_URL).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import logging
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import HeaderParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

UNSIGNED_PARAMS = frozenset({"file", "api_key", "resource_type", "cloud_name", "signature"})
MAX_CLOCK_SKEW_S = 3600  # Cloudinary refuses requests whose timestamp is over an hour off
_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
_MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
         "bmp": "image/bmp", "tiff": "image/tiff"}


class _Reject(Exception):
    """An error answer: HTTP status plus Cloudinary's {"error": {"message": ...}} body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class StoredAsset:
    """One asset as the stand-in holds it."""

    public_id: str
    data: bytes
    format: str
    width: int
    height: int
    version: int
    created_at: str
    upload_count: int = 1  # successful uploads under this public_id, overwrites included


@dataclass
class _Pending:
    action: str
    status: int = 0
    message: str = ""
    stall_s: float = 0.0


@dataclass
class RequestRecord:
    """One request the stand-in answered (for assertions on what the SDK sent)."""

    method: str
    path: str
    status: int
    params: dict[str, str] = field(default_factory=dict)


def string_to_sign(params: dict[str, Any], signature_version: int = 2) -> str:
    """Cloudinary's string to sign: sorted ``key=value`` of non-empty params, joined by '&'."""
    pairs = []
    for name, value in params.items():
        if name in UNSIGNED_PARAMS or value in (None, "", []):
            continue
        text = ",".join(value) if isinstance(value, list) else str(value)
        pair = f"{name}={text}"
        if signature_version >= 2:
            pair = pair.replace("&", "%26")  # v2 stops '&' inside a value smuggling a parameter
        pairs.append(pair)
    return "&".join(sorted(pairs))


def sign(params: dict[str, Any], api_secret: str, algorithm: str = "sha1", signature_version: int = 2) -> str:
    """Hex digest of the string to sign followed by the API secret."""
    payload = (string_to_sign(params, signature_version) + api_secret).encode("utf-8")
    return hashlib.new(algorithm, payload).hexdigest()


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, Any], tuple[str | None, bytes] | None]:
    """Form fields (``name[]`` collected into lists) and the ``file`` part as (filename, bytes)."""
    header = HeaderParser().parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise _Reject(400, "Expected a multipart/form-data body")
    fields: dict[str, Any] = {}
    file_part: tuple[str | None, bytes] | None = None
    delimiter = b"--" + boundary.encode("latin-1")
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep or not data.endswith(b"\r\n"):
            raise _Reject(400, "Malformed multipart body")
        data = data[:-2]
        part = HeaderParser().parsestr(head.decode("utf-8"))
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise _Reject(400, "Multipart part without a name")
        if name == "file":
            file_part = (part.get_filename(), data)
        elif name.endswith("[]"):
            fields.setdefault(name[:-2], []).append(data.decode("utf-8"))
        else:
            fields[name] = data.decode("utf-8")
    return fields, file_part


class CloudinaryStandin:
    """In-memory Cloudinary on 127.0.0.1 for the real SDK: start(), use .cloudinary_url, stop()."""

    def __init__(
        self,
        cloud_name: str = "demo-cloud",
        api_key: str = "123456789012345",
        api_secret: str | None = None,
        signature_algorithm: str = "sha1",
    ) -> None:
        self.cloud_name = cloud_name
        self.api_key = api_key
        self.api_secret = api_secret or secrets.token_urlsafe(18)
        self.signature_algorithm = signature_algorithm
        self.uploads: dict[str, StoredAsset] = {}
        self.requests: list[RequestRecord] = []
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, port: int = 0) -> CloudinaryStandin:
        """Listen on 127.0.0.1 (a free port unless given) in a background thread."""
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cloudinary-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; later requests get connection refused."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> CloudinaryStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests use -------------------------------------------------------------------
    @property
    def cloudinary_url(self) -> str:
        """CLOUDINARY_URL that points the SDK here."""
        return self.cloudinary_url_for()

    def cloudinary_url_for(
        self, *, api_key: str | None = None, api_secret: str | None = None, cloud_name: str | None = None
    ) -> str:
        """CLOUDINARY_URL with some credentials swapped (to test refusals)."""
        if not self.url:
            raise RuntimeError("start() the stand-in first")
        key = api_key or self.api_key
        secret = api_secret or self.api_secret
        cloud = cloud_name or self.cloud_name
        return f"cloudinary://{key}:{secret}@{cloud}?upload_prefix={self.url}"

    def fail_next(
        self, n: int, status: int = 503, message: str | None = None, *, action: str = "upload"
    ) -> None:
        """Answer the next ``n`` ``action`` requests ("upload", "destroy", "resource") with ``status``."""
        text = message or f"Stand-in failure ({status} {HTTPStatus(status).phrase})"
        with self._lock:
            self._pending.extend(_Pending(action, status=status, message=text) for _ in range(n))

    def stall_next(self, n: int, seconds: float, *, action: str = "upload") -> None:
        """Hold the next ``n`` ``action`` requests for ``seconds`` before answering normally."""
        with self._lock:
            self._pending.extend(_Pending(action, stall_s=seconds) for _ in range(n))

    def upload_count(self, public_id: str) -> int:
        """Successful uploads to ``public_id`` so far (0 when never uploaded)."""
        with self._lock:
            asset = self.uploads.get(public_id)
            return asset.upload_count if asset else 0

    def delivery_url(self, asset: StoredAsset) -> str:
        """The secure_url of an asset (served by this stand-in)."""
        path = quote(f"{asset.public_id}.{asset.format}", safe="/@:")
        return f"{self.url}/{self.cloud_name}/image/upload/v{asset.version}/{path}"

    def reset(self) -> None:
        """Forget every asset, request and pending failure."""
        with self._lock:
            self.uploads.clear()
            self.requests.clear()
            self._pending.clear()

    # --- request handling (called from server threads) -------------------------------------
    def _take_pending(self, action: str) -> _Pending | None:
        with self._lock:
            for index, pending in enumerate(self._pending):
                if pending.action == action:
                    return self._pending.pop(index)
        return None

    def _check_signed(self, params: dict[str, Any]) -> None:
        if params.get("api_key") != self.api_key:
            raise _Reject(401, f"Unknown API key {params.get('api_key')!r}")
        timestamp = params.get("timestamp")
        if not timestamp:
            raise _Reject(400, "Missing required parameter - timestamp")
        try:
            skew = abs(time.time() - int(timestamp))
        except ValueError:
            raise _Reject(400, f"Invalid timestamp {timestamp!r}") from None
        if skew > MAX_CLOCK_SKEW_S:
            raise _Reject(400, f"Stale request - reported time is {timestamp} which is more than 1 hour off")
        given = str(params.get("signature", ""))
        for version in (2, 1):
            expected = sign(params, self.api_secret, self.signature_algorithm, version)
            if hmac.compare_digest(given, expected):
                return
        raise _Reject(
            401, f"Invalid Signature {given}. String to sign - '{string_to_sign(params)}'."
        )

    def _response_signature(self, asset: StoredAsset) -> str:
        params = {"public_id": asset.public_id, "version": asset.version}
        return sign(params, self.api_secret, self.signature_algorithm, 1)

    def _describe(self, asset: StoredAsset) -> dict[str, Any]:
        url = self.delivery_url(asset)
        return {
            "asset_id": hashlib.md5(asset.public_id.encode("utf-8")).hexdigest(),
            "public_id": asset.public_id,
            "version": asset.version,
            "version_id": hashlib.md5(f"{asset.public_id}{asset.version}".encode()).hexdigest(),
            "signature": self._response_signature(asset),
            "width": asset.width,
            "height": asset.height,
            "format": asset.format,
            "resource_type": "image",
            "created_at": asset.created_at,
            "tags": [],
            "bytes": len(asset.data),
            "type": "upload",
            "etag": hashlib.md5(asset.data).hexdigest(),
            "placeholder": False,
            "url": url,
            "secure_url": url,
            "api_key": self.api_key,
        }

    def _upload(self, params: dict[str, Any], file_part: tuple[str | None, bytes] | None) -> dict[str, Any]:
        self._check_signed(params)
        if file_part is None:
            raise _Reject(400, "Missing required parameter - file")
        filename, data = file_part
        if filename is None and data.startswith(b"data:"):
            try:
                data = base64.b64decode(data.partition(b",")[2], validate=True)
            except binascii.Error:
                raise _Reject(400, "Invalid data URI") from None
        elif filename is None:
            raise _Reject(400, "The stand-in does not fetch remote files")
        try:
            with Image.open(io.BytesIO(data)) as image:
                fmt = _FORMATS.get(image.format or "", (image.format or "").lower())
                width, height = image.size
        except (UnidentifiedImageError, OSError):
            raise _Reject(400, "Invalid image file") from None
        public_id = params.get("public_id") or secrets.token_hex(10)
        if params.get("folder"):
            public_id = f"{str(params['folder']).strip('/')}/{public_id}"
        overwrite = params.get("overwrite", "1") not in ("0", "false")
        with self._lock:
            existing = self.uploads.get(public_id)
            if existing is not None and not overwrite:
                return dict(self._describe(existing), existing=True)
            version = int(time.time())
            if existing is not None:
                version = max(version, existing.version + 1)
            asset = StoredAsset(
                public_id=public_id,
                data=data,
                format=fmt,
                width=width,
                height=height,
                version=version,
                created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                upload_count=existing.upload_count + 1 if existing else 1,
            )
            self.uploads[public_id] = asset
            answer = self._describe(asset)
        answer["original_filename"] = (filename or "file").rsplit(".", 1)[0]
        if existing is not None:
            answer["overwritten"] = True
        return answer

    def _destroy(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_signed(params)
        public_id = params.get("public_id")
        if not public_id:
            raise _Reject(400, "Missing required parameter - public_id")
        with self._lock:
            removed = self.uploads.pop(str(public_id), None)
        return {"result": "ok" if removed else "not found"}

    def _resource(self, public_id: str, authorization: str | None) -> dict[str, Any]:
        expected = "Basic " + base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise _Reject(401, "Invalid credentials")
        with self._lock:
            asset = self.uploads.get(public_id)
            if asset is None:
                raise _Reject(404, f"Resource not found - {public_id}")
            return self._describe(asset)

    def _delivery(self, path: str) -> StoredAsset | None:
        """The asset a delivery path ``image/upload[/v<version>]/<public_id>[.<ext>]`` names."""
        rest = path.removeprefix("image/upload/")
        if rest == path:
            return None
        first, _, remainder = rest.partition("/")
        if remainder and first[:1] == "v" and first[1:].isdigit():
            rest = remainder
        with self._lock:
            asset = self.uploads.get(rest)
            if asset is None and "." in rest.rsplit("/", 1)[-1]:
                asset = self.uploads.get(rest.rsplit(".", 1)[0])
            return asset


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: one request per connection, so a stopped stand-in really refuses the next call."""

    standin: CloudinaryStandin
    server_version = "CloudinaryStandin/1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", secrets.token_hex(8))
        self.end_headers()
        self.wfile.write(body)

    def _record(self, status: int, params: dict[str, Any] | None = None) -> None:
        shown = {k: str(v) for k, v in (params or {}).items() if k != "file"}
        with self.standin._lock:
            self.standin.requests.append(RequestRecord(self.command, self.path, status, shown))

    def _answer(self, action: str, work: Any, params: dict[str, Any] | None = None) -> None:
        pending = self.standin._take_pending(action)
        try:
            if pending is not None and pending.stall_s:
                time.sleep(pending.stall_s)
            if pending is not None and pending.status:
                raise _Reject(pending.status, pending.message)
            status, payload = 200, work()
        except _Reject as reject:
            status, payload = reject.status, {"error": {"message": reject.message}}
        self._record(status, params)
        try:
            self._send_json(status, payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def do_POST(self) -> None:
        """Upload API: /v1_1/<cloud>/image/{upload,destroy}."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = unquote(urlsplit(self.path).path).strip("/").split("/")
        action = parts[3] if len(parts) == 4 and parts[0] == "v1_1" and parts[2] == "image" else ""
        if action not in ("upload", "destroy"):
            self._answer("other", lambda: _raise(404, f"No route for POST {self.path}"))
            return
        params: dict[str, Any] = {}

        def work() -> dict[str, Any]:
            if parts[1] != self.standin.cloud_name:
                raise _Reject(401, f"Invalid cloud_name {parts[1]}")
            fields, file_part = parse_multipart(body, self.headers.get("Content-Type", ""))
            params.update(fields)
            if action == "upload":
                return self.standin._upload(fields, file_part)
            return self.standin._destroy(fields)

        self._answer(action, work, params)

    def do_GET(self) -> None:
        """Admin API resource lookup, or delivery of stored bytes."""
        path = unquote(urlsplit(self.path).path).strip("/")
        admin_prefix = f"v1_1/{self.standin.cloud_name}/resources/image/upload/"
        if path.startswith(admin_prefix):
            public_id = path.removeprefix(admin_prefix)
            authorization = self.headers.get("Authorization")
            self._answer("resource", lambda: self.standin._resource(public_id, authorization))
            return
        asset = None
        if path.startswith(f"{self.standin.cloud_name}/"):
            asset = self.standin._delivery(path.removeprefix(f"{self.standin.cloud_name}/"))
        if asset is None:
            self._record(404)
            self.send_error(404, "Resource not found")
            return
        self._record(200)
        self.send_response(200)
        self.send_header("Content-Type", _MIME.get(asset.format, "application/octet-stream"))
        self.send_header("Content-Length", str(len(asset.data)))
        self.send_header("ETag", f'"{hashlib.md5(asset.data).hexdigest()}"')
        self.end_headers()
        self.wfile.write(asset.data)


def _raise(status: int, message: str) -> dict[str, Any]:
    raise _Reject(status, message)


def main(argv: list[str]) -> None:
    """Serve the stand-in until Ctrl-C; print the CLOUDINARY_URL pointing at it."""
    standin = CloudinaryStandin().start(int(argv[1]) if len(argv) > 1 else 0)
    print(f"CLOUDINARY_URL={standin.cloudinary_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main(sys.argv)
