"""Issue 22 item 1: one over-long number in the metadata CSV quarantines its row, never the
refresh. Before the fix, a 20-digit ``Follow-up #`` built an int64 Series before any range
check and the whole refresh failed with ``OverflowError``; the other 400 rows were lost."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from adversarial_helpers import DATA, labelled_folder, nih_row, open_refresh, studies_and_reasons
from sqlalchemy import select
from test_cli_errors import cxr

from cxrmodel.data.metadata import read_nih_metadata
from db.engine import get_engine, session_scope
from db.models import RefreshRun
from tasks.data import ingest_labelled

N_GOOD = 400
TWENTY_NINES = "9" * 20
INT_COLUMN_MAX = 2**63 - 1  # what an int64 frame column holds


def _overflow_rows() -> dict[str, str]:
    """Study key -> a row whose number overflows int64 (or Python's own int parsing) in one
    numeric column each."""
    return {
        "00000401_000.png": f"00000401_000.png,Effusion,{TWENTY_NINES},401,40,M,PA,1024,1024,0.1,0.1",
        "00000402_000.png": f"00000402_000.png,Effusion,0,402,40,M,PA,{TWENTY_NINES},1024,0.1,0.1",
        "00000403_000.png": f"00000403_000.png,Effusion,0,403,40,M,PA,1024,{'7' * 5000},0.1,0.1",
        "00000404_000.png": f"00000404_000.png,Effusion,{2**63},404,40,M,PA,1024,1024,0.1,0.1",
    }


@pytest.fixture
def url(migrated_url) -> Iterator[str]:
    yield migrated_url
    get_engine(migrated_url).dispose()


def test_every_numeric_column_is_range_checked_per_row_before_any_cast(tmp_path):
    rows = [nih_row(i) for i in range(1, N_GOOD + 1)] + list(_overflow_rows().values())
    rows.append(f"00000405_000.png,Effusion,{2**63 - 1},405,40,M,PA,1024,1024,0.1,0.1")  # the largest int64 fits
    folder = labelled_folder(tmp_path, rows, n_images=0)
    result = read_nih_metadata(folder / "Data_Entry_2017_v2020.csv")
    assert len(result.studies) == N_GOOD + 1
    assert int(result.studies["follow_up"].max()) == INT_COLUMN_MAX
    reasons = {q.row_key: q.reason for q in result.quarantined}
    assert set(reasons) == set(_overflow_rows())
    assert reasons["00000401_000.png"] == f"number out of range in Follow-up #: {TWENTY_NINES} is over {INT_COLUMN_MAX}"
    assert reasons["00000402_000.png"].startswith("number out of range in OriginalImage.Width")
    assert reasons["00000403_000.png"].endswith(f"... (5000 digits) is over {INT_COLUMN_MAX}")
    assert len(reasons["00000403_000.png"]) < 200  # the reason quotes the cell, not 5,000 digits
    assert reasons["00000404_000.png"].startswith("number out of range in Follow-up #: 9223372036854775808")


def test_a_long_patient_id_is_text_for_the_database_to_judge(tmp_path):
    """Patient ID is kept as text: 5,000 digits are not an ``int()`` conversion error (Python
    refuses over 4,300 digits) but a value the validation layer refuses as too long."""
    folder = labelled_folder(tmp_path, [nih_row(1, patient="0042"), nih_row(2, patient="5" * 5000)], n_images=0)
    result = read_nih_metadata(folder / "Data_Entry_2017_v2020.csv")
    assert list(result.studies["patient_id"]) == ["42", "5" * 5000]


def test_an_overflowing_row_is_quarantined_and_the_refresh_keeps_the_others(url, tmp_path):
    good = [nih_row(i) for i in range(1, N_GOOD + 1)]
    folder = labelled_folder(tmp_path, [*good, *_overflow_rows().values()], n_images=N_GOOD)
    run_id = open_refresh(url)
    totals = ingest_labelled.fn(url, folder, "synthetic", DATA, run_id)
    studies, reasons = studies_and_reasons(url, run_id)
    assert totals.added == N_GOOD and len(studies) == N_GOOD
    assert totals.quarantined == len(_overflow_rows())
    assert {key: rs[0].split(":")[0] for key, rs in reasons.items()} == {
        "00000401_000.png": "number out of range in Follow-up #",
        "00000402_000.png": "number out of range in OriginalImage.Width",
        "00000403_000.png": "number out of range in OriginalImage.Height",
        "00000404_000.png": "number out of range in Follow-up #",
    }


@pytest.mark.slow
def test_cxr_refresh_with_a_twenty_digit_follow_up_exits_0_with_400_studies(prefect_server, tmp_path):
    """The failure as it was seen: the real ``cxr refresh`` process (exit 1, 0 of 400 studies
    before the fix)."""
    from prefect.settings import PREFECT_API_URL

    good = [nih_row(i) for i in range(1, N_GOOD + 1)]
    bad = f"00000401_000.png,Effusion,{TWENTY_NINES},401,40,M,PA,1024,1024,0.1,0.1"
    folder = labelled_folder(tmp_path, [*good, bad], n_images=N_GOOD)
    home = tmp_path / "home"
    result = cxr(home, "refresh", str(folder), "--source", "synthetic", extra_env={"PREFECT_API_URL": PREFECT_API_URL.value()})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "OverflowError" not in result.stdout + result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert (summary["added"], summary["quarantined"]) == (N_GOOD, 1), summary
    with session_scope(f"sqlite:///{home.resolve() / 'cxr.db'}") as session:
        (run,) = session.scalars(select(RefreshRun)).all()
        assert run.status == "completed" and run.n_added == N_GOOD and run.n_quarantined == 1


def test_a_refresh_removes_the_temporaries_a_killed_one_left_in_the_image_cache(tmp_path):
    """Issue 22 item 7: a killed refresh left ``.<entry>.<random>.tmp`` in the cache and no rerun
    removed it. The cache build (the refresh's build-image-cache step) now removes temporaries
    older than a live writer would ever keep one, and leaves a fresh one (a concurrent writer's)."""
    import os
    import time

    from test_scoring_faults import write_png

    from cxrmodel.data.cache import STALE_TEMPORARY_S, ImageCache

    image = write_png(tmp_path / "00000001_000.png", seed=1)
    cache = ImageCache(tmp_path / "cache", 32)
    assert cache.build([("00000001_000.png", image)]) == {}
    shard = cache.paths("00000001_000.png")[0].parent
    orphan = shard / ".00000001_000.npy.k1ll3d.tmp"
    live = shard / ".00000002_000.npy.wr1t1n.tmp"
    for path in (orphan, live):
        path.write_bytes(b"\x93NUMPY half-written")
    old = time.time() - STALE_TEMPORARY_S - 60
    os.utime(orphan, (old, old))
    assert cache.build([("00000001_000.png", image)]) == {}  # the rerun
    assert not orphan.exists() and live.exists()
    assert cache.get("00000001_000.png", image).shape == (32, 32)
