"""Uploaded images: a size limit enforced while the body streams in, the file type read from the
content's magic bytes (never from the name or the declared type), and the pixel count read from
the header before anything is decoded (a decompression bomb is refused unopened).

The upload is written under the service's own folder (``$CXR_HOME/uploads``) by its sha256;
nothing in a request names a server path.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import Refusal, refusal_response

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_DICM_AT = 128
COPY_CHUNK = 1 << 20


class ImageKind(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    DICOM = "dicom"

    @property
    def suffix(self) -> str:
        return {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}[self.value]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body passes the limit; an HTTPException so that FastAPI's
    body parsing passes it on (it turns other errors into a 400) to the JSON error handler."""

    def __init__(self, reason: str) -> None:
        super().__init__(413, reason)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is refused with 413, at once when its
    ``Content-Length`` says so, else as soon as the streamed bytes pass the limit (the rest is
    never read)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reason = f"request body over the upload limit of {self.limit} bytes"
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await refusal_response(413, "too_large", reason)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(reason)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await refusal_response(413, "too_large", reason)(scope, receive, send)


def sniff_kind(head: bytes) -> ImageKind:
    """PNG, JPEG or DICOM from the first bytes of the file (415 for anything else)."""
    if head.startswith(_PNG):
        return ImageKind.PNG
    if head.startswith(_JPEG):
        return ImageKind.JPEG
    if head[_DICM_AT : _DICM_AT + 4] == b"DICM":
        return ImageKind.DICOM
    raise Refusal(415, "unsupported_type", "the file is not a PNG, JPEG or DICOM image (judged by its content, not its name)")


def _dicom_pixels(path: Path) -> int:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any parser failure is an unreadable file
            raise Refusal(422, "undecodable", f"unreadable DICOM header: {type(exc).__name__}") from exc
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise Refusal(422, "undecodable", "the DICOM header gives no valid Rows and Columns") from exc
    return rows * columns * max(frames, 1) * max(samples, 1)


def _raster_pixels(path: Path, kind: ImageKind) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=[kind.name]) as im:  # reads the header only
                width, height = im.size
        except Image.DecompressionBombError as exc:
            raise Refusal(413, "too_many_pixels", f"image too large to decode: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise Refusal(422, "undecodable", f"unreadable {kind.name} header: {type(exc).__name__}") from exc
    return width * height


def pixel_count(path: Path, kind: ImageKind) -> int:
    """Pixels the image would decode to, from its header alone."""
    return _dicom_pixels(path) if kind is ImageKind.DICOM else _raster_pixels(path, kind)


@dataclass(frozen=True)
class StagedUpload:
    """An upload copied to a temporary file beside the uploads folder, with its sha256 and kind."""

    temp_path: Path
    sha256: str
    kind: ImageKind
    size: int
    pixels: int

    def final_path(self, uploads_dir: Path) -> Path:
        return uploads_dir / f"{self.sha256}{self.kind.suffix}"

    def discard(self) -> None:
        self.temp_path.unlink(missing_ok=True)

    def keep(self, uploads_dir: Path) -> tuple[Path, bool]:
        """Move the file to ``<sha256>.<ext>`` in ``uploads_dir``; returns the path and whether
        this call created it (the same image uploaded before keeps its file)."""
        final = self.final_path(uploads_dir)
        if final.exists():
            self.discard()
            return final, False
        os.replace(self.temp_path, final)
        return final, True


def stage_upload(source: BinaryIO, uploads_dir: Path, max_pixels: int) -> StagedUpload:
    """Copy ``source`` to a temporary file in ``uploads_dir`` (hashing as it goes), then check
    its type and pixel count. Any refusal removes the temporary file."""
    uploads_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".upload-", dir=uploads_dir)
    temp = Path(name)
    digest, size, head = hashlib.sha256(), 0, b""
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(COPY_CHUNK):
                if len(head) < 132:
                    head += chunk[: 132 - len(head)]
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if size == 0:
            raise Refusal(422, "empty_file", "the uploaded file is empty")
        kind = sniff_kind(head)
        pixels = pixel_count(temp, kind)
        if pixels > max_pixels:
            raise Refusal(413, "too_many_pixels", f"image has {pixels} pixels; the limit is {max_pixels}")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return StagedUpload(temp, digest.hexdigest(), kind, size, pixels)
