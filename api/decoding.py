"""How much memory a decode will need, and a budget that bounds the decodes in flight.

The pixel limit alone does not bound memory: a 77 KB PNG of 6,300 x 6,300 16-bit pixels passes
it and needs about 600 MB to decode (the decoder's buffer, a NumPy copy, one float64 working
array, the 8-bit result); six at once took the service from 1.2 to 3.4 GB. :func:`decode_bytes`
estimates the peak from the header alone (size, bit depth, channels; measured per mode with
:func:`cxrmodel.data.imaging.read_grayscale`), and :class:`DecodeBudget` admits a decode only
while the estimates in flight fit ``budget_bytes``: otherwise the request is refused at once with
503 and ``Retry-After`` (413 if the one image could never fit), before a byte is decoded.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from api.errors import Refusal

# Peak bytes per pixel of read_grayscale by PIL mode (decoder buffer + NumPy copies + result),
# measured on noisy images (bench/service_faults.py prints the measurement beside the estimate).
_EIGHT_BIT_GREY = 4  # 'L', 'P', '1': buffer, array, result
_EIGHT_BIT_COLOUR = 12  # 'RGB', 'RGBA', ...: a 4-byte buffer, the 'L' conversion, array, result
_FLOAT_WORK = 12  # a float64 working copy, the result, slack: added to twice the sample size


def _mode_bytes(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return _EIGHT_BIT_GREY
    if mode.startswith("I;16"):
        return 2 * 2 + _FLOAT_WORK
    if mode in ("I", "F"):
        return 2 * 4 + _FLOAT_WORK
    return _EIGHT_BIT_COLOUR


def _dicom_bytes(path: Path) -> int:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    pixels = int(ds.Rows) * int(ds.Columns) * max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    sample = max(int(ds.get("BitsAllocated", 16) or 16), 8) // 8 * max(int(ds.get("SamplesPerPixel", 1) or 1), 1)
    # the encoded pixel data, the decoded array, then (unless plain 8-bit) the modality and VOI
    # LUTs' float64 results and the float64 working copy of the min-max scaling, and the result
    return pixels * (2 * sample + (1 if sample == 1 else 3 * 8 + 1))


def decode_bytes(path: Path, dicom: bool) -> int:
    """Estimated peak memory (bytes) of decoding the file at ``path`` to 8-bit grey, from its
    header alone. The header was read once already (the pixel limit), so it is known to parse."""
    if dicom:
        return _dicom_bytes(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            return im.width * im.height * max(getattr(im, "n_frames", 1), 1) * _mode_bytes(im.mode)


class DecodeBudget:
    """Bytes reserved by the decodes in flight, at most ``budget_bytes`` together."""

    def __init__(self, budget_bytes: int, retry_after_s: int = 5) -> None:
        self.budget_bytes, self.retry_after_s = budget_bytes, retry_after_s
        self._lock = threading.Lock()
        self.in_use = 0
        self.peak = 0

    @contextmanager
    def reserve(self, needed: int) -> Iterator[None]:
        """Hold ``needed`` bytes for the ``with`` block, or refuse the request now."""
        mib = 2**20
        if needed > self.budget_bytes:
            raise Refusal(
                413,
                "too_large_to_decode",
                f"decoding this image needs about {needed // mib} MiB; the service's decode budget is "
                f"{self.budget_bytes // mib} MiB",
            )
        with self._lock:
            if self.in_use + needed > self.budget_bytes:
                busy = True
            else:
                busy = False
                self.in_use += needed
                self.peak = max(self.peak, self.in_use)
        if busy:
            raise Refusal(
                503,
                "decode_budget_full",
                f"the service is decoding other large images; this one needs about {needed // mib} MiB: try again shortly",
                {"Retry-After": str(self.retry_after_s)},
            )
        try:
            yield
        finally:
            with self._lock:
                self.in_use -= needed
