"""``Client``: every image-queue endpoint, with retries that are safe for submissions.

Every POST carries an ``Idempotency-Key`` (a fresh UUID per call unless you pass one), and the
same key is sent again on each retry of that call, so a submission retried after a lost answer
or a dropped connection returns the original job or batch instead of queueing twice. Retried:
connection errors and timeouts, 429 and 503 (after their ``Retry-After``, when it is at most
``max_retry_wait_s``), 502/504 from a proxy, and 409 ``IDEMPOTENCY_KEY_IN_USE`` (the first try
is still running). Anything else raises the typed error of ``imagequeue_client.errors``.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import requests

from . import __version__
from .errors import ApiError, TransportError, WaitTimeout, error_from_response
from .multipart import MultipartFile

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_JOB_STATES = ("completed", "failed", "canceled")
FINAL_BATCH_STATUSES = ("completed", "completed_with_errors", "failed", "canceled")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 10.0


class Client:
    """An image-queue API client.

    ``base_url`` defaults to ``IMAGEQUEUE_URL`` (else http://127.0.0.1:8000), ``api_key`` to
    ``IMAGEQUEUE_API_KEY``. ``timeout`` is per HTTP request (seconds); ``retries`` is how many
    times one call is retried (see the module docstring for what is retried).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retries: int = 3, backoff_s: float = 0.5, max_retry_wait_s: float = 60.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = (base_url or os.environ.get("IMAGEQUEUE_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("IMAGEQUEUE_API_KEY")
        if not key:
            raise ValueError("an API key is needed: pass api_key=... or set IMAGEQUEUE_API_KEY")
        self.api_key = key
        self.timeout = timeout
        self.retries = max(retries, 0)
        self.backoff_s = backoff_s
        self.max_retry_wait_s = max_retry_wait_s
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"imagequeue-client/{__version__}"

    # --- plumbing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retryable(self, error: ApiError) -> bool:
        return error.status in RETRY_STATUSES or error.code == "IDEMPOTENCY_KEY_IN_USE"

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * (2 ** attempt), MAX_BACKOFF_S)

    def request(self, method: str, path: str, *, json_body: Any = None,
                body: Callable[[], MultipartFile] | None = None, params: Mapping[str, str] | None = None,
                idempotency_key: str | None = None, stream: bool = False, authenticated: bool = True,
                ) -> requests.Response:
        """One API call with retries; returns the 2xx response or raises ApiError/TransportError.

        ``body`` builds a fresh streamed body for each try; POSTs get an Idempotency-Key that
        stays the same across the tries of this call.
        """
        url = urljoin(self.base_url + "/", path.lstrip("/")) if not path.startswith(("http://", "https://")) \
            else path
        headers = {"Accept": "*/*"}
        if authenticated:
            headers.update({"Accept": "application/json", "X-API-Key": self.api_key})
        if method.upper() == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        attempt = 0
        while True:
            data = body() if body is not None else None
            if data is not None:
                headers["Content-Type"] = data.content_type
            try:
                response = self.session.request(method, url, json=json_body, data=data, params=params,
                                                headers=headers, timeout=self.timeout, stream=stream)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.retries:
                    raise TransportError(f"{method} {url} failed after {attempt + 1} tries: {exc}") from exc
                wait = self._backoff(attempt)
            else:
                if response.status_code < 400:
                    return response
                error = error_from_response(response)
                response.close()
                if not self._retryable(error) or attempt >= self.retries:
                    raise error
                wait = error.retry_after if error.retry_after is not None else self._backoff(attempt)
                if wait > self.max_retry_wait_s:
                    raise error
            finally:
                if data is not None:
                    data.close()
            attempt += 1
            time.sleep(wait)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request(method, path, **kwargs).json()
        return result

    @staticmethod
    def _body(fields: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in fields.items() if value is not None}

    # --- single and bulk jobs (/api/image-queue) ---------------------------------------------
    def _single(self, path: str, fields: dict[str, Any], file: str | os.PathLike[str] | None,
                wait: float | None, idempotency_key: str | None) -> dict[str, Any]:
        """POST a single job: JSON with photoUrl, or a multipart form with the photo file itself."""
        return self._post_photos(path, fields, "photoUrl", [file] if file is not None else None, wait,
                                 idempotency_key)

    def _bulk(self, path: str, fields: dict[str, Any], files: Sequence[str | os.PathLike[str]] | None,
              wait: float | None, idempotency_key: str | None) -> dict[str, Any]:
        """POST a bulk request: JSON with photoUrls, or a multipart form with the photos as ``files[]``."""
        return self._post_photos(path, fields, "photoUrls", files, wait, idempotency_key)

    def _post_photos(self, path: str, fields: dict[str, Any], url_field: str,
                     files: Sequence[str | os.PathLike[str]] | None, wait: float | None,
                     idempotency_key: str | None) -> dict[str, Any]:
        if wait is not None:
            fields["wait"] = wait
        if not files:
            return self._json("POST", path, idempotency_key=idempotency_key, json_body=self._body(fields))
        fields.pop(url_field, None)
        form = {name: json.dumps(value) if isinstance(value, Mapping | list) else str(value)
                for name, value in self._body(fields).items()}
        part = "file" if url_field == "photoUrl" else "files[]"
        first, *rest = files

        def body() -> MultipartFile:
            return MultipartFile(form, part, first, content_type="application/octet-stream",
                                 more_files=[(part, more) for more in rest])

        return self._json("POST", path, body=body, idempotency_key=idempotency_key)

    def crop_face(self, record_id: str, project_id: str, photo_url: str | None = None, mode: str = "square", *,
                  options: Mapping[str, Any] | None = None, callback_url: str | None = None,
                  idempotency_key: str | None = None, file: str | os.PathLike[str] | None = None,
                  wait: float | None = None) -> dict[str, Any]:
        """Queue one face crop (mode square, passport or idcard); returns {jobId, statusUrl, ...}.

        ``file``: send the photo itself (JPEG, PNG, WebP, HEIC, AVIF) instead of ``photo_url``.
        ``wait`` (seconds, at most 30): the answer is the finished job (``state``, ``result``)
        when it completes in time, else the usual {jobId, ...}.
        """
        return self._single("/api/image-queue/crop-face-queue",
                            {"recordId": record_id, "projectId": project_id, "photoUrl": photo_url, "mode": mode,
                             "options": options, "callbackUrl": callback_url}, file, wait, idempotency_key)

    def bulk_crop_face(self, record_ids: list[str], project_id: str, photo_urls: list[str] | None = None,
                       mode: str = "square", *, options: Mapping[str, Any] | None = None,
                       callback_url: str | None = None, idempotency_key: str | None = None,
                       files: Sequence[str | os.PathLike[str]] | None = None,
                       wait: float | None = None) -> dict[str, Any]:
        """Queue face crops for parallel lists of records and photo URLs; returns {jobIds, ...}.

        ``files``: the photos themselves, one per record in order, instead of ``photo_urls``.
        ``wait`` (seconds, at most 30): the answer is {jobs: [finished job, ...]} when every job
        completes in time, else the usual {jobIds, ...}.
        """
        return self._bulk("/api/image-queue/bulk-crop-face",
                          {"recordIds": record_ids, "projectId": project_id, "photoUrls": photo_urls, "mode": mode,
                           "options": options, "callbackUrl": callback_url}, files, wait, idempotency_key)

    def remove_background(self, record_id: str, project_id: str, photo_url: str | None = None, *,
                          options: Mapping[str, Any] | None = None, callback_url: str | None = None,
                          idempotency_key: str | None = None, file: str | os.PathLike[str] | None = None,
                          wait: float | None = None) -> dict[str, Any]:
        """Queue one background removal; returns {jobId, statusUrl, ...} (``file``, ``wait``: as crop_face)."""
        return self._single("/api/image-queue/remove-bg-queue",
                            {"recordId": record_id, "projectId": project_id, "photoUrl": photo_url,
                             "options": options, "callbackUrl": callback_url}, file, wait, idempotency_key)

    def bulk_remove_background(self, record_ids: list[str], project_id: str, photo_urls: list[str] | None = None,
                               *, options: Mapping[str, Any] | None = None, callback_url: str | None = None,
                               idempotency_key: str | None = None,
                               files: Sequence[str | os.PathLike[str]] | None = None,
                               wait: float | None = None) -> dict[str, Any]:
        """Queue background removals for parallel lists of records and photo URLs (or ``files``); as
        bulk_crop_face."""
        return self._bulk("/api/image-queue/bulk-remove-bg",
                          {"recordIds": record_ids, "projectId": project_id, "photoUrls": photo_urls,
                           "options": options, "callbackUrl": callback_url}, files, wait, idempotency_key)

    def id_photo(self, record_id: str, project_id: str, photo_url: str | None = None,
                 spec: str | Mapping[str, Any] = "icao", *, options: Mapping[str, Any] | None = None,
                 callback_url: str | None = None, idempotency_key: str | None = None,
                 file: str | os.PathLike[str] | None = None, wait: float | None = None) -> dict[str, Any]:
        """Queue one ID photo (spec icao, us, schengen, idcard or a custom dict); returns {jobId, statusUrl, ...}.

        ``options``: background ('white' or a light grey), dpi, format (jpeg/png), maxBytes.
        ``file``, ``wait``: as crop_face. The finished job's result carries ``compliant`` and ``report``.
        """
        return self._single("/api/image-queue/id-photo-queue",
                            {"recordId": record_id, "projectId": project_id, "photoUrl": photo_url, "spec": spec,
                             "options": options, "callbackUrl": callback_url}, file, wait, idempotency_key)

    def bulk_id_photo(self, record_ids: list[str], project_id: str, photo_urls: list[str] | None = None,
                      spec: str | Mapping[str, Any] = "icao", *, options: Mapping[str, Any] | None = None,
                      callback_url: str | None = None, idempotency_key: str | None = None,
                      files: Sequence[str | os.PathLike[str]] | None = None,
                      wait: float | None = None) -> dict[str, Any]:
        """Queue ID photos for parallel lists of records and photo URLs (or ``files``), one spec for all;
        as bulk_crop_face."""
        return self._bulk("/api/image-queue/bulk-id-photo",
                          {"recordIds": record_ids, "projectId": project_id, "photoUrls": photo_urls, "spec": spec,
                           "options": options, "callbackUrl": callback_url}, files, wait, idempotency_key)

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's status: state, progress, data, result or error, attempts, webhook."""
        return self._json("GET", f"/api/image-queue/job/{quote(job_id, safe='')}")

    def record(self, record_id: str) -> dict[str, Any]:
        """A record's row: status, outputUrl, face fields, error."""
        return self._json("GET", f"/api/image-queue/record/{quote(record_id, safe='')}")["record"]

    def usage(self, project_id: str | None = None) -> dict[str, Any]:
        """This vendor's counts per operation (single jobs by status, batches and their images) and its
        rate limits with what is left now in each window (GET /api/usage)."""
        return self._json("GET", "/api/usage", params={"projectId": project_id} if project_id else None)

    def queue_stats(self) -> dict[str, Any]:
        """waiting/active/completed/failed/delayed of the single-job queues."""
        return self._json("GET", "/api/image-queue/queue-stats")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a waiting, delayed or active job (idempotent); returns {state, previousState, ...}.

        A completed or failed job raises ApiError 409 ``JOB_NOT_CANCELABLE``.
        """
        return self._json("DELETE", f"/api/image-queue/job/{quote(job_id, safe='')}")

    def list_records(self, *, project_id: str | None = None, status: str | None = None, limit: int | None = None,
                     cursor: str | None = None) -> dict[str, Any]:
        """One page of the vendor's records, newest first: {records, nextCursor}."""
        return self._json("GET", "/api/image-queue/records", params=_list_params(project_id, status, limit, cursor))

    def iter_records(self, *, project_id: str | None = None, status: str | None = None,
                     page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Every record matching, newest first, following the cursors page by page."""
        return self._pages(lambda cursor: self.list_records(project_id=project_id, status=status, limit=page_size,
                                                            cursor=cursor), "records")

    def _pages(self, read: Callable[[str | None], dict[str, Any]], key: str) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = read(cursor)
            yield from page[key]
            cursor = page.get("nextCursor")
            if not cursor:
                return

    # --- batches (/api/batch) ------------------------------------------------------------------
    def upload_zip(self, path: str | os.PathLike[str], project_id: str, *, priority: int = 5, mode: str | None = None,
                   options: Mapping[str, Any] | None = None, callback_url: str | None = None,
                   idempotency_key: str | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   operation: str | None = None) -> dict[str, Any]:
        """Upload a ZIP of photos as a batch, streamed from disk; returns {batchId, imageCount, ...}.

        ``operation``: cropFace (default) or removeBg; ``options`` are that operation's.
        ``on_progress(sent_bytes, total_bytes)`` is called as the upload goes.
        """
        fields = self._body({"projectId": project_id, "priority": str(priority), "mode": mode,
                             "operation": operation,
                             "options": json.dumps(options) if options is not None else None,
                             "callbackUrl": callback_url})

        def body() -> MultipartFile:
            return MultipartFile(fields, "file", path, content_type="application/zip", on_progress=on_progress)

        return self._json("POST", "/api/batch/upload-zip", body=body, idempotency_key=idempotency_key)

    def add_images(self, project_id: str, images: Iterable[tuple[str, str] | Mapping[str, str]], *,
                   priority: int = 5, mode: str | None = None, options: Mapping[str, Any] | None = None,
                   callback_url: str | None = None, idempotency_key: str | None = None,
                   operation: str | None = None) -> dict[str, Any]:
        """Queue a batch of (recordId, imageUrl) pairs (or {recordId, imageUrl} dicts); returns {batchId, ...}.

        ``operation``: cropFace (default) or removeBg; ``options`` are that operation's.
        """
        listed = [dict(image) if isinstance(image, Mapping) else {"recordId": image[0], "imageUrl": image[1]}
                  for image in images]
        return self._json("POST", "/api/batch/add-images", idempotency_key=idempotency_key,
                          json_body=self._body({"projectId": project_id, "priority": priority, "mode": mode,
                                                "operation": operation,
                                                "options": options, "images": listed, "callbackUrl": callback_url}))

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        """A batch's status object: status, imageCount, progress {processed, total, failed}, webhook..."""
        return self._json("GET", f"/api/batch/status/{quote(batch_id, safe='')}")["batch"]

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Every entry's outcome, read as the server streams its JSON lines."""
        response = self.request("GET", f"/api/batch/{quote(batch_id, safe='')}/results",
                                params={"format": "jsonl"}, stream=True)
        with response:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def batch_queue_stats(self) -> dict[str, Any]:
        """faceDetection and batchIngestion counts."""
        return self._json("GET", "/api/batch/queue-stats")["stats"]

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch's pending images (idempotent); returns {batch, canceledNow}.

        A finished batch raises ApiError 409 ``BATCH_NOT_CANCELABLE``.
        """
        return self._json("POST", f"/api/batch/{quote(batch_id, safe='')}/cancel")

    def list_batches(self, *, project_id: str | None = None, status: str | None = None, limit: int | None = None,
                     cursor: str | None = None) -> dict[str, Any]:
        """One page of the vendor's batches, newest first: {batches, nextCursor}."""
        return self._json("GET", "/api/batch", params=_list_params(project_id, status, limit, cursor))

    def iter_batches(self, *, project_id: str | None = None, status: str | None = None,
                     page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Every batch matching, newest first, following the cursors page by page."""
        return self._pages(lambda cursor: self.list_batches(project_id=project_id, status=status, limit=page_size,
                                                            cursor=cursor), "batches")

    def download_results(self, batch_id: str, path: str | os.PathLike[str], *,
                         on_progress: Callable[[int], None] | None = None) -> Path:
        """Save the batch's results ZIP (outputs + results.jsonl/csv + batch.json) to ``path``, streamed.

        Works while the batch runs (the ZIP holds what is done so far). ``on_progress(bytes_so_far)``
        is called after each piece; the size is not known in advance (the server builds the ZIP
        as it sends it).
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        response = self.request("GET", f"/api/batch/{quote(batch_id, safe='')}/results.zip", stream=True)
        done = 0
        with response, open(partial, "wb") as out:
            for chunk in response.iter_content(chunk_size=64 * 1024):
                out.write(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done)
        os.replace(partial, target)
        return target

    # --- waiting and downloading ----------------------------------------------------------------
    def _poll(self, what: str, read: Callable[[], dict[str, Any]], is_final: Callable[[dict[str, Any]], bool],
              timeout: float, poll_interval: float, max_poll_interval: float,
              on_update: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        interval = poll_interval
        while True:
            current = read()
            if on_update is not None:
                on_update(current)
            if is_final(current):
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"{what} is not finished after {timeout:g} s", current)
            time.sleep(min(interval, left))
            interval = min(interval * 1.5, max_poll_interval)

    def wait_for_job(self, job_id: str, *, timeout: float = 600.0, poll_interval: float = 0.5,
                     max_poll_interval: float = 5.0,
                     on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll a job (backing off to ``max_poll_interval``) until completed or failed; returns its
        last status. WaitTimeout after ``timeout`` seconds. ``on_update`` sees every poll."""
        return self._poll(f"job {job_id}", lambda: self.job(job_id),
                          lambda body: body.get("state") in FINAL_JOB_STATES,
                          timeout, poll_interval, max_poll_interval, on_update)

    def wait_for_batch(self, batch_id: str, *, timeout: float = 3600.0, poll_interval: float = 1.0,
                       max_poll_interval: float = 10.0,
                       on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll a batch until completed, completed_with_errors or failed; returns its status object."""
        return self._poll(f"batch {batch_id}", lambda: self.batch_status(batch_id),
                          lambda batch: batch.get("status") in FINAL_BATCH_STATUSES,
                          timeout, poll_interval, max_poll_interval, on_update)

    def download(self, url: str, path: str | os.PathLike[str]) -> Path:
        """Save a result (an ``outputUrl``/``photoUrl``) to ``path``, streamed; returns the path.

        The API key is not sent: results are served by the storage (the app's /files/ or Cloudinary).
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        response = self.request("GET", url, stream=True, authenticated=False)
        with response, open(partial, "wb") as out:
            for chunk in response.iter_content(chunk_size=64 * 1024):
                out.write(chunk)
        os.replace(partial, target)
        return target


def _list_params(project_id: str | None, status: str | None, limit: int | None,
                 cursor: str | None) -> dict[str, str]:
    values = {"projectId": project_id, "status": status, "limit": None if limit is None else str(limit),
              "cursor": cursor}
    return {name: value for name, value in values.items() if value}
