"""Python client of the image-queue HTTP API: ``Client`` (SDK), ``python -m imagequeue_client`` (CLI)
and ``verify_signature`` for completion webhooks. Depends on requests only (the CLI's progress
bars on tqdm: ``pip install 'imagequeue-client[cli]'``)."""
from __future__ import annotations

__version__ = "1.0.0"

from .client import FINAL_BATCH_STATUSES, FINAL_JOB_STATES, Client  # noqa: E402
from .errors import (  # noqa: E402
    ApiError,
    AuthenticationError,
    BadRequest,
    Conflict,
    ImageQueueError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unprocessable,
    UnsupportedMediaType,
    WaitTimeout,
)
from .webhooks import SignatureError, verify_signature  # noqa: E402

__all__ = [
    "FINAL_BATCH_STATUSES", "FINAL_JOB_STATES", "ApiError", "AuthenticationError", "BadRequest", "Client",
    "Conflict", "ImageQueueError", "NotFound", "PayloadTooLarge", "PermissionDenied", "RateLimited",
    "ServerError", "ServiceUnavailable", "SignatureError", "TransportError", "Unprocessable",
    "UnsupportedMediaType", "WaitTimeout", "__version__", "verify_signature",
]
