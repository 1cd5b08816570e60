"""`python -m service.cli convert-pickled-jobs`: turn jobs a pickling release left in Redis into JSON.

Releases before the JSON switch (core/rqjson.py) let RQ pickle job arguments, meta and
results. This release reads JSON only, so such a job would be failed as unreadable by a
worker. The safe upgrade is to drain first (docs/operations.md, "JSON jobs"); this command is
for jobs that are still queued, delayed or failed when the new release is already running.

It never runs what a pickle says: the unpickler refuses every global (``find_class``), so
only plain values load (str, numbers, None, bool, lists, tuples, dicts), which is all our jobs
ever held. A job whose pickle names a class or function (what an attacker's would need) is
refused, left as it was, and listed, for an operator to delete (``dead-letters delete``) or
look at. Safe to run twice: JSON jobs are skipped.

What is converted, per job key ``rq:job:<id>``: ``data`` (zlib-compressed function, args,
kwargs) and ``meta``; and the job's results stream ``rq:results:<id>`` (each entry's
``return_value``, base64 of the serialized value), rewritten with the same entry ids and TTL.
"""
from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from core.rqjson import SERIALIZER

JOB_KEY_PATTERN = "rq:job:*"
RESULTS_KEY = "rq:results:{}"


class _PlainValuesOnly(pickle.Unpickler):
    """An unpickler that loads plain values and refuses any class or function a pickle names."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain values are converted")


def _plain_unpickle(blob: bytes) -> Any:
    return _PlainValuesOnly(io.BytesIO(blob)).load()


def _is_json(blob: bytes) -> bool:
    try:
        json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def _to_json(blob: bytes) -> bytes:
    """``blob`` as JSON bytes: unchanged when it is JSON already, else a plain-values pickle converted."""
    if _is_json(blob):
        return blob
    return SERIALIZER.dumps(_plain_unpickle(blob))


@dataclass
class ConversionReport:
    """What a run found: converted jobs, jobs already JSON, and jobs refused (with why)."""

    converted: list[str] = field(default_factory=list)
    already_json: int = 0
    refused: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"converted": len(self.converted), "alreadyJson": self.already_json, "refused": self.refused}


def _job_fields(redis: Redis, key: str) -> dict[str, bytes] | None:
    """The job hash's ``data`` (decompressed) and ``meta``; None for keys that are not job hashes."""
    if redis.type(key) != b"hash":
        return None  # rq:job:<id>:dependents and the like
    raw: list[Any] = redis.hmget(key, ["data", "meta"])
    found: dict[str, bytes] = {}
    if raw[0] is not None:
        try:
            found["data"] = zlib.decompress(raw[0])
        except zlib.error:
            found["data"] = raw[0]  # RQ also reads uncompressed data
    if raw[1]:
        found["meta"] = raw[1]
    return found


def _converted_results(redis: Redis, job_id: str) -> list[tuple[bytes, dict[bytes, bytes]]] | None:
    """The results stream's entries with JSON return values; None when nothing needs converting."""
    entries: list[Any] = redis.xrange(RESULTS_KEY.format(job_id))  # type: ignore[assignment]
    changed = False
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entry_id, fields in entries:
        value = fields.get(b"return_value")
        if value is not None:
            blob = base64.b64decode(value)
            if not _is_json(blob):
                fields = {**fields, b"return_value": base64.b64encode(_to_json(blob))}
                changed = True
        out.append((entry_id, fields))
    return out if changed else None


def convert_pickled_jobs(redis: Redis, *, dry_run: bool = False) -> ConversionReport:
    """Rewrite every pickled RQ job of ``redis`` as JSON (see the module docstring)."""
    report = ConversionReport()
    for raw_key in redis.scan_iter(match=JOB_KEY_PATTERN, count=500):
        key = raw_key.decode()
        job_id = key.removeprefix("rq:job:")
        fields = _job_fields(redis, key)
        if fields is None:
            continue
        try:
            new_fields = {name: _to_json(blob) for name, blob in fields.items()}
            results = _converted_results(redis, job_id)
        except (pickle.UnpicklingError, ValueError, EOFError, TypeError, zlib.error) as exc:
            report.refused[job_id] = str(exc)
            continue
        if new_fields == fields and results is None:
            report.already_json += 1
            continue
        report.converted.append(job_id)
        if dry_run:
            continue
        pipe = redis.pipeline(transaction=True)
        if "data" in new_fields:
            pipe.hset(key, "data", zlib.compress(new_fields["data"]))
        if "meta" in new_fields:
            pipe.hset(key, "meta", new_fields["meta"])
        if results is not None:
            results_key = RESULTS_KEY.format(job_id)
            ttl_ms = redis.pttl(results_key)
            pipe.delete(results_key)
            for entry_id, entry in results:
                pipe.xadd(results_key, dict(entry), id=entry_id)  # type: ignore[arg-type]
            if ttl_ms > 0:
                pipe.pexpire(results_key, ttl_ms)
        pipe.execute()
    return report
