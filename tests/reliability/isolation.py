"""Issue 7 item 6: tenant isolation, measured. Vendor B probes vendor A's ids on a real stack.

Vendor A creates single and bulk crop jobs, a background-removal job, a ZIP batch and a URL
batch (so job, chunk, ingestion, record and batch ids all exist, some completed, some failed,
one still waiting). Vendor B then asks for each of them on every id-bearing route, in several
spellings (as is, percent-encoded, upper case, trailing slash, a ``vendorId`` query, Bearer
auth), sends A's ``vendorId`` in bodies, reuses A's record ids and Idempotency-Key, and knocks
on the admin routes with its vendor key. Checks:

* every id probe answers 404, and exactly what an id that never existed answers (status and
  error code: no existence oracle); ``vendorId`` mismatches answer 403 (SPEC 3, service/auth.py);
  admin routes 401;
* none of B's answers contains anything of A's (ids other than the one B sent, photo and
  output URLs, project id);
* A still reads all of its own resources (the positive control: a service that answered 404 to
  everyone would fail here), and A's records are untouched by B's same-named records.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from core import contracts
from core.batch_plan import chunk_job_id, ingest_job_id
from tests.conftest import free_port
from tests.reliability.api_stack import GENEROUS_LIMITS
from tests.reliability.probe_stack import (
    Answer,
    api_healthy,
    private_stack,
    processes_alive,
    send,
    unexpected_tracebacks,
)
from tests.reliability.report import Report
from tests.rembg_servers import photo_jpeg
from tests.stack import PhotoServer, Stack, create_vendor

FINAL_BATCH = ("completed", "completed_with_errors", "failed")
ADMIN = ("ops", "isolation-admin-pass")


@dataclass
class Tenant:
    """One vendor's key and everything it created."""

    vendor: str
    key: str
    project: str
    job_ids: list[str] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)
    batch_ids: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)  # photo and output URLs

    @property
    def auth(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def markers(self) -> set[str]:
        """Strings that must never appear in another vendor's answers."""
        return {self.vendor, self.project, *self.job_ids, *self.record_ids, *self.batch_ids, *self.urls}


@dataclass
class Probes:
    """Vendor B's probes: counts by expected answer, misses and leaks with examples."""

    total: int = 0
    expected_ok: int = 0
    oracle: int = 0  # answers that differ from an unknown id's
    leaks: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    by_route: dict[str, int] = field(default_factory=dict)


def _post_json(stack: Stack, tenant: Tenant, path: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Answer:
    return send(stack.base_url, "POST", path, json.dumps(body).encode(),
                {**tenant.auth, "Content-Type": "application/json", **(headers or {})})


def _multipart(fields: dict[str, str], zip_bytes: bytes) -> tuple[bytes, str]:
    boundary = "iso-" + uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n").encode() + zip_bytes + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _zip(entries: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _accepted(answer: Answer, what: str) -> dict[str, Any]:
    if answer.status != 202:
        raise AssertionError(f"{what}: expected 202, got {answer.status}: {answer.text[:300]}")
    body: dict[str, Any] = answer.json()
    return body


def create_resources(stack: Stack, a: Tenant, photos: PhotoServer, face: bytes, noface: bytes, copies: int) -> None:
    """Vendor A's jobs, records and batches of every kind; ``copies`` of each single job."""
    token = a.project
    photos.files[f"/{token}/face.jpg"] = face
    photos.files[f"/{token}/noface.jpg"] = noface
    face_url, missing_url = photos.url(f"/{token}/face.jpg"), photos.url(f"/{token}/missing.jpg")
    a.urls += [face_url, missing_url, photos.url(f"/{token}/noface.jpg")]

    prefix = "rec-" + uuid.uuid4().hex[:8]  # not the project id: B's own rows reuse these names

    def record() -> str:
        a.record_ids.append(f"{prefix}-{len(a.record_ids)}")
        return a.record_ids[-1]

    for _ in range(copies):
        for url in (face_url, missing_url):
            body = _accepted(_post_json(stack, a, "/api/image-queue/crop-face-queue", {
                "recordId": record(), "projectId": a.project, "photoUrl": url, "mode": "square"}), "crop")
            a.job_ids.append(body["jobId"])
        body = _accepted(_post_json(stack, a, "/api/image-queue/remove-bg-queue", {
            "recordId": record(), "projectId": a.project, "photoUrl": face_url}), "remove-bg")
        a.job_ids.append(body["jobId"])
    ids = [record(), record()]
    body = _accepted(_post_json(stack, a, "/api/image-queue/bulk-crop-face", {
        "recordIds": ids, "projectId": a.project, "photoUrls": [face_url, missing_url], "mode": "passport"}), "bulk")
    a.job_ids += body["jobIds"]
    ids = [record(), record()]
    body = _accepted(_post_json(stack, a, "/api/batch/add-images", {
        "projectId": a.project, "priority": 8,
        "images": [{"recordId": ids[0], "imageUrl": face_url}, {"recordId": ids[1], "imageUrl": missing_url}]}),
        "url batch")
    a.batch_ids.append(body["batchId"])
    data, content_type = _multipart({"projectId": a.project, "priority": "6"},
                                    _zip({"face.jpg": face, "noface.jpg": noface}))
    body = _accepted(send(stack.base_url, "POST", "/api/batch/upload-zip", data,
                          {**a.auth, "Content-Type": content_type}), "zip batch")
    a.batch_ids.append(body["batchId"])
    # Batch work has RQ jobs too: ingestion and chunks are reachable through the job route's id space.
    for batch_id in a.batch_ids:
        a.job_ids += [chunk_job_id(batch_id, 0), ingest_job_id(batch_id)]


def wait_settled(stack: Stack, a: Tenant, timeout: float) -> dict[str, str]:
    """Wait until A's crop jobs and batches are final (the remove-bg job may wait: no worker);
    returns the state of each job id A can read."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {}
        for job_id in a.job_ids:
            answer = send(stack.base_url, "GET", f"/api/image-queue/job/{job_id}", headers=a.auth)
            if answer.status == 200:
                body = answer.json()
                states[job_id] = body["state"]
                result = body.get("result") or {}
                if isinstance(result, dict) and result.get("photoUrl") and result["photoUrl"] not in a.urls:
                    a.urls.append(result["photoUrl"])
        batches = [send(stack.base_url, "GET", f"/api/batch/status/{b}", headers=a.auth).json()["batch"]["status"]
                   for b in a.batch_ids]
        jobs_done = all(state in ("completed", "failed") for job_id, state in states.items()
                        if job_id not in _bg_jobs(stack, a))
        if jobs_done and all(status in FINAL_BATCH for status in batches):
            return states
        time.sleep(0.3)
    return states


def _bg_jobs(stack: Stack, a: Tenant) -> set[str]:
    """A's background-removal job ids (no worker runs them here: they stay waiting)."""
    found = set()
    for job_id in a.job_ids:
        answer = send(stack.base_url, "GET", f"/api/image-queue/job/{job_id}", headers=a.auth)
        if answer.status == 200 and "options" in answer.json().get("data", {}) and \
                "mode" not in answer.json().get("data", {}):
            found.add(job_id)
    return found


def _spellings(ident: str, full: bool) -> list[str]:
    """The id as B might send it: as is, percent-encoded, upper case, trailing slash, ..."""
    encoded = "".join(f"%{byte:02X}" for byte in ident.encode())
    spellings = [ident, encoded, ident.upper(), ident + "/", ident + "%20", quote(ident + "\x00", safe=""),
                 ident + ".json", ident + ":x"]
    if full:
        spellings += [ident + "%2F", "%20" + ident, ident + "@x", ident.lower() + "?vendorId=x", ident + "#x",
                      ident + "%3A" + ident]
    return spellings


def _fake(ident: str) -> str:
    """An id of the same shape that never existed (hex digits swapped)."""
    table = str.maketrans("0123456789abcdef", "fedcba9876543210")
    return ident.translate(table)


def probe_ids(stack: Stack, a: Tenant, b: Tenant, probes: Probes, full: bool) -> None:
    """Every id-bearing GET (and other methods) with A's ids under B's key."""
    routes = [("job", "/api/image-queue/job/{}", a.job_ids), ("record", "/api/image-queue/record/{}", a.record_ids),
              ("batch status", "/api/batch/status/{}", a.batch_ids),
              ("batch results", "/api/batch/{}/results", a.batch_ids),
              ("batch results csv", "/api/batch/{}/results?format=csv", a.batch_ids),
              ("batch results zip", "/api/batch/{}/results.zip", a.batch_ids)]
    auths = [b.auth, {"Authorization": f"Bearer {b.key}"}]
    for route, template, ids in routes:
        for ident in ids:
            for spelling in _spellings(ident, full):
                for query in ("", f"{'&' if '?' in template else '?'}vendorId={quote(a.vendor)}"):
                    for headers in auths if query == "" else auths[:1]:
                        path = template.format(spelling) + query
                        fake_path = template.format(spelling.replace(ident, _fake(ident))) + query
                        _probe(stack, a, probes, route, "GET", path, headers, expected=404, compare=fake_path)
            if route == "batch status":  # cancel: another vendor's batch is not found
                _probe(stack, a, probes, "cancel another vendor's batch (404)", "POST",
                       f"/api/batch/{ident}/cancel", b.auth, expected=404, compare=f"/api/batch/{_fake(ident)}/cancel")
            for method in ("DELETE", "POST", "PUT", "PATCH"):
                path = template.format(ident).split("?")[0]
                if route == "job" and method == "DELETE":  # cancel: another vendor's job is not found
                    _probe(stack, a, probes, "cancel another vendor's job (404)", method, path, b.auth, expected=404,
                           compare=template.format(_fake(ident)))
                    continue
                _probe(stack, a, probes, "id routes, other methods (405)", method, path, b.auth, expected=405,
                       compare=template.format(_fake(ident)).split("?")[0])


def _probe(stack: Stack, a: Tenant, probes: Probes, route: str, method: str, path: str, headers: dict[str, str],
           *, expected: int, compare: str | None = None, body: bytes = b"",
           allowed: frozenset[str] = frozenset()) -> None:
    """Send one probe, judge its status, compare with an unknown id's answer, look for leaks."""
    answer = _follow(stack, method, path, body, headers)
    probes.total += 1
    probes.by_route[route] = probes.by_route.get(route, 0) + 1
    if answer.status == expected:
        probes.expected_ok += 1
    elif len(probes.misses) < 10:
        probes.misses.append(f"{method} {path}: {answer.status} (expected {expected}) {answer.text[:120]}")
    if compare is not None:
        other = _follow(stack, method, compare, body, headers)
        if (answer.status, _code(answer)) != (other.status, _code(other)):
            probes.oracle += 1
            if len(probes.misses) < 10:
                probes.misses.append(f"oracle {method} {path}: {answer.status}/{_code(answer)} vs unknown id "
                                     f"{other.status}/{_code(other)}")
    sent = path + unquote(path) + body.decode("utf-8", errors="replace")
    leaked = [marker for marker in a.markers() - allowed if marker not in sent and _contains(answer.text, marker)]
    if leaked and len(probes.leaks) < 10:
        probes.leaks.append(f"{method} {path}: {leaked[:3]}")
    elif leaked:
        probes.leaks.append("")


def _follow(stack: Stack, method: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
    """Send, following same-origin redirects as a client would (werkzeug answers a doubled slash,
    such as an id with a trailing slash before /results, with 308 to the merged path)."""
    answer = send(stack.base_url, method, path, body, headers)
    for _ in range(3):
        location = answer.headers.get("location", "")
        if not 300 <= answer.status < 400 or not location:
            break
        path = location.removeprefix(stack.base_url)
        if not path.startswith("/"):
            break  # off-origin: judged as it is
        answer = send(stack.base_url, method, path, body, headers)
    return answer


def _contains(text: str, marker: str) -> bool:
    """``marker`` as a whole id in ``text`` (rec-1 is not inside rec-11: that is B's own record)."""
    return re.search(rf"(?<![\w.:@-]){re.escape(marker)}(?![\w.:@-])", text) is not None


def _code(answer: Answer) -> str:
    try:
        return str(answer.json().get("error", {}).get("code"))
    except (ValueError, AttributeError):
        return "<not JSON>"


def probe_bodies(stack: Stack, a: Tenant, b: Tenant, probes: Probes) -> None:
    """A's vendorId in B's bodies and forms: 403 VENDOR_MISMATCH on every queueing route."""
    url = a.urls[0]
    bodies: dict[str, dict[str, Any]] = {
        "/api/image-queue/crop-face-queue": {"recordId": "b-x", "projectId": "pb", "photoUrl": url, "mode": "square"},
        "/api/image-queue/remove-bg-queue": {"recordId": "b-x", "projectId": "pb", "photoUrl": url},
        "/api/image-queue/bulk-crop-face": {"recordIds": ["b-x"], "projectId": "pb", "photoUrls": [url],
                                            "mode": "square"},
        "/api/image-queue/bulk-remove-bg": {"recordIds": ["b-x"], "projectId": "pb", "photoUrls": [url]},
        "/api/batch/add-images": {"projectId": "pb", "images": [{"recordId": "b-x", "imageUrl": url}]},
    }
    for path, body in bodies.items():
        for claimed in (a.vendor, a.vendor.upper(), a.vendor + " ", a.vendor + "\x00"):
            data = json.dumps({**body, "vendorId": claimed}).encode()
            _probe(stack, a, probes, "vendorId in body", "POST", path, {**b.auth, "Content-Type": "application/json"},
                   expected=403, body=data)
    data, content_type = _multipart({"projectId": "pb", "vendorId": a.vendor}, _zip({"x.jpg": b"\xff\xd8\xff"}))
    _probe(stack, a, probes, "vendorId in form", "POST", "/api/batch/upload-zip",
           {**b.auth, "Content-Type": content_type}, expected=403, body=data)


def probe_admin(stack: Stack, a: Tenant, b: Tenant, probes: Probes) -> None:
    """Operator routes (dead letters, dashboard, metrics) with a vendor key: 401, nothing shown."""
    gets = ["/api/admin/failed-jobs", f"/api/admin/failed-jobs?vendor={quote(a.vendor)}",
            f"/api/admin/failed-jobs?jobId={a.job_ids[1]}", "/rq/", "/metrics"]
    for path in gets:
        for headers in (b.auth, {"Authorization": f"Bearer {b.key}"}):
            _probe(stack, a, probes, "admin GET", "GET", path, headers, expected=401)
    for path in ("/api/admin/failed-jobs/requeue", "/api/admin/failed-jobs/delete"):
        body = json.dumps({"jobIds": [a.job_ids[1]], "vendor": a.vendor}).encode()
        _probe(stack, a, probes, "admin POST", "POST", path, {**b.auth, "Content-Type": "application/json"},
               expected=401, body=body)


def probe_shared_names(stack: Stack, a: Tenant, b: Tenant, probes: Probes, photos: PhotoServer,
                       face: bytes) -> dict[str, Any]:
    """B reuses A's record ids and A's Idempotency-Key: B gets its own work, A keeps its own."""
    photos.files[f"/{b.project}/b.jpg"] = face
    b_url = photos.url(f"/{b.project}/b.jpg")
    shared = a.record_ids[0]
    key = "shared-idempotency-key"
    a_body = {"recordId": a.record_ids[-1] + "-idem", "projectId": a.project, "photoUrl": a.urls[1], "mode": "square"}
    first = _post_json(stack, a, "/api/image-queue/crop-face-queue", a_body, {"Idempotency-Key": key})
    a_idem_job = first.json().get("jobId", "")
    a.job_ids.append(a_idem_job)
    b_same = _post_json(stack, b, "/api/image-queue/crop-face-queue", a_body | {"projectId": b.project},
                        {"Idempotency-Key": key})
    replayed = b_same.headers.get("idempotent-replayed") == "true" or a_idem_job in b_same.text
    mine = _post_json(stack, b, "/api/image-queue/crop-face-queue",
                      {"recordId": shared, "projectId": b.project, "photoUrl": b_url, "mode": "square"})
    b_job = mine.json().get("jobId", "")
    batch = _post_json(stack, b, "/api/batch/add-images", {
        "projectId": b.project, "images": [{"recordId": rid, "imageUrl": b_url} for rid in a.record_ids[-2:]]})
    b_batch = batch.json().get("batchId", "")
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        state = send(stack.base_url, "GET", f"/api/image-queue/job/{b_job}", headers=b.auth).json().get("state")
        status = send(stack.base_url, "GET", f"/api/batch/status/{b_batch}", headers=b.auth).json()["batch"]["status"]
        if state in ("completed", "failed") and status in FINAL_BATCH:
            break
        time.sleep(0.3)
    own = frozenset({shared, *a.record_ids[-2:]})  # B's own records carry these names too
    _probe(stack, a, probes, "B's own record with A's record id", "GET", f"/api/image-queue/record/{shared}", b.auth,
           expected=200, allowed=own)
    _probe(stack, a, probes, "B's own batch with A's record ids", "GET", f"/api/batch/{b_batch}/results", b.auth,
           expected=200, allowed=own)
    _probe(stack, a, probes, "B's queue stats", "GET", "/api/image-queue/queue-stats", b.auth, expected=200)
    _probe(stack, a, probes, "B's batch queue stats", "GET", "/api/batch/queue-stats", b.auth, expected=200)
    a_record = send(stack.base_url, "GET", f"/api/image-queue/record/{shared}", headers=a.auth).json()["record"]
    return {"idempotency replayed across vendors": replayed, "B idempotent submission": b_same.status,
            "A's record untouched": a_record["sourceUrl"] in a.urls and a_record["projectId"] == a.project}


def owner_reads(stack: Stack, a: Tenant) -> tuple[int, int, list[str]]:
    """(A's reads answered 200, reads tried, failures): the positive control."""
    paths = [f"/api/image-queue/job/{j}" for j in a.job_ids if not j.endswith("-ingest") and "-c" not in j[-4:]]
    paths += [f"/api/image-queue/record/{r}" for r in a.record_ids]
    paths += [p.format(b) for b in a.batch_ids for p in ("/api/batch/status/{}", "/api/batch/{}/results",
                                                         "/api/batch/{}/results?format=csv")]
    ok, failures = 0, list[str]()
    for path in paths:
        answer = send(stack.base_url, "GET", path, headers=a.auth)
        if answer.status == 200 and a.project in answer.text or (answer.status == 200 and "/results" in path
                                                                  and answer.text.strip()):
            ok += 1
        elif len(failures) < 5:
            failures.append(f"{path}: {answer.status} {answer.text[:120]}")
    return ok, len(paths), failures


def run(profile: str, workdir: Path) -> Report:
    """Vendor A creates, vendor B probes; every figure in the report."""
    report = Report("isolation", profile)
    full = profile == "full"
    token = uuid.uuid4().hex[:8]
    face, noface = photo_jpeg(320), _noface()
    photos = PhotoServer()
    try:
        extra = {**GENEROUS_LIMITS, "ADMIN_USERNAME": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1],
                 "METRICS_TOKEN": "isolation-metrics-token", "BATCH_CHUNK_SIZE": "4",
                 "REMBG_URLS": f"http://127.0.0.1:{free_port()}"}
        queues = [contracts.QUEUE_FACE_CROP, contracts.QUEUE_BATCH_INGESTION, *contracts.FACE_DETECTION_QUEUES]
        with private_stack(workdir, extra, [queues]) as stack:
            a = Tenant(f"vendor-a-{token}", create_vendor(stack.env, f"vendor-a-{token}"), f"proj-a-{token}")
            b = Tenant(f"vendor-b-{token}", create_vendor(stack.env, f"vendor-b-{token}"), f"proj-b-{token}")
            create_resources(stack, a, photos, face, noface, copies=3 if full else 1)
            states = wait_settled(stack, a, 60 if full else 40)
            report.figure("A's jobs by state", ", ".join(f"{s}x{n}" for s, n in sorted(_count(states).items())))
            report.note("the remove-bg job(s) stay waiting: no background-removal worker runs here; their ids exist")
            probes = Probes()
            probe_ids(stack, a, b, probes, full)
            probe_bodies(stack, a, b, probes)
            probe_admin(stack, a, b, probes)
            shared = probe_shared_names(stack, a, b, probes, photos, face)
            _figures(report, a, probes, shared)
            ok, tried, failures = owner_reads(stack, a)
            report.check("A's own reads answered 200 with A's data (positive control)", f"{ok}/{tried}",
                         ok == tried and tried > 0, "all")
            for failure in failures:
                report.note(f"owner read failed: {failure}")
            report.check("API healthy at the end", api_healthy(stack), api_healthy(stack), "true")
            alive, started = processes_alive(stack)
            report.check("API and worker processes crashed", started - alive, alive == started, "0")
        unexpected, _deaths, examples = unexpected_tracebacks(workdir / "logs")
        report.check("unexpected tracebacks in API and worker logs", unexpected, unexpected == 0, "0")
        for example in examples:
            report.note(f"traceback: {example}")
    finally:
        photos.close()
    return report.done()


def _noface() -> bytes:
    from tests.reliability.hostile_corpus import gradient

    return gradient("JPEG", (320, 240))


def _count(states: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def _figures(report: Report, a: Tenant, probes: Probes, shared: dict[str, Any]) -> None:
    report.figure("A's ids probed", f"{len(a.job_ids)} job, {len(a.record_ids)} record, {len(a.batch_ids)} batch")
    floor = 150
    report.check("probes by vendor B", probes.total, probes.total >= floor, f">= {floor}")
    for route, count in sorted(probes.by_route.items()):
        report.figure(f"probes: {route}", count)
    report.check("probes answered as documented (404 ids, 403 vendorId, 405 methods, 401 admin)",
                 f"{probes.expected_ok}/{probes.total}", probes.expected_ok == probes.total, "all")
    report.check("id probes whose answer differs from a never-existing id's (existence oracle)", probes.oracle,
                 probes.oracle == 0, "0")
    report.check("B's answers containing any of A's data", len(probes.leaks), not probes.leaks, "0")
    for text in [*(leak for leak in probes.leaks if leak), *probes.misses][:10]:
        report.note(text)
    report.check("A's Idempotency-Key replayed A's answer to B", shared["idempotency replayed across vendors"],
                 not shared["idempotency replayed across vendors"], "false")
    report.figure("B's submission with A's Idempotency-Key answered", shared["B idempotent submission"])
    report.check("A's record untouched by B's record of the same id", shared["A's record untouched"],
                 shared["A's record untouched"], "true")
