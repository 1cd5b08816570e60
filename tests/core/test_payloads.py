"""Typed job payloads read back exactly what the web tier wrote, in the shape queued jobs have."""
from __future__ import annotations

import pytest

from core.payloads import ImageJobPayload

QUEUED_BEFORE = {"vendorId": "v1", "projectId": "p1", "recordId": "r1",
                 "photoUrl": "https://example.com/a.jpg", "mode": "passport", "options": {"padding": 0.3}}


def test_a_payload_queued_in_the_old_dict_shape_reads_back() -> None:
    payload = ImageJobPayload.from_dict(QUEUED_BEFORE)
    assert (payload.vendor_id, payload.record_id, payload.mode) == ("v1", "r1", "passport")
    assert payload.options == {"padding": 0.3} and payload.callback_url is None
    assert payload.to_dict() == QUEUED_BEFORE


def test_background_payloads_have_no_mode_and_keep_the_callback() -> None:
    payload = ImageJobPayload("v1", "p1", "r2", "https://example.com/b.png", {"model": "u2netp"},
                              callback_url="https://hooks.example.com/x")
    data = payload.to_dict()
    assert "mode" not in data and data["callbackUrl"] == "https://hooks.example.com/x"
    assert ImageJobPayload.from_dict(data) == payload


def test_a_corrupt_payload_names_the_missing_field() -> None:
    with pytest.raises(KeyError, match="photoUrl"):
        ImageJobPayload.from_dict({"vendorId": "v1", "projectId": "p1", "recordId": "r1"})
