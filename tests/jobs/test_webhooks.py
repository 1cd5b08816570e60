"""jobs.webhooks without a worker: signatures (checked by the client's verifier), event claims
on the real Redis, and the schema step that adds the webhook columns to existing databases.
Deliveries through real workers: tests/integration/test_webhooks.py.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job

from core import contracts, rqjson, webhook_events
from core.config import Settings
from core.db.batches import BATCH_COMPLETED_WITH_ERRORS, BATCH_PROCESSING
from core.db.database import Database, connect
from imagequeue_client.webhooks import SignatureError, verify_signature

SECRET = "whsec_test"
SETTINGS = Settings(webhook_retries=2, webhook_retry_intervals_s=(1, 1))


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"event":"job.completed","jobId":"j1"}'
    header = webhook_events.sign(SECRET, body, 1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(SECRET, header, body, now=1_700_000_100) == json.loads(body)


@pytest.mark.parametrize("change", ["body", "secret", "age", "header"])
def test_the_client_refuses_what_does_not_verify(change: str) -> None:
    body = b'{"event":"job.failed"}'
    header = webhook_events.sign(SECRET, body, 1_700_000_000)
    secret, now = SECRET, 1_700_000_000.0
    if change == "body":
        body = b'{"event":"job.completed"}'
    elif change == "secret":
        secret = "whsec_other"
    elif change == "age":
        now += 301  # past the default 300 s tolerance: a replayed delivery
    else:
        header = header.replace("v1=", "v0=")
    with pytest.raises(SignatureError):
        verify_signature(secret, header, body, now=now)


def make_job(conn: redis.Redis, job_id: str, attempts: int, callback: str | None = "https://hooks.example/x") -> Job:
    payload: dict[str, Any] = {"vendorId": "acme", "projectId": "p1", "recordId": "r1", "photoUrl": "https://x/y.jpg"}
    if callback:
        payload["callbackUrl"] = callback
    job = rqjson.create(contracts.JOB_CROP_FACE, kwargs={"payload": payload}, id=job_id, connection=conn,
                     meta={"attempts": attempts})
    job.save()
    return job


def state(conn: redis.Redis, kind: str, target: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = conn.hgetall(webhook_events.state_key(kind, target))  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_a_job_event_is_queued_once_per_run(redis_conn: redis.Redis) -> None:
    job = make_job(redis_conn, "j1", attempts=1)
    assert webhook_events.notify_job(job, redis_conn, SETTINGS, "job.completed", result={"photoUrl": "u"})
    # RQ runs a finished job again (at-least-once): same run, same event, nothing queued again.
    assert not webhook_events.notify_job(job, redis_conn, SETTINGS, "job.completed", result={"photoUrl": "u"})
    queue = rqjson.queue(contracts.QUEUE_WEBHOOKS, connection=redis_conn)
    assert len(queue.job_ids) == 1
    delivery = rqjson.fetch(queue.job_ids[0], connection=redis_conn)
    first = state(redis_conn, "job", "j1")
    assert delivery.func_name == contracts.JOB_DELIVER_WEBHOOK and delivery.args == ["job", "j1", first["eventId"]]
    assert delivery.retries_left == 2 and delivery.retry_intervals == [1, 1]
    assert first["state"] == "pending" and first["attempts"] == "0" and first["maxAttempts"] == "3"
    body = json.loads(first["body"])
    assert body == {**body, "event": "job.completed", "jobId": "j1", "jobType": "face_crop", "vendorId": "acme",
                    "recordId": "r1", "projectId": "p1", "result": {"photoUrl": "u"}, "eventId": first["eventId"]}
    # Requeued from the failed registry and run again: a new run, a new event.
    job.meta["attempts"] = 2
    assert webhook_events.notify_job(job, redis_conn, SETTINGS, "job.failed", error={"code": "NO_FACE", "message": "m"})
    second = state(redis_conn, "job", "j1")
    assert second["eventId"] != first["eventId"] and json.loads(second["body"])["error"]["code"] == "NO_FACE"
    assert len(queue.job_ids) == 2


def test_jobs_without_a_callback_send_nothing(redis_conn: redis.Redis) -> None:
    job = make_job(redis_conn, "j2", attempts=1, callback=None)
    assert not webhook_events.notify_job(job, redis_conn, SETTINGS, "job.completed", result={})
    assert rqjson.queue(contracts.QUEUE_WEBHOOKS, connection=redis_conn).job_ids == []
    assert state(redis_conn, "job", "j2") == {}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    database.migrate()
    database.create_vendor("acme", "Acme")
    yield database
    database.close()


def test_a_batch_event_is_queued_once_when_final(redis_conn: redis.Redis, db: Database) -> None:
    db.create_batch("b1", "acme", "p1", source="urls", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING, callback_url="https://hooks.example/b")
    db.add_batch_items("b1", [{"seq": 0, "record_id": "r0", "status": "pending"},
                              {"seq": 1, "record_id": "r1", "status": "pending"}])
    known = db.get_batch("b1")
    assert known is not None
    assert not webhook_events.notify_batch_if_final(db, SETTINGS, redis_conn, "b1", known)  # still processing
    db.record_item_outcomes("b1", [{"seq": 0, "status": "completed", "output_url": "u"},
                                   {"seq": 1, "status": "failed", "error_code": "NO_FACE", "error_message": "m"}])
    assert webhook_events.notify_batch_if_final(db, SETTINGS, redis_conn, "b1", known)
    assert not webhook_events.notify_batch_if_final(db, SETTINGS, redis_conn, "b1")  # another chunk sees it too
    body = json.loads(state(redis_conn, "batch", "b1")["body"])
    assert body["event"] == f"batch.{BATCH_COMPLETED_WITH_ERRORS}" and body["batchId"] == "b1"
    assert body["progress"] == {"processed": 2, "total": 2, "failed": 1}
    assert len(rqjson.queue(contracts.QUEUE_WEBHOOKS, connection=redis_conn).job_ids) == 1


def test_webhook_secrets_are_stored_per_vendor(db: Database) -> None:
    assert db.get_webhook_secret("acme") is None
    db.set_webhook_secret("acme", "whsec_1")
    db.set_webhook_secret("acme", "whsec_2")
    assert db.get_webhook_secret("acme") == "whsec_2"
    with pytest.raises(KeyError):
        db.set_webhook_secret("nobody", "whsec_3")


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_migrate_adds_the_webhook_columns_to_an_existing_database(kind: str, request: pytest.FixtureRequest,
                                                                  tmp_path: Path) -> None:
    from core.db import schema

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}" if kind == "sqlite" else str(request.getfixturevalue("mysql_url"))
    old = connect(url)
    # The schema before the webhook columns: the tables as first created, with a vendor in them.
    old._run(lambda cur: [old._execute(cur, statement) for table, columns, indexes in schema._TABLES
                          for statement in old.dialect.create_table(table, columns, indexes)])
    old.create_vendor("acme", "Acme")
    assert "webhook_secret" not in old._run(lambda cur: old._columns(cur, "vendors"))
    old.migrate()
    old.migrate()  # idempotent
    assert {"webhook_secret"} <= old._run(lambda cur: old._columns(cur, "vendors"))
    assert {"callback_url"} <= old._run(lambda cur: old._columns(cur, "batches"))
    old.set_webhook_secret("acme", "whsec_x")
    assert old.get_webhook_secret("acme") == "whsec_x" and old.get_vendor("acme") is not None
    old.close()


def test_the_standard_signature_verifies_with_an_off_the_shelf_library() -> None:
    from standardwebhooks import Webhook

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body, now = b'{"eventId":"evt_1","event":"job.completed"}', int(time.time())
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(now),
               "webhook-signature": webhook_events.standard_signature(secret, "evt_1", now, body)}
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    headers["webhook-id"] = "evt_2"  # the id is signed: a receiver deduplicating on it can trust it
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(secret).verify(body, headers)


def test_secrets_from_before_the_standard_format_get_no_standard_signature() -> None:
    assert webhook_events.standard_signature("whsec_" + "x-y_z" * 8, "evt_1", 1, b"{}") is None
