"""ID-photo specs and options: built-in sizes, custom specs, the 400s' fields."""
from __future__ import annotations

from typing import Any

import pytest

from core.contracts import InvalidField
from core.id_photos import SPECS, IdPhotoOptions, from_job_options, job_options, validate_request

CUSTOM = {"widthMm": 40, "heightMm": 50, "dpi": 200, "headMinMm": 30, "headMaxMm": 36, "eyeMinMm": 27,
          "eyeMaxMm": 35}


@pytest.mark.parametrize("name, pixels", [("icao", (413, 531)), ("schengen", (413, 531)), ("us", (600, 600)),
                                          ("idcard", (450, 600))])
def test_built_in_specs_print_at_300_dpi(name: str, pixels: tuple[int, int]) -> None:
    assert SPECS[name].pixels() == pixels
    assert SPECS[name].source


def test_icao_limits_are_the_standards_shares() -> None:
    icao = SPECS["icao"]
    assert (icao.head_min_mm / icao.height_mm, icao.head_max_mm / icao.height_mm) == pytest.approx((0.711, 0.8),
                                                                                                   abs=0.001)
    assert (icao.eye_min_mm / icao.height_mm, icao.eye_max_mm / icao.height_mm) == pytest.approx((0.5, 0.7))


def test_custom_spec_and_options_round_trip_through_the_payload() -> None:
    spec, options = validate_request(CUSTOM, {"background": "lightgrey", "maxBytes": 240000})
    assert spec.pixels() == (315, 394) and options.background == (224, 224, 224)
    assert from_job_options(job_options(spec, options)) == (spec, options)
    assert validate_request("icao", None)[1] == IdPhotoOptions()


@pytest.mark.parametrize("spec, options, field", [
    ("passport", None, "spec"),
    (None, None, "spec"),
    ({**CUSTOM, "dpi": 5}, None, "spec.dpi"),
    ({k: v for k, v in CUSTOM.items() if k != "eyeMaxMm"}, None, "spec.eyeMaxMm"),
    ({**CUSTOM, "headMaxMm": 20}, None, "spec.headMaxMm"),
    ({**CUSTOM, "colour": 1}, None, "spec.colour"),
    ("icao", {"background": "#0000ff"}, "options.background"),
    ("icao", {"background": "#808080"}, "options.background"),
    ("icao", {"background": "pink"}, "options.background"),
    ("icao", {"format": "webp"}, "options.format"),
    ("icao", {"dpi": 100}, "options.dpi"),
    ("icao", {"format": "png", "maxBytes": 100000}, "options.maxBytes"),
    ("icao", {"maxBytes": 10}, "options.maxBytes"),
    ("icao", [], "options"),
])
def test_bad_fields_are_named(spec: Any, options: Any, field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        validate_request(spec, options)
    assert caught.value.field == field
