"""ID-photo geometry (placing the head per spec) and the report's checks, without rembg."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core.id_photos import SPECS, IdPhotoSpec
from jobs.imaging import id_photo, report
from jobs.imaging.detectors import Face, get_detector
from jobs.imaging.framing import Head
from tests import portraits


def _head(roll: float = 0.0) -> Head:
    # Eyes at (500, 400); crown 130 px above, chin 150 px below: a 280 px head.
    return Head(pivot=(500.0, 400.0), roll=roll, centre_x=500.0, crown_y=270.0, eyes_y=400.0, chin_y=550.0)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_placement_puts_head_and_eyes_inside_the_spec(name: str) -> None:
    spec = SPECS[name]
    size = spec.pixels()
    head = _head()
    placed = id_photo.place(head, head.crown_y, spec, size)
    matrix = placed.window.to_output(*size)
    crown = matrix @ np.array([head.centre_x, head.crown_y, 1.0])
    eyes = matrix @ np.array([head.centre_x, head.eyes_y, 1.0])
    chin = matrix @ np.array([head.centre_x, head.chin_y, 1.0])
    per_mm = size[1] / spec.height_mm
    head_mm = (chin[1] - crown[1]) / per_mm
    eye_mm = (size[1] - eyes[1]) / per_mm
    assert head_mm == pytest.approx((spec.head_min_mm + spec.head_max_mm) / 2)
    assert spec.eye_min_mm <= eye_mm <= spec.eye_max_mm
    assert crown[1] >= id_photo.MARGIN_MM * per_mm - 1e-6
    assert eyes[0] == pytest.approx(size[0] / 2)
    assert placed.scale == pytest.approx(head_mm * per_mm / head.height)


def test_placement_levels_a_turned_head() -> None:
    spec = SPECS["icao"]
    head = _head(roll=12.0)
    placed = id_photo.place(head, head.crown_y, spec, spec.pixels())
    assert placed.window.angle == 12.0
    # The eyes, on a line turned by the roll about their midpoint, come out on one output row.
    matrix = placed.window.to_output(*spec.pixels())
    angle = math.radians(12.0)
    right = (500 - 40 * math.cos(angle), 400 - 40 * math.sin(angle))
    left = (500 + 40 * math.cos(angle), 400 + 40 * math.sin(angle))
    rows = [(matrix @ np.array([x, y, 1.0]))[1] for x, y in (right, left)]
    assert rows[0] == pytest.approx(rows[1], abs=1e-6)


def test_placement_keeps_the_crown_margin_when_the_eye_range_cannot_be_met() -> None:
    spec = IdPhotoSpec("tight", 35, 45, 40, 42, 40, 44)  # eyes asked for near the top: impossible
    head = _head()
    placed = id_photo.place(head, head.crown_y, spec, spec.pixels())
    assert placed.margin_mm == pytest.approx(id_photo.MARGIN_MM)


def test_crown_is_read_from_the_mask_above_the_eyes() -> None:
    mask = np.zeros((320, 320), np.float32)
    mask[100:, 120:200] = 1.0  # the person: from row 100 down
    region = (0, 0, 640, 640)  # photo pixels; the mask is half the resolution
    head = Head(pivot=(320.0, 400.0), roll=0.0, centre_x=320.0, crown_y=250.0, eyes_y=400.0, chin_y=550.0)
    crown, cut = id_photo.find_crown(mask, id_photo.region_to_mask(region, mask.shape), head)
    assert not cut and crown == pytest.approx(200.0, abs=2.0)
    mask[:, 120:200] = 1.0  # the person runs off the top
    crown, cut = id_photo.find_crown(mask, id_photo.region_to_mask(region, mask.shape), head)
    assert cut and crown is None


def test_alpha_is_eroded_and_feathered_so_no_backdrop_fringe_remains() -> None:
    mask = np.zeros((100, 100), np.float32)
    mask[:, 50:] = 1.0
    window = id_photo.Window(50.0, 50.0, 100.0, 100.0)
    alpha = id_photo.render_alpha(mask, id_photo.region_to_mask((0, 0, 100, 100), mask.shape), window, (100, 100))
    row = alpha[50]
    assert row[:48].max() < 0.02 and row[53:].min() > 0.98, "sharp far from the edge"
    assert 0.0 < row[50] < 0.5, "the edge pixel leans to the background (eroded), softly (feathered)"


def _good_output() -> tuple[np.ndarray, np.ndarray]:
    """A levelled astronaut on white at ICAO size (alpha: 1 on a rough person shape)."""
    from PIL import Image

    image = portraits.astronaut(1024).crop((262, 0, 762, 643)).resize((413, 531), Image.Resampling.LANCZOS)
    pixels = np.asarray(image).copy()
    alpha = np.zeros(pixels.shape[:2], np.float32)
    alpha[20:, 60:350] = 1.0
    pixels[alpha == 0] = 255
    return pixels, alpha


def test_report_measures_every_check_and_flags_a_blur() -> None:
    import cv2

    finder = get_detector("yunet")
    spec = SPECS["icao"]
    pixels, alpha = _good_output()
    sharp = report.measure(pixels, alpha, spec, spec.pixels(), (255, 255, 255), finder, faces_in_source=1,
                           upscale=1.0, max_upscale=2.0)
    values = {check.name: check for check in sharp.checks}
    assert set(values) == {"headHeight", "eyeLine", "roll", "yaw", "oneFace", "faceLargeEnough", "sharpness",
                           "highlights", "shadows", "background"}
    assert values["sharpness"].passed and values["background"].passed and values["oneFace"].passed
    assert values["roll"].measured is not None and abs(values["roll"].measured) < 5
    blurred = cv2.GaussianBlur(pixels, (0, 0), 4)
    soft = report.measure(blurred, alpha, spec, spec.pixels(), (255, 255, 255), finder, faces_in_source=1,
                          upscale=1.0, max_upscale=2.0)
    assert not soft.check("sharpness").passed and not soft.compliant


def test_report_fails_what_it_cannot_measure() -> None:
    finder = get_detector("yunet")
    spec = SPECS["icao"]
    blank = np.full((531, 413, 3), 255, np.uint8)
    empty = report.measure(blank, np.zeros((531, 413), np.float32), spec, spec.pixels(), (255, 255, 255), finder,
                           faces_in_source=1, upscale=1.0, max_upscale=2.0)
    for name in ("headHeight", "eyeLine", "roll", "yaw", "sharpness", "highlights", "shadows"):
        assert empty.check(name).passed is False and name
    assert empty.compliant is False


def test_report_flags_a_non_uniform_background_and_too_many_faces() -> None:
    finder = get_detector("yunet")
    spec = SPECS["icao"]
    pixels, alpha = _good_output()
    pixels[:40, :40] = (200, 60, 60)
    result = report.measure(pixels, alpha, spec, spec.pixels(), (255, 255, 255), finder, faces_in_source=2,
                            upscale=2.5, max_upscale=2.0)
    assert not result.check("background").passed
    assert not result.check("oneFace").passed and not result.check("faceLargeEnough").passed


def test_yaw_is_zero_for_a_symmetric_face_and_grows_with_the_nose_offset() -> None:
    straight = Face((0, 0, 100, 100), 1.0, ((30, 40), (70, 40), (50, 60), (35, 80), (65, 80)))
    turned = Face((0, 0, 100, 100), 1.0, ((30, 40), (70, 40), (58, 60), (35, 80), (65, 80)))
    assert report.yaw_degrees(straight) == pytest.approx(0.0)
    assert report.yaw_degrees(turned) > 10
