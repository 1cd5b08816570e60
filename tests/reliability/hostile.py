"""Issue 7 item 5: a hostile input corpus against every endpoint of a real running stack.

SSRF URLs (loopback, private, link-local and metadata addresses in every spelling, directly and
behind redirects), decompression-bomb, truncated and mislabelled images, ZIP bombs and zip-slip,
JSON of every wrong type and shape, odd paths, headers and multipart forms go to a private
Gunicorn + `rq worker` stack. Every answer is counted by class; every submission that was
accepted (202) is followed until its job or batch is final, and must have ended as a clean
failure with a clear code (never completed for an SSRF target, never stuck).

Loopback is not in FETCH_ALLOW_NETWORKS here: only 127.0.0.2/32 is, where the corpus's own
server serves the hostile files and redirects to the targets. Loopback targets point at a
canary server that counts every connection: a fetch that got past the address checks would
show up there, whatever the job reported.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from core import contracts
from tests.conftest import ROOT, free_port
from tests.reliability.api_stack import GENEROUS_LIMITS
from tests.reliability.hostile_corpus import (
    ImageCase,
    UrlCase,
    ZipCase,
    gradient,
    image_cases,
    raw_bodies,
    ssrf_urls,
    wrong_values,
    zip_cases,
)
from tests.reliability.probe_stack import (
    Answer,
    Tally,
    api_healthy,
    private_stack,
    processes_alive,
    send,
    unexpected_tracebacks,
)
from tests.reliability.report import Report
from tests.stack import Stack, create_vendor

RID = "RID"  # placeholder for a fresh record id (Run.fresh_ids)
HOSTILE_HOST = "127.0.0.2"  # the one address workers may fetch from (FETCH_ALLOW_NETWORKS)
FINAL_BATCH = ("completed", "completed_with_errors", "failed")
# Codes that are not a clean, input-related failure: a crash, a timeout, an unknown error.
UNCLEAN_CODES = frozenset({"UNEXPECTED_ERROR", "JOB_FAILED", "WORKER_DIED", "JOB_TIMEOUT", ""})
QUEUE_PATHS = ("crop-face-queue", "remove-bg-queue", "bulk-crop-face", "bulk-remove-bg")
SETTLE_S = {"quick": 40.0, "full": 90.0}  # how long accepted work may take to end after the last submission


# --- servers the workers fetch from -------------------------------------------------------------
class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class HostileServer:
    """Serves the hostile images and redirects to the SSRF targets, on 127.0.0.2 (allowed)."""

    def __init__(self, images: list[ImageCase]) -> None:
        self.images = {case.name: case for case in images}
        self.port = free_port()
        server = self

        class Handler(_Quiet):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                parts = urlsplit(self.path)
                if parts.path.startswith("/r/"):
                    target = parse_qs(parts.query).get("to", [""])[0]
                    self.send_response(int(parts.path.rsplit("/", 1)[1]))
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif parts.path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif parts.path.startswith("/img/") and parts.path[5:] in server.images:
                    case = server.images[parts.path[5:]]
                    self.send_response(200)
                    self.send_header("Content-Type", case.content_type)
                    self.send_header("Content-Length", str(case.claimed_length or len(case.data)))
                    self.end_headers()
                    self.wfile.write(case.data)
                    self.close_connection = True
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.httpd = ThreadingHTTPServer((HOSTILE_HOST, self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://{HOSTILE_HOST}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Canary:
    """A server on loopback (IPv4 and, where the host has it, IPv6) that only counts connections."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.port = free_port()
        canary = self

        class Handler(_Quiet):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                canary.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET  # webhook deliveries  # noqa: N815

        class V6(ThreadingHTTPServer):
            import socket as _socket

            address_family = _socket.AF_INET6

        self.servers: list[ThreadingHTTPServer] = [ThreadingHTTPServer(("127.0.0.1", self.port), Handler)]
        try:
            self.servers.append(V6(("::1", self.port), Handler))
        except OSError:
            pass  # no IPv6 loopback here: [::1] targets then simply cannot connect
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


# --- expectations and their verification ---------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    """What a clean end of an accepted submission is."""

    category: str
    label: str
    codes: frozenset[str] = frozenset()  # empty: any clean code
    may_complete: bool = False
    webhook_refused: bool = False  # the job's callbackUrl must end refused, never delivered
    batch_codes: frozenset[str] = frozenset()
    entry_codes: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass
class Pending:
    kind: str  # "job" or "batch"
    ident: str
    expect: Expect
    verdict: str | None = None  # None until final; "" clean; else why not


@dataclass
class Run:
    """Everything one corpus run shares: the stack, the key, the tallies, the accepted work."""

    stack: Stack
    key: str
    hostile: HostileServer
    canary: Canary
    full: bool
    tally: Tally = field(default_factory=Tally)
    pending: list[Pending] = field(default_factory=list)
    rows_checked: int = 0
    ids: int = 0

    @property
    def auth(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def request(self, category: str, label: str, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None, expect: Expect | None = None) -> Answer:
        """Send, count, and follow an accepted submission (its ids) until it is final."""
        answer = self.tally.count(category, label,
                                  send(self.stack.base_url, method, path, body, headers if headers is not None
                                       else self.auth))
        if 200 <= answer.status < 300 and method == "POST" and expect is not None:
            self._follow(answer, expect)
        return answer

    def post_json(self, category: str, label: str, path: str, body: Any, expect: Expect) -> Answer:
        data = json.dumps(self.fresh_ids(body)).encode()
        return self.request(category, label, "POST", path, data,
                            {**self.auth, "Content-Type": "application/json"}, expect)

    def fresh_ids(self, value: Any) -> Any:
        """Each RID placeholder becomes a record id of its own: a record queued again supersedes
        its older job (RECORD_SUPERSEDED), which would hide how the older input ended."""
        if value == RID:
            self.ids += 1
            return f"h{self.ids}"
        if isinstance(value, list):
            return [self.fresh_ids(item) for item in value]
        if isinstance(value, dict):
            return {key: self.fresh_ids(item) for key, item in value.items()}
        return value

    def _follow(self, answer: Answer, expect: Expect) -> None:
        try:
            body = answer.json()
        except ValueError:
            self.pending.append(Pending("job", "?", expect, f"2xx without a JSON body: {answer.text[:100]}"))
            return
        ids = [body["jobId"]] if "jobId" in body else list(body.get("jobIds") or [])
        self.pending += [Pending("job", job_id, expect) for job_id in ids]
        if "batchId" in body:
            self.pending.append(Pending("batch", body["batchId"], expect))
        if not ids and "batchId" not in body:
            self.pending.append(Pending("job", "?", expect, f"2xx naming no job or batch: {answer.text[:100]}"))


def _job_verdict(run: Run, item: Pending) -> str | None:
    answer = send(run.stack.base_url, "GET", f"/api/image-queue/job/{item.ident}", headers=run.auth)
    if answer.status != 200:
        return f"job status answered {answer.status}"
    body = answer.json()
    state = body.get("state")
    if state not in ("completed", "failed"):
        return None
    webhook = body.get("webhook") or {}
    if item.expect.webhook_refused:
        if webhook.get("state") == "pending":
            return None
        if webhook.get("state") != "failed":
            return f"webhook {webhook.get('state')!r} to a refused address"
    if state == "completed":
        return "" if item.expect.may_complete else "completed"
    code = (body.get("error") or {}).get("code") or ""
    return _code_verdict(code, item.expect.codes)


def _code_verdict(code: str, allowed: frozenset[str]) -> str:
    if code in UNCLEAN_CODES:
        return f"failed with {code or 'no code'}"
    if allowed and code not in allowed:
        return f"failed with {code}, expected one of {sorted(allowed)}"
    return ""


def _batch_verdict(run: Run, item: Pending) -> str | None:
    answer = send(run.stack.base_url, "GET", f"/api/batch/status/{item.ident}", headers=run.auth)
    if answer.status != 200:
        return f"batch status answered {answer.status}"
    batch = answer.json()["batch"]
    if batch["status"] not in FINAL_BATCH:
        return None
    if batch["status"] == "failed":
        verdict = _code_verdict((batch.get("error") or {}).get("code") or "", item.expect.batch_codes)
        if verdict:
            return f"batch {verdict}"
    rows = send(run.stack.base_url, "GET", f"/api/batch/{item.ident}/results", headers=run.auth)
    if rows.status != 200:
        return f"results answered {rows.status}"
    for line in rows.text.splitlines():
        row = json.loads(line)
        run.rows_checked += 1
        name = row.get("entry") or row.get("recordId") or ""
        if row["status"] == "completed":
            if not item.expect.may_complete:
                return f"entry {name!r} completed"
            continue
        if row["status"] not in ("failed", "skipped"):
            return f"entry {name!r} ended {row['status']!r} in a final batch"
        allowed = item.expect.entry_codes.get(name, item.expect.codes if not item.expect.entry_codes else frozenset())
        verdict = _code_verdict(row.get("errorCode") or "", allowed)
        if verdict:
            return f"entry {name!r} {verdict}"
    return ""


def settle(run: Run, timeout: float) -> None:
    """Poll every accepted submission until all are final or ``timeout`` passes (then: stuck)."""
    deadline = time.monotonic() + timeout
    while True:
        open_items = [item for item in run.pending if item.verdict is None]
        for item in open_items:
            item.verdict = (_job_verdict if item.kind == "job" else _batch_verdict)(run, item)
        if not any(item.verdict is None for item in run.pending) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for item in run.pending:
        if item.verdict is None:
            item.verdict = "stuck: not final in time"


# --- the corpus, phase by phase --------------------------------------------------------------
def ssrf_phase(run: Run, cases: list[UrlCase]) -> None:
    """Every URL through each single and bulk endpoint and in a URL batch; callbacks too."""
    for case in cases:
        expect = Expect("ssrf", case.label, case.codes)
        run.post_json("ssrf urls", case.label, "/api/image-queue/crop-face-queue",
                      {"recordId": RID, "projectId": "hostile", "photoUrl": case.url, "mode": "square"}, expect)
        run.post_json("ssrf urls", case.label, "/api/image-queue/remove-bg-queue",
                      {"recordId": RID, "projectId": "hostile", "photoUrl": case.url}, expect)
        if run.full:
            for path, extra in (("bulk-crop-face", {"mode": "passport"}), ("bulk-remove-bg", {})):
                run.post_json("ssrf urls", case.label, f"/api/image-queue/{path}",
                              {"recordIds": [RID], "projectId": "hostile", "photoUrls": [case.url], **extra},
                              expect)
            run.post_json("ssrf urls", case.label, "/api/batch/add-images",
                          {"projectId": "hostile", "priority": 7,
                           "images": [{"recordId": RID, "imageUrl": case.url}]}, expect)
    # Quick profile: the submit-time-valid URLs together in one bulk request each and one URL batch.
    valid = [case for case in cases if case.label.startswith(("direct", "redirect", "confusion"))]
    codes = frozenset().union(*(case.codes for case in valid))
    for start in range(0, len(valid), 100):
        group = valid[start:start + 100]
        ids = [RID] * len(group)
        urls = [case.url for case in group]
        expect = Expect("ssrf", f"bulk of {len(group)}", codes)
        run.post_json("ssrf urls", "bulk-crop-face", "/api/image-queue/bulk-crop-face",
                      {"recordIds": ids, "projectId": "hostile", "photoUrls": urls, "mode": "square"}, expect)
        run.post_json("ssrf urls", "bulk-remove-bg", "/api/image-queue/bulk-remove-bg",
                      {"recordIds": ids, "projectId": "hostile", "photoUrls": urls}, expect)
    expect = Expect("ssrf", "URL batch", codes)
    run.post_json("ssrf urls", "add-images", "/api/batch/add-images",
                  {"projectId": "hostile", "priority": 9,
                   "images": [{"recordId": RID, "imageUrl": case.url} for case in valid]},
                  expect)
    callbacks = [case for case in valid if case.label.startswith("direct")][: None if run.full else 8]
    for case in callbacks:
        expect = Expect("ssrf", f"callback {case.label}", frozenset({"IMAGE_NOT_FOUND"}), webhook_refused=True)
        run.post_json("ssrf callback urls", case.label, "/api/image-queue/crop-face-queue",
                      {"recordId": RID, "projectId": "hostile", "photoUrl": f"{run.hostile.base}/img/missing",
                       "mode": "square", "callbackUrl": case.url}, expect)


def image_phase(run: Run, cases: list[ImageCase]) -> None:
    """Each hostile file as a photo URL (crop, background removal where it cannot be valid) and
    all of them in one URL batch."""
    for case in cases:
        url = f"{run.hostile.base}/img/{case.name}"
        expect = Expect("images", case.name, case.codes, case.may_complete)
        run.post_json("image files", case.name, "/api/image-queue/crop-face-queue",
                      {"recordId": RID, "projectId": "hostile", "photoUrl": url, "mode": "passport"}, expect)
        if not case.may_complete and "NO_FACE" not in case.codes:
            run.post_json("image files", case.name, "/api/image-queue/remove-bg-queue",
                          {"recordId": RID, "projectId": "hostile", "photoUrl": url}, expect)
    images = [{"recordId": RID, "imageUrl": f"{run.hostile.base}/img/{case.name}"} for case in cases]
    codes = frozenset().union(*(case.codes for case in cases)) | {"NO_FACE"}
    run.post_json("image files", "URL batch", "/api/batch/add-images",
                  {"projectId": "hostile", "priority": 3, "images": images},
                  Expect("images", "URL batch", codes, may_complete=True))


def _multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "hostile-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body: (name, filename or None, value)."""
    out = bytearray()
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/zip\r\n"
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def upload(run: Run, category: str, label: str, fields: list[tuple[str, str | None, bytes]],
           expect: Expect, headers: dict[str, str] | None = None) -> Answer:
    body, content_type = _multipart(fields)
    return run.request(category, label, "POST", "/api/batch/upload-zip", body,
                       {**run.auth, "Content-Type": content_type, **(headers or {})}, expect)


def zip_phase(run: Run, cases: list[ZipCase]) -> int:
    """Each archive as an upload; returns how many the API refused when it had to."""
    refused_ok = 0
    for case in cases:
        expect = Expect("zips", case.label, batch_codes=case.batch_codes, entry_codes=case.entry_codes)
        answer = upload(run, "zip archives", case.label,
                        [("projectId", None, b"hostile"), ("priority", None, b"4"), ("file", "photos.zip", case.data)],
                        expect)
        if case.refused:
            refused_ok += 400 <= answer.status < 500
            if 200 <= answer.status < 300:
                run.pending.append(Pending("batch", "?", expect, f"{case.label}: accepted, must be refused"))
    return refused_ok


def multipart_phase(run: Run, zip_bytes: bytes) -> None:
    """Malformed forms on upload-zip: missing or doubled file, huge fields, bad values."""
    good = [("projectId", None, b"hostile"), ("file", "photos.zip", zip_bytes)]
    expect = Expect("multipart", "form", batch_codes=frozenset({"NO_IMAGES"}), codes=frozenset({"NO_FACE"}))
    forms: list[tuple[str, list[tuple[str, str | None, bytes]]]] = [
        ("no file field", [("projectId", None, b"hostile")]),
        ("file as a plain field", [("projectId", None, b"hostile"), ("file", None, zip_bytes)]),
        ("two files", [*good, ("file", "second.zip", b"not a zip")]),
        ("file under another name", [("projectId", None, b"hostile"), ("upload", "photos.zip", zip_bytes)]),
        ("no projectId", [("file", "photos.zip", zip_bytes)]),
        ("huge projectId (2 MiB)", [("projectId", None, b"p" * (2 << 20)), ("file", "photos.zip", zip_bytes)]),
        ("2000 form fields", [*[(f"f{i}", None, b"x") for i in range(2000)], *good]),
        ("priority abc", [*good, ("priority", None, b"abc")]),
        ("priority 11", [*good, ("priority", None, b"11")]),
        ("priority -1", [*good, ("priority", None, b"-1")]),
        ("priority 5.5", [*good, ("priority", None, b"5.5")]),
        ("mode ../x", [*good, ("mode", None, b"../x")]),
        ("options not JSON", [*good, ("options", None, b"{bad")]),
        ("options an array", [*good, ("options", None, b"[1,2]")]),
        ("options deeply nested", [*good, ("options", None, b"[" * 20000 + b"]" * 20000)]),
        ("vendorId of another vendor", [*good, ("vendorId", None, b"someone-else")]),
        ("callbackUrl to metadata", [*good, ("callbackUrl", None, b"gopher://169.254.169.254/")]),
        ("traversal filename", [("projectId", None, b"hostile"), ("file", "../../../../tmp/iq-evil.zip", zip_bytes)]),
        ("NUL in field name", [*good, ("a\x00b", None, b"x")]),
        ("unicode projectId", [("projectId", None, "\u202e\U0001f600".encode()), ("file", "p.zip", zip_bytes)]),
        ("invalid UTF-8 projectId", [("projectId", None, b"\xff\xfe"), ("file", "p.zip", zip_bytes)]),
    ]
    for label, fields in forms:
        upload(run, "multipart forms", label, fields, expect)
    raw: list[tuple[str, bytes, dict[str, str]]] = [
        ("JSON to upload-zip", b'{"projectId":"x"}', {"Content-Type": "application/json"}),
        ("multipart without boundary", b"--x\r\n\r\n--x--\r\n", {"Content-Type": "multipart/form-data"}),
        ("broken multipart", b"--hostile-boundary\r\nContent-Disposition: form-data\r\n\r\nxx",
         {"Content-Type": "multipart/form-data; boundary=hostile-boundary"}),
        ("declares 6 GB", b"", {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(6 * 1024**3)}),
        ("empty multipart", b"", {"Content-Type": "multipart/form-data; boundary=x"}),
        ("no content type", zip_bytes, {}),
    ]
    for label, body, headers in raw:
        run.request("multipart forms", label, "POST", "/api/batch/upload-zip", body, {**run.auth, **headers}, expect)


def _bases(hostile_base: str) -> dict[str, dict[str, Any]]:
    """A valid body per JSON endpoint; its photo is a 404, so whatever is accepted fails cleanly."""
    missing = f"{hostile_base}/img/missing.jpg"
    return {
        "/api/image-queue/crop-face-queue": {"recordId": RID, "projectId": "hostile", "photoUrl": missing,
                                             "mode": "square"},
        "/api/image-queue/remove-bg-queue": {"recordId": RID, "projectId": "hostile", "photoUrl": missing},
        "/api/image-queue/bulk-crop-face": {"recordIds": [RID], "projectId": "hostile", "photoUrls": [missing],
                                            "mode": "idcard"},
        "/api/image-queue/bulk-remove-bg": {"recordIds": [RID], "projectId": "hostile", "photoUrls": [missing]},
        "/api/batch/add-images": {"projectId": "hostile", "priority": 5,
                                  "images": [{"recordId": RID, "imageUrl": missing}]},
    }


def _mutations(base: dict[str, Any], values: list[object], full: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """The base body with one field (or one nested item) removed or set to a wrong value."""
    fields = [*base, "vendorId", "options", "callbackUrl", "mode"]
    for name in dict.fromkeys(fields):
        if name in base:
            yield f"{name} missing", {k: v for k, v in base.items() if k != name}
        for value in values:
            yield f"{name}={_short(value)}", {**base, name: value}
    option_names = ["padding", "outputWidth", "outputHeight", "format", "quality", "noFace", "model", "bgColor",
                    "onlyMask", "alphaMatting"]
    for name in option_names if full else option_names[::2]:
        for value in values[:12]:
            yield f"options.{name}={_short(value)}", {**base, "options": {name: value}}
    for list_name, item_name in (("recordIds", None), ("photoUrls", None), ("images", "recordId"),
                                 ("images", "imageUrl")):
        if list_name not in base:
            continue
        for value in values[:12]:
            if item_name is None:
                yield f"{list_name}[0]={_short(value)}", {**base, list_name: [value]}
            else:
                yield f"{list_name}[0].{item_name}={_short(value)}", {
                    **base, list_name: [{**base[list_name][0], item_name: value}]}
        yield f"{list_name} 101 items", {**base, list_name: base[list_name] * 101}
    if "recordIds" in base:
        yield "lengths differ", {**base, "recordIds": [RID, RID]}
        yield "repeated recordId", {**base, "recordIds": ["a", "a"], "photoUrls": base["photoUrls"] * 2}
    if "images" in base:
        yield "images repeated recordId", {**base, "images": base["images"] * 2}
        yield "images 10001 items", {**base, "images": [{"recordId": f"r{i}", "imageUrl": "x"} for i in range(10001)]}


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def json_phase(run: Run) -> None:
    """Raw bodies that are not a JSON object, then every field given a wrong value."""
    bases = _bases(run.hostile.base)
    # Ints are valid ids ("0"), so some mutations share a record: the older job is then superseded.
    expect = Expect("json", "mutation", frozenset({"IMAGE_NOT_FOUND", "RECORD_SUPERSEDED"}))
    for path in bases:
        for label, body, content_type in raw_bodies(run.full):
            headers = {**run.auth, **({"Content-Type": content_type} if content_type else {})}
            run.request("json bodies", f"{path} {label}", "POST", path, body, headers, expect)
        chunked = {**run.auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        huge = b"%x\r\n%s\r\n0\r\n\r\n" % (3 << 20, b" " * (3 << 20))
        run.request("json bodies", f"{path} chunked 3 MiB", "POST", path, huge, chunked, expect)
        for label, mutated in _mutations(bases[path], wrong_values(run.full), run.full):
            run.post_json("json fields", f"{path} {label}", path, mutated, expect)


def path_phase(run: Run) -> None:
    """Odd ids in every id-bearing path, odd query strings, odd methods, /files traversal."""
    ids = ["a" * 200, "a" * 3000, "%00", "a%00b", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..", ".", "%ff%fe",
           "%F0%9F%98%80", "%E2%80%AE", "%ED%A0%80", "null", "-1", "*", "rq:job:x", "iq:idem:x", "%20", "a%0d%0ab",
           "%25", "%2F", "'%20OR%201=1--", "$%7Bjndi%7D", "<script>", "x.json", "a@b", "a:b", "a.", "%2E"]
    templates = ["/api/image-queue/job/{}", "/api/image-queue/record/{}", "/api/batch/status/{}",
                 "/api/batch/{}/results", "/api/batch/{}/results?format=csv"]
    for template in templates:
        for ident in ids:
            run.request("paths and queries", template.format(ident), "GET", template.format(ident))
    queries = ["format=xml", "format=%00", "format=csv&format=jsonl", "format=" + "c" * 5000, "format=%ff",
               "format[]=csv", "=&&==", "%zz"]
    for query in queries:
        run.request("paths and queries", query, "GET", f"/api/batch/b{'0' * 32}/results?{query}")
    for path in ["/files/../../../../etc/passwd", "/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "/files/..%2f..%2f..%2fetc%2fpasswd", "/files//etc/passwd", "/files/%00", "/files/" + "a" * 3000,
                 "/api/../../etc/passwd", "/api/image-queue/../../../etc/passwd", "//etc/passwd",
                 "/api/docs/../../../../etc/passwd", "/api/docs/%2e%2e/%2e%2e/etc/passwd"]:
        answer = run.request("paths and queries", path, "GET", path)
        if b"root:" in answer.body:
            run.pending.append(Pending("job", "?", Expect("paths", path), f"{path} served a system file"))
    routes = ["/api/image-queue/crop-face-queue", "/api/image-queue/job/x", "/api/batch/upload-zip",
              "/api/batch/status/x", "/api/batch/add-images", "/api/image-queue/queue-stats"]
    for route in routes:
        for method in ("PUT", "DELETE", "PATCH", "TRACE", "PROPFIND", "OPTIONS", "HEAD"):
            run.request("methods", f"{method} {route}", method, route, b"{}",
                        {**run.auth, "Content-Type": "application/json"})


def header_phase(run: Run) -> None:
    """Odd API keys, Authorization headers, Idempotency-Keys and Content-Types."""
    base = _bases(run.hostile.base)["/api/image-queue/crop-face-queue"]
    json_type = {"Content-Type": "application/json"}
    variants: list[tuple[str, dict[str, str]]] = [
        ("no key", {}), ("empty key", {"X-API-Key": ""}), ("key 300 chars", {"X-API-Key": "x" * 300}),
        ("key 7000 chars", {"X-API-Key": "x" * 7000}), ("key 20000 chars", {"X-API-Key": "x" * 20000}),
        ("latin-1 key", {"X-API-Key": "clé-é"}), ("key with NUL", {"X-API-Key": "iq_\x00abc"}),
        ("bearer empty", {"Authorization": "Bearer "}), ("bearer junk", {"Authorization": "Bearer " + "y" * 500}),
        ("basic auth", {"Authorization": "Basic YWRtaW46YWRtaW4="}), ("key plus suffix", {"X-API-Key": run.key + "x"}),
        ("key prefix only", {"X-API-Key": run.key[:10]}), ("key upper-cased", {"X-API-Key": run.key.upper()}),
        ("idempotency empty", {**run.auth, "Idempotency-Key": ""}),
        ("idempotency 300", {**run.auth, "Idempotency-Key": "k" * 300}),
        ("idempotency latin-1", {**run.auth, "Idempotency-Key": "clé"}),
        ("idempotency spaces", {**run.auth, "Idempotency-Key": "a b"}),
        ("idempotency DEL", {**run.auth, "Idempotency-Key": "a\x7f"}),
        ("X-Forwarded-For spoof", {**run.auth, "X-Forwarded-For": "169.254.169.254, 127.0.0.1"}),
        ("X-Request-ID 5000", {**run.auth, "X-Request-ID": "r" * 5000}),
        ("X-Request-ID newline-ish", {**run.auth, "X-Request-ID": "a\u2028b"}),
        ("content type charset junk", {**run.auth, "Content-Type": "application/json; charset=\u00ff"}),
    ]
    expect = Expect("headers", "header", frozenset({"IMAGE_NOT_FOUND"}))
    for label, headers in variants:
        merged = {**json_type, **headers}
        body = json.dumps(run.fresh_ids(base)).encode()
        run.request("headers", f"POST {label}", "POST", "/api/image-queue/crop-face-queue", body, merged, expect)
        run.request("headers", f"GET {label}", "GET", "/api/image-queue/queue-stats", b"", headers)


# --- the scenario --------------------------------------------------------------------------------
@contextmanager
def _servers(images: list[ImageCase]) -> Iterator[tuple[HostileServer, Canary]]:
    hostile = HostileServer(images)
    try:
        canary = Canary()
        try:
            yield hostile, canary
        finally:
            canary.close()
    finally:
        hostile.close()


def _files_outside_uploads(token: str, workdir: Path, upload_dir: Path) -> list[str]:
    """Files named after the zip-slip entries anywhere they could have landed, except UPLOAD_DIR."""
    found = [*Path("/tmp").glob(f"*iq-slip-{token}*"), *ROOT.glob(f"*iq-slip-{token}*"),
             *Path("/").glob(f"iq-slip-{token}*"), *Path("/tmp").glob("iq-evil.zip")]
    found += [path for path in workdir.rglob(f"*iq-slip-{token}*") if upload_dir not in path.parents]
    return [str(path) for path in found]


def _upload_leftovers(upload_dir: Path) -> list[str]:
    """Upload temp files, kept ZIPs and extraction folders still there after every batch ended."""
    left = [*(upload_dir / "incoming").glob("*"), *(upload_dir / "zips").glob("*")]
    left += [path for path in (upload_dir / "batches").glob("*") if any(path.iterdir())]
    return [str(path) for path in left]


def run(profile: str, workdir: Path) -> Report:
    """Run the corpus against a private stack in ``workdir``; every figure in the report."""
    report = Report("hostile", profile)
    full = profile == "full"
    token = uuid.uuid4().hex[:10]
    images = image_cases(full)
    with _servers(images) as (hostile, canary):
        extra = {
            **GENEROUS_LIMITS,
            "FETCH_ALLOW_NETWORKS": f"{HOSTILE_HOST}/32",
            "FETCH_CONNECT_TIMEOUT_S": "2", "FETCH_READ_TIMEOUT_S": "5",
            "REMBG_URLS": f"http://127.0.0.1:{free_port()}",  # refuses: nothing hostile may get that far
            "REMBG_COOLDOWN_S": "1",
            "ZIP_MAX_ENTRIES": "1000",  # small, so the too-many-entries archive stays cheap to build
            "BATCH_CHUNK_SIZE": "8",
            "WEBHOOK_RETRIES": "1", "WEBHOOK_RETRY_INTERVALS_S": "1",
            "LOG_LEVEL": "INFO",
        }
        with private_stack(workdir, extra, [contracts.ALL_QUEUES, contracts.ALL_QUEUES]) as stack:
            key = create_vendor(stack.env, "hostile-vendor")
            _webhook_secret(stack)
            r = Run(stack, key, hostile, canary, full)
            api_port = int(stack.env["GUNICORN_BIND"].rsplit(":", 1)[1])
            redis_port = int(stack.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
            urls = ssrf_urls(canary.port, api_port, redis_port, hostile.base, full)
            started = time.monotonic()
            ssrf_phase(r, urls)
            image_phase(r, images)
            jpeg = gradient("JPEG", (200, 150))
            zips = zip_cases(token, jpeg, images, full)
            refused_ok = zip_phase(r, zips)
            multipart_phase(r, _small_zip(jpeg))
            json_phase(r)
            path_phase(r)
            header_phase(r)
            submitted_s = time.monotonic() - started
            settle(r, SETTLE_S[profile])
            _figures(report, r, urls, submitted_s)
            refusable = sum(case.refused for case in zips)
            report.check("non-ZIP uploads refused with 4xx", f"{refused_ok}/{refusable}", refused_ok == refusable,
                         "all")
            upload_dir = Path(stack.env["UPLOAD_DIR"])
            outside = _files_outside_uploads(token, workdir, upload_dir)
            report.check("files written outside UPLOAD_DIR (zip-slip, traversal names)", len(outside), not outside,
                         "0")
            leftovers = _upload_leftovers(upload_dir)
            report.check("upload files left behind after every batch ended", len(leftovers), not leftovers, "0")
            for path in (outside + leftovers)[:5]:
                report.note(f"left: {path}")
            report.check("API healthy at the end (GET /api/worker/health 200)", api_healthy(stack), api_healthy(stack),
                         "true")
            alive, started_procs = processes_alive(stack)
            report.check("API and worker processes crashed", started_procs - alive, alive == started_procs, "0")
        # Logs are complete once the processes have stopped.
        unexpected, horse_deaths, examples = unexpected_tracebacks(workdir / "logs")
        report.check("unexpected tracebacks in API and worker logs", unexpected, unexpected == 0, "0")
        report.check("work-horses terminated abnormally", horse_deaths, horse_deaths == 0, "0")
        for example in examples:
            report.note(f"traceback: {example}")
    return report.done()


def _webhook_secret(stack: Stack) -> None:
    """The vendor needs a signing secret, or a callbackUrl is refused with 422 before any job."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "service.cli", "vendor", "webhook-secret", "hostile-vendor"],
                   cwd=ROOT, env=stack.env, check=True, capture_output=True)


def _small_zip(jpeg: bytes) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("face-less.jpg", jpeg)
    return buf.getvalue()


def _figures(report: Report, r: Run, urls: list[UrlCase], submitted_s: float) -> None:
    """Counts per category and class, and the verdicts on everything that was accepted."""
    tally = r.tally
    floor = 1500 if r.full else 900
    report.check("inputs tried", tally.total, tally.total >= floor, f">= {floor}")
    for category, count in sorted(tally.tried.items()):
        report.figure(f"{category} tried", count)
    report.figure("distinct SSRF URL spellings", len(urls))
    report.figure("answers 2xx (accepted)", tally.classes["2xx"])
    report.figure("answers 4xx", tally.classes["4xx"])
    report.figure("4xx statuses", ", ".join(f"{status}x{n}" for status, n in sorted(tally.statuses.items())
                                            if 400 <= status < 500))
    report.check("5xx answers", tally.classes["5xx"], tally.classes["5xx"] == 0, "0")
    report.figure("answers 3xx (werkzeug's redirect for a doubled slash)", tally.classes["3xx"])
    report.check("requests without an HTTP answer (connection reset or refused)", tally.classes["none"],
                 tally.classes["none"] == 0, "0")
    for example in tally.bad[:5]:
        report.note(f"bad answer: {example}")
    jobs = [item for item in r.pending if item.kind == "job" and item.ident != "?"]
    batches = [item for item in r.pending if item.kind == "batch" and item.ident != "?"]
    report.figure("accepted jobs followed to the end", len(jobs))
    report.figure("accepted batches followed to the end", len(batches))
    report.figure("batch result rows checked", r.rows_checked)
    unclean = [item for item in r.pending if item.verdict]
    report.check("accepted hostile inputs that did not end in a clean failure", len(unclean), not unclean, "0")
    shown: set[str] = set()
    for item in unclean:
        reason = (item.verdict or "").split(",")[0]
        if reason not in shown and len(shown) < 10:
            shown.add(reason)
            report.note(f"not clean: {item.kind} {item.ident} ({item.expect.category} {item.expect.label}): "
                        f"{item.verdict}")
    ssrf_completed = [item for item in r.pending if item.expect.category == "ssrf" and item.verdict == "completed"]
    report.check("SSRF submissions that completed", len(ssrf_completed), not ssrf_completed, "0")
    report.check("connections that reached the loopback canary", len(r.canary.hits), not r.canary.hits, "0")
    report.figure("corpus submission time", round(submitted_s, 1), "s")
