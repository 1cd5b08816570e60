"""jobs.imaging.detectors: YuNet and Haar behind one protocol, on real and generated photos.

Each detector on the astronaut as shot, in every EXIF orientation, gray, with alpha, in a group
(largest wins) and on photos without a face; the committed model's md5 check; the registry.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from core import model_files
from core.contracts import CropOptions
from core.errors import NO_FACE, PermanentJobError, TransientJobError
from jobs.imaging import detectors, face_crop
from jobs.imaging.detectors import Face, ModelFileError, sort_faces
from jobs.imaging.detectors.yunet import YuNetDetector
from jobs.imaging.photo import Photo
from tests.jobs.imaging.photos import ASTRO_BOX, astronaut, encode, group, iou

DETECTORS = ["yunet", "haar"]


def found(data_bytes: bytes, name: str) -> list[Face]:
    """Faces as the crop pipeline finds them, in photo pixels."""
    faces, _ = face_crop.find_faces(Photo(data_bytes, 10**8), face_crop.get_detector(name))
    return faces


# --- real photos ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", DETECTORS)
def test_astronaut_one_face_at_the_labelled_place(name: str) -> None:
    faces = detectors.get_detector(name).detect(data.astronaut())
    assert len(faces) == 1
    assert iou(faces[0].box, ASTRO_BOX) > 0.6
    if name == "yunet":
        face = faces[0]
        assert face.score is not None and face.score > 0.8
        assert face.landmarks is not None and len(face.landmarks) == 5
        (rx, ry), (lx, ly) = face.landmarks[:2]
        assert rx < lx and abs(ry - 101) < 4 and abs(ly - 103) < 4  # her eyes, right one on the left
        assert abs(face.landmarks[2][1] - 125) < 6  # nose tip below the eyes
    else:
        assert faces[0].score is None and faces[0].landmarks is None and faces[0].roll_degrees is None


def test_three_quarter_head_is_found_by_yunet_not_by_haar() -> None:
    camera = data.camera()
    yunet = detectors.get_detector("yunet").detect(camera)
    assert len(yunet) == 1 and iou(yunet[0].box, (192, 112, 258, 198)) > 0.4  # the label box
    assert detectors.get_detector("haar").detect(camera) == []


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_the_upright_box(name: str, orientation: int) -> None:
    portrait = astronaut(size=(600, 800), centre=(300, 300))
    faces = found(encode(portrait.pixels, orientation=orientation, quality=90), name)
    assert len(faces) == 1 and iou(faces[0].box, portrait.box) > 0.6


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_grayscale(name: str, fmt: str) -> None:
    gray = np.asarray(Image.fromarray(data.astronaut()).convert("L"))
    faces = found(encode(gray, fmt), name)
    assert len(faces) == 1 and iou(faces[0].box, ASTRO_BOX) > 0.6


@pytest.mark.parametrize("name", DETECTORS)
def test_alpha(name: str) -> None:
    rgba = np.dstack([data.astronaut(), np.full((512, 512), 255, np.uint8)])
    rgba[:, :120, 3] = 0  # a transparent band at the left
    faces = found(encode(rgba, "PNG"), name)
    assert len(faces) == 1 and iou(faces[0].box, ASTRO_BOX) > 0.6


@pytest.mark.parametrize("name", DETECTORS)
def test_group_largest_face_wins(name: str) -> None:
    image, boxes = group([0.8, 1.4, 1.0, 0.9])
    result = face_crop.process(encode(image, quality=92), "square", CropOptions(detector=name))
    assert result.face_count == 4 and len(result.faces) == 4
    assert result.face_box is not None and iou(result.face_box, boxes[1]) > 0.6
    widths = [w * h for _, _, w, h in result.faces]
    assert widths == sorted(widths, reverse=True)
    # Every face is reported, each matching one of the placed heads.
    assert sorted(max(range(4), key=lambda i, f=f: iou(f, boxes[i])) for f in result.faces) == [0, 1, 2, 3]


def test_yunet_reports_every_face_with_score_and_landmarks() -> None:
    image, boxes = group([1.0, 1.2])
    details = face_crop.process(encode(image, quality=92), "square", CropOptions()).to_result()
    assert details["faceCount"] == 2 and details["detector"] == "yunet"
    for face in details["faces"]:
        assert 0.65 <= face["score"] <= 1
        marks = face["landmarks"]
        assert marks["rightEye"]["x"] < marks["leftEye"]["x"] and marks["noseTip"]["y"] > marks["rightEye"]["y"]
        box = face["box"]
        assert all(box["x"] <= p["x"] <= box["x"] + box["width"] for p in marks.values())


def test_ties_go_to_the_higher_score_then_top_then_left() -> None:
    a = Face((100.0, 50.0, 40.0, 40.0), 0.8)
    b = Face((10.0, 50.0, 40.0, 40.0), 0.9)  # same size, higher score
    c = Face((10.0, 10.0, 40.0, 40.0), 0.9)  # same size and score, higher up
    d = Face((0.0, 10.0, 40.0, 40.0), 0.9)  # ... and further left
    big = Face((300.0, 300.0, 41.0, 41.0), 0.7)
    assert sort_faces([a, b, c, d, big]) == [big, d, c, b, a]


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("negative", ["brick", "grass", "text", "page", "rocket", "horse"])
def test_no_face_on_photos_without_one(name: str, negative: str) -> None:
    image = getattr(data, negative)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    assert detectors.get_detector(name).detect(image) == []


@pytest.mark.parametrize("name", DETECTORS)
def test_noise_fails_with_no_face_naming_the_detector(name: str) -> None:
    noise = np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with pytest.raises(PermanentJobError) as info:
        face_crop.process(encode(noise, quality=90), "passport", CropOptions(detector=name))
    assert info.value.code == NO_FACE and f"by the {name} detector" in info.value.message


# --- coarse to fine -----------------------------------------------------------------------------
def test_small_face_in_a_big_photo_is_found_by_the_fine_pass() -> None:
    # A 3 % face in a 6 MP scene: too small for the 320 px pass (~10 px), found at 640 px.
    portrait = astronaut(scale=90 / 91, size=(3000, 2000), centre=(2100, 900))
    yunet = detectors.get_detector("yunet")
    passes = yunet.passes(3000, 2000)
    assert [p.size for p in passes] == [(320, 213), (640, 427)]
    photo = encode(portrait.pixels, quality=90)
    picture = Photo(photo, 10**8).decode(1.0).pixels
    assert yunet.detect_pass(picture, passes[0]) == []
    faces = found(photo, "yunet")
    assert len(faces) == 1 and iou(faces[0].box, portrait.box) > 0.5


def test_a_portrait_stops_after_the_first_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    yunet = detectors.get_detector("yunet")
    searched: list[tuple[int, int]] = []
    original = type(yunet).detect_pass

    def recording(self: YuNetDetector, pixels: np.ndarray, search: detectors.Pass) -> list[Face]:
        searched.append(search.size)
        return original(self, pixels, search)

    monkeypatch.setattr(type(yunet), "detect_pass", recording)
    assert len(found(encode(astronaut(scale=4.0, size=(1200, 1600)).pixels, quality=90), "yunet")) == 1
    assert searched == [(240, 320)]
    # A group of small faces looks again at the finer size (faces under SMALL_FACE_PX).
    searched.clear()
    image, _ = group([2.4, 2.6, 2.5], canvas=(3000, 1200))
    found(encode(image, quality=90), "yunet")
    assert searched == [(320, 128), (640, 256)]


@pytest.mark.parametrize("shape", [(1600, 1200), (1200, 1600), (1500, 1000), (1000, 1500), (1920, 1080),
                                   (1080, 1920), (1200, 1200), (1080, 1350), (1350, 1080)])
def test_common_photo_shapes_find_their_first_pass_network_warm(shape: tuple[int, int]) -> None:
    """The worker parent warms these before RQ forks, so a work-horse builds no network for them."""
    yunet = YuNetDetector()
    yunet.warm()
    warmed = set(yunet._nets)
    width, height = shape
    pixels = np.full((height, width, 3), 128, np.uint8)
    yunet.detect_pass(pixels, yunet.passes(width, height)[0])
    assert set(yunet._nets) == warmed


def test_worker_preload_warms_the_shared_detector() -> None:
    detectors.preload("haar")
    assert {(320, 256), (256, 320), (320, 224), (224, 320), (320, 192), (192, 320),
            (320, 320)} <= set(detectors.get_detector("yunet")._nets)  # type: ignore[attr-defined]


def test_unknown_detector_names_the_choices() -> None:
    with pytest.raises(ValueError, match="expected one of yunet, haar"):
        detectors.get_detector("cnn")


# --- the model file ---------------------------------------------------------------------------
def test_committed_model_is_intact() -> None:
    status = model_files.check(model_files.YUNET)
    assert status.ok and status.md5 == "4ae92eeb150c82ce15ac80738b3b8167"
    assert "Apache License" in (model_files.YUNET.path.parent / "LICENSE-yunet.txt").read_text()
    assert model_files.detector_problem("yunet") is None and model_files.detector_problem("haar") is None


def test_wrong_model_file_is_refused_with_how_to_restore_it(tmp_path: Path) -> None:
    wrong = tmp_path / "face_detection_yunet_s_640.onnx"
    shutil.copy(model_files.YUNET.path, wrong)
    with wrong.open("r+b") as handle:  # one flipped byte: same size, different md5
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    status = model_files.check(model_files.YUNET, wrong)
    assert status.status == model_files.BAD_MD5 and status.md5 != model_files.YUNET.md5
    with pytest.raises(ModelFileError) as info:
        YuNetDetector(wrong)
    message = str(info.value)
    assert "expected 4ae92eeb150c82ce15ac80738b3b8167" in message
    assert "git checkout -- jobs/imaging/weights/face_detection_yunet_s_640.onnx" in message
    assert "FACE_DETECTOR=haar" in message


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    status = model_files.check(model_files.YUNET, tmp_path / "nothing.onnx")
    assert status.status == model_files.MISSING and "missing" in status.message
    with pytest.raises(ModelFileError, match="git checkout"):
        YuNetDetector(tmp_path / "nothing.onnx")


def test_a_job_asking_for_an_unavailable_model_fails_transiently(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(model_files, "YUNET", model_files.ModelFile(
        "YuNet face detection model", str(tmp_path / "gone.onnx"), model_files.YUNET.md5, "FACE_DETECTOR", "haar"))
    monkeypatch.setattr(detectors, "_instances", {})
    with pytest.raises(TransientJobError) as info:
        face_crop.process(encode(data.astronaut()), "square", CropOptions(detector="yunet"))
    assert info.value.code == face_crop.DETECTOR_UNAVAILABLE and "git checkout" in info.value.message
    assert model_files.detector_problem("yunet") is not None
    assert "FACE_DETECTOR='cnn'" in (model_files.detector_problem("cnn") or "")


def test_yunet_detects_on_a_dct_scaled_decode_then_crops_from_more_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2400x3200 (stored sideways): the 320 px first pass needs 1/10 of the size, so the JPEG is
    # first decoded at 1/8 (libjpeg's DCT scaling) and upright; the square crop of a face ~25 % of
    # the width then needs ~1/2 of the pixels, and decodes again at that scale, never more.
    portrait = astronaut(scale=6.5, size=(2400, 3200), centre=(1200, 1300))
    shapes: list[tuple[int, ...]] = []
    original = Photo.decode

    def recording(self: Photo, scale: float) -> face_crop.Picture:
        picture = original(self, scale)
        shapes.append(picture.pixels.shape)
        return picture

    monkeypatch.setattr(Photo, "decode", recording)
    result = face_crop.process(encode(portrait.pixels, orientation=6, quality=90), "square", CropOptions())
    assert shapes == [(400, 300, 3), (1600, 1200, 3)] and result.decodes == 2
    assert result.face_box is not None and iou(result.face_box, portrait.box) > 0.6
