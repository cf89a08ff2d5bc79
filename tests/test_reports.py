"""Tests for the reports package: self-contained, escaped, offline HTML reports."""

from __future__ import annotations

import base64
import math
import random
from pathlib import Path

import numpy as np
import pytest
from jinja2 import StrictUndefined, UndefinedError
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrmodel.findings import FINDINGS
from reports import figures
from report_html import PNG_PREFIX, PNG_SIGNATURE, ReportParser, parse
from reports.render import (
    DISCLAIMER,
    drift_status,
    env,
    fmt,
    fmt_ci,
    pct,
    render_evaluation_html,
    render_evaluation_report,
    render_scoring_html,
    render_scoring_report,
)



# --------------------------------------------------------------------------- parsing


# --------------------------------------------------------------------------- context


def png_data_uri(seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return figures.image_to_data_uri(rng.random((64, 48)))


def per_class_rows(y_true: np.ndarray, y_prob: np.ndarray, thresholds: dict[str, float]) -> list[dict]:
    rows = []
    for i, name in enumerate(FINDINGS):
        t, p = y_true[:, i], y_prob[:, i]
        pred = p >= thresholds[name]
        tp = int(np.sum(pred & (t == 1)))
        fp = int(np.sum(pred & (t == 0)))
        tn = int(np.sum(~pred & (t == 0)))
        fn = int(np.sum(~pred & (t == 1)))
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
        rows.append({
            "finding": name,
            "n_positive": int(t.sum()),
            "auroc": float(roc_auc_score(t, p)),
            "pr_auc": float(average_precision_score(t, p)),
            "f1": f1,
            "precision": precision,
            "recall": recall,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "npv": tn / (tn + fn) if tn + fn else None,
            "brier": float(np.mean((p - t) ** 2)),
            "threshold": thresholds[name],
            "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        })
    return rows


def make_context(model_name: str = "densenet121-cxr14-v3", *, epochs: bool = True, examples: int = 1) -> dict:
    rng = np.random.default_rng(1234)
    n = 200
    prevalence = np.linspace(0.04, 0.35, len(FINDINGS))
    y_true = (rng.random((n, len(FINDINGS))) < prevalence).astype(np.uint8)
    y_true[:3, :] = 1  # every class has positives
    y_true[3:6, :] = 0  # ... and negatives
    y_prob = np.clip(0.25 + 0.35 * y_true + rng.normal(0, 0.18, y_true.shape), 0.0, 1.0)
    assert (y_true.sum(axis=0) > 0).all() and (y_true.sum(axis=0) < n).all()

    thresholds = {name: round(0.4 + 0.01 * i, 3) for i, name in enumerate(FINDINGS)}
    per_class = per_class_rows(y_true, y_prob, thresholds)
    random.Random(7).shuffle(per_class)  # the report must put them back in FINDINGS order

    ctx = {
        "title": "Evaluation report — test split",
        "generated_at": "2025-01-02 03:04:05 UTC",
        "model": {
            "name": model_name,
            "kind": "densenet121",
            "id": "7f3c2a9e-0000-4000-8000-000000000001",
            "sha256": "ab" * 32,
            "parameter_count": 6_968_206,
            "created_at": "2025-01-01T22:00:00Z",
        },
        "data": {"source": "synthetic", "split": "test", "n_studies": 1000, "n_train": 600, "n_val": 200,
                 "n_test": n},
        "thresholds": {"method": "max_f1_on_val", "values": thresholds,
                       "notes": {"Hernia": "few positives on validation; fell back to 0.5", "Mass": ""}},
        "aggregates": {
            "macro_auroc": float(np.mean([r["auroc"] for r in per_class])),
            "micro_auroc": float(roc_auc_score(y_true.ravel(), y_prob.ravel())),
            "macro_f1": float(np.mean([r["f1"] or 0.0 for r in per_class])),
            "micro_f1": 0.41, "macro_precision": 0.38, "micro_precision": 0.4, "macro_recall": 0.61,
            "micro_recall": 0.6, "exact_match": 0.05, "hamming_loss": 0.21, "accuracy": 0.79,
            "lrap": 0.55, "mean_brier": float(np.mean((y_prob - y_true) ** 2)),
        },
        "per_class": per_class,
        "comparison": [
            {"name": model_name, "kind": "densenet121", "macro_auroc": 0.81, "macro_f1": 0.42, "micro_f1": 0.41,
             "exact_match": 0.05, "hamming_loss": 0.21, "lrap": 0.55, "mean_brier": 0.12,
             "parameter_count": 6_968_206, "inference_ms_per_image": 4.2, "is_current": True,
             "status": "candidate"},
            {"name": "baseline-logreg", "kind": "logistic", "macro_auroc": 0.66, "macro_f1": 0.3, "micro_f1": 0.33,
             "exact_match": 0.02, "hamming_loss": 0.25, "lrap": 0.4, "mean_brier": None,
             "parameter_count": 14_350, "inference_ms_per_image": 0.3, "is_current": False,
             "status": "champion"},
        ],
        "epochs": [
            {"epoch": e, "train_loss": 0.6 / e, "val_loss": 0.65 / e + 0.02, "macro_f1": 0.2 + 0.04 * e,
             "mean_auroc": None if e == 1 else 0.6 + 0.04 * e}
            for e in range(1, 6)
        ] if epochs else [],
        "y_true": y_true,
        "y_prob": y_prob,
    }
    if examples:
        ctx["examples"] = [
            {"study_key": f"000{k}_000", "image_data_uri": png_data_uri(k),
             "top_findings": [("Effusion", 0.91, True), ("Mass", 0.42, "negative")]}
            for k in range(examples)
        ]
    return ctx


PER_CLASS_HEADER = ("Finding", "Positives", "AUROC", "AUROC 95% CI", "PR-AUC", "F1", "F1 95% CI", "Precision", "Recall",
                    "Specificity", "NPV", "Brier", "ECE", "Threshold", "TP", "FP", "TN", "FN")
COL = {name: i for i, name in enumerate(PER_CLASS_HEADER)}


def subgroup_rows(gap: float = 0.12) -> list[dict]:
    """Rows as the database stores them (``group_name``), one small group without metrics."""
    rows = []
    for attribute, groups in (("sex", ["M", "F"]), ("age_band", ["80+", "20-39", "unknown", "40-59"]), ("view", ["PA", "AP"])):
        for k, group in enumerate(groups):
            small = group == "unknown"
            auroc = None if small else 0.80 - (gap if (attribute, k) == ("view", 1) else 0.01 * k)
            rows.append({
                "attribute": attribute, "group_name": group, "n_studies": 5 if small else 60 + 10 * k,
                "n_positive_labels": 1 if small else 40 + k,
                **{m: (None if small else v) for m, v in (
                    ("macro_auroc", auroc), ("macro_f1", 0.40 - 0.02 * k), ("micro_f1", 0.45), ("exact_match", 0.1),
                    ("hamming_loss", 0.2), ("mean_brier", 0.11), ("mean_ece", 0.05 + 0.01 * k))},
            })
    return rows


def full_context(n_examples: int = 2) -> dict:
    """``make_context`` with everything issue 5 adds: bootstrap intervals, ECE, probability
    calibration, subgroups, an embedding map and Grad-CAM overlays."""
    ctx = make_context(examples=n_examples)
    rng = np.random.default_rng(5)
    for r in ctx["per_class"]:
        r.update(auroc_ci_low=r["auroc"] - 0.05, auroc_ci_high=min(1.0, r["auroc"] + 0.04),
                 f1_ci_low=(r["f1"] or 0) - 0.08, f1_ci_high=(r["f1"] or 0) + 0.07, ece=0.08 + 0.001 * len(r["finding"]),
                 brier_calibrated=r["brier"] * 0.9, ece_calibrated=0.03 + 0.001 * len(r["finding"]))
    agg = ctx["aggregates"]
    agg.update(macro_auroc_ci_low=agg["macro_auroc"] - 0.03, macro_auroc_ci_high=agg["macro_auroc"] + 0.02,
               macro_f1_ci_low=agg["macro_f1"] - 0.04, macro_f1_ci_high=agg["macro_f1"] + 0.05,
               mean_ece=0.091, n_bootstrap=1000, calibration_method="temperature")
    ctx["y_prob_calibrated"] = np.clip(ctx["y_prob"] * 0.85 + 0.05, 0, 1)
    ctx["subgroups"] = subgroup_rows()
    n = len(ctx["y_true"])
    rows = np.sort(rng.choice(n, size=150, replace=False))
    ctx["embedding_map"] = {"xy": rng.normal(size=(150, 2)) + 4 * ctx["y_true"][rows, :2], "rows": rows}
    ctx["comparison"][0].update(macro_auroc_ci_low=0.781, macro_auroc_ci_high=0.842)
    for k, ex in enumerate(ctx.get("examples", [])):
        heat = np.outer(np.hanning(48), np.hanning(48))
        ex["heatmap_data_uri"] = figures.gradcam_overlay(rng.random((48, 48)), heat)
        ex["gradcam_finding"] = "Effusion"
    return ctx


def scoring_context(reason: str = "unreadable DICOM: <b>bad</b> transfer syntax") -> dict:
    return {
        "title": "Nightly scoring 2025-01-02",
        "generated_at": "2025-01-02 06:00 UTC",
        "run": {"id": "run-42", "model_name": "densenet121-cxr14-v3", "threshold_set_id": "ts-7",
                "started_at": "2025-01-02 02:00", "finished_at": "2025-01-02 02:14",
                "n_scored": 12345, "n_skipped": 3, "n_failed": 1},
        "failures": [{"study_key": "00001234_001", "reason": reason}],
        "flags": [
            {"finding": name, "n_flagged": 100 + i, "flag_rate": 0.01 * (i + 1), "training_prevalence": 0.02 * (i + 1)}
            for i, name in reversed(list(enumerate(FINDINGS)))
        ],
        "top_studies": {"Effusion": [("00000001_000", 0.97), ("00000002_000", 0.93)],
                        "Atelectasis": [("00000003_000", 0.88)]},
    }


def assert_self_contained(html: str, parsed: ReportParser) -> None:
    for tag, attr, value in parsed.links:
        v = value.strip().lower()
        assert not v.startswith(("http://", "https://", "//")), f"external {tag}[{attr}]={value[:60]}"
        if attr == "src":
            assert v.startswith("data:"), f"{tag} src is not embedded: {value[:60]}"
        if attr == "href":
            assert v.startswith("#"), f"non-local link {value[:60]}"
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "@import" not in lowered and "url(" not in lowered
    assert "script" not in parsed.start_tags
    assert "link" not in parsed.start_tags


def assert_png_images(parsed: ReportParser, expected: int) -> None:
    assert len(parsed.imgs) == expected
    for img in parsed.imgs:
        src = img.get("src") or ""
        assert src.startswith(PNG_PREFIX)
        raw = base64.b64decode(src[len(PNG_PREFIX):], validate=True)
        assert raw.startswith(PNG_SIGNATURE)
        assert img.get("alt"), "every image needs alt text"


# --------------------------------------------------------------------------- evaluation


def test_evaluation_report_is_complete_and_self_contained(tmp_path):
    ctx = make_context(examples=1)
    out = tmp_path / "nested" / "dir" / "evaluation.html"
    result = render_evaluation_report(ctx, out)
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
    html = render_evaluation_report(ctx, tmp_path / "e.html").read_text(encoding="utf-8")
    parsed = parse(html)
    assert_png_images(parsed, 6)
    assert 'id="training"' not in html and 'id="examples"' not in html
    assert_self_contained(html, parsed)


def test_label_counts_add_a_figure():
    ctx = make_context(epochs=False, examples=0)
    ctx["label_counts"] = {name: 10 * (i + 1) for i, name in enumerate(FINDINGS)}
    assert_png_images(parse(render_evaluation_html(ctx)), 7)


def test_model_name_is_autoescaped(tmp_path):
    evil = "<script>alert(1)</script>"
    ctx = make_context(model_name=evil, examples=0)
    ctx["thresholds"]["notes"]["Mass"] = '<img src="https://evil.example/x.png">'
    html = render_evaluation_report(ctx, tmp_path / "x.html").read_text(encoding="utf-8")
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
    with pytest.raises(ValueError, match="data:image"):
        render_evaluation_html(ctx)


def test_failed_render_keeps_previous_report(tmp_path):
    out = tmp_path / "report.html"
    out.write_text("previous", encoding="utf-8")
    ctx = make_context(epochs=False, examples=0)
    del ctx["per_class"]
    with pytest.raises(KeyError, match="per_class"):
        render_evaluation_report(ctx, out)
    assert out.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    # and a successful render replaces it
    render_evaluation_report(make_context(epochs=False, examples=0), out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# --------------------------------------------------------------------------- issue 5 sections


@pytest.fixture(scope="module")
def full_report():
    ctx = full_context(n_examples=2)
    html = render_evaluation_html(ctx)
    return ctx, html, parse(html)


def test_full_report_images_and_sections(full_report):
    ctx, html, parsed = full_report
    # confusion, ROC x2, PR x2, reliability, training, map, and 2 examples with an image and a heat map each
    assert_png_images(parsed, 7 + 1 + 2 * 2)
    assert_self_contained(html, parsed)
    for section in ("per-class", "confusion", "roc", "pr", "calibration", "subgroups", "training", "comparison",
                    "examples", "embedding-map", "limitations"):
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
        assert r[COL["AUROC 95% CI"]] == f"{src['auroc_ci_low']:.3f}–{src['auroc_ci_high']:.3f}"
        assert r[COL["F1 95% CI"]] == f"{src['f1_ci_low']:.3f}–{src['f1_ci_high']:.3f}"
        assert r[COL["ECE"]] == f"{src['ece']:.3f}"
        assert r[COL["Threshold"]] == f"{src['threshold']:.3f}"


def test_aggregate_intervals_and_headline(full_report):
    ctx, _, parsed = full_report
    agg = ctx["aggregates"]
    table = {r[0]: r for r in parsed.tables["aggregates-table"]}
    assert table["Macro AUROC"][1:3] == [f"{agg['macro_auroc']:.3f}",
                                         f"{agg['macro_auroc_ci_low']:.3f}–{agg['macro_auroc_ci_high']:.3f}"]
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
        assert r[1:] == [f"{src['brier']:.4f}", f"{src['brier_calibrated']:.4f}", f"{src['ece']:.4f}",
                         f"{src['ece_calibrated']:.4f}"]
    mean = rows[-1]
    assert mean[1] == f"{ctx['aggregates']['mean_brier']:.4f}"
    assert mean[2] == f"{np.mean([r['brier_calibrated'] for r in ctx['per_class']]):.4f}"
    assert mean[3] == "0.0910"
    assert "temperature scaling" in parsed.text


def test_subgroup_tables_gaps_and_warning(full_report):
    _, _, parsed = full_report
    rows = parsed.tables["subgroup-table"]
    assert [(r[0], r[1]) for r in rows] == [
        ("Sex", "F"), ("Sex", "M"),
        ("Age band", "20-39"), ("Age band", "40-59"), ("Age band", "80+"), ("Age band", "unknown"),
        ("View position", "AP"), ("View position", "PA"),
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
    parsed = parse(render_evaluation_html(ctx))
    assert "subgroup-warning" not in parsed.ids
    assert not any("drift" in c for c in parsed.row_classes["subgroup-gaps-table"])


def test_comparison_has_auroc_interval_column(full_report):
    _, _, parsed = full_report
    comp = parsed.tables["comparison-table"]
    # Model, Kind, Status, Macro AUROC, AUROC 95% CI, ...
    assert comp[0][3:5] == ["0.810", "0.781–0.842"]
    assert comp[1][3:5] == ["0.660", "—"]


def test_missing_new_fields_say_not_available():
    """An older evaluation or a baseline: no intervals, ECE, calibration, subgroups or map."""
    ctx = make_context(epochs=False, examples=1)
    parsed = parse(render_evaluation_html(ctx))
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
    parsed = parse(render_evaluation_html(ctx))
    rows = parsed.tables["calibration-table"]
    assert len(rows) == 15 and all(len(r) == 3 for r in rows)  # finding, Brier, ECE: no after-columns
    assert rows[0][2] == "0.0700" and rows[-1][2] == "0.0700"
    assert "No probability calibration was fitted" in parsed.text


def test_new_text_fields_are_escaped():
    evil = "<script>alert(2)</script>"
    ctx = make_context(epochs=False, examples=1)
    ctx["subgroups"] = [{"attribute": "site", "group": evil, "n_studies": 30, "macro_auroc": 0.7}]
    ctx["examples"][0].update(heatmap_data_uri=png_data_uri(3), gradcam_finding=evil)
    html = render_evaluation_html(ctx)
    parsed = parse(html)
    assert "<script" not in html.lower()
    assert evil in parsed.text
    assert [r[:2] for r in parsed.tables["subgroup-table"]] == [["site", evil]]
    assert any(img["alt"].endswith(evil) for img in parsed.imgs)


def test_heatmaps_must_be_data_uris():
    ctx = make_context(epochs=False, examples=1)
    ctx["examples"][0]["heatmap_data_uri"] = "file:///tmp/cam.png"
    with pytest.raises(ValueError, match="data:image"):
        render_evaluation_html(ctx)


def test_example_without_heatmap_shows_its_note():
    ctx = make_context(epochs=False, examples=1)
    ctx["examples"][0]["gradcam_note"] = "No Grad-CAM for an embedding baseline (k-NN)."
    parsed = parse(render_evaluation_html(ctx))
    assert "No Grad-CAM for an embedding baseline (k-NN)." in parsed.text


def test_print_css_keeps_paper_light():
    html = render_evaluation_html(make_context(epochs=False, examples=0))
    css = html[html.index("@media print"):html.index("</style>")]
    assert "break-before: page" in css and "thead th { background: #fff" in css
    assert 'class="new-page"' in html


# --------------------------------------------------------------------------- scoring


def test_scoring_report_escapes_failure_reason(tmp_path):
    ctx = scoring_context()
    out = render_scoring_report(ctx, tmp_path / "runs" / "scoring.html")
    html = out.read_text(encoding="utf-8")
    parsed = parse(html)

    assert "&lt;b&gt;bad&lt;/b&gt;" in html
    assert "<b>" not in html
    assert "b" not in parsed.start_tags
    failures = parsed.tables["failures-table"]
    assert failures == [["00001234_001", "unreadable DICOM: <b>bad</b> transfer syntax"]]

    assert ctx["title"] in parsed.text
    assert "run-42" in parsed.text and "ts-7" in parsed.text
    assert "12,345" in parsed.text
    assert DISCLAIMER in parsed.text
    flags = parsed.tables["flags-table"]
    assert [r[0] for r in flags] == list(FINDINGS)  # put back in FINDINGS order
    assert flags[0][2] == "1.0%" and flags[0][3] == "2.0%"
    assert "Effusion" in parsed.text and "0.970" in parsed.text
    assert_png_images(parsed, 1)
    assert_self_contained(html, parsed)


def test_scoring_report_with_nothing_to_show(tmp_path):
    ctx = scoring_context()
    ctx.update(failures=[], flags=[], top_studies={})
    parsed = parse(render_scoring_report(ctx, tmp_path / "s.html").read_text(encoding="utf-8"))
    assert "No study failed" in parsed.text
    assert_png_images(parsed, 0)


@pytest.mark.parametrize(
    ("n_flagged", "rate", "prevalence", "n_scored", "expected"),
    [
        (40, 0.40, 0.10, 100, (4.0, True)),  # 4x the training prevalence
        (10, 0.10, 0.05, 100, (2.0, True)),  # exactly 2x
        (19, 0.19, 0.10, 100, (1.9, False)),
        (2, 0.02, 0.10, 100, (0.2, True)),  # few flags, but 10 expected
        (3, 0.30, 0.10, 10, (3.0, False)),  # 3 flags, 1 expected: too few to tell
        (0, 0.0, 0.0, 100, (None, False)),
        (6, 0.06, 0.0, 100, (None, True)),  # never seen in training, now flagged
        (5, None, 0.1, 100, (None, False)),
    ],
)
def test_drift_rule(n_flagged, rate, prevalence, n_scored, expected):
    ratio, drift = drift_status(n_flagged, rate, prevalence, n_scored)
    assert drift is expected[1]
    assert ratio == (pytest.approx(expected[0]) if expected[0] is not None else None)


def test_scoring_report_drift_warning_and_reason_summary():
    ctx = scoring_context()
    ctx["run"]["n_scored"] = 1000
    ctx["flags"] = [{"finding": f, "n_flagged": 100, "flag_rate": 0.1, "training_prevalence": 0.1} for f in FINDINGS]
    ctx["flags"][1].update(n_flagged=300, flag_rate=0.3)  # Cardiomegaly 3x
    ctx["flags"][13].update(n_flagged=1, flag_rate=0.001, training_prevalence=0.01)  # Hernia: 0.1x, 10 expected
    ctx["failures"] = [{"study_key": f"k{i}", "reason": "empty image" if i % 3 else "missing metadata"} for i in range(6)]
    parsed = parse(render_scoring_html(ctx))
    assert "drift-warning" in parsed.ids and "drift-rule" in parsed.ids
    text = parsed.text
    assert "2 findings diverge" in text
    assert "Cardiomegaly (30.0% flagged vs 10.0% in training)" in text and "Hernia (0.1% flagged" in text
    flags = parsed.tables["flags-table"]
    drift_rows = [r[0] for r, c in zip(flags, parsed.row_classes["flags-table"]) if "drift" in c.split()]
    assert drift_rows == ["Cardiomegaly", "Hernia"]
    assert flags[1][4] == "3.00" and flags[1][5] == "drift"
    assert parsed.tables["failure-reasons-table"] == [["empty image", "4"], ["missing metadata", "2"]]


def test_scoring_report_without_drift_has_no_warning():
    ctx = scoring_context()
    ctx["flags"] = [{"finding": f, "n_flagged": 100, "flag_rate": 0.1, "training_prevalence": 0.12} for f in FINDINGS]
    parsed = parse(render_scoring_html(ctx))
    assert "drift-warning" not in parsed.ids and "drift-rule" in parsed.ids
    assert "failure-reasons-table" not in parsed.tables  # one failure: no summary table


# --------------------------------------------------------------------------- filters and environment


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "—"),
        (0.12345, "0.123"),
        (12345, "12,345"),
        (np.int64(1234567), "1,234,567"),
        (np.float32(0.5), "0.500"),
        (float("nan"), "—"),
        (math.inf, "—"),
        (True, "yes"),
        ("text", "text"),
    ],
)
def test_fmt_filter(value, expected):
    assert fmt(value) == expected
    assert env.filters["fmt"](value) == expected


def test_fmt_through_template_and_pct():
    t = env.from_string("{{ a | fmt }}|{{ b | fmt }}|{{ c | fmt }}|{{ d | pct }}")
    assert t.render(a=None, b=0.12345, c=12345, d=0.1234) == "—|0.123|12,345|12.3%"
    assert pct(None) == "—"


def test_environment_is_strict_and_escapes_templates():
    assert env.undefined is StrictUndefined
    assert env.trim_blocks and env.lstrip_blocks
    template = env.get_template("base.html.j2")
    assert template.environment.autoescape("evaluation.html.j2") is True
    with pytest.raises(UndefinedError):
        template.render(title="t")  # generated_at is missing


# --------------------------------------------------------------------------- figures


def _decode(uri: str) -> bytes:
    assert uri.startswith(PNG_PREFIX)
    raw = base64.b64decode(uri[len(PNG_PREFIX):])
    assert raw.startswith(PNG_SIGNATURE)
    return raw


def test_figures_are_png_data_uris_and_tolerate_edge_cases():
    ctx = make_context()
    y_true = ctx["y_true"].copy()
    y_true[:, 13] = 0  # Hernia: one label value only -> skipped, no crash
    assert len(_decode(figures.roc_figure(y_true, ctx["y_prob"]))) < 400_000
    _decode(figures.roc_grid_figure(y_true, ctx["y_prob"]))
    _decode(figures.confusion_matrices_figure(ctx["per_class"]))
    _decode(figures.training_curves_figure(ctx["epochs"]))
    _decode(figures.training_curves_figure([{"epoch": 1, "train_loss": None, "val_loss": None,
                                             "macro_f1": None, "mean_auroc": None}]))
    _decode(figures.label_distribution_figure({"Effusion": 3, "Mass": 0}))
    _decode(figures.image_to_data_uri(np.zeros((10, 10))))
    with pytest.raises(ValueError):
        figures.roc_figure(y_true[:, :5], ctx["y_prob"])


def test_figures_leave_no_open_pyplot_figures():
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    ctx = make_context(epochs=True, examples=0)
    render_evaluation_html(ctx)
    assert len(plt.get_fignums()) == before


def test_report_size_is_modest(tmp_path):
    out = render_evaluation_report(make_context(), tmp_path / "r.html")
    assert out.stat().st_size < 2_000_000
    assert isinstance(Path(out), Path)


def test_new_figures_are_pngs_and_tolerate_one_label_classes():
    ctx = full_context(n_examples=0)
    y_true = ctx["y_true"].copy()
    y_true[:, 13] = 0
    for uri in (figures.pr_figure(y_true, ctx["y_prob"]), figures.pr_grid_figure(y_true, ctx["y_prob"]),
                figures.reliability_figure(y_true, ctx["y_prob"]),
                figures.reliability_figure(y_true, ctx["y_prob"], ctx["y_prob_calibrated"]),
                figures.embedding_map_figure(np.zeros((3, 2)), np.zeros((3, 14)))):
        _decode(uri)
    with pytest.raises(ValueError):
        figures.embedding_map_figure(np.zeros((3, 2)), np.zeros((4, 14)))
    with pytest.raises(ValueError):
        figures.reliability_figure(y_true, ctx["y_prob"], ctx["y_prob_calibrated"][:, :3])


def test_map_colour_is_the_rarest_finding():
    labels = np.zeros((4, 14))
    labels[0, [2, 13]] = 1  # Effusion + Hernia
    labels[1, 2] = 1
    labels[3, [0, 1]] = 1
    prevalence = np.linspace(0.3, 0.01, 14)  # Hernia rarest, Atelectasis commonest
    assert figures.map_colour_labels(labels, FINDINGS, prevalence) == ["Hernia", "Effusion", "No Finding", "Cardiomegaly"]


def test_gradcam_overlay_colours_the_hot_region_only():
    import matplotlib.image as mpimg
    import io

    image = np.full((32, 32), 0.5)
    heat = np.zeros((32, 32))
    heat[4:12, 20:28] = 1.0
    uri = figures.gradcam_overlay(image, heat, alpha=0.6, min_side=64)
    rgb = mpimg.imread(io.BytesIO(_decode(uri)))[..., :3]
    assert rgb.shape[:2] == (64, 64)  # enlarged x2, nearest neighbour
    cold, hot = rgb[50, 10], rgb[16, 48]
    assert np.allclose(cold, cold[0], atol=0.01)  # plain grey where the map is 0
    assert hot[0] > hot[2] + 0.2  # red-ish where it is 1 (jet)
    with pytest.raises(ValueError):
        figures.gradcam_overlay(image, heat[:10])


def test_fmt_ci():
    assert fmt_ci(0.12345, 0.5) == "0.123–0.500"
    assert fmt_ci(None, 0.5) == fmt_ci(0.1, float("nan")) == "—"
    assert env.from_string("{{ a | ci(b) }}").render(a=0.1, b=0.2) == "0.100–0.200"


# --------------------------------------------------------------------------- the reporting task's context


def _seed_evaluation_database(tmp_path: Path) -> tuple[str, Path, int, int]:
    """SQLite with 8 test studies (real PNGs), a small FPN model version with thresholds, an
    evaluation with intervals, ECE, calibration and subgroups, its stored predictions (with a map),
    and a k-NN child version evaluated without any of the new fields."""
    import torch
    from PIL import Image

    from cxrmodel.models.artifacts import save_state_dict
    from cxrmodel.data.metadata import AgeScaler
    from cxrmodel.models.networks import build_model, count_parameters
    from db import repository as repo
    from db.engine import session_scope, upgrade_database

    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    upgrade_database(url)
    home = tmp_path / "home"
    rng = np.random.default_rng(3)
    n = 8
    y_true = np.zeros((n, len(FINDINGS)), dtype=np.uint8)
    y_true[: n // 2, 2] = 1  # Effusion
    y_true[::3, 13] = 1  # Hernia
    y_true[0, 0] = y_true[5, 0] = 1
    records, labels = [], {}
    for i in range(n):
        key = f"{i:08d}_000.png"
        path = tmp_path / "images" / key
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((rng.random((48, 48)) * 255).astype(np.uint8)).save(path)
        records.append({"study_key": key, "patient_id": f"p{i // 2}", "follow_up": 0, "age": 30.0 + 5 * i,
                        "sex": "MF"[i % 2], "view": ("PA", "AP")[i % 3 == 0], "source": "synthetic", "split": "test",
                        "image_path": str(path), "content_hash": f"1:{i}", "labelled": True})
        labels[key] = {f: int(y_true[i, j]) for j, f in enumerate(FINDINGS)}
    y_prob = np.clip(0.2 + 0.5 * y_true + rng.normal(0, 0.1, y_true.shape), 0.01, 0.99).astype(np.float32)
    torch.manual_seed(0)
    network = build_model("densenet121_fpn")
    folder = home / "models" / "fpn-v1"
    sha = save_state_dict(network.state_dict(), folder / "model.safetensors")
    thresholds = {f: 0.5 for f in FINDINGS}
    per_class = per_class_rows(np.vstack([y_true, 1 - y_true[:1]]), np.vstack([y_prob, y_prob[:1]]), thresholds)
    per_class = [{k: 0.0 if v is None else v for k, v in r.items()} for r in per_class]  # NOT NULL columns
    for r in per_class:
        r.update(auroc_ci_low=0.5, auroc_ci_high=0.9, f1_ci_low=0.1, f1_ci_high=0.6, ece=0.12,
                 brier_calibrated=r["brier"] / 2, ece_calibrated=0.04)
    aggregates = {"n_studies": n, "macro_auroc": 0.71, "micro_auroc": 0.7, "macro_f1": 0.4, "micro_f1": 0.41,
                  "macro_precision": 0.4, "micro_precision": 0.4, "macro_recall": 0.5, "micro_recall": 0.5,
                  "exact_match": 0.1, "hamming_loss": 0.2, "accuracy": 0.8, "lrap": 0.6, "mean_brier": 0.1}
    new = {"macro_auroc_ci_low": 0.61, "macro_auroc_ci_high": 0.79, "macro_f1_ci_low": 0.3, "macro_f1_ci_high": 0.5,
           "mean_ece": 0.12, "n_bootstrap": 200, "calibration_method": "platt"}
    subgroups = [{"attribute": "sex", "group": g, "n_studies": 4, "n_positive_labels": 3, "macro_auroc": a,
                  "macro_f1": 0.4} for g, a in (("M", 0.8), ("F", 0.7))]
    with session_scope(url) as s:
        repo.sync_studies(s, records, labels)
        version = repo.register_model_version(
            s, name="fpn-v1", kind="densenet121_fpn", artifact_path=str(folder / "model.safetensors"), sha256=sha,
            config={"image_size": 32, "age_scaler": AgeScaler(20.0, 90.0, 55.0).to_dict()},
            status="champion", parameter_count=count_parameters(network))
        tset = repo.save_threshold_set(s, version.id, "dynamic_f1", {}, thresholds, {"Hernia": "few positives"})
        ev = repo.save_evaluation(s, version.id, tset.id, "test", {**aggregates, **new}, per_class, subgroups)
        knn = repo.register_model_version(
            s, name="knn-of-fpn-v1", kind="knn_embedding", artifact_path=str(home / "models" / "knn" / "knn.npz"),
            sha256="0" * 64, parent_id=version.id, status="candidate", parameter_count=0)
        knn_tset = repo.save_threshold_set(s, knn.id, "dynamic_f1", {}, thresholds, {})
        old_style = [{k: v for k, v in r.items() if "_ci_" not in k and "ece" not in k and "calibrated" not in k}
                     for r in per_class]
        knn_ev = repo.save_evaluation(s, knn.id, knn_tset.id, "test", aggregates, old_style)
        ids = (ev.id, knn_ev.id)
    keys = np.array([r["study_key"] for r in records])
    np.savez_compressed(folder / "predictions_test.npz", y_true=y_true, y_prob=y_prob, study_key=keys,
                        y_prob_calibrated=y_prob * 0.9, map_xy=rng.normal(size=(6, 2)).astype(np.float32),
                        map_rows=np.array([0, 1, 2, 4, 6, 7]))
    (home / "models" / "knn").mkdir(parents=True)
    np.savez_compressed(home / "models" / "knn" / "predictions_test.npz", y_true=y_true, y_prob=y_prob, study_key=keys)
    return url, home, *ids


def test_evaluation_context_from_the_database(tmp_path):
    from reports.bundle import build_export_bundle
    from tasks.reporting import N_EXAMPLES, evaluation_context

    url, home, ev_id, knn_ev_id = _seed_evaluation_database(tmp_path)
    ctx, version = evaluation_context(url, home, ev_id)
    assert version.name == "fpn-v1" and ctx["evaluation_id"] == ev_id
    agg = ctx["aggregates"]
    assert (agg["macro_auroc_ci_low"], agg["macro_auroc_ci_high"], agg["n_bootstrap"]) == (0.61, 0.79, 200)
    assert agg["calibration_method"] == "platt" and "calibration" not in agg and "bundle_path" not in agg
    assert {r["finding"]: r["ece_calibrated"] for r in ctx["per_class"]} == dict.fromkeys(FINDINGS, 0.04)
    assert sorted((r["attribute"], r["group_name"], r["macro_auroc"]) for r in ctx["subgroups"]) == [
        ("sex", "F", 0.7), ("sex", "M", 0.8)]
    assert ctx["y_prob_calibrated"].shape == (8, 14)
    assert ctx["embedding_map"]["rows"].tolist() == [0, 1, 2, 4, 6, 7]
    comparison = {r["name"]: r for r in ctx["comparison"]}
    assert comparison["fpn-v1"]["macro_auroc_ci_low"] == 0.61 and comparison["knn-of-fpn-v1"]["macro_auroc_ci_low"] is None
    examples = ctx["examples"]
    assert len(examples) == N_EXAMPLES
    for ex in examples:
        assert ex["gradcam_finding"] == ex["top_findings"][0][0]
        assert ex["heatmap_data_uri"].startswith(PNG_PREFIX)

    parsed = parse(render_evaluation_html(ctx))
    heat_alts = [img["alt"] for img in parsed.imgs if img["alt"].startswith("Grad-CAM")]
    assert len(heat_alts) == N_EXAMPLES
    assert parsed.tables["subgroup-gaps-table"][0][3] == "0.100"
    assert "no-embedding-map" not in parsed.ids and "no-calibration" not in parsed.ids
    bundle = build_export_bundle(ctx, _write(tmp_path / "r.html", "<html></html>"), tmp_path / "b.zip")
    assert bundle.is_file()

    # a k-NN baseline: no Grad-CAM (a note instead), no intervals, no subgroups, no map
    knn_ctx, _ = evaluation_context(url, home, knn_ev_id)
    assert knn_ctx["subgroups"] == [] and knn_ctx["embedding_map"] is None and knn_ctx["y_prob_calibrated"] is None
    assert all("heatmap_data_uri" not in ex and "knn_embedding" in ex["gradcam_note"] for ex in knn_ctx["examples"])
    parsed = parse(render_evaluation_html(knn_ctx))
    for missing in ("no-intervals", "no-subgroups", "no-embedding-map"):
        assert missing in parsed.ids


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
