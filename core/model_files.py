"""Model files committed with the project, and a light check of each: present, right md5.

Stdlib only: the workers check the face model before loading it (jobs/imaging/detectors),
and the health route reports it without importing OpenCV (service/health.py). Nothing here
downloads anything; a missing or altered file is restored from the repository.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OK, MISSING, BAD_MD5 = "ok", "missing", "bad md5"


@dataclass(frozen=True)
class ModelFile:
    """A committed model file: where it lives (relative to the project root) and its md5."""

    name: str  # what it is, in words
    relative_path: str  # from the project root, as git knows it
    md5: str
    setting: str  # the setting that selects the code using it (named in fix-it messages)
    alternative: str  # what an operator can switch that setting to meanwhile

    @property
    def path(self) -> Path:
        """Absolute path of the file in this checkout or image."""
        return ROOT / self.relative_path

    def restore_hint(self) -> str:
        """How to put the file back, for error messages."""
        return (f"restore it from the repository (`git checkout -- {self.relative_path}`, or rebuild the "
                f"image from a clean checkout; md5 {self.md5}), or set {self.setting}={self.alternative} "
                "to run without it")


# YuNet-s face detector (Apache-2.0, licence beside it); jobs/imaging/detectors/yunet.py.
YUNET = ModelFile(
    name="YuNet face detection model",
    relative_path="jobs/imaging/weights/face_detection_yunet_s_640.onnx",
    md5="4ae92eeb150c82ce15ac80738b3b8167",
    setting="FACE_DETECTOR",
    alternative="haar",
)


@dataclass(frozen=True)
class ModelStatus:
    """The outcome of ``check``: ``status`` is ok, missing or bad md5; ``message`` says why and how to fix it."""

    status: str
    path: str
    md5: str | None  # the file's md5 when it exists
    message: str

    @property
    def ok(self) -> bool:
        """True when the file is there with the expected md5."""
        return self.status == OK


def file_md5(path: Path) -> str:
    """Hex md5 of a file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


_cache: dict[tuple[str, int, int], str] = {}
_cache_lock = threading.Lock()


def check(model: ModelFile, path: Path | None = None) -> ModelStatus:
    """Is ``model`` at ``path`` (default: its committed place) with the right md5?

    The md5 of a file is remembered per (path, size, mtime), so the health route can ask on
    every request and reads the file only when it changed.
    """
    where = path or model.path
    try:
        stat = os.stat(where)
    except FileNotFoundError:
        return ModelStatus(MISSING, str(where), None,
                           f"the {model.name} is missing at {where}; {model.restore_hint()}")
    except OSError as exc:
        return ModelStatus(MISSING, str(where), None,
                           f"the {model.name} at {where} cannot be read ({exc}); {model.restore_hint()}")
    key = (str(where), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        digest = _cache.get(key)
    if digest is None:
        try:
            digest = file_md5(where)
        except OSError as exc:
            return ModelStatus(MISSING, str(where), None,
                               f"the {model.name} at {where} cannot be read ({exc}); {model.restore_hint()}")
        with _cache_lock:
            _cache[key] = digest
    if digest != model.md5:
        return ModelStatus(BAD_MD5, str(where), digest,
                           f"the {model.name} at {where} has md5 {digest}, expected {model.md5} (a damaged or "
                           f"different file); {model.restore_hint()}")
    return ModelStatus(OK, str(where), digest, f"the {model.name} at {where} is intact (md5 {digest})")


def detector_problem(detector: str) -> str | None:
    """Why a worker cannot run face detector ``detector`` (FACE_DETECTOR): an unknown name, or its
    model file missing or altered; None when it can. Light: no OpenCV, for the worker's start."""
    from core.contracts import FACE_DETECTORS

    if detector not in FACE_DETECTORS:
        return f"FACE_DETECTOR={detector!r} is not a face detector; use one of {', '.join(FACE_DETECTORS)}"
    if detector == "yunet":
        status = check(YUNET)
        if not status.ok:
            return f"FACE_DETECTOR=yunet needs its model file: {status.message}"
    return None
