"""Schemathesis against the live API: Gunicorn serving /api/openapi.json, every operation fuzzed.

A bounded run (at most MAX_EXAMPLES generated cases per operation and phase, a fixed seed, a
subprocess time limit) of the `st` CLI against the real stack of tests/stack.py, with a vendor's
real API key and the admin's Basic credentials. It fails on any 5xx, on any answer whose body,
status, content type or headers the document does not describe, and on invalid input that is
accepted. Rate limits are off for the run (RATE_LIMIT_ENABLED=false): a fuzzer would spend the
vendor's quota in seconds, and the limits have their own tests (tests/service/test_limits.py).

Nothing is excluded: queueing operations only enqueue (no worker runs here), the admin's bulk
requeue/delete act on the empty dead-letter registries of this test's own Redis.
"""
from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port
from tests.stack import VENV_BIN, Stack, create_vendor, sqlite_stack

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
SEED = "20240607"
RUN_LIMIT_S = 240  # the run takes ~15-40 s on 2 shared cores; this only stops a hung one
CHECKS = ("not_a_server_error", "response_schema_conformance", "status_code_conformance",
          "content_type_conformance", "response_headers_conformance", "negative_data_rejection")
ADMIN = ("ops", "fuzz-admin-pass")


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("fuzz-stack")
    extra = {"RATE_LIMIT_ENABLED": "false", "ADMIN_USERNAME": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1],
             # nothing listens there: the health route's rembg probe fails at once
             "REMBG_URLS": f"http://127.0.0.1:{free_port()}"}
    with sqlite_stack(redis_url, tmp, extra) as running:
        yield running


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(stack: Stack,
                                                                               tmp_path: Path) -> None:
    key = create_vendor(stack.env, "acme")
    schema_url = f"{stack.base_url}/api/openapi.json"
    assert requests.get(schema_url, timeout=5).status_code == 200
    cmd = [str(VENV_BIN / "st"), "run", schema_url, "--checks", ",".join(CHECKS),
           "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--workers", "1", "--request-timeout", "10",
           "-H", f"X-API-Key: {key}", "--auth", ":".join(ADMIN)]
    # cwd: schemathesis and hypothesis keep their files (.hypothesis/) in the working directory.
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_LIMIT_S,
                            env={**stack.env, "NO_COLOR": "1", "COLUMNS": "120"})
    report = result.stdout[-12000:] + result.stderr[-2000:]
    assert result.returncode == 0, f"schemathesis found problems:\n{report}\n{stack.logs()}"
    # It really ran: every documented operation tested, every generated case passed.
    document = requests.get(schema_url, timeout=5).json()
    # Schemathesis leaves out the operation that serves the document it loaded (/api/openapi.json).
    operations = sum(len(item) for item in document["paths"].values()) - 1
    assert f"Selected: {operations}/{operations}" in result.stdout and f"Tested: {operations}" in result.stdout, report
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts and int(counts[1]) == int(counts[2]) >= 10 * operations, report
