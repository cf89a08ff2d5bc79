"""The evaluation report: complete, self-contained, escaped offline HTML from an EvaluationContext."""

from __future__ import annotations

import numpy as np
import pytest
from report_contexts import (
    COL,
    PER_CLASS_HEADER,
    assert_png_images,
    assert_self_contained,
    full_context,
    make_context,
    png_data_uri,
    subgroup_rows,
)
from report_html import parse

from cxrmodel.findings import FINDINGS
from reports import DISCLAIMER, EvaluationContext, render_evaluation_html, render_evaluation_report


def test_evaluation_report_is_complete_and_self_contained(tmp_path):
    ctx = make_context(examples=1)
    out = tmp_path / "nested" / "dir" / "evaluation.html"
    result = render_evaluation_report(EvaluationContext(**ctx), out)
    assert result == out and out.is_file()
    html = out.read_text(encoding="utf-8")
    parsed = parse(html)

    assert ctx["title"] in parsed.text
    assert parsed.start_tags.count("title") == 1
    assert "densenet121-cxr14-v3" in parsed.text
    assert ctx["model"]["sha256"] in parsed.text
    # confusion + ROC (all) + ROC grid + PR (all) + PR grid + reliability + training curves + 1 example
    assert_png_images(parsed, 8)
    assert_self_contained(html, parsed)

    rows = parsed.tables["per-class-table"]
    assert len(rows) == 14
    assert [r[0] for r in rows] == list(FINDINGS)
    assert all(len(r) == len(PER_CLASS_HEADER) for r in rows)
    by_name = {r["finding"]: r for r in ctx["per_class"]}
    for r in rows:  # threshold column shows the per-class threshold
        assert r[COL["Threshold"]] == f"{by_name[r[0]]['threshold']:.3f}"
        assert r[COL["AUROC"]] == f"{by_name[r[0]]['auroc']:.3f}"

    assert DISCLAIMER in parsed.text
    assert "not a medical device" in parsed.text.lower()
    assert "Limitations" in parsed.text
    assert "synthetic" in parsed.text.lower()
    assert "fell back to 0.5" in parsed.text

    comp = parsed.tables["comparison-table"]
    assert len(comp) == 2
    assert "current" in parsed.row_classes["comparison-table"][0].split()
    assert "current" not in parsed.row_classes["comparison-table"][1].split()
    assert comp[0][0].startswith("densenet121-cxr14-v3")
    assert comp[1][0] == "baseline-logreg"

    leftovers = [p.name for p in out.parent.iterdir() if p.name != out.name]
    assert leftovers == [], "temporary files left behind"


def test_evaluation_without_epochs_or_examples_has_six_figures(tmp_path):
    ctx = make_context(epochs=False, examples=0)
    html = render_evaluation_report(EvaluationContext(**ctx), tmp_path / "e.html").read_text(encoding="utf-8")
    parsed = parse(html)
    assert_png_images(parsed, 6)
    assert 'id="training"' not in html and 'id="examples"' not in html
    assert_self_contained(html, parsed)


def test_label_counts_add_a_figure():
    ctx = make_context(epochs=False, examples=0)
    ctx["label_counts"] = {name: 10 * (i + 1) for i, name in enumerate(FINDINGS)}
    assert_png_images(parse(render_evaluation_html(EvaluationContext(**ctx))), 7)


def test_model_name_is_autoescaped(tmp_path):
    evil = "<script>alert(1)</script>"
    ctx = make_context(model_name=evil, examples=0)
    ctx["thresholds"]["notes"]["Mass"] = '<img src="https://evil.example/x.png">'
    html = render_evaluation_report(EvaluationContext(**ctx), tmp_path / "x.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    parsed = parse(html)
    assert "script" not in parsed.start_tags
    assert evil in parsed.text  # shown to the reader as text
    assert_png_images(parsed, 7)  # the note's <img> is text, not a tag
    assert not any(v.startswith("https://") for _, _, v in parsed.links)


def test_example_images_must_be_data_uris():
    ctx = make_context(epochs=False, examples=1)
    ctx["examples"][0]["image_data_uri"] = "https://example.org/xray.png"
    with pytest.raises(ValueError, match="data:image"):  # when the context is built, before any figure
        EvaluationContext(**ctx)


def test_failed_render_keeps_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    out.write_text("previous", encoding="utf-8")
    ctx = make_context(epochs=False, examples=0)
    del ctx["per_class"]
    with pytest.raises(ValueError, match="per_class"):  # a missing field: the context cannot be built
        EvaluationContext(**ctx)
    context = EvaluationContext(**make_context(epochs=False, examples=0))

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr("reports.evaluation.figures.roc_figure", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        render_evaluation_report(context, out)
    monkeypatch.undo()
    assert out.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    # and a successful render replaces it
    render_evaluation_report(EvaluationContext(**make_context(epochs=False, examples=0)), out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# --------------------------------------------------------------------------- issue 5 sections


@pytest.fixture(scope="module")
def full_report():
    ctx = full_context(n_examples=2)
    html = render_evaluation_html(EvaluationContext(**ctx))
    return ctx, html, parse(html)


def test_full_report_images_and_sections(full_report):
    ctx, html, parsed = full_report
    # confusion, ROC x2, PR x2, reliability, training, map, and 2 examples with an image and a heat map each
    assert_png_images(parsed, 7 + 1 + 2 * 2)
    assert_self_contained(html, parsed)
    for section in (
        "per-class",
        "confusion",
        "roc",
        "pr",
        "calibration",
        "subgroups",
        "training",
        "comparison",
        "examples",
        "embedding-map",
        "limitations",
    ):
        assert section in parsed.ids, section
    for missing in ("no-intervals", "no-calibration", "no-subgroups", "no-embedding-map"):
        assert missing not in parsed.ids
    alts = [img["alt"] for img in parsed.imgs]
    assert sum(a.startswith("Grad-CAM heat map of study") and a.endswith("for Effusion") for a in alts) == 2
    assert "Grad-CAM: Effusion" in parsed.text
    assert "t-SNE" in parsed.text and "150 test studies" in parsed.text
    assert DISCLAIMER in parsed.text


def test_per_class_intervals_and_ece_are_shown(full_report):
    ctx, _, parsed = full_report
    by_name = {r["finding"]: r for r in ctx["per_class"]}
    rows = parsed.tables["per-class-table"]
    assert [r[0] for r in rows] == list(FINDINGS)
    for r in rows:
        src = by_name[r[0]]
        few = " n+ < 10" if src["n_positive"] < 10 else ""  # a small sample is flagged, never bare
        assert r[COL["AUROC 95% CI"]] == f"{src['auroc_ci_low']:.3f}–{src['auroc_ci_high']:.3f}{few}"
        assert r[COL["F1 95% CI"]] == f"{src['f1_ci_low']:.3f}–{src['f1_ci_high']:.3f}{few}"
        assert r[COL["ECE"]] == f"{src['ece']:.3f}"
        assert r[COL["Threshold"]] == f"{src['threshold']:.3f}"


def test_aggregate_intervals_and_headline(full_report):
    ctx, _, parsed = full_report
    agg = ctx["aggregates"]
    table = {r[0]: r for r in parsed.tables["aggregates-table"]}
    assert table["Macro AUROC"][1:3] == [
        f"{agg['macro_auroc']:.3f}",
        f"{agg['macro_auroc_ci_low']:.3f}–{agg['macro_auroc_ci_high']:.3f}",
    ]
    assert table["Macro F1"][2] == f"{agg['macro_f1_ci_low']:.3f}–{agg['macro_f1_ci_high']:.3f}"
    assert table["Micro F1"][2] == "—"
    assert table["Mean expected calibration error"][1] == "0.091"
    labels = [r[0] for r in parsed.tables["aggregates-table"]]
    assert not any("ci low" in x or "ci high" in x or "bootstrap" in x or "calibration method" in x for x in labels)
    assert f"95% CI {agg['macro_auroc_ci_low']:.3f}–{agg['macro_auroc_ci_high']:.3f}" in parsed.text
    assert "1,000 resamples" in parsed.text and "resampling patients" in parsed.text


def test_calibration_table_before_and_after(full_report):
    ctx, _, parsed = full_report
    rows = parsed.tables["calibration-table"]
    assert [r[0] for r in rows] == [*FINDINGS, "Mean over findings"]
    by_name = {r["finding"]: r for r in ctx["per_class"]}
    for r in rows[:-1]:
        src = by_name[r[0]]
        assert r[1:] == [
            f"{src['brier']:.4f}",
            f"{src['brier_calibrated']:.4f}",
            f"{src['ece']:.4f}",
            f"{src['ece_calibrated']:.4f}",
        ]
    mean = rows[-1]
    assert mean[1] == f"{ctx['aggregates']['mean_brier']:.4f}"
    assert mean[2] == f"{np.mean([r['brier_calibrated'] for r in ctx['per_class']]):.4f}"
    assert mean[3] == "0.0910"
    assert "temperature scaling" in parsed.text


def test_subgroup_tables_gaps_and_warning(full_report):
    _, _, parsed = full_report
    rows = parsed.tables["subgroup-table"]
    assert [(r[0], r[1]) for r in rows] == [
        ("Sex", "F"),
        ("Sex", "M"),
        ("Age band", "20-39"),
        ("Age band", "40-59"),
        ("Age band", "80+"),
        ("Age band", "unknown"),
        ("View position", "AP"),
        ("View position", "PA"),
    ]
    unknown = rows[5]
    assert unknown[2] == "5" and unknown[4:] == ["—"] * 7  # too small: listed without metrics
    assert rows[6][4] == "0.680"
    gaps = {r[0]: r for r in parsed.tables["subgroup-gaps-table"]}
    assert gaps["Sex"][3] == "0.010" and gaps["Sex"][5] == ""
    assert gaps["Age band"][1] == "3 / 4" and gaps["Age band"][3] == "0.030"
    assert gaps["View position"][2] == "PA / AP" and gaps["View position"][3] == "0.120"
    assert gaps["View position"][5].startswith("gap >")
    classes = parsed.row_classes["subgroup-gaps-table"]
    assert ["drift" in c.split() for c in classes] == [False, False, True]
    assert "subgroup-warning" in parsed.ids
    assert "view position (0.120: PA best, AP worst)" in parsed.text


def test_no_subgroup_warning_below_the_gap():
    ctx = make_context(epochs=False, examples=0)
    ctx["subgroups"] = subgroup_rows(gap=0.04)
    parsed = parse(render_evaluation_html(EvaluationContext(**ctx)))
    assert "subgroup-warning" not in parsed.ids
    assert not any("drift" in c for c in parsed.row_classes["subgroup-gaps-table"])


def test_comparison_has_auroc_interval_column(full_report):
    _, _, parsed = full_report
    comp = parsed.tables["comparison-table"]
    # Model, Kind, Status, Chosen on, Selection figure, Macro AUROC, AUROC 95% CI, ...
    assert comp[0][5:7] == ["0.810", "0.781–0.842"]
    assert comp[1][5:7] == ["0.660", "—"]


def test_comparison_shows_what_each_version_was_chosen_on_beside_its_test_figure():
    ctx = make_context()
    ctx["comparison"][0].update(selection_score=0.7712, selection_basis="cross_validation")
    ctx["comparison"][1].update(
        selection_score=0.69, selection_basis="validation", macro_auroc_ci_low=0.31, macro_auroc_ci_high=0.48
    )
    parsed = parse(render_evaluation_html(EvaluationContext(**ctx)))
    comp = parsed.tables["comparison-table"]
    assert comp[0][3:6] == ["cross-validation", "0.771", "0.810"]
    assert comp[1][3:7] == ["validation", "0.690", "0.660", "0.310–0.480 below 0.5"]
    assert "never by a test figure" in parsed.text


def test_small_samples_and_auroc_below_chance_are_flagged():
    ctx = full_context(n_examples=0)
    by_name = {r["finding"]: r for r in ctx["per_class"]}
    by_name["Hernia"].update(n_positive=2, auroc_ci_low=1.0, auroc_ci_high=1.0)
    by_name["Mass"].update(n_positive=40, auroc=0.41, auroc_ci_low=0.33, auroc_ci_high=0.49)
    by_name["Nodule"].update(n_positive=40, auroc=0.45, auroc_ci_low=0.38, auroc_ci_high=0.52)  # touches 0.5: not flagged
    for r in ctx["per_class"]:
        if r["finding"] not in ("Hernia",):
            r["n_positive"] = max(r["n_positive"], 10)
    parsed = parse(render_evaluation_html(EvaluationContext(**ctx)))
    rows = {r[0]: r for r in parsed.tables["per-class-table"]}
    assert rows["Hernia"][COL["AUROC 95% CI"]] == "1.000–1.000 n+ < 10"
    assert rows["Mass"][COL["AUROC"]] == "0.410 below 0.5"
    assert rows["Nodule"][COL["AUROC"]] == "0.450"
    flagged = [name for name, r in rows.items() if "n+ < 10" in r[COL["AUROC 95% CI"]]]
    assert flagged == ["Hernia"]
    assert {"small-sample-warning", "below-chance-warning"} <= parsed.ids
    assert "Small samples. Hernia:" in parsed.text and "Worse than chance. Mass:" in parsed.text


def test_a_calibration_that_worsened_validation_ece_is_flagged_as_not_applied():
    ctx = full_context(n_examples=0)
    ctx["aggregates"]["calibration"] = {
        "method": "temperature",
        "parameters": {},
        "notes": {},
        "not_applied": {"Pneumonia": {"ece_before": 0.0123, "ece_after": 0.0456}},
    }
    parsed = parse(render_evaluation_html(EvaluationContext(**ctx)))
    rows = {r[0]: r for r in parsed.tables["calibration-table"]}
    assert rows["Pneumonia"][-1] == "not applied 0.0123 → 0.0456"
    assert rows["Mass"][-1] == ""
    assert "calibration-not-applied" in parsed.ids and "Calibration not applied to Pneumonia" in parsed.text


def test_missing_new_fields_say_not_available():
    """An older evaluation or a baseline: no intervals, ECE, calibration, subgroups or map."""
    ctx = make_context(epochs=False, examples=1)
    parsed = parse(render_evaluation_html(EvaluationContext(**ctx)))
    for missing in ("no-intervals", "no-calibration", "no-subgroups", "no-embedding-map"):
        assert missing in parsed.ids, missing
    rows = parsed.tables["per-class-table"]
    assert all(r[COL["AUROC 95% CI"]] == r[COL["F1 95% CI"]] == r[COL["ECE"]] == "—" for r in rows)
    assert "not available" in parsed.text
    assert "no confidence intervals are available" in parsed.text
    assert "calibration-table" not in parsed.tables


def test_ece_without_probability_calibration():
    ctx = make_context(epochs=False, examples=0)
    for r in ctx["per_class"]:
        r["ece"] = 0.07
    ctx["aggregates"]["calibration_method"] = None
    parsed = parse(render_evaluation_html(EvaluationContext(**ctx)))
    rows = parsed.tables["calibration-table"]
    assert len(rows) == 15 and all(len(r) == 3 for r in rows)  # finding, Brier, ECE: no after-columns
    assert rows[0][2] == "0.0700" and rows[-1][2] == "0.0700"
    assert "No probability calibration was fitted" in parsed.text


def test_new_text_fields_are_escaped():
    evil = "<script>alert(2)</script>"
    ctx = make_context(epochs=False, examples=1)
    ctx["subgroups"] = [{"attribute": "site", "group": evil, "n_studies": 30, "macro_auroc": 0.7}]
    ctx["examples"][0].update(heatmap_data_uri=png_data_uri(3), gradcam_finding=evil)
    html = render_evaluation_html(EvaluationContext(**ctx))
    parsed = parse(html)
    assert "<script" not in html.lower()
    assert evil in parsed.text
    assert [r[:2] for r in parsed.tables["subgroup-table"]] == [["site", evil]]
    assert any(img["alt"].endswith(evil) for img in parsed.imgs)


def test_heatmaps_must_be_data_uris():
    ctx = make_context(epochs=False, examples=1)
    ctx["examples"][0]["heatmap_data_uri"] = "file:///tmp/cam.png"
    with pytest.raises(ValueError, match="data:image"):
        EvaluationContext(**ctx)


def test_example_without_heatmap_shows_its_note():
    ctx = make_context(epochs=False, examples=1)
    ctx["examples"][0]["gradcam_note"] = "No Grad-CAM for an embedding baseline (k-NN)."
    parsed = parse(render_evaluation_html(EvaluationContext(**ctx)))
    assert "No Grad-CAM for an embedding baseline (k-NN)." in parsed.text


def test_print_css_keeps_paper_light():
    html = render_evaluation_html(EvaluationContext(**make_context(epochs=False, examples=0)))
    css = html[html.index("@media print") : html.index("</style>")]
    assert "break-before: page" in css and "thead th { background: #fff" in css
    assert 'class="new-page"' in html


# --------------------------------------------------------------------------- scoring
