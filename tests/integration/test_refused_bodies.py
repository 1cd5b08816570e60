"""A body refused as too large still gets its 413 to the client, through real Gunicorn.

Gunicorn closes a connection whose request body was not read; unread data makes the kernel
send a reset, and a client still sending (a chunked upload, a body just over the cap) gets a
broken pipe instead of the answer. service/errors.py reads and drops such a body, bounded,
before answering (lingering close, as nginx does).
"""
from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.stack import Stack, create_vendor, sqlite_stack

pytestmark = pytest.mark.integration

TRIES = 20


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("refused-stack")
    with sqlite_stack(redis_url, tmp, {"RATE_LIMIT_ENABLED": "false"}) as running:
        yield running


def post(stack: Stack, key: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = stack.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", "/api/batch/add-images")
        for name, value in {"X-API-Key": key, "Content-Type": "application/json", **headers}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError as exc:  # BrokenPipeError, ConnectionResetError: no answer reached the client
        return 0, repr(exc).encode()
    finally:
        conn.close()


def test_an_oversized_body_gets_its_answer(stack: Stack) -> None:
    key = create_vendor(stack.env, "acme")
    size = 6 << 20  # six times MAX_JSON_BYTES, more than loopback buffers hold
    small = 3 << 20
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (small, b" " * small)
    # Chunked: no length to refuse up front; read until it is over the cap or ends (a 4xx either way).
    chunked_answers = [post(stack, key, chunked, {"Transfer-Encoding": "chunked"}) for _ in range(TRIES)]
    assert all(400 <= status < 500 for status, _ in chunked_answers), \
        [(status, body[:80]) for status, body in chunked_answers if not 400 <= status < 500]
    declared = [post(stack, key, b" " * size, {"Content-Length": str(size)}) for _ in range(TRIES)]
    assert [status for status, _ in declared] == [413] * TRIES, \
        [(status, body[:80]) for status, body in declared if status != 413]
    assert json.loads(declared[0][1])["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # Refused before the body is read at all: a wrong key answers 401 to a client still sending.
    wrong_key = [post(stack, "iq_wrong", b" " * size, {"Content-Length": str(size)}) for _ in range(TRIES)]
    assert [status for status, _ in wrong_key] == [401] * TRIES, \
        [(status, body[:80]) for status, body in wrong_key if status != 401]
