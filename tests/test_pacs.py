"""The night against a real PACS: Orthanc with its DICOMweb plugin (:mod:`pacs_fixtures`),
authentication on, on SQLite and PostgreSQL.

First night: the frontal CR/DX instances are pulled, registered, scored, and one SR per
instance lands in a new series of its study; laterals, the CT instance, the instance without
pixel data and the one over the pixel limit are recorded with their reason. Second night:
nothing fetched, scored or sent again. A study added between nights: only it. A PACS down
during the pull or the write-back: recorded, retried, nothing lost. The SRs read back field by
field and pass ``dciodvfy``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from pacs_fixtures import PASSWORD, TEST_MAX_PIXELS, USER, OrthancServer, make_instances, orthanc_missing, radiograph
from test_scoring_faults import prepare_scoring_database

from cxrmodel.findings import FINDINGS
from cxrmodel.pacs.dicomweb import Pacs, PacsConnection
from cxrmodel.pacs.sr import NOT_A_DIAGNOSIS, read_report
from db import pacs as pacs_store
from db.engine import get_engine, session_scope
from tasks.pacs import pull_from_pacs, push_to_pacs
from tasks.scoring import run_scoring

pytestmark = [
    pytest.mark.skipif(orthanc_missing() is not None, reason=orthanc_missing() or ""),
    pytest.mark.usefixtures("one_torch_thread"),
]

TODAY = date.today()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = OrthancServer(free_port(), tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc, monkeypatch, tmp_path):
    """The module's Orthanc, emptied, and the CXR_DICOMWEB_* settings pointing at it."""
    orthanc.clear()
    point_at(monkeypatch, orthanc, tmp_path)
    return orthanc


def point_at(monkeypatch, server: OrthancServer, home: Path) -> None:
    monkeypatch.setenv("CXR_HOME", str(home / "home"))
    monkeypatch.setenv("CXR_DICOMWEB_URL", server.dicomweb)
    monkeypatch.setenv("CXR_DICOMWEB_USER", USER)
    monkeypatch.setenv("CXR_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.setenv("CXR_DICOMWEB_MAX_PIXELS", str(TEST_MAX_PIXELS))


@pytest.fixture
def url(database_url, tmp_path):
    prepare_scoring_database(database_url, tmp_path / "state", n_studies=0)
    yield database_url
    get_engine(database_url).dispose()


def night(url: str, backoff_s: float = 0.0):
    """Pull, score, write back: what the nightly flow's PACS steps do."""
    pulled = pull_from_pacs.fn(database_url=url)
    run_id = run_scoring(url, batch_size=8, device="cpu")
    pushed = push_to_pacs.fn(database_url=url, backoff_s=backoff_s)
    return pulled, run_id, pushed


def sr_instances(server: OrthancServer, study_uid: str) -> list[dict]:
    """The SR series of a study as the PACS lists them (QIDO-RS)."""
    return [s for s in server.series_of_study(study_uid) if s.get("00080060", {}).get("Value") == ["SR"]]


def n_scored(url: str, run_id: int) -> int:
    from db.scoring import scoring_summary

    with session_scope(url) as session:
        return scoring_summary(session, run_id).n_scored


def test_first_night_second_night_and_a_study_added_between(pacs, url):
    data = make_instances(TODAY)
    pacs.upload(data.all)

    pulled, run_id, pushed = night(url)
    assert (pulled.registered, pulled.skipped, pulled.failed, pulled.retry, pulled.error) == (5, 5, 0, 0, None)
    assert n_scored(url, run_id) == 5
    assert (pushed.to_send, pushed.sent, pushed.refused, pushed.error) == (5, 5, 0, None)
    with session_scope(url) as session:
        rows = {r["sop_instance_uid"]: r for r in pacs_store.instance_rows(session)}
    reasons = {uid: (r["status"], r["reason"]) for uid, r in rows.items()}
    assert reasons[data.lateral_only.SOPInstanceUID] == ("skipped", "lateral-only study: not a frontal view (View Position LL)")
    assert reasons[data.lateral_beside_frontal.SOPInstanceUID] == ("skipped", "not a frontal view (View Position LL)")
    assert reasons[data.ct.SOPInstanceUID] == ("skipped", "not a radiograph (modality CT)")
    assert reasons[data.no_pixels.SOPInstanceUID] == ("skipped", "no pixel data")
    assert reasons[data.too_large.SOPInstanceUID][1] == f"over the pixel limit: 1100x1200 is over {TEST_MAX_PIXELS} pixels"
    assert data.ct_only.SOPInstanceUID not in rows  # a CT study is never searched
    for ds in data.frontal:
        row = rows[ds.SOPInstanceUID]
        assert (row["status"], row["accession_number"], row["study_instance_uid"]) == (
            "registered",
            ds.AccessionNumber,
            ds.StudyInstanceUID,
        )
        assert row["study_id"] is not None and len(sr_instances(pacs, ds.StudyInstanceUID)) == 1
    with session_scope(url) as session:
        from db.scoring import studies_by_id

        study = studies_by_id(session, [rows[data.frontal[0].SOPInstanceUID]["study_id"]])[0]
    assert (study.study_key, study.source, study.view, study.sex, study.age, study.labelled) == (
        data.frontal[0].SOPInstanceUID,
        "pacs",
        "PA",
        "F",
        54.0,
        False,
    )
    for ds in (data.lateral_only, data.ct_only, data.too_large, data.no_pixels):
        assert sr_instances(pacs, ds.StudyInstanceUID) == []

    # second night: nothing new, nothing fetched, scored or sent again
    pulled, run_id, pushed = night(url)
    assert (pulled.registered, pulled.skipped, pulled.already_seen) == (0, 0, 10)
    assert n_scored(url, run_id) == 0 and pushed.to_send == 0
    for ds in data.frontal:
        assert len(sr_instances(pacs, ds.StudyInstanceUID)) == 1
        instances = Pacs(PacsConnection(pacs.dicomweb, USER, PASSWORD)).instances_in_series(
            ds.StudyInstanceUID, sr_instances(pacs, ds.StudyInstanceUID)[0]["0020000E"]["Value"][0]
        )
        assert len(instances) == 1

    # a study stored between the nights: only it
    extra = radiograph(
        np.full((128, 128), 100, np.uint8), modality="CR", view="AP", accession="ACC0100", patient="P0100", study_date=TODAY
    )
    pacs.upload([extra])
    pulled, run_id, pushed = night(url)
    assert (pulled.registered, pulled.skipped, pulled.already_seen) == (1, 0, 10)
    assert n_scored(url, run_id) == 1 and (pushed.to_send, pushed.sent) == (1, 1)
    assert len(sr_instances(pacs, extra.StudyInstanceUID)) == 1
    with session_scope(url) as session:
        objects = pacs_store.object_rows(session)
    assert len(objects) == 6 and {o["status"] for o in objects} == {"sent"} and {o["attempts"] for o in objects} == {1}
    with get_engine(url).connect() as conn:  # the SQL view: PACS identifiers beside each prediction
        from sqlalchemy import text

        rows = conn.execute(
            text("SELECT finding, probability FROM pacs_predictions WHERE accession_number = :a"), {"a": extra.AccessionNumber}
        ).all()
        assert len(rows) == len(FINDINGS) and {r.finding for r in rows} == set(FINDINGS)
        n = conn.execute(text("SELECT count(DISTINCT study_instance_uid) FROM pacs_predictions")).scalar()
        assert n == len(data.frontal) + 1


def test_reports_read_back_field_by_field_and_pass_dciodvfy(pacs, url, tmp_path):
    data = make_instances(TODAY)
    pacs.upload(data.frontal)
    night(url)
    client = Pacs(PacsConnection(pacs.dicomweb, USER, PASSWORD))
    with session_scope(url) as session:
        objects = pacs_store.object_rows(session)
        instances = {r["id"]: r for r in pacs_store.instance_rows(session)}
        from sqlalchemy import select

        from db.models import ModelVersion, Prediction

        version = session.scalars(select(ModelVersion)).one()
        predictions = {(p.study_id, p.finding): (p.probability, p.decision) for p in session.scalars(select(Prediction))}
    assert len(objects) == len(data.frontal)
    sources = {ds.SOPInstanceUID: ds for ds in data.frontal}
    for obj in objects:
        source_row = instances[obj["pacs_instance_id"]]
        source = sources[source_row["sop_instance_uid"]]
        sr = client.retrieve_instance(obj["study_instance_uid"], obj["series_instance_uid"], obj["sop_instance_uid"])
        assert (sr.Modality, sr.SOPClassUID) == ("SR", "1.2.840.10008.5.1.4.1.1.88.33")  # Comprehensive SR
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
        assert (sr.PatientID, sr.AccessionNumber) == (source.PatientID, source.AccessionNumber)
        fields = read_report(sr)
        assert fields["Observer Type"] == "Device"
        assert fields["Device Observer Model Name"] == version.name
        assert fields["Device Observer Serial Number"] == version.sha256
        assert fields["Algorithm Version"] == f"sha256:{version.sha256}"
        assert fields["Comment"] == NOT_A_DIAGNOSIS
        assert fields["Source image"] == (source.SOPClassUID, source.SOPInstanceUID)
        assert len(fields["findings"]) == len(FINDINGS)
        effusion = fields["findings"]["Pleural effusion"]
        assert effusion["code"] == ("60046008", "SCT")
        assert fields["findings"]["Infiltrate"]["code"] == ("112121", "DCM")
        assert fields["findings"]["Hernia"]["code"] == ("CXR14", "99CXR")
        for finding, meaning in (("Effusion", "Pleural effusion"), ("Hernia", "Hernia"), ("Edema", "Pulmonary edema")):
            probability, decision = predictions[(source_row["study_id"], finding)]
            got = fields["findings"][meaning]
            assert got["probability"] == pytest.approx(probability, abs=1e-6)
            assert got["threshold"] == 0.5
            assert got["decision"] == ("Present" if decision else "Absent")
            assert decision == (probability >= 0.5)
        path = tmp_path / f"{obj['id']}.dcm"
        sr.save_as(path, enforce_file_format=True)
        errors = dciodvfy_errors(path)
        assert errors == [], errors


def dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_a_pacs_down_during_the_pull_and_during_the_write_back_loses_nothing(url, monkeypatch, tmp_path):
    server = OrthancServer(free_port(), tmp_path / "own-orthanc")
    server.folder.mkdir()
    server.start()
    try:
        point_at(monkeypatch, server, tmp_path)
        data = make_instances(TODAY)
        server.upload(data.frontal)
        server.stop()

        # down during the pull: recorded, the cursor stays, scoring still runs
        pulled, run_id, pushed = night(url)
        assert pulled.registered == 0 and "did not answer" in pulled.error and pushed.to_send == 0
        with session_scope(url) as session:
            from sqlalchemy import select

            from db.models import PacsCursor

            cursor = session.scalars(select(PacsCursor)).one()
            assert cursor.searched_from is None and "did not answer" in cursor.last_error
        server.start()
        pulled = pull_from_pacs.fn(database_url=url)
        assert (pulled.registered, pulled.error) == (5, None)
        run_scoring(url, batch_size=8, device="cpu")

        # down during the write-back: recorded, pending, sent next night, once
        server.stop()
        pushed = push_to_pacs.fn(database_url=url, backoff_s=0.0)
        assert pushed.sent == 0 and "did not answer" in pushed.error
        with session_scope(url) as session:
            objects = pacs_store.object_rows(session)
        assert [(o["status"], o["attempts"]) for o in objects] == [("pending", 0)] and "did not answer" in objects[0][
            "last_error"
        ]
        server.start()
        pushed = push_to_pacs.fn(database_url=url, backoff_s=0.0)
        assert (pushed.to_send, pushed.sent, pushed.error) == (5, 5, None)
        for ds in data.frontal:
            assert len(sr_instances(server, ds.StudyInstanceUID)) == 1
        with session_scope(url) as session:
            objects = pacs_store.object_rows(session)
            assert len(objects) == 5 and {o["status"] for o in objects} == {"sent"}
            assert push_to_pacs.fn(database_url=url).to_send == 0
            text = repr(pacs_store.object_rows(session)) + repr(pacs_store.instance_rows(session))
            text += repr(session.scalars(select(PacsCursor)).all()[0].__dict__)
        assert PASSWORD not in text  # credentials never reach the database
    finally:
        server.stop()


def test_sending_the_same_report_again_is_a_no_op(pacs, url):
    data = make_instances(TODAY)
    pacs.upload(data.frontal[:1])
    night(url)
    with session_scope(url) as session:
        obj = pacs_store.object_rows(session)[0]
        pacs_store.reset_object(session, obj["sop_instance_uid"])  # as if the first send was never recorded
        from sqlalchemy import update

        from db.models import PacsObject

        session.execute(update(PacsObject).values(status="pending"))
    pushed = push_to_pacs.fn(database_url=url)
    assert pushed.sent == 1
    series = sr_instances(pacs, data.frontal[0].StudyInstanceUID)
    assert len(series) == 1
    uids = Pacs(PacsConnection(pacs.dicomweb, USER, PASSWORD)).instances_in_series(
        data.frontal[0].StudyInstanceUID, series[0]["0020000E"]["Value"][0]
    )
    assert uids == [obj["sop_instance_uid"]]


def test_wrong_password_is_one_line_and_exit_2(pacs, tmp_path):
    """Through the real ``cxr`` script: one line on stderr, exit status 2, the password nowhere."""
    from conftest import REPO_ROOT, VENV_BIN

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "PREFECT_API_URL"))}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "CXR_DICOMWEB_URL": pacs.dicomweb,
            "CXR_DICOMWEB_USER": USER,
            "CXR_DICOMWEB_PASSWORD": "not-the-password",
            "CXR_HOME": str(tmp_path / "home"),
        }
    )
    result = subprocess.run([str(VENV_BIN / "cxr"), "pacs", "pull"], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refused the credentials (HTTP 401)" in lines[0], result.stderr
    assert "not-the-password" not in result.stdout + result.stderr


def test_heatmaps_go_in_the_report_series_and_pass_dciodvfy(pacs, url, monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_DICOMWEB_HEATMAP", "true")
    data = make_instances(TODAY)
    pacs.upload(data.frontal[:2])
    pulled, _, pushed = night(url)
    assert (pulled.registered, pushed.to_send, pushed.sent, pushed.error) == (2, 4, 4, None)
    with session_scope(url) as session:
        objects = pacs_store.object_rows(session)
    assert sorted(o["kind"] for o in objects) == ["heatmap", "heatmap", "sr", "sr"]
    client = Pacs(PacsConnection(pacs.dicomweb, USER, PASSWORD))
    for obj in (o for o in objects if o["kind"] == "heatmap"):
        report = next(o for o in objects if o["kind"] == "sr" and o["pacs_instance_id"] == obj["pacs_instance_id"])
        assert obj["series_instance_uid"] == report["series_instance_uid"]  # one report series per study
        image = client.retrieve_instance(obj["study_instance_uid"], obj["series_instance_uid"], obj["sop_instance_uid"])
        assert (image.SOPClassUID, image.PhotometricInterpretation, image.SamplesPerPixel) == (
            "1.2.840.10008.5.1.4.1.1.7",
            "RGB",
            3,
        )
        assert "not a diagnosis" in image.ImageComments and image.pixel_array.shape == (32, 32, 3)
        path = tmp_path / f"sc{obj['id']}.dcm"
        image.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
    assert push_to_pacs.fn(database_url=url).to_send == 0  # a second night sends nothing again
    for ds in data.frontal[:2]:
        assert len(sr_instances(pacs, ds.StudyInstanceUID)) == 1


def test_an_instance_whose_retrieval_failed_is_fetched_by_the_next_pull(pacs, url):
    """Seen in the study's metadata, gone when retrieved (deleted in between): recorded ``retry``
    with the PACS's answer; once it is back, the next pull fetches it whatever its search window."""
    import httpx

    from cxrmodel.pacs.pull import candidates
    from tasks.pacs import _pull_one, pacs_connection

    ds = make_instances(TODAY).frontal[0]
    pacs.upload([ds])
    client = Pacs(pacs_connection())
    (candidate,) = candidates(
        client.study_metadata(ds.StudyInstanceUID), ("CR", "DX"), TEST_MAX_PIXELS, client.connection.display_url
    )
    for study in httpx.get(f"{pacs.rest}/studies", auth=(USER, PASSWORD)).json():
        httpx.delete(f"{pacs.rest}/studies/{study}", auth=(USER, PASSWORD)).raise_for_status()
    status, reason = _pull_one(client, candidate, url, Path(os.environ["CXR_HOME"]) / "incoming-store", TEST_MAX_PIXELS)
    assert status == "retry" and "HTTP 404" in reason
    with session_scope(url) as session:
        pacs_store.record_search(session, client.connection.display_url, datetime.now(UTC) + timedelta(days=30))
        assert [r.sop_instance_uid for r in pacs_store.instances_to_retry(session, client.connection.display_url)] == [
            ds.SOPInstanceUID
        ]
    pacs.upload([ds])
    pulled = pull_from_pacs.fn(database_url=url)  # its window starts after the study date: found through the retry list
    assert (pulled.registered, pulled.retry, pulled.error) == (1, 0, None)
    with session_scope(url) as session:
        (row,) = pacs_store.instance_rows(session)
    assert (row["status"], row["attempts"], row["study_id"] is not None) == ("registered", 1, True)
