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
    env,
    fmt,
    pct,
    render_evaluation_html,
    render_evaluation_report,
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
    # confusion + ROC (all) + ROC grid + training curves + 1 example
    assert_png_images(parsed, 5)
    assert_self_contained(html, parsed)

    rows = parsed.tables["per-class-table"]
    assert len(rows) == 14
    assert [r[0] for r in rows] == list(FINDINGS)
    assert all(len(r) == 15 for r in rows)
    by_name = {r["finding"]: r for r in ctx["per_class"]}
    for r in rows:  # threshold column (11th) shows the per-class threshold
        assert r[10] == f"{by_name[r[0]]['threshold']:.3f}"
        assert r[2] == f"{by_name[r[0]]['auroc']:.3f}"

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


def test_evaluation_without_epochs_or_examples_has_three_figures(tmp_path):
    ctx = make_context(epochs=False, examples=0)
    html = render_evaluation_report(ctx, tmp_path / "e.html").read_text(encoding="utf-8")
    parsed = parse(html)
    assert_png_images(parsed, 3)
    assert 'id="training"' not in html and 'id="examples"' not in html
    assert_self_contained(html, parsed)


def test_label_counts_add_a_figure():
    ctx = make_context(epochs=False, examples=0)
    ctx["label_counts"] = {name: 10 * (i + 1) for i, name in enumerate(FINDINGS)}
    assert_png_images(parse(render_evaluation_html(ctx)), 4)


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
    assert_png_images(parsed, 4)  # the note's <img> is text, not a tag
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
