"""Typed job payloads: built once by the web tier, read by attribute in the workers.

A single image job carries its payload in RQ's ``kwargs["payload"]`` and, for ``reconcile``,
in ``data_records.job_payload``. Both hold the camelCase dict of ``to_dict`` (the shape jobs
already queued in Redis have, so they keep working); ``from_dict`` is the one place that reads
those keys back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageJobPayload:
    """One photo of one vendor record, and what to do with it (crop ``mode`` and ``options``)."""

    vendor_id: str
    project_id: str
    record_id: str
    photo_url: str
    options: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None  # face crop only
    callback_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict stored in Redis and in the record row."""
        data: dict[str, Any] = {"vendorId": self.vendor_id, "projectId": self.project_id,
                                "recordId": self.record_id, "photoUrl": self.photo_url}
        if self.mode is not None:
            data["mode"] = self.mode
        data["options"] = dict(self.options)
        if self.callback_url:
            data["callbackUrl"] = self.callback_url
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageJobPayload:
        """Read a stored payload; KeyError names a missing field of a corrupt one."""
        return cls(vendor_id=str(data["vendorId"]), project_id=str(data["projectId"]),
                   record_id=str(data["recordId"]), photo_url=str(data["photoUrl"]),
                   options=dict(data.get("options") or {}), mode=data.get("mode"),
                   callback_url=data.get("callbackUrl") or None)
