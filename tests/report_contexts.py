"""Report contexts the report tests share, as plain dicts a test can change before building the
typed context (``EvaluationContext(**ctx)``), and the checks every rendered report must pass."""

from __future__ import annotations

import base64
import random

import numpy as np
from report_html import PNG_PREFIX, PNG_SIGNATURE, ReportParser
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrmodel.findings import FINDINGS
from reports import figures


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
        rows.append(
            {
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
                "tp": tp,
                "fp": fp,
                "tn": tn,
                "fn": fn,
            }
        )
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
        "data": {"source": "synthetic", "split": "test", "n_studies": 1000, "n_train": 600, "n_val": 200, "n_test": n},
        "thresholds": {
            "method": "max_f1_on_val",
            "values": thresholds,
            "notes": {"Hernia": "few positives on validation; fell back to 0.5", "Mass": ""},
        },
        "aggregates": {
            "macro_auroc": float(np.mean([r["auroc"] for r in per_class])),
            "micro_auroc": float(roc_auc_score(y_true.ravel(), y_prob.ravel())),
            "macro_f1": float(np.mean([r["f1"] or 0.0 for r in per_class])),
            "micro_f1": 0.41,
            "macro_precision": 0.38,
            "micro_precision": 0.4,
            "macro_recall": 0.61,
            "micro_recall": 0.6,
            "exact_match": 0.05,
            "hamming_loss": 0.21,
            "accuracy": 0.79,
            "lrap": 0.55,
            "mean_brier": float(np.mean((y_prob - y_true) ** 2)),
        },
        "per_class": per_class,
        "comparison": [
            {
                "name": model_name,
                "kind": "densenet121",
                "macro_auroc": 0.81,
                "macro_f1": 0.42,
                "micro_f1": 0.41,
                "exact_match": 0.05,
                "hamming_loss": 0.21,
                "lrap": 0.55,
                "mean_brier": 0.12,
                "parameter_count": 6_968_206,
                "inference_ms_per_image": 4.2,
                "is_current": True,
                "status": "candidate",
            },
            {
                "name": "baseline-logreg",
                "kind": "logistic",
                "macro_auroc": 0.66,
                "macro_f1": 0.3,
                "micro_f1": 0.33,
                "exact_match": 0.02,
                "hamming_loss": 0.25,
                "lrap": 0.4,
                "mean_brier": None,
                "parameter_count": 14_350,
                "inference_ms_per_image": 0.3,
                "is_current": False,
                "status": "champion",
            },
        ],
        "epochs": [
            {
                "epoch": e,
                "train_loss": 0.6 / e,
                "val_loss": 0.65 / e + 0.02,
                "macro_f1": 0.2 + 0.04 * e,
                "mean_auroc": None if e == 1 else 0.6 + 0.04 * e,
            }
            for e in range(1, 6)
        ]
        if epochs
        else [],
        "y_true": y_true,
        "y_prob": y_prob,
    }
    if examples:
        ctx["examples"] = [
            {
                "study_key": f"000{k}_000",
                "image_data_uri": png_data_uri(k),
                "top_findings": [("Effusion", 0.91, True), ("Mass", 0.42, "negative")],
            }
            for k in range(examples)
        ]
    return ctx


PER_CLASS_HEADER = (
    "Finding",
    "Positives",
    "AUROC",
    "AUROC 95% CI",
    "PR-AUC",
    "F1",
    "F1 95% CI",
    "Precision",
    "Recall",
    "Specificity",
    "NPV",
    "Brier",
    "ECE",
    "Threshold",
    "TP",
    "FP",
    "TN",
    "FN",
)
COL = {name: i for i, name in enumerate(PER_CLASS_HEADER)}


def subgroup_rows(gap: float = 0.12) -> list[dict]:
    """Rows as the database stores them (``group_name``), one small group without metrics."""
    rows = []
    for attribute, groups in (("sex", ["M", "F"]), ("age_band", ["80+", "20-39", "unknown", "40-59"]), ("view", ["PA", "AP"])):
        for k, group in enumerate(groups):
            small = group == "unknown"
            auroc = None if small else 0.80 - (gap if (attribute, k) == ("view", 1) else 0.01 * k)
            rows.append(
                {
                    "attribute": attribute,
                    "group_name": group,
                    "n_studies": 5 if small else 60 + 10 * k,
                    "n_positive_labels": 1 if small else 40 + k,
                    **{
                        m: (None if small else v)
                        for m, v in (
                            ("macro_auroc", auroc),
                            ("macro_f1", 0.40 - 0.02 * k),
                            ("micro_f1", 0.45),
                            ("exact_match", 0.1),
                            ("hamming_loss", 0.2),
                            ("mean_brier", 0.11),
                            ("mean_ece", 0.05 + 0.01 * k),
                        )
                    },
                }
            )
    return rows


def full_context(n_examples: int = 2) -> dict:
    """``make_context`` with everything issue 5 adds: bootstrap intervals, ECE, probability
    calibration, subgroups, an embedding map and Grad-CAM overlays."""
    ctx = make_context(examples=n_examples)
    rng = np.random.default_rng(5)
    for r in ctx["per_class"]:
        r.update(
            auroc_ci_low=r["auroc"] - 0.05,
            auroc_ci_high=min(1.0, r["auroc"] + 0.04),
            f1_ci_low=(r["f1"] or 0) - 0.08,
            f1_ci_high=(r["f1"] or 0) + 0.07,
            ece=0.08 + 0.001 * len(r["finding"]),
            brier_calibrated=r["brier"] * 0.9,
            ece_calibrated=0.03 + 0.001 * len(r["finding"]),
        )
    agg = ctx["aggregates"]
    agg.update(
        macro_auroc_ci_low=agg["macro_auroc"] - 0.03,
        macro_auroc_ci_high=agg["macro_auroc"] + 0.02,
        macro_f1_ci_low=agg["macro_f1"] - 0.04,
        macro_f1_ci_high=agg["macro_f1"] + 0.05,
        mean_ece=0.091,
        n_bootstrap=1000,
        calibration_method="temperature",
    )
    ctx["y_prob_calibrated"] = np.clip(ctx["y_prob"] * 0.85 + 0.05, 0, 1)
    ctx["subgroups"] = subgroup_rows()
    n = len(ctx["y_true"])
    rows = np.sort(rng.choice(n, size=150, replace=False))
    ctx["embedding_map"] = {"xy": rng.normal(size=(150, 2)) + 4 * ctx["y_true"][rows, :2], "rows": rows}
    ctx["comparison"][0].update(macro_auroc_ci_low=0.781, macro_auroc_ci_high=0.842)
    for ex in ctx.get("examples", []):
        heat = np.outer(np.hanning(48), np.hanning(48))
        ex["heatmap_data_uri"] = figures.gradcam_overlay(rng.random((48, 48)), heat)
        ex["gradcam_finding"] = "Effusion"
    return ctx


def scoring_context(reason: str = "unreadable DICOM: <b>bad</b> transfer syntax") -> dict:
    return {
        "title": "Nightly scoring 2025-01-02",
        "generated_at": "2025-01-02 06:00 UTC",
        "run": {
            "id": "run-42",
            "model_name": "densenet121-cxr14-v3",
            "threshold_set_id": "ts-7",
            "started_at": "2025-01-02 02:00",
            "finished_at": "2025-01-02 02:14",
            "n_scored": 12345,
            "n_skipped": 3,
            "n_failed": 1,
        },
        "failures": [{"study_key": "00001234_001", "reason": reason}],
        "flags": [
            {"finding": name, "n_flagged": 100 + i, "flag_rate": 0.01 * (i + 1), "training_prevalence": 0.02 * (i + 1)}
            for i, name in reversed(list(enumerate(FINDINGS)))
        ],
        "top_studies": {"Effusion": [("00000001_000", 0.97), ("00000002_000", 0.93)], "Atelectasis": [("00000003_000", 0.88)]},
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
        raw = base64.b64decode(src[len(PNG_PREFIX) :], validate=True)
        assert raw.startswith(PNG_SIGNATURE)
        assert img.get("alt"), "every image needs alt text"


# --------------------------------------------------------------------------- evaluation
