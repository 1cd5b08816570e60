"""ID-photo specs and options: what the web tier validates and the workers frame to (stdlib only).

A spec is the printed photo's size and the two measures offices check: the head height (chin to
crown, crown = top of the hair, as the US State Department and the EU guides measure it; ICAO
9303 leaves hair volume to the issuing state) and the eye line, as millimetres above the
photo's bottom edge. Built-in specs (docs/id-photos.md has the table and the sources):

``icao``      35x45 mm; head 32-36 mm (ICAO 9303 Part 3 / ISO/IEC 19794-5 "chin to crown 70-80 %
              of the photo height"); eye line 50-70 % of the height up from the bottom.
``us``        2x2 in (50.8x50.8 mm); head 1-1 3/8 in (25.4-34.9 mm); eyes 1 1/8-1 3/8 in
              (28.6-34.9 mm) from the bottom (US State Department photo requirements).
``schengen``  35x45 mm as EU states apply ICAO to Schengen visas (e.g. Germany's biometric
              photo guide: head 32-36 mm); eye line as ICAO.
``idcard``    3:4, 450x600 px at 300 dpi (38.1x50.8 mm): the face crop's ``idcard`` framing
              (head 62.5 % of the height, within 58-68 %), eye line 50-70 % up.

A custom spec is an object ``{widthMm, heightMm, dpi, headMinMm, headMaxMm, eyeMinMm, eyeMaxMm}``
(eye limits are heights above the bottom edge, mm). ``options.dpi`` (default 300) sets the pixel
density of built-in specs; a custom spec's own ``dpi`` is used unless ``options.dpi`` is given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.contracts import MAX_OUTPUT_SIDE, InvalidField

MM_PER_INCH = 25.4
DEFAULT_DPI = 300
DPI_RANGE = (150, 1200)
FORMATS = ("jpeg", "png")
MAX_BYTES_RANGE = (10_000, 20_000_000)
# Backgrounds offices accept: white, or a light neutral grey (each channel at least LIGHTEST_GREY,
# channels within GREY_SPREAD of each other).
WHITE = (255, 255, 255)
LIGHT_GREY = (224, 224, 224)
LIGHTEST_GREY = 200
GREY_SPREAD = 6
BACKGROUND_NAMES = {"white": WHITE, "lightgrey": LIGHT_GREY, "lightgray": LIGHT_GREY}


@dataclass(frozen=True)
class IdPhotoSpec:
    """A printed photo's size and the head and eye-line limits, in millimetres (eyes from the bottom)."""

    name: str
    width_mm: float
    height_mm: float
    head_min_mm: float
    head_max_mm: float
    eye_min_mm: float
    eye_max_mm: float
    dpi: int = DEFAULT_DPI
    source: str = ""

    def pixels(self, dpi: int | None = None) -> tuple[int, int]:
        """(width, height) in pixels at ``dpi`` (the spec's own when None)."""
        d = dpi or self.dpi
        return max(1, round(self.width_mm / MM_PER_INCH * d)), max(1, round(self.height_mm / MM_PER_INCH * d))

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form stored in job payloads and echoed in results."""
        return {"name": self.name, "widthMm": self.width_mm, "heightMm": self.height_mm, "dpi": self.dpi,
                "headMinMm": self.head_min_mm, "headMaxMm": self.head_max_mm,
                "eyeMinMm": self.eye_min_mm, "eyeMaxMm": self.eye_max_mm}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdPhotoSpec:
        """Inverse of ``to_dict``."""
        return cls(str(data.get("name") or "custom"), float(data["widthMm"]), float(data["heightMm"]),
                   float(data["headMinMm"]), float(data["headMaxMm"]), float(data["eyeMinMm"]),
                   float(data["eyeMaxMm"]), int(data.get("dpi") or DEFAULT_DPI),
                   SPECS[data["name"]].source if data.get("name") in SPECS else "custom")


SPECS: dict[str, IdPhotoSpec] = {
    "icao": IdPhotoSpec("icao", 35, 45, 32, 36, 22.5, 31.5,
                        source="ICAO Doc 9303 Part 3 / ISO/IEC 19794-5 (35x45 mm, head 70-80 %, eyes 50-70 % up)"),
    "us": IdPhotoSpec("us", 50.8, 50.8, 25.4, 34.9, 28.6, 34.9,
                      source="US State Department passport photo requirements (2x2 in)"),
    "schengen": IdPhotoSpec("schengen", 35, 45, 32, 36, 22.5, 31.5,
                            source="ICAO 35x45 mm as applied by EU states to Schengen visas"),
    "idcard": IdPhotoSpec("idcard", 38.1, 50.8, 29.5, 34.5, 25.4, 35.6,
                          source="this service's idcard crop framing (3:4, 450x600 px at 300 dpi)"),
}


@dataclass(frozen=True)
class IdPhotoOptions:
    """Validated ID-photo options."""

    background: tuple[int, int, int] = WHITE
    dpi: int | None = None  # None: DEFAULT_DPI for built-in specs, the custom spec's own dpi
    format: str = "jpeg"
    max_bytes: int | None = None  # JPEG quality is searched down until the file fits
    detector: str | None = None  # kept for symmetry with crops; ID photos need landmarks (yunet)

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form stored in job payloads."""
        data: dict[str, Any] = {"background": "#{:02x}{:02x}{:02x}".format(*self.background), "format": self.format}
        if self.dpi is not None:
            data["dpi"] = self.dpi
        if self.max_bytes is not None:
            data["maxBytes"] = self.max_bytes
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdPhotoOptions:
        """Inverse of ``to_dict`` (payloads were validated when queued)."""
        return cls(background=_background(data.get("background")), dpi=data.get("dpi"),
                   format=data.get("format") or "jpeg", max_bytes=data.get("maxBytes"))


def _number(data: dict[str, Any], key: str, field: str, lo: float, hi: float, *, integer: bool = False) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidField(field, "is required and must be a number")
    if integer and not float(value).is_integer():
        raise InvalidField(field, "must be a whole number")
    if not lo <= value <= hi:
        raise InvalidField(field, f"must be between {lo:g} and {hi:g}")
    return float(value)


def validate_spec(value: Any, field: str = "spec") -> IdPhotoSpec:
    """A built-in spec's name, or a custom spec object (every field required and consistent)."""
    if isinstance(value, str):
        if value in SPECS:
            return SPECS[value]
        raise InvalidField(field, f"must be one of {', '.join(SPECS)} or a custom object "
                                  "{widthMm, heightMm, dpi, headMinMm, headMaxMm, eyeMinMm, eyeMaxMm}")
    if not isinstance(value, dict):
        raise InvalidField(field, f"is required: one of {', '.join(SPECS)}, or a custom spec object")
    known = {"widthMm", "heightMm", "dpi", "headMinMm", "headMaxMm", "eyeMinMm", "eyeMaxMm"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise InvalidField(f"{field}.{unknown[0]}", f"is not a spec field ({', '.join(sorted(known))})")
    width = _number(value, "widthMm", f"{field}.widthMm", 10, 200)
    height = _number(value, "heightMm", f"{field}.heightMm", 10, 200)
    dpi = int(_number(value, "dpi", f"{field}.dpi", *DPI_RANGE, integer=True))
    head_min = _number(value, "headMinMm", f"{field}.headMinMm", 1, height)
    head_max = _number(value, "headMaxMm", f"{field}.headMaxMm", head_min, height)
    eye_min = _number(value, "eyeMinMm", f"{field}.eyeMinMm", 0, height)
    eye_max = _number(value, "eyeMaxMm", f"{field}.eyeMaxMm", eye_min, height)
    spec = IdPhotoSpec("custom", width, height, head_min, head_max, eye_min, eye_max, dpi, "custom")
    if max(spec.pixels()) > MAX_OUTPUT_SIDE:
        raise InvalidField(f"{field}.dpi", f"gives {spec.pixels()} px; at most {MAX_OUTPUT_SIDE} px a side")
    return spec


def _background(value: Any, field: str = "options.background") -> tuple[int, int, int]:
    """White (default) or a light neutral grey, as a hex string, a name or [r, g, b]."""
    if value is None:
        return WHITE
    colour: tuple[int, int, int] | None = None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in BACKGROUND_NAMES:
            return BACKGROUND_NAMES[text]
        digits = text.lstrip("#")
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        if len(digits) == 6 and all(c in "0123456789abcdef" for c in digits):
            colour = (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    elif (isinstance(value, list) and len(value) == 3
          and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        colour = (value[0], value[1], value[2])
    if colour is None:
        raise InvalidField(field, "must be a colour: 'white', 'lightgrey', '#rrggbb' or [r, g, b]")
    if min(colour) < LIGHTEST_GREY or max(colour) - min(colour) > GREY_SPREAD:
        raise InvalidField(field, f"must be white or a light neutral grey (each channel >= {LIGHTEST_GREY}, "
                                  f"channels within {GREY_SPREAD} of each other): offices refuse other backgrounds")
    return colour


def validate_options(spec: IdPhotoSpec, options: Any) -> IdPhotoOptions:
    """Validate an ID-photo request's ``options`` for ``spec`` (the pixel size must stay in bounds)."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidField("options", "must be an object")
    known = {"background", "dpi", "format", "maxBytes"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidField(f"options.{unknown[0]}", f"is not a known option ({', '.join(sorted(known))})")
    dpi = None
    if options.get("dpi") is not None:
        dpi = int(_number(options, "dpi", "options.dpi", *DPI_RANGE, integer=True))
        if max(spec.pixels(dpi)) > MAX_OUTPUT_SIDE:
            raise InvalidField("options.dpi", f"gives {spec.pixels(dpi)} px for this spec; at most "
                                              f"{MAX_OUTPUT_SIDE} px a side")
    fmt = options.get("format") or "jpeg"
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in FORMATS:
        raise InvalidField("options.format", f"must be one of {', '.join(FORMATS)}")
    max_bytes = None
    if options.get("maxBytes") is not None:
        if fmt != "jpeg":
            raise InvalidField("options.maxBytes", "applies to jpeg only (PNG is lossless: its size cannot be "
                                                   "traded for quality)")
        max_bytes = int(_number(options, "maxBytes", "options.maxBytes", *MAX_BYTES_RANGE, integer=True))
    return IdPhotoOptions(background=_background(options.get("background")), dpi=dpi, format=fmt,
                          max_bytes=max_bytes)


def validate_request(spec: Any, options: Any) -> tuple[IdPhotoSpec, IdPhotoOptions]:
    """The ``spec`` and ``options`` of an ID-photo request (routes and batches)."""
    checked = validate_spec(spec)
    return checked, validate_options(checked, options)


def job_options(spec: IdPhotoSpec, options: IdPhotoOptions) -> dict[str, Any]:
    """What an ID-photo job carries in its payload's ``options``: the spec and the options."""
    return {"spec": spec.to_dict(), **options.to_dict()}


def from_job_options(data: dict[str, Any]) -> tuple[IdPhotoSpec, IdPhotoOptions]:
    """Inverse of ``job_options``."""
    return IdPhotoSpec.from_dict(data["spec"]), IdPhotoOptions.from_dict(data)
