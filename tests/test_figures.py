"""The report figures: PNG data URIs, edge cases, and curves drawn from what cxrmodel computes."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from report_contexts import full_context, make_context
from report_html import decode_png

from cxrmodel.evaluation.metrics import roc_curves
from cxrmodel.findings import FINDINGS
from reports import EvaluationContext, figures, render_evaluation_html, render_evaluation_report

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def test_figures_are_png_data_uris_and_tolerate_edge_cases():
    ctx = make_context()
    y_true = ctx["y_true"].copy()
    y_true[:, 13] = 0  # Hernia: one label value only -> skipped, no crash
    assert len(decode_png(figures.roc_figure(y_true, ctx["y_prob"]))) < 400_000
    decode_png(figures.roc_grid_figure(y_true, ctx["y_prob"]))
    decode_png(figures.confusion_matrices_figure(ctx["per_class"]))
    decode_png(figures.training_curves_figure(ctx["epochs"]))
    decode_png(
        figures.training_curves_figure([{"epoch": 1, "train_loss": None, "val_loss": None, "macro_f1": None, "mean_auroc": None}])
    )
    decode_png(figures.label_distribution_figure({"Effusion": 3, "Mass": 0}))
    decode_png(figures.image_to_data_uri(np.zeros((10, 10))))
    with pytest.raises(ValueError):
        figures.roc_figure(y_true[:, :5], ctx["y_prob"])


def test_figures_leave_no_open_pyplot_figures():
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    ctx = make_context(epochs=True, examples=0)
    render_evaluation_html(EvaluationContext(**ctx))
    assert len(plt.get_fignums()) == before


def test_report_size_is_modest(tmp_path):
    out = render_evaluation_report(EvaluationContext(**make_context()), tmp_path / "r.html")
    assert out.stat().st_size < 2_000_000
    assert isinstance(Path(out), Path)


def test_new_figures_are_pngs_and_tolerate_one_label_classes():
    ctx = full_context(n_examples=0)
    y_true = ctx["y_true"].copy()
    y_true[:, 13] = 0
    for uri in (
        figures.pr_figure(y_true, ctx["y_prob"]),
        figures.pr_grid_figure(y_true, ctx["y_prob"]),
        figures.reliability_figure(y_true, ctx["y_prob"]),
        figures.reliability_figure(y_true, ctx["y_prob"], ctx["y_prob_calibrated"]),
        figures.embedding_map_figure(np.zeros((3, 2)), np.zeros((3, 14))),
    ):
        decode_png(uri)
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
    import io

    import matplotlib.image as mpimg

    image = np.full((32, 32), 0.5)
    heat = np.zeros((32, 32))
    heat[4:12, 20:28] = 1.0
    uri = figures.gradcam_overlay(image, heat, alpha=0.6, min_side=64)
    rgb = mpimg.imread(io.BytesIO(decode_png(uri)))[..., :3]
    assert rgb.shape[:2] == (64, 64)  # enlarged x2, nearest neighbour
    cold, hot = rgb[50, 10], rgb[16, 48]
    assert np.allclose(cold, cold[0], atol=0.01)  # plain grey where the map is 0
    assert hot[0] > hot[2] + 0.2  # red-ish where it is 1 (jet)
    with pytest.raises(ValueError):
        figures.gradcam_overlay(image, heat[:10])


def test_curve_figures_draw_the_curves_cxrmodel_computes(monkeypatch):
    ctx = make_context(epochs=False, examples=0)
    calls = []

    def spy(y_true, y_prob, findings):
        calls.append(tuple(findings))
        return roc_curves(y_true, y_prob, findings)

    monkeypatch.setattr("reports.figures.curves.roc_curves", spy)
    decode_png(figures.roc_figure(ctx["y_true"], ctx["y_prob"]))
    decode_png(figures.roc_grid_figure(ctx["y_true"], ctx["y_prob"]))
    assert calls == [FINDINGS, ("micro-average",), FINDINGS]  # per finding, pooled, per finding


def test_reports_never_compute_metrics_with_sklearn():
    imported = set()
    for path in REPORTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {(path.name, a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module.split(".")[0]))
    assert {name for name, root in imported if root == "sklearn"} == set()
