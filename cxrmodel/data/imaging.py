"""Read chest radiographs (PNG, JPEG, DICOM) into 8-bit grey arrays, and safe file helpers.

Every reader returns a ``uint8`` array of shape ``[H, W]`` or raises :class:`ImageDecodeError`
with a short human-readable reason ("missing file", "empty file", "corrupt or truncated
image: ..."), so callers can quarantine a bad file instead of crashing.

Intensity conventions (one rule per source, applied per image):

* 8-bit grey PNG/JPEG (PIL mode ``L``): values are kept unchanged.
* Deeper grey PNG/TIFF (PIL modes ``I;16*``, ``I``, ``F``): **min-max** rescaled to 0-255.
  Medical 16-bit PNGs often hold 10-12 significant bits, which a bit-depth rescale would
  leave nearly black; min-max uses the full 8-bit range whatever the container depth.
* Colour and palette images (``RGB``, ``RGBA``, ``P``, ``LA``, ...): converted with PIL's
  ``convert("L")`` (ITU-R 601 luma ``L = R*299/1000 + G*587/1000 + B*114/1000``; alpha is
  ignored).
* DICOM: modality LUT (rescale slope/intercept), then VOI LUT or window, then **min-max** to
  0-255, then inverted for ``MONOCHROME1`` so that bone is always bright.

Research tool only: not a medical device.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 32
"""Smallest accepted image side in pixels."""

MAX_PIXELS = 40_000_000
"""Largest accepted image (width x height x frames), read from the file's header before any
decoding: the biggest chest radiographs are about 4300 x 3500 (15 M pixels). A file above it
is refused at once (a decompression bomb of a few hundred kilobytes can claim gigabytes)."""

MAX_AGE_YEARS = 120.0
"""Oldest accepted patient age, for every source (NIH CSV, sidecar, DICOM tags)."""

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMYdwmy]?)\s*$")
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


class ImageDecodeError(ValueError):
    """An image file could not be turned into a grey array.

    ``reason`` is a short phrase ("missing file", "empty file", "corrupt or truncated
    image: ...") and ``path`` the offending file when known; ``str(error)`` joins both.
    """

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if path is None else f"{reason} ({path})")


# --------------------------------------------------------------------------------------
# Path safety


def is_plain_file_name(name: object) -> bool:
    """True when ``name`` is a bare file name: non-empty, no path separator, not ``.``/``..``."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(ch in name for ch in ("/", "\\", "\x00"))


# --------------------------------------------------------------------------------------
# Pixel helpers


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    """Linearly map ``arr``'s [min, max] to [0, 255]; a constant image becomes all zeros."""
    values = np.array(arr, dtype=np.float64)  # one float copy, scaled in place: 8 bytes a pixel, not 24
    lo, hi = float(values.min()), float(values.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageDecodeError("image contains non-finite values")
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    values -= lo
    values *= 255.0 / (hi - lo)
    np.rint(values, out=values)
    return values.astype(np.uint8)


def _check_2d(arr: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """Raise unless ``arr`` is 2-D and at least ``MIN_SIDE`` on both sides."""
    if arr.ndim != 2:
        raise ImageDecodeError(f"not a 2-D image after conversion: shape {tuple(arr.shape)}", path)
    h, w = arr.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageDecodeError(f"image too small: {w}x{h} (minimum {MIN_SIDE}x{MIN_SIDE})", path)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _is_dicom(path: Path) -> bool:
    """DICOM by extension (``.dcm``/``.dicom``) or by the ``DICM`` magic at byte 128."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as fh:
        head = fh.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    return head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC


def _check_file(path: Path) -> None:
    """Raise ``missing file`` / ``not a regular file`` / ``empty file`` as appropriate."""
    if not path.exists():
        raise ImageDecodeError("missing file", path)
    if not path.is_file():
        raise ImageDecodeError("not a regular file", path)
    if path.stat().st_size == 0:
        raise ImageDecodeError("empty file", path)


# --------------------------------------------------------------------------------------
# Readers


def _refuse_too_large(width: int, height: int, frames: int, path: Path) -> None:
    if width * height * max(frames, 1) > MAX_PIXELS:
        size = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
        raise ImageDecodeError(f"image too large: {size} is over {MAX_PIXELS} pixels (refused before decoding)", path)


def _read_pil(path: Path) -> np.ndarray:
    """Decode a PIL-readable file fully (``load()``) into uint8 grey, once its header says it
    is not above :data:`MAX_PIXELS`."""
    try:
        with warnings.catch_warnings():  # PIL's own, looser bomb warning: MAX_PIXELS decides here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)  # reads the header only
        with im:
            _refuse_too_large(im.width, im.height, getattr(im, "n_frames", 1), path)
            im.load()  # decode every byte now, so a truncated file fails here
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode == "L":
                arr = np.asarray(im, dtype=np.uint8)
            elif mode.startswith("I") or mode == "F":
                arr = _minmax_uint8(np.asarray(im))
            else:
                arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}", path) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("corrupt or truncated image: unrecognised image format", path) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}", path) from exc
    return _check_2d(arr, path)


def _read_dicom_dataset(path: Path, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` with a retry for files lacking the 128-byte preamble.

    pydicom only *warns* when a file ends early (and drops the cut element); when pixels
    are wanted that warning becomes an ``ImageDecodeError``. Other warnings pass through.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _dcmread(path, stop_before_pixels)
    for w in caught:
        text = str(w.message)
        if not stop_before_pixels and "end of file" in text.lower():
            raise ImageDecodeError(f"corrupt or truncated image: {text}", path)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds


def _dcmread(path: Path, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        except Exception as exc:  # noqa: BLE001 - any parser failure means an unreadable file
            raise ImageDecodeError(f"corrupt or truncated image: not a DICOM file ({exc})", path) from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(f"corrupt or truncated image: {exc}", path) from exc


def _is_plain_8bit(ds, raw: np.ndarray) -> bool:
    """8-bit unsigned pixels with an identity modality LUT and no VOI LUT or window."""
    if raw.dtype != np.uint8:
        return False
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds or "ModalityLUTSequence" in ds
    return slope == 1.0 and intercept == 0.0 and not has_voi


def _read_dicom(path: Path) -> np.ndarray:
    """Decode DICOM pixels: modality LUT, VOI LUT/window, min-max to uint8 (plain 8-bit data kept
    as is), MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _read_dicom_dataset(path)
    try:
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: bad DICOM dimensions ({exc})", path) from exc
    _refuse_too_large(columns, rows, frames * samples, path)
    if "PixelData" not in ds:
        raise ImageDecodeError("corrupt or truncated image: DICOM has no pixel data", path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in _MONOCHROME:
        raise ImageDecodeError(f"unsupported DICOM photometric interpretation {photometric!r}", path)
    try:
        raw = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if "missing" in str(exc).lower() or isinstance(exc, NotImplementedError):
            raise ImageDecodeError(f"unsupported DICOM compression (no decoder installed): {exc}", path) from exc
        raise ImageDecodeError(f"corrupt or truncated image: {exc}", path) from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on bad data
        raise ImageDecodeError(f"corrupt or truncated image: {exc}", path) from exc
    if raw.ndim != 2:
        raise ImageDecodeError(f"not a 2-D image after conversion: shape {tuple(raw.shape)}", path)
    if _is_plain_8bit(ds, raw):
        # Already display-ready 8-bit grey with no LUT to apply: keep the values, exactly as
        # an 8-bit PNG is kept, so PNG and DICOM copies of one image decode identically.
        out = raw.astype(np.uint8, copy=True)
    else:
        try:
            values = apply_voi_lut(apply_modality_lut(raw, ds), ds)
        except Exception as exc:  # noqa: BLE001
            raise ImageDecodeError(f"corrupt or truncated image: bad LUT/window ({exc})", path) from exc
        out = _minmax_uint8(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return _check_2d(out, path)


def read_grayscale(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG, JPEG or DICOM radiograph as a ``uint8`` array ``[H, W]``.

    DICOM is recognised by a ``.dcm`` extension or the ``DICM`` preamble; everything else
    goes through PIL. See the module docstring for the intensity rules. Raises
    :class:`ImageDecodeError` for a missing, empty, corrupt or truncated file, an image
    smaller than 32x32, or one that is not 2-D after conversion.
    """
    p = Path(path)
    _check_file(p)
    try:
        dicom = _is_dicom(p)
    except OSError as exc:
        raise ImageDecodeError(f"unreadable file: {exc}", p) from exc
    return _read_dicom(p) if dicom else _read_pil(p)


def parse_patient_age(text: object) -> float | None:
    """Age in years from a DICOM ``AS`` string or NIH cell: ``'062Y'``, ``'62'``, ``'006M'``.

    Units: ``Y`` years (or none), ``M`` months, ``W`` weeks, ``D`` days. Returns ``None`` for
    anything unparseable (empty, negative, free text).
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
        return value if np.isfinite(value) and value >= 0 else None
    match = _AGE_RE.match(str(text))
    if not match:
        return None
    return float(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()]


def check_patient_age(value: object) -> tuple[float | None, str | None]:
    """The one age rule of every source: ``(age in years, None)`` for a value that parses
    (:func:`parse_patient_age`) within 0-:data:`MAX_AGE_YEARS`, else ``(None, reason)``; a blank
    value is ``(None, None)``. The reason quotes at most 40 characters of the value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    shown = repr(value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "...")
    age = parse_patient_age(value)
    if age is None:
        return None, f"unparseable age {shown}"
    if age > MAX_AGE_YEARS:
        return None, f"age {shown} outside 0-{MAX_AGE_YEARS:g} years"
    return age, None


def read_dicom_metadata(path: str | os.PathLike[str]) -> dict[str, object]:
    """Patient fields of a DICOM file (pixels are not read): :func:`read_dicom_patient` without
    the problems."""
    return read_dicom_patient(path)[0]


def read_dicom_patient(path: str | os.PathLike[str]) -> tuple[dict[str, object], list[str]]:
    """Patient fields of a DICOM file (pixels are not read), and the reasons of the values left out.

    Returns ``{"age": float|None (years), "sex": "M"|"F"|None, "view": "PA"|"AP"|None,
    "patient_id": str|None}``. Other sexes (``O``) and views (``LL``, ...) map to ``None``; an
    age that does not parse or lies outside 0-120 years (:func:`check_patient_age`) is ``None``
    with its reason.
    """
    p = Path(path)
    _check_file(p)
    ds = _read_dicom_dataset(p, stop_before_pixels=True)
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    patient_id = str(ds.get("PatientID", "") or "").strip()
    age, problem = check_patient_age(str(ds.get("PatientAge", "") or "") or None)
    fields = {
        "age": age,
        "sex": sex if sex in ("M", "F") else None,
        "view": view if view in ("PA", "AP") else None,
        "patient_id": patient_id or None,
    }
    return fields, [f"DICOM PatientAge: {problem}"] if problem else []


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``uint8`` ``[H, W]`` image to ``[size, size]`` with PIL.

    Uses bilinear filtering with ``reducing_gap=3.0``: for big reductions (1024 -> 64) PIL
    first shrinks by an integer factor with a box filter (``Image.reduce``), then resamples,
    which is several times faster than plain bilinear and anti-aliased. Non-square inputs
    are stretched (aspect ratio is not kept; NIH images are square).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 image, got {arr.dtype}")
    if arr.shape == (size, size):
        return arr.copy()
    im = Image.fromarray(np.ascontiguousarray(arr))  # uint8 2-D -> mode "L"
    out = im.resize((size, size), resample=Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8).copy()
