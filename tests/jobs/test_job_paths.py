"""Every dotted job path the web tier enqueues resolves, and takes the arguments it is given.

The web tier never imports the job modules, so a renamed function or parameter would only
show when a worker runs the job (RQ passes single-image payloads as ``payload=``).
"""
from __future__ import annotations

import inspect

import pytest
from rq.utils import import_attribute

from core import contracts

SINGLE_IMAGE_JOBS = [contracts.JOB_CROP_FACE, contracts.JOB_REMOVE_BACKGROUND, contracts.JOB_ID_PHOTO]
CALLBACKS = [contracts.ON_JOB_FAILURE, contracts.ON_JOB_SUCCESS, contracts.ON_INGEST_FAILURE,
             contracts.ON_CHUNK_FAILURE, contracts.ON_WEBHOOK_FAILURE]


@pytest.mark.parametrize("path", SINGLE_IMAGE_JOBS)
def test_single_image_jobs_take_the_payload_keyword(path: str) -> None:
    inspect.signature(import_attribute(path)).bind(payload={})


@pytest.mark.parametrize(("path", "args"), [
    (contracts.JOB_PROCESS_CHUNK, ("batch", 0, 31)),
    (contracts.JOB_INGEST_ZIP, ("batch", "/uploads/batch.zip")),
    (contracts.JOB_DELIVER_WEBHOOK, ("job", "id", "evt_1")),
])
def test_batch_and_webhook_jobs_take_their_positional_arguments(path: str, args: tuple[object, ...]) -> None:
    inspect.signature(import_attribute(path)).bind(*args)


@pytest.mark.parametrize("path", CALLBACKS)
def test_callbacks_resolve(path: str) -> None:
    assert callable(import_attribute(path))
