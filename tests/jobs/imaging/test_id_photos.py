"""Passport and ID-card crops from landmarks: tilted heads come out level and sized as ICAO asks,
with 300 dpi and the source's ICC profile; square crops keep the face box + padding contract.

Measured against the astronaut's labelled eyes, chin and crown (scripts/bench_faces_labels.json),
mapped into the output through the crop's own transform, so nothing here trusts the detector.
"""
from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from core.contracts import CropOptions
from jobs.imaging import face_crop, framing, levelling
from jobs.imaging.detectors import Face
from jobs.imaging.photo import Picture
from tests.jobs.imaging.photos import apply, astronaut, encode


def out_roll(result: face_crop.CropResult, portrait_points: dict[str, tuple[float, float]]) -> float:
    """Angle of the labelled eye line in the output, degrees."""
    right = apply(result.transform, portrait_points["right_eye"])
    left = apply(result.transform, portrait_points["left_eye"])
    return math.degrees(math.atan2(left[1] - right[1], left[0] - right[0]))


@pytest.mark.parametrize("degrees", [-35, -20, -10, 0, 15, 30])
def test_tilted_heads_come_out_level_and_sized(degrees: int) -> None:
    portrait = astronaut(degrees, scale=1.5, size=(900, 1100))
    result = face_crop.process(encode(portrait.pixels, quality=92), "passport", CropOptions(format="png"))
    assert result.levelled and (result.width, result.height) == (413, 531)
    # The measured roll is the photo's eye line, within a degree of the labelled one.
    assert result.roll_degrees is not None and abs(result.roll_degrees - portrait.eye_angle()) <= 1.0
    # In the output the labelled eyes are level...
    assert abs(out_roll(result, portrait.points)) <= 1.0, out_roll(result, portrait.points)
    # ... the labelled head (chin to crown) is 70-80 % of the height, the eye line 50-70 % up.
    chin, crown = apply(result.transform, portrait.points["chin"]), apply(result.transform, portrait.points["crown"])
    assert 0.70 <= math.dist(chin, crown) / 531 <= 0.80
    eyes_y = (apply(result.transform, portrait.points["right_eye"])[1]
              + apply(result.transform, portrait.points["left_eye"])[1]) / 2
    assert 0.50 <= (531 - eyes_y) / 531 <= 0.70
    # And the head is centred: the crown above the chin, both near the middle column.
    assert abs(chin[0] - 206.5) < 35 and abs(crown[0] - 206.5) < 35 and crown[1] < chin[1]


def test_the_pixels_really_are_turned() -> None:
    # Independent of the transform: the output's own eye line, measured again, is level.
    portrait = astronaut(25, scale=1.5, size=(900, 1100))
    out = face_crop.process(encode(portrait.pixels, quality=92), "passport", CropOptions(format="png"))
    pixels = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"))
    yunet = face_crop.get_detector("yunet")
    face = yunet.detect(pixels)[0]
    measured = levelling.level(pixels, face, yunet)
    assert measured is not None and abs(measured.face.roll_degrees or 99) <= 1.0


def test_idcard_head_and_shoulders() -> None:
    portrait = astronaut(-12, scale=1.5, size=(900, 1100))
    result = face_crop.process(encode(portrait.pixels, quality=92), "idcard", CropOptions())
    assert (result.width, result.height) == (450, 600) and result.levelled
    chin, crown = apply(result.transform, portrait.points["chin"]), apply(result.transform, portrait.points["crown"])
    assert 0.58 <= math.dist(chin, crown) / 600 <= 0.67
    assert abs(out_roll(result, portrait.points)) <= 1.0


def test_haar_passport_frames_from_the_box_without_levelling() -> None:
    portrait = astronaut(-12, scale=1.5, size=(900, 1100))
    result = face_crop.process(encode(portrait.pixels, quality=92), "passport", CropOptions(detector="haar"))
    assert not result.levelled and result.roll_degrees is None
    assert abs(out_roll(result, portrait.points) - portrait.eye_angle()) < 0.2  # kept as shot


def test_square_keeps_the_box_and_padding_contract() -> None:
    portrait = astronaut(15, scale=1.5, size=(900, 1100))
    result = face_crop.process(encode(portrait.pixels, quality=92), "square", CropOptions())
    assert not result.levelled and result.face_box is not None
    box = result.face_box
    side = round(max(box["width"], box["height"]) * 1.4)
    # The window is the box's centre and 1.4x its larger side: the box maps onto the output's centre.
    cx, cy = apply(result.transform, (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2))
    assert abs(cx - 150) < 2 and abs(cy - 150) < 2
    assert result.transform is not None and result.transform[0][0] == pytest.approx(300 / side, rel=0.01)
    assert result.transform[0][1] == 0  # not turned


@pytest.mark.parametrize(("mode", "fmt", "dpi"), [("passport", "jpeg", 300), ("idcard", "png", 300),
                                                  ("square", "jpeg", None)])
def test_id_photos_say_300_dpi(mode: str, fmt: str, dpi: int | None) -> None:
    result = face_crop.process(encode(astronaut().pixels, quality=92), mode, CropOptions(format=fmt))
    info = Image.open(io.BytesIO(result.data)).info
    if dpi is None:
        assert "dpi" not in info or tuple(round(v) for v in info["dpi"]) != (300, 300)
    else:
        assert tuple(round(v) for v in info["dpi"]) == (dpi, dpi)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_the_source_icc_profile_is_kept(fmt: str) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(astronaut().pixels, quality=92, icc_profile=profile)
    result = face_crop.process(source, "passport", CropOptions(format=fmt))
    assert Image.open(io.BytesIO(result.data)).info.get("icc_profile") == profile
    plain = face_crop.process(encode(astronaut().pixels, quality=92), "passport", CropOptions(format=fmt))
    assert not Image.open(io.BytesIO(plain.data)).info.get("icc_profile")


def test_a_cmyk_profile_is_not_carried_onto_rgb_pixels() -> None:
    cmyk = Image.fromarray(astronaut().pixels).convert("CMYK")
    fake_cmyk_profile = bytes(16) + b"CMYK" + bytes(108)  # the header says what it describes
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=90, icc_profile=fake_cmyk_profile)
    result = face_crop.process(buf.getvalue(), "square", CropOptions())
    assert not Image.open(io.BytesIO(result.data)).info.get("icc_profile")


def test_alpha_survives_a_turned_crop() -> None:
    portrait = astronaut(20, scale=1.5, size=(900, 1100))
    rgba = np.dstack([portrait.pixels, np.full(portrait.pixels.shape[:2], 255, np.uint8)])
    rgba[:, :150, 3] = 0
    out = face_crop.process(encode(rgba, "PNG"), "passport", CropOptions(format="png"))
    decoded = np.asarray(Image.open(io.BytesIO(out.data)))
    assert decoded.shape == (531, 413, 4) and out.levelled


# --- the geometry underneath ----------------------------------------------------------------
def test_head_estimate_on_the_labelled_astronaut() -> None:
    portrait = astronaut()
    marks = tuple(portrait.points[n] for n in ("right_eye", "left_eye")) + ((224.0, 125.0),) + tuple(
        portrait.points[n] for n in ("right_mouth", "left_mouth"))
    head = framing.estimate_head(Face((179, 62, 91, 113), 0.9, marks), width=91)
    assert head is not None
    assert abs(head.crown_y - portrait.points["crown"][1]) < 0.06 * 152  # within 6 % of her head
    assert abs(head.chin_y - portrait.points["chin"][1]) < 0.06 * 152
    assert head.roll == pytest.approx(portrait.eye_angle(), abs=0.01)
    assert framing.estimate_head(Face((0, 0, 10, 10))) is None  # no landmarks: framed from the box


def test_window_maps_its_corners_to_the_output_corners() -> None:
    window = framing.Window(200.0, 150.0, 80.0, 100.0, 30.0)
    matrix = window.to_output(413, 531)
    corners = window.corners()
    expected = [(0, 0), (413, 0), (413, 531), (0, 531)]
    for (x, y), (ex, ey) in zip(corners, expected, strict=True):
        ox, oy = matrix @ np.array([x, y, 1.0])
        assert abs(ox - ex) < 1e-6 and abs(oy - ey) < 1e-6


def test_render_of_a_turned_window_matches_a_rotated_reference() -> None:
    # A picture at half scale, a window turned by 10 degrees: render samples the photo where
    # the window says (checked against cv2.warpAffine of the full-size photo).
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 255, (400, 600, 3), dtype=np.uint8), (0, 0), 6)
    half = cv2.resize(photo, (300, 200), interpolation=cv2.INTER_AREA)
    window = framing.Window(300.0, 200.0, 160.0, 120.0, 10.0)
    out = framing.render(Picture(half, 0.5, 0.5), window, (160, 120))
    reference = cv2.warpAffine(photo, window.to_output(160, 120), (160, 120), flags=cv2.INTER_CUBIC)
    assert np.abs(out[5:-5, 5:-5].astype(int) - reference[5:-5, 5:-5].astype(int)).mean() < 4
