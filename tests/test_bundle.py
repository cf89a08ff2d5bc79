"""The export bundle (reports.bundle): one zip per evaluation with the report, per-class metrics
as CSV, thresholds.json, subgroup metrics and a model card."""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile

import pytest
from report_contexts import full_context, make_context

from cxrmodel.evaluation.thresholds import load_thresholds_json
from cxrmodel.findings import FINDINGS
from reports import DISCLAIMER, EvaluationContext, render_evaluation_report
from reports.bundle import (
    BUNDLE_MEMBERS,
    PER_CLASS_CSV_COLUMNS,
    SUBGROUP_CSV_COLUMNS,
    build_export_bundle,
    model_card_markdown,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    ctx = full_context(n_examples=1)
    ctx["evaluation_id"] = 42
    context = EvaluationContext(**ctx)
    folder = tmp_path_factory.mktemp("bundle")
    report = render_evaluation_report(context, folder / "evaluation_42.html")
    out = build_export_bundle(context, report, folder / "out" / "evaluation_42_bundle.zip")
    return ctx, report, out


def _read(out, name: str) -> str:
    with zipfile.ZipFile(out) as zf:
        return zf.read(name).decode("utf-8")


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _same(cell: str, value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell == ""
    return float(cell) == float(value)  # written at repr precision: exact


def test_zip_members_and_atomic_write(bundle):
    _, report, out = bundle
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert names == [*BUNDLE_MEMBERS, "subgroup_metrics.csv"]
        assert zf.read("evaluation_report.html") == report.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == [out.name], "temporary files left behind"


def test_per_class_csv_equals_the_input_rows(bundle):
    ctx, _, out = bundle
    rows = _csv_rows(_read(out, "per_class_metrics.csv"))
    assert tuple(rows[0].keys()) == PER_CLASS_CSV_COLUMNS
    assert [r["finding"] for r in rows] == list(FINDINGS)  # back in FINDINGS order
    by_name = {r["finding"]: r for r in ctx["per_class"]}
    for row in rows:
        src = by_name[row["finding"]]
        for column in PER_CLASS_CSV_COLUMNS[1:]:
            assert _same(row[column], src.get(column)), (row["finding"], column, row[column], src.get(column))
        assert row["tp"] == str(src["tp"])  # integers stay integers


def test_per_class_csv_of_an_old_evaluation_has_empty_cells():
    ctx = make_context(epochs=False, examples=0)
    from reports.bundle import per_class_csv

    rows = _csv_rows(per_class_csv(ctx["per_class"]))
    assert all(r["auroc_ci_low"] == r["ece"] == r["brier_calibrated"] == "" for r in rows)
    assert all(r["auroc"] != "" for r in rows)


def test_thresholds_json_round_trips(bundle, tmp_path):
    ctx, _, out = bundle
    data = json.loads(_read(out, "thresholds.json"))
    assert data["method"] == ctx["thresholds"]["method"]
    assert list(data["thresholds"]) == list(FINDINGS)
    assert data["thresholds"] == ctx["thresholds"]["values"]
    assert data["notes"] == {"Hernia": "few positives on validation; fell back to 0.5"}  # empty notes dropped
    path = tmp_path / "thresholds.json"
    path.write_text(_read(out, "thresholds.json"))
    assert list(load_thresholds_json(path)) == [ctx["thresholds"]["values"][f] for f in FINDINGS]


def test_subgroup_csv_equals_the_input_rows(bundle):
    ctx, _, out = bundle
    rows = _csv_rows(_read(out, "subgroup_metrics.csv"))
    assert tuple(rows[0].keys()) == SUBGROUP_CSV_COLUMNS
    source = {(r["attribute"], r["group_name"]): r for r in ctx["subgroups"]}
    assert {(r["attribute"], r["group"]) for r in rows} == set(source)
    assert [r["attribute"] for r in rows][:2] == ["sex", "sex"]
    for row in rows:
        src = source[(row["attribute"], row["group"])]
        for column in SUBGROUP_CSV_COLUMNS[2:]:
            assert _same(row[column], src.get(column)), (row, column)


def test_model_card_has_disclaimer_intervals_gaps_and_failure_modes(bundle):
    ctx, _, out = bundle
    card = _read(out, "model_card.md")
    assert card.startswith("# Model card: densenet121-cxr14-v3")
    assert DISCLAIMER in card and "not a medical device" in card.lower()
    assert "## Intended use" in card and "## Out of scope" in card
    assert "## Training data and split" in card and "600 / 200 / 200" in card
    agg = ctx["aggregates"]
    assert (
        f"| Macro AUROC | {agg['macro_auroc']:.3f} | {agg['macro_auroc_ci_low']:.3f}–{agg['macro_auroc_ci_high']:.3f} |" in card
    )
    assert "over 1,000 resamples" in card
    hernia = next(r for r in ctx["per_class"] if r["finding"] == "Hernia")
    assert (
        f"| Hernia | {hernia['n_positive']} | {hernia['auroc']:.3f} | {hernia['auroc_ci_low']:.3f}–{hernia['auroc_ci_high']:.3f} |"
        in card
    )
    assert "| View position | 2 / 2 | PA / AP | 0.120 |" in card and "gap above 0.05" in card
    assert "Performance differs by view position: macro-AUROC 0.120 lower for AP than for PA." in card
    assert "temperature scaling" in card and "→" in card
    assert "synthetic phantoms" in card
    assert "## Known failure modes" in card and "Shortcuts" in card
    assert "evaluation 42" in card


def test_model_card_without_new_fields_and_escaping():
    ctx = make_context(model_name="<b>x</b> | y", epochs=False, examples=0)
    card = model_card_markdown(EvaluationContext(**ctx))
    assert "Confidence intervals are not available" in card
    assert "Calibration metrics are not available" in card
    assert "Subgroup metrics are not available" in card
    assert "<b>" not in card and "&lt;b&gt;x&lt;/b&gt;" in card  # raw HTML would pass through Markdown
    assert "| Name | &lt;b&gt;x&lt;/b&gt; \\| y |" in card  # the pipe cannot break the table


def test_bundle_without_subgroups_has_four_members(tmp_path):
    ctx = make_context(epochs=False, examples=0)
    report = tmp_path / "r.html"
    report.write_text("<!DOCTYPE html><title>r</title>")
    out = build_export_bundle(EvaluationContext(**ctx), report, tmp_path / "b.zip")
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == list(BUNDLE_MEMBERS)


def test_failed_bundle_keeps_the_previous_one(tmp_path):
    out = tmp_path / "b.zip"
    out.write_bytes(b"previous")
    with pytest.raises(FileNotFoundError):
        build_export_bundle(EvaluationContext(**make_context(epochs=False, examples=0)), tmp_path / "missing.html", out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["b.zip"]
