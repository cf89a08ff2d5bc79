"""New studies: a folder of PNG/DICOM files with an optional CSV or JSON sidecar (age, sex,
view), or rows another system inserts into ``studies``. A bad sidecar row is quarantined with
its reason and never stops the refresh. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from test_scoring_faults import K, prepare_scoring_database, write_png

from db import refresh
from db.engine import get_engine, session_scope
from db.models import Prediction, QuarantinedRow, ScoringRun, Study
from db.refresh import RefreshTotals
from tasks.data import register_incoming
from tasks.scoring import run_scoring

DICOM = Path(__file__).parent / "fixtures" / "dicom" / "siim_cxr.dcm"  # tags: 62 years, M, PA


@pytest.fixture
def url(migrated_url) -> Iterator[str]:
    yield migrated_url
    get_engine(migrated_url).dispose()  # let the PostgreSQL fixture drop its database


def _register(url: str, folder: Path) -> tuple[RefreshTotals, dict[str, Study], dict[str, list[str]]]:
    """Register ``folder``; returns the task's counts, the studies by key and the quarantine
    reasons by row key."""
    with session_scope(url) as session:
        run_id = refresh.start_refresh(session, "incoming", str(folder), None).id
    counts = register_incoming.fn(url, folder, run_id)
    with session_scope(url) as session:
        studies = {s.study_key: s for s in session.scalars(select(Study))}
        reasons: dict[str, list[str]] = {}
        for q in session.scalars(select(QuarantinedRow).where(QuarantinedRow.refresh_run_id == run_id)):
            reasons.setdefault(q.row_key, []).append(q.reason)
    return counts, studies, reasons


def _folder(root: Path, *pngs: str) -> Path:
    folder = root / "incoming"
    folder.mkdir()
    for i, name in enumerate(pngs):
        write_png(folder / name, seed=i)
    shutil.copy(DICOM, folder / "scan.dcm")
    return folder


def _meta(study: Study) -> tuple:
    return study.age, study.sex, study.view


def test_csv_sidecar_and_dicom_tags(url, tmp_path):
    folder = _folder(tmp_path, "a.png", "b.png", "c.png")
    (folder / "metadata.csv").write_text(
        "Image Index,Patient ID,Patient Age,Patient Gender,View Position\n"
        "a.png,P1,45,F,AP\n"
        "b.png,P2,062Y,m,pa\n"
        "scan.dcm,P3,30,F,AP\n"  # the DICOM file's own tags come first
    )
    counts, studies, reasons = _register(url, folder)
    assert (counts.added, counts.quarantined) == (4, 0) and reasons == {}
    assert _meta(studies["a.png"]) == (45.0, "F", "AP") and studies["a.png"].patient_id == "P1"
    assert _meta(studies["b.png"]) == (62.0, "M", "PA")
    assert _meta(studies["c.png"]) == (None, None, None)  # no row: scoring will record "missing metadata"
    assert _meta(studies["scan.dcm"]) == (62.0, "M", "PA")
    assert all(not s.labelled and s.split == "incoming" for s in studies.values())


@pytest.mark.parametrize("keyed", [False, True], ids=["list", "keyed-by-file"])
def test_json_sidecar(url, tmp_path, keyed):
    folder = _folder(tmp_path, "a.png", "b.png", "c.png")
    rows = {
        "a.png": {"age": 45, "sex": "F", "view": "AP", "patient_id": "P1"},
        "b.png": {"Patient Age": "062Y", "Patient Gender": "M", "View Position": "PA"},
    }
    payload = rows if keyed else [{"file": name, **fields} for name, fields in rows.items()]
    (folder / "metadata.json").write_text(json.dumps(payload))
    counts, studies, reasons = _register(url, folder)
    assert (counts.added, counts.quarantined) == (4, 0) and reasons == {}
    assert _meta(studies["a.png"]) == (45.0, "F", "AP") and studies["a.png"].patient_id == "P1"
    assert _meta(studies["b.png"]) == (62.0, "M", "PA")
    assert _meta(studies["c.png"]) == (None, None, None)
    assert _meta(studies["scan.dcm"]) == (62.0, "M", "PA")  # DICOM tags, no sidecar row


def test_bad_sidecar_rows_are_quarantined_and_the_rest_is_used(url, tmp_path):
    folder = _folder(tmp_path, "a.png", "b.png", "c.png", "d.png")
    (folder / "metadata.json").write_text(
        json.dumps(
            [
                {"file": "a.png", "age": "sixty", "sex": "F", "view": "AP"},  # bad age: sex and view still used
                {"file": "b.png", "age": 230, "sex": "X", "view": "LL"},
                {"file": "c.png", "age": 50, "sex": "M", "view": "PA"},
                {"file": "c.png", "age": 51, "sex": "F", "view": "AP"},  # duplicate: the first row is kept
                {"file": "c.png", "age": 52, "sex": "F", "view": "AP"},  # (one quarantine row per reason)
                {"age": 40, "sex": "M"},  # no file name
                {"file": "gone.png", "age": 40},  # no such file
                "d.png",  # not an object
            ]
        )
    )
    (folder / "metadata.csv").write_text("Picture,Age\nd.png,40\n")  # no file-name column: the whole file
    counts, studies, reasons = _register(url, folder)
    assert counts.added == 5
    assert _meta(studies["a.png"]) == (None, "F", "AP")
    assert _meta(studies["b.png"]) == (None, None, None)
    assert _meta(studies["c.png"]) == (50.0, "M", "PA")
    assert _meta(studies["d.png"]) == (None, None, None)
    assert reasons == {
        "a.png": ["sidecar metadata.json: unparseable age 'sixty'"],
        "b.png": [
            "sidecar metadata.json: age 230 outside 0-120 years; unknown sex 'X' (expected M or F); "
            "unknown view 'LL' (expected PA or AP)"
        ],
        "c.png": ["sidecar metadata.json: duplicate row for this file (the first is kept)"],
        "metadata.json row 6": ["sidecar metadata.json: no file name"],
        "gone.png": ["sidecar metadata.json: no such PNG/DICOM file in the incoming folder"],
        "metadata.json row 8": ["sidecar metadata.json: not an object"],
        "metadata.csv": ["sidecar metadata.csv: no file name column (one of Image Index, file, file_name, filename, image)"],
    }
    assert counts.quarantined == 7

    (folder / "metadata.json").write_text("[{")  # a broken file is one quarantine row, not a crash
    counts, studies, reasons = _register(url, folder)
    assert reasons["metadata.json"][0].startswith("sidecar metadata.json: invalid JSON")
    assert counts.added == 0 and len(studies) == 5


def test_study_inserted_by_another_system_is_scored(url, tmp_path):
    """A row written straight into ``studies`` (no refresh flow) is picked up by the next scoring."""
    prepare_scoring_database(url, tmp_path, 3)
    image = write_png(tmp_path / "external.png", seed=42)
    with get_engine(url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO studies (study_key, source, image_path, labelled, status, age, sex, view, created_at, updated_at) "
                "VALUES (:key, 'pacs-bridge', :path, :no, 'active', 71, 'F', 'AP', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"key": "external-0001", "path": str(image), "no": False},
        )
    run_id = run_scoring(url, batch_size=8)
    with session_scope(url) as session:
        run = session.get(ScoringRun, run_id)
        assert (run.n_candidates, run.n_scored, run.n_failed) == (4, 4, 0)
        external = session.scalar(select(Study.id).where(Study.study_key == "external-0001"))
        assert session.scalar(select(func.count()).select_from(Prediction).where(Prediction.study_id == external)) == K


@pytest.mark.parametrize(
    ("fields", "expected", "problems"),
    [
        ({"age": "006M", "sex": " f ", "view": "ap"}, (0.5, "F", "AP"), []),
        ({"age": 120, "sex": "M"}, (120.0, "M", None), []),
        ({"age": "121", "view": "PA"}, (None, None, "PA"), ["age '121' outside 0-120 years"]),
        ({"age": "-3"}, (None, None, None), ["unparseable age '-3'"]),
        ({"age": "", "sex": 1, "view": None}, (None, None, None), ["unknown sex 1 (expected M or F)"]),
    ],
)
def test_parse_sidecar_row(fields, expected, problems):
    from cxrmodel.data.sidecar import parse_sidecar_row

    row, reasons = parse_sidecar_row(fields)
    assert (row.age, row.sex, row.view) == expected
    assert reasons == problems
