"""Shared builders of the adversarial tests: a labelled NIH-layout folder with real PNGs, an
incoming folder, and one refresh step run through its real task function against a database."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from sqlalchemy import select
from test_scoring_faults import write_png

from cxrmodel.config import DataConfig
from db import refresh
from db.engine import session_scope
from db.models import QuarantinedRow, Study

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
DATA = DataConfig(image_size=32, val_fraction=0.2, test_fraction=0.2)


def nih_row(i: int, labels: str = "Effusion", age: str | None = None, patient: str | None = None, key: str | None = None) -> str:
    key = key or f"{i:08d}_000.png"
    return f"{key},{labels},0,{patient or i},{age or 20 + i % 60},{'MF'[i % 2]},PA,1024,1024,0.14,0.14"


def labelled_folder(root: Path, rows: list[str | bytes], n_images: int | None = None) -> Path:
    """``root/labelled`` with a metadata CSV of ``rows`` (bytes are written as they are) and a
    64x64 PNG for each of the first ``n_images`` row keys (every row by default)."""
    folder = root / "labelled"
    (folder / "images").mkdir(parents=True)
    lines = [HEADER.encode(), *(r if isinstance(r, bytes) else r.encode() for r in rows)]
    (folder / "Data_Entry_2017_v2020.csv").write_bytes(b"\n".join(lines) + b"\n")
    for i, row in enumerate(rows[: n_images if n_images is not None else len(rows)]):
        key = (row if isinstance(row, bytes) else row.encode()).split(b",")[0].decode("utf-8", "replace")
        if "/" not in key and "\ufffd" not in key:
            write_png(folder / "images" / key, seed=i)
    return folder


def open_refresh(url: str, source: str = "synthetic") -> int:
    with session_scope(url) as session:
        return refresh.start_refresh(session, source, "test", None).id


def studies_and_reasons(url: str, run_id: int) -> tuple[dict[str, Study], dict[str, list[str]]]:
    with session_scope(url) as session:
        studies = {s.study_key: s for s in session.scalars(select(Study))}
        reasons: dict[str, list[str]] = {}
        for q in session.scalars(select(QuarantinedRow).where(QuarantinedRow.refresh_run_id == run_id)):
            reasons.setdefault(q.row_key, []).append(q.reason)
    return studies, reasons


def png_bomb(path: Path, side: int = 12000) -> Path:
    """A valid 16-bit grey PNG of ``side`` x ``side`` zeros, compressed to a few hundred KB
    (written row block by row block: never the whole image in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 2 * side)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)))
        block = row * 500
        for _ in range(side // 500):
            data = compressor.compress(block)
            if data:
                fh.write(chunk(b"IDAT", data))
        fh.write(chunk(b"IDAT", compressor.flush()) + chunk(b"IEND", b""))
    return path
