"""The nightly flow with ``CXR_DICOMWEB_URL`` set, against a real Orthanc: the first night
leaves one SR series in each CR/DX frontal study, a second night adds no SR and no prediction,
and the night's Markdown says what was pulled, skipped and sent."""

from __future__ import annotations

from datetime import date

import pytest
from conftest import free_port
from pacs_fixtures import OrthancServer, make_instances, orthanc_missing
from sqlalchemy import func, select
from test_pacs import point_at, sr_instances
from test_scoring_faults import prepare_scoring_database

from db.engine import get_engine, session_scope
from db.models import Prediction
from tasks.nightly import pacs_markdown

pytestmark = [
    pytest.mark.skipif(orthanc_missing() is not None, reason=orthanc_missing() or ""),
    pytest.mark.usefixtures("one_torch_thread", "prefect_server"),
]


def test_two_nights_leave_one_sr_per_frontal_study(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    prepare_scoring_database(url, tmp_path / "state", n_studies=0)
    server = OrthancServer(free_port(), tmp_path / "orthanc")
    server.folder.mkdir()
    server.start()
    try:
        point_at(monkeypatch, server, tmp_path)
        monkeypatch.delenv("CXR_SOURCE_DIR", raising=False)
        monkeypatch.delenv("CXR_INCOMING_DIR", raising=False)
        data = make_instances(date.today())
        server.upload(data.all)
        from flows.nightly import nightly_flow

        first = nightly_flow(database_url=url, batch_size=8)
        assert first.pacs["pull"]["registered"] == 5 and first.pacs["push"]["sent"] == 5 and first.pacs["errors"] == []
        with session_scope(url) as session:
            n_predictions = session.scalar(select(func.count()).select_from(Prediction))
        assert n_predictions == 5 * 14
        for ds in data.frontal:
            assert len(sr_instances(server, ds.StudyInstanceUID)) == 1
        markdown = "\n".join(pacs_markdown(first.pacs))
        assert "| 8 | 5 | 5 | 0 | 0 | 5 | 0 | 0 |" in markdown
        assert f"{data.lateral_only.SOPInstanceUID}: lateral-only study" in markdown

        second = nightly_flow(database_url=url, batch_size=8)
        assert second.pacs["pull"]["registered"] == 0 and second.pacs["push"]["to_send"] == 0
        with session_scope(url) as session:
            assert session.scalar(select(func.count()).select_from(Prediction)) == n_predictions
        for ds in data.frontal:
            assert len(sr_instances(server, ds.StudyInstanceUID)) == 1
    finally:
        server.stop()
        get_engine(url).dispose()


def test_credentials_from_a_prefect_secret_block(monkeypatch):
    """CXR_DICOMWEB_SECRET names a Secret block holding the user and password; the connection's
    repr never shows the password."""
    from prefect.blocks.system import Secret

    from deployments.settings import Settings
    from tasks.pacs import pacs_connection

    Secret(value={"user": "night-reader", "password": "from-the-block"}).save("cxr-test-pacs", overwrite=True)
    monkeypatch.setenv("CXR_DICOMWEB_URL", "https://pacs.example.org/dicom-web")
    monkeypatch.setenv("CXR_DICOMWEB_SECRET", "cxr-test-pacs")
    monkeypatch.setenv("CXR_DICOMWEB_VERIFY", "/etc/ssl/certs/ca-certificates.crt")
    connection = pacs_connection(Settings())
    assert (connection.user, connection.password) == ("night-reader", "from-the-block")
    assert connection.verify == "/etc/ssl/certs/ca-certificates.crt"
    assert "from-the-block" not in repr(connection) and "from-the-block" not in repr(Settings())
    monkeypatch.setenv("CXR_DICOMWEB_VERIFY", "false")
    monkeypatch.setenv("CXR_DICOMWEB_SECRET", "no-such-block")
    with pytest.raises(ValueError, match="no Prefect Secret block named 'no-such-block'"):
        pacs_connection(Settings())
