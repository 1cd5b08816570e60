"""YuNet (``cv2.FaceDetectorYN``): a small CNN that gives a box, a score and five landmarks per face.

The model file is committed in ``jobs/imaging/weights/`` (Apache-2.0, licence beside it) and
its md5 is checked before OpenCV loads it (``core.model_files.YUNET``); nothing is downloaded.

Passes (coarse to fine): the photo scaled so its longest side is ``COARSE_SIDE``, then, only
when nothing was found or only a group of small faces (``SMALL_FACE_PX``), ``FINE_SIDE``.
Never upscaled. Thresholds and sizes below were chosen on the labelled set of
``scripts/bench_faces.py`` (figures next to each constant; one thread). opencv-python-headless
4.12.0.88 and 4.14.0 load the model and give the same detections on that set.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core import model_files
from jobs.imaging.detectors import Face, ModelFileError, Pass, coarse_to_fine, pass_size, sort_faces

# Chosen on the labelled set of scripts/bench_faces.py (182 faces in 154 photos, 45 photos
# without a face; OpenCV 4.12-4.14, one thread, CPU ms of the detector per photo, the fastest of
# 2 runs, on a shared 2-core machine under load: p50 varies by ~1-2 ms between runs). Recall is
# IoU >= 0.4; "false" counts faces found on the negatives. Unless varied: 320/640 px, score 0.65,
# NMS 0.3, SMALL_FACE_PX 36.
#
# Longest side of the first detection image. YuNet finds faces down to ~10 px, i.e. ~3 % of the
# longest side here; smaller ones are left to the fine pass.
#   first pass   recall   false   ms p50 / p95
#   256          0.973    1       5.5 / 22.7
#   288          0.973    1       5.9 / 25.2
#   320          0.984    1       7.9 / 24.8   (p50 6.3-7.9 over runs; the first pass alone: ~4.5)
#   384          0.956    2       9.9 / 36.6
#   416          0.978    1      13.0 / 38.1
#   640 only     0.967    1      23.9 / 30.3
# About 45 % of this set needs the fine pass (every negative, blurry LFW faces, small faces), so
# its p50 sits at the edge of the one-pass photos; 320 keeps 2 more faces than 288.
COARSE_SIDE = 320
# Second pass, for photos where the first found nothing (small faces, dark or blurry ones) or
# only a group of small faces. 640 is the network's native size; a 480 px fine pass found 169/182.
FINE_SIDE = 640
# Score threshold:
#   0.5: 0.989 / 3 false   0.6: 0.984 / 1   0.65: 0.984 / 1   0.7: 0.956 / 1   0.8: 0.901 / 1
#   0.9: 0.522 / 0 (OpenCV's sample value: most low-resolution LFW faces score 0.7-0.9)
# The one false face at 0.6-0.8 is an LFW "non-face" patch with two dark blobs over a ring;
# a motorcycle part scores 0.60 at the fine pass, hence 0.65.
SCORE_THRESHOLD = 0.65
# Non-maximum suppression IoU: 0.2, 0.3 (OpenCV's sample value) and 0.4 gave the same recall and
# false faces here.
NMS_THRESHOLD = 0.3
# After a pass that found two faces or more, the next one runs too when the smallest measured
# less than this (px in its detection image): in a group, faces that small sit beside faces the
# pass missed. 0 (off): 0.967 (2 group photos short of 1-2 faces); 32: 0.973; 36 and 48: 0.984.
# A single small face does not trigger it (a portrait far away: nothing else to find).
SMALL_FACE_PX = 36
# Turned retries (the fine pass again, the image turned by +-25 degrees, when nothing was found)
# were measured and left out: they found 2 more tilted faces of 182 but added 5 false faces on
# the 45 negatives (a motorcycle scored 0.84 turned).
TOP_K = 5000  # candidates kept before NMS (OpenCV's default)
NET_STEP = 32  # the network's stride: input sizes are padded to multiples of it
# First-pass input sizes built (and run once) in the worker's parent before RQ forks, so a
# work-horse inherits them instead of paying for its own: creating a network and its first
# detect cost ~4.6 ms (one thread), once per size per horse, i.e. per single job and per batch
# chunk (single jobs end to end: 9.0 -> 10.6 and 10.3 -> 11.6 images/s per core, paired runs of
# bench_crop.py --repeat 10). These are the padded sizes of the common photo shapes at
# COARSE_SIDE: 1:1, 4:5 and 3:4 (256), 2:3 (224) and 9:16 (192), both ways up: 7 networks,
# +36 MB of RSS in the parent. Fine-pass networks (640 px, ~12 MB each) stay lazy: they serve
# only the photos the first pass misses.
WARM_SHORT_SIDES = (320, 256, 224, 192)


def _bgr(pixels: np.ndarray) -> np.ndarray:
    """RGB, RGBA or L pixels as the 3-channel BGR the network takes."""
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGR)
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)


class YuNetDetector:
    """``cv2.FaceDetectorYN`` over the committed model, with coarse-to-fine passes."""

    name = "yunet"

    def __init__(self, path: Path | None = None, *, score_threshold: float = SCORE_THRESHOLD,
                 nms_threshold: float = NMS_THRESHOLD, sides: tuple[int, ...] = (COARSE_SIDE, FINE_SIDE),
                 small_face_px: float = SMALL_FACE_PX) -> None:
        status = model_files.check(model_files.YUNET, path)
        if not status.ok:
            raise ModelFileError(status.message)
        self.path = Path(status.path)
        self.sides = sides
        self.small_face_px = small_face_px
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        # One network per input size: switching a network's size costs ~1 ms a call (measured,
        # 320x240: 4.1 ms with its own network, 5.3 ms switching). Sizes are rounded up to
        # multiples of NET_STEP (the network pads to those anyway), which bounds their number.
        self._nets: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()  # a network holds per-call state; jobs are one per process anyway
        self._net((sides[0], sides[0]))  # fail here, not on the first photo, if OpenCV cannot load it

    def passes(self, width: int, height: int) -> tuple[Pass, ...]:
        """One pass per side in ``sides`` (longest side scaled to it, never up), duplicates dropped."""
        found: list[Pass] = []
        for side in self.sides:
            search = Pass(pass_size(width, height, side / max(width, height)))
            if search not in found:
                found.append(search)
        return tuple(found)

    def detect_pass(self, pixels: np.ndarray, search: Pass) -> list[Face]:
        """Faces in ``pixels`` searched at ``search.size``, in ``pixels``' coordinates, largest first."""
        height, width = pixels.shape[:2]
        size = search.size
        image = pixels
        if (width, height) != size:
            # INTER_AREA where it averages 2x2 or more; below that bilinear is as good for the
            # network and 4x faster (a 300x400 picture to 240x320: 1.0 ms against 0.2 ms).
            area = size[0] * 2 <= width and size[1] * 2 <= height
            image = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
        image = _bgr(image)
        padded = (-(-size[0] // NET_STEP) * NET_STEP, -(-size[1] // NET_STEP) * NET_STEP)
        if padded != size:
            image = cv2.copyMakeBorder(image, 0, padded[1] - size[1], 0, padded[0] - size[0], cv2.BORDER_CONSTANT)
        with self._lock:
            _, found = self._net(padded).detect(image)
        if found is None:
            return []
        sx, sy = width / size[0], height / size[1]
        faces = []
        for row in found:
            x, y, w, h = (float(v) for v in row[:4])
            marks = tuple((float(row[4 + 2 * i]) * sx, float(row[5 + 2 * i]) * sy) for i in range(5))
            faces.append(Face((x * sx, y * sy, w * sx, h * sy), float(row[14]), marks))
        return sort_faces(faces)

    def _net(self, size: tuple[int, int]) -> Any:
        net = self._nets.get(size)
        if net is None:
            net = cv2.FaceDetectorYN.create(str(self.path), "", size, self.score_threshold, self.nms_threshold,
                                            TOP_K)
            self._nets[size] = net
        return net

    def warm(self) -> None:
        """Build and run once the first-pass networks of the common photo shapes (``WARM_SHORT_SIDES``)."""
        long_side = -(-self.sides[0] // NET_STEP) * NET_STEP
        for short in WARM_SHORT_SIDES:
            for size in {(long_side, short), (short, long_side)}:
                with self._lock:
                    self._net(size).detect(np.zeros((size[1], size[0], 3), np.uint8))

    def detect(self, pixels: np.ndarray) -> list[Face]:
        """Faces in ``pixels``, coarse to fine, largest first."""
        return coarse_to_fine(self, pixels)

    def enough(self, count: int, smallest_px: float) -> bool:
        """Faces found end the search unless they are several and one is under ``small_face_px``
        (a group: look finer, smaller faces may have been missed beside them)."""
        return count < 2 or smallest_px >= self.small_face_px

    def smallest_face(self, width: int, height: int) -> str:
        """The smallest face the last pass finds, in words."""
        side = min(max(width, height), self.sides[-1])
        return f"about {10 / side:.0%} of the longest side"
