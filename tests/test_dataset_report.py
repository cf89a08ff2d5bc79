"""The dataset report: figures, a self-contained escaped render, and the task against SQLite."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from report_html import decode_png, parse

from cxrmodel.findings import FINDINGS, NO_FINDING
from reports import DISCLAIMER, QUARANTINE_DETAIL_LIMIT, DatasetContext, figures, render_dataset_html, render_dataset_report

SCRIPT_REASON = "bad age <script>alert('x')</script>"


# --------------------------------------------------------------------------- context


SPLIT_SIZES = {"train": 180, "val": 50, "test": 70}


def make_context(n_quarantined_extra: int = 0) -> dict:
    rng = np.random.default_rng(2024)
    prevalence = np.linspace(0.02, 0.3, len(FINDINGS))
    splits = np.repeat(list(SPLIT_SIZES), list(SPLIT_SIZES.values()))
    labels = (rng.random((len(splits), len(FINDINGS))) < prevalence).astype(np.uint8)
    ages = rng.normal(55, 15, len(splits)).clip(1, 95)
    ages[::37] = np.nan  # a few unknown ages
    sex = rng.choice(["F", "M"], len(splits))
    view = rng.choice(["PA", "AP"], len(splits), p=[0.6, 0.4])

    def counts(mask):
        y = labels[mask]
        out = {f: int(n) for f, n in zip(FINDINGS, y.sum(axis=0), strict=True)}
        out[NO_FINDING] = int((y.sum(axis=1) == 0).sum())
        return out

    def shares(values, mask):
        v, n = np.unique(values[mask], return_counts=True)
        return {str(k): float(c / n.sum()) for k, c in zip(v, n, strict=True)}

    masks = {s: splits == s for s in SPLIT_SIZES}
    before = counts(masks["train"])
    after = {k: v * 2 + 1 for k, v in before.items()}
    after[NO_FINDING] = 7
    quarantined = [
        {"row_key": "00000001_000.png", "row_number": 2, "reason": "age 150 outside 0-120"},
        {"row_key": "00000002_000.png", "row_number": 3, "reason": "age 150 outside 0-120"},
        {"row_key": "00000003_000.png", "row_number": 4, "reason": "missing image file"},
        {"row_key": "<b>evil</b>.png", "row_number": 5, "reason": SCRIPT_REASON},
        {"row_key": "00000005_000.png", "row_number": None, "reason": "age 150 outside 0-120"},
    ]
    quarantined += [
        {"row_key": f"extra_{i:05d}.png", "row_number": 100 + i, "reason": "missing image file"}
        for i in range(n_quarantined_extra)
    ]
    return {
        "title": "Dataset report — refresh run 3",
        "generated_at": "2025-01-02 03:04:05 UTC",
        "source": "nih-local",
        "refresh": {"id": 3, "n_rows": 305, "n_added": 290, "n_updated": 7, "n_unchanged": 3, "n_quarantined": 5},
        "split_counts": {
            "test": {"n_studies": 70, "n_patients": 41},
            "train": {"n_studies": 180, "n_patients": 97},
            "val": {"n_studies": 50, "n_patients": 23},
        },
        "label_counts_by_split": {s: counts(m) for s, m in masks.items()},
        "balancing": {"preset": "seed004", "counts_before": before, "counts_after": after},
        "labels": labels,
        "ages_by_split": {s: ages[m] for s, m in masks.items()},
        "sex_by_split": {s: shares(sex, m) for s, m in masks.items()},
        "view_by_split": {s: shares(view, m) for s, m in masks.items()},
        "quarantined": quarantined,
    }


@pytest.fixture(scope="module")
def report() -> tuple[dict, str]:
    ctx = make_context()
    return ctx, render_dataset_html(DatasetContext(**ctx))


# --------------------------------------------------------------------------- rendering


def test_images_are_embedded_pngs_and_nothing_external(report):
    _, html = report
    p = parse(html)
    assert len(p.imgs) == 6  # balancing before/after, co-occurrence, ages, sex, view
    for img in p.imgs:
        decode_png(img["src"])
        assert img.get("alt")
    for tag, attr, value in p.links:
        if tag == "a" and attr == "href":
            assert value.startswith("#"), value
        else:
            assert value.startswith("data:"), (tag, attr, value[:60])
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "@import" not in html and "url(http" not in html
    assert {"link", "iframe", "object", "embed"}.isdisjoint(p.start_tags)


def test_disclaimer_and_sections(report):
    _, html = report
    p = parse(html)
    assert DISCLAIMER in p.text
    for section in ("summary", "splits", "labels", "balancing", "cooccurrence", "patients", "quarantine"):
        assert section in p.ids


def test_splits_table_counts_in_split_order(report):
    _, html = report
    rows = parse(html).tables["splits-table"]
    assert [r[0] for r in rows] == ["train", "val", "test"]
    assert [(r[1], r[3]) for r in rows] == [("180", "97"), ("50", "23"), ("70", "41")]
    assert rows[0][2] == "60.0%"  # 180 / 300


def test_label_table_has_findings_as_rows_and_split_percentages(report):
    ctx, html = report
    rows = parse(html).tables["labels-table"]
    assert [r[0] for r in rows] == [*FINDINGS, NO_FINDING]
    for r in rows:
        for k, split in enumerate(["train", "val", "test"]):
            n = ctx["label_counts_by_split"][split][r[0]]
            assert r[1 + 2 * k] == f"{n:,}"
            assert r[2 + 2 * k] == f"{100 * n / SPLIT_SIZES[split]:.1f}%"


def test_balancing_table_shows_before_after_and_ratio(report):
    ctx, html = report
    rows = {r[0]: r[1:] for r in parse(html).tables["balancing-table"]}
    assert list(rows) == [*FINDINGS, NO_FINDING]
    before, after = ctx["balancing"]["counts_before"], ctx["balancing"]["counts_after"]
    for name, (b, a, ratio) in rows.items():
        assert (b, a) == (f"{before[name]:,}", f"{after[name]:,}")
        assert ratio == (f"{after[name] / before[name]:.2f}" if before[name] else "—")
    assert "seed004" in parse(html).text


def test_quarantine_reason_summary_and_escaping(report):
    _, html = report
    p = parse(html)
    reasons = {r[0]: (r[1], r[2]) for r in p.tables["quarantine-reasons-table"]}
    assert reasons == {
        "age 150 outside 0-120": ("3", "60.0%"),
        "missing image file": ("1", "20.0%"),
        SCRIPT_REASON: ("1", "20.0%"),
    }
    assert [r[0] for r in p.tables["quarantine-reasons-table"]][0] == "age 150 outside 0-120"  # most common first
    assert len(p.tables["quarantine-table"]) == 5
    # data is escaped, never markup
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html
    assert "script" not in p.start_tags and "b" not in p.start_tags
    assert "quarantine-omitted" not in p.ids


def test_quarantine_detail_list_is_capped(tmp_path):
    ctx = make_context(n_quarantined_extra=QUARANTINE_DETAIL_LIMIT + 20)
    ctx["labels"] = None  # keep this one quick
    out = render_dataset_report(DatasetContext(**ctx), tmp_path / "sub" / "dataset.html")
    html = out.read_text(encoding="utf-8")
    p = parse(html)
    total = 5 + QUARANTINE_DETAIL_LIMIT + 20
    assert len(p.tables["quarantine-table"]) == QUARANTINE_DETAIL_LIMIT
    assert "quarantine-omitted" in p.ids
    assert f"{total - QUARANTINE_DETAIL_LIMIT} more rows were omitted" in p.text
    reasons = {r[0]: r[1] for r in p.tables["quarantine-reasons-table"]}
    assert reasons["missing image file"] == f"{1 + QUARANTINE_DETAIL_LIMIT + 20:,}"
    assert "No labels to cross-tabulate" in p.text
    assert not list(tmp_path.joinpath("sub").glob(".*.tmp"))


def test_missing_context_key_is_reported():
    ctx = make_context()
    del ctx["quarantined"]
    with pytest.raises(ValueError, match="quarantined"):  # when the context is built
        DatasetContext(**ctx)


# --------------------------------------------------------------------------- figures


def test_figure_helpers_return_png_data_uris():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, len(FINDINGS))) < 0.2).astype(int)
    labels[:, FINDINGS.index("Hernia")] = 0  # a class with zero positives
    for uri in (
        figures.cooccurrence_figure(labels),
        figures.cooccurrence_figure(np.zeros((0, len(FINDINGS)))),  # no studies at all
        figures.age_histogram_figure({"train": rng.normal(50, 10, 40), "val": [30.0, None, np.nan], "test": []}),
        figures.age_histogram_figure({}),
        figures.proportions_figure(
            {"train": {"F": 0.43, "M": 0.57}, "val": {"F": 0.5, "M": 0.4, "unknown": 0.1}}, "Sex by split"
        ),
        figures.proportions_figure({}, "empty"),
    ):
        decode_png(uri)


def test_cooccurrence_figure_rejects_wrong_shape():
    with pytest.raises(ValueError):
        figures.cooccurrence_figure(np.zeros((5, 3)))
    with pytest.raises(ValueError):
        figures.cooccurrence_figure(np.zeros(14))


# --------------------------------------------------------------------------- task against SQLite


def _study(key: str, patient: str, split: str, **over) -> dict:
    rec = {
        "study_key": key,
        "patient_id": patient,
        "follow_up": 0,
        "age": 50.0,
        "sex": "M",
        "view": "PA",
        "source": "synthetic",
        "split": split,
        "image_path": f"/data/{key}",
        "content_hash": "1:1",
        "labelled": True,
    }
    rec.update(over)
    return rec


def test_render_dataset_task_against_sqlite(tmp_path):
    from db.engine import session_scope, upgrade_database
    from db.models import RefreshRun
    from db.refresh import record_quarantine, start_refresh
    from db.studies import sync_studies
    from tasks.dataset_report import dataset_context, render_dataset

    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    upgrade_database(url)
    plan = {"train": (7, 4), "val": (3, 2), "test": (4, 3)}  # split -> (studies, patients)
    records, labels, k = [], {}, 0
    for split, (n, n_patients) in plan.items():
        for i in range(n):
            key = f"{k:08d}_000.png"
            records.append(
                _study(key, f"{split}-{i % n_patients}", split, age=20.0 + 5 * k, sex="MF"[k % 2], view=("PA", "AP")[k % 3 == 0])
            )
            labels[key] = {f: int(f == "Effusion" and k % 2 == 0) for f in FINDINGS}
            k += 1
    # an unlabelled incoming study and a quarantined (inactive) one must not be counted
    records.append(_study("incoming.png", None, "incoming", labelled=False))
    with session_scope(url) as s:
        sync_studies(s, records, labels)
        run_id = start_refresh(s, "synthetic", str(tmp_path), None).id
        record_quarantine(
            s,
            run_id,
            "synthetic",
            [
                {"row_key": "bad1.png", "row_number": 20, "reason": "age 150 outside 0-120", "raw": "x"},
                {"row_key": "bad2.png", "row_number": 21, "reason": "age 150 outside 0-120", "raw": "y"},
                {"row_key": "<script>x</script>.png", "row_number": None, "reason": "missing image file", "raw": None},
            ],
        )
        run = s.get(RefreshRun, run_id)
        run.n_rows, run.n_added, run.n_quarantined, run.status = 17, 14, 3, "completed"

    ctx = dataset_context(url, "none", run_id).model_dump()
    assert ctx["split_counts"] == {
        "train": {"n_studies": 7, "n_patients": 4},
        "val": {"n_studies": 3, "n_patients": 2},
        "test": {"n_studies": 4, "n_patients": 3},
    }
    assert ctx["n_patients"] == 9
    assert ctx["labels"].shape == (14, len(FINDINGS))
    train_effusion = sum(1 for j in range(7) if j % 2 == 0)
    assert ctx["label_counts_by_split"]["train"]["Effusion"] == train_effusion
    assert ctx["label_counts_by_split"]["train"][NO_FINDING] == 7 - train_effusion
    assert ctx["balancing"]["counts_before"] == ctx["balancing"]["counts_after"]  # preset 'none'
    assert ctx["balancing"]["n_rows_before"] == ctx["balancing"]["n_rows_after"] == 7
    assert len(ctx["quarantined"]) == 3
    assert ctx["refresh"]["id"] == run_id and ctx["refresh"]["n_rows"] == 17
    assert set(ctx["sex_by_split"]["train"]) == {"F", "M"}
    assert abs(sum(ctx["view_by_split"]["test"].values()) - 1.0) < 1e-9
    assert [q["reason"] for q in ctx["quarantined"]][0] == "missing image file"  # newest first

    path = Path(render_dataset.fn(url, tmp_path, balancing="none"))
    assert path == tmp_path / "reports" / "dataset_latest.html"
    html = path.read_text(encoding="utf-8")
    p = parse(html)
    assert [(r[0], r[1], r[3]) for r in p.tables["splits-table"]] == [("train", "7", "4"), ("val", "3", "2"), ("test", "4", "3")]
    assert {r[0]: r[1] for r in p.tables["quarantine-reasons-table"]} == {"age 150 outside 0-120": "2", "missing image file": "1"}
    assert "<script" not in html.lower()
    assert DISCLAIMER in p.text
    for img in p.imgs:
        decode_png(img["src"])

    # a given refresh run names the file and shows the run; the default preset works on tiny data
    path = Path(render_dataset.fn(url, tmp_path, refresh_run_id=run_id))
    assert path.name == f"dataset_{run_id}.html"
    assert "refresh-run" in parse(path.read_text(encoding="utf-8")).ids

    with pytest.raises(ValueError, match="unknown balancing preset"):
        render_dataset.fn(url, tmp_path, balancing="no-such-preset")
    with pytest.raises(ValueError, match="no refresh run"):
        render_dataset.fn(url, tmp_path, refresh_run_id=999)
