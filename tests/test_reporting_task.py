"""The reporting tasks against SQLite: the evaluation context read back from the database (Grad-CAM,
intervals, calibration, subgroups, map, baselines), each evaluation with its own arrays, and the
nightly scoring report end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from report_contexts import per_class_rows
from report_html import PNG_PREFIX, parse

from cxrmodel.findings import FINDINGS
from db import evaluations, registry, studies
from db import thresholds as threshold_sets
from db.engine import session_scope
from reports import build_export_bundle, render_evaluation_html


def _seed_evaluation_database(tmp_path: Path) -> tuple[str, Path, int, int]:
    """SQLite with 8 test studies (real PNGs), a small FPN model version with thresholds, an
    evaluation with intervals, ECE, calibration and subgroups, its stored predictions (with a map),
    and a k-NN child version evaluated without any of the new fields."""
    import torch
    from PIL import Image

    from cxrmodel.data.metadata import AgeScaler
    from cxrmodel.models.artifacts import save_state_dict
    from cxrmodel.models.networks import build_model, count_parameters
    from db.engine import upgrade_database

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
        records.append(
            {
                "study_key": key,
                "patient_id": f"p{i // 2}",
                "follow_up": 0,
                "age": 30.0 + 5 * i,
                "sex": "MF"[i % 2],
                "view": ("PA", "AP")[i % 3 == 0],
                "source": "synthetic",
                "split": "test",
                "image_path": str(path),
                "content_hash": f"1:{i}",
                "labelled": True,
            }
        )
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
        r.update(
            auroc_ci_low=0.5,
            auroc_ci_high=0.9,
            f1_ci_low=0.1,
            f1_ci_high=0.6,
            ece=0.12,
            brier_calibrated=r["brier"] / 2,
            ece_calibrated=0.04,
        )
    aggregates = {
        "n_studies": n,
        "macro_auroc": 0.71,
        "micro_auroc": 0.7,
        "macro_f1": 0.4,
        "micro_f1": 0.41,
        "macro_precision": 0.4,
        "micro_precision": 0.4,
        "macro_recall": 0.5,
        "micro_recall": 0.5,
        "exact_match": 0.1,
        "hamming_loss": 0.2,
        "accuracy": 0.8,
        "lrap": 0.6,
        "mean_brier": 0.1,
    }
    new = {
        "macro_auroc_ci_low": 0.61,
        "macro_auroc_ci_high": 0.79,
        "macro_f1_ci_low": 0.3,
        "macro_f1_ci_high": 0.5,
        "mean_ece": 0.12,
        "n_bootstrap": 200,
        "calibration_method": "platt",
    }
    subgroups = [
        {"attribute": "sex", "group": g, "n_studies": 4, "n_positive_labels": 3, "macro_auroc": a, "macro_f1": 0.4}
        for g, a in (("M", 0.8), ("F", 0.7))
    ]
    with session_scope(url) as s:
        studies.sync_studies(s, records, labels)
        version = registry.register_model_version(
            s,
            name="fpn-v1",
            kind="densenet121_fpn",
            artifact_path=str(folder / "model.safetensors"),
            sha256=sha,
            config={"image_size": 32, "age_scaler": AgeScaler(20.0, 90.0, 55.0).to_dict()},
            status="champion",
            parameter_count=count_parameters(network),
        )
        tset = threshold_sets.save_threshold_set(s, version.id, "dynamic_f1", {}, thresholds, {"Hernia": "few positives"})
        ev = evaluations.save_evaluation(s, version.id, tset.id, "test", {**aggregates, **new}, per_class, subgroups)
        knn = registry.register_model_version(
            s,
            name="knn-of-fpn-v1",
            kind="knn_embedding",
            artifact_path=str(home / "models" / "knn" / "knn.npz"),
            sha256="0" * 64,
            parent_id=version.id,
            status="candidate",
            parameter_count=0,
        )
        knn_tset = threshold_sets.save_threshold_set(s, knn.id, "dynamic_f1", {}, thresholds, {})
        old_style = [
            {k: v for k, v in r.items() if "_ci_" not in k and "ece" not in k and "calibrated" not in k} for r in per_class
        ]
        knn_ev = evaluations.save_evaluation(s, knn.id, knn_tset.id, "test", aggregates, old_style)
        ids = (ev.id, knn_ev.id)
    keys = np.array([r["study_key"] for r in records])
    np.savez_compressed(
        folder / "predictions_test.npz",
        y_true=y_true,
        y_prob=y_prob,
        study_key=keys,
        y_prob_calibrated=y_prob * 0.9,
        map_xy=rng.normal(size=(6, 2)).astype(np.float32),
        map_rows=np.array([0, 1, 2, 4, 6, 7]),
    )
    (home / "models" / "knn").mkdir(parents=True)
    np.savez_compressed(home / "models" / "knn" / "predictions_test.npz", y_true=y_true, y_prob=y_prob, study_key=keys)
    return url, home, *ids


def test_evaluation_context_from_the_database(tmp_path):
    from tasks.reporting import N_EXAMPLES, evaluation_context

    url, home, ev_id, knn_ev_id = _seed_evaluation_database(tmp_path)
    ctx, version = evaluation_context(url, home, ev_id)
    assert version.name == "fpn-v1" and ctx.evaluation_id == ev_id
    agg = ctx.aggregates
    assert (agg["macro_auroc_ci_low"], agg["macro_auroc_ci_high"], agg["n_bootstrap"]) == (0.61, 0.79, 200)
    assert agg["calibration_method"] == "platt" and "calibration" not in agg and "bundle_path" not in agg
    assert "arrays_path" not in agg
    assert {r.finding: r.ece_calibrated for r in ctx.per_class} == dict.fromkeys(FINDINGS, 0.04)
    assert sorted((r.attribute, r.group, r.macro_auroc) for r in ctx.subgroups) == [("sex", "F", 0.7), ("sex", "M", 0.8)]
    assert ctx.y_prob_calibrated.shape == (8, 14)
    assert ctx.embedding_map.rows.tolist() == [0, 1, 2, 4, 6, 7]
    comparison = {r.name: r for r in ctx.comparison}
    assert comparison["fpn-v1"].macro_auroc_ci_low == 0.61 and comparison["knn-of-fpn-v1"].macro_auroc_ci_low is None
    examples = ctx.examples
    assert len(examples) == N_EXAMPLES
    for ex in examples:
        assert ex.gradcam_finding == ex.top_findings[0][0]
        assert ex.heatmap_data_uri.startswith(PNG_PREFIX)

    parsed = parse(render_evaluation_html(ctx))
    heat_alts = [img["alt"] for img in parsed.imgs if img["alt"].startswith("Grad-CAM")]
    assert len(heat_alts) == N_EXAMPLES
    assert parsed.tables["subgroup-gaps-table"][0][3] == "0.100"
    assert "no-embedding-map" not in parsed.ids and "no-calibration" not in parsed.ids
    bundle = build_export_bundle(ctx, _write(tmp_path / "r.html", "<html></html>"), tmp_path / "b.zip")
    assert bundle.is_file()

    # a k-NN baseline: no Grad-CAM (a note instead), no intervals, no subgroups, no map
    knn_ctx, _ = evaluation_context(url, home, knn_ev_id)
    assert knn_ctx.subgroups == () and knn_ctx.embedding_map is None and knn_ctx.y_prob_calibrated is None
    assert all(ex.heatmap_data_uri is None and "knn_embedding" in ex.gradcam_note for ex in knn_ctx.examples)
    parsed = parse(render_evaluation_html(knn_ctx))
    for missing in ("no-intervals", "no-subgroups", "no-embedding-map"):
        assert missing in parsed.ids


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_each_evaluation_reads_its_own_arrays(tmp_path, monkeypatch):
    """Two evaluations of one model on one split: the one with ``arrays_path`` reads its own npz,
    the older one without it the legacy file beside the model; overwriting that file (what a
    later evaluation used to do) leaves the first one alone."""
    from tasks import reporting

    monkeypatch.setattr(reporting, "_add_gradcam", lambda *args: None)  # not what this test is about
    url, home, ev_id, _ = _seed_evaluation_database(tmp_path)
    legacy = home / "models" / "fpn-v1" / "predictions_test.npz"
    stored = dict(np.load(legacy))
    own = tmp_path / "arrays" / "second.npz"
    own.parent.mkdir()
    np.savez_compressed(own, y_true=stored["y_true"], y_prob=1.0 - stored["y_prob"], study_key=stored["study_key"])
    with session_scope(url) as s:
        record = evaluations.evaluation_record(s, ev_id)
        tset = threshold_sets.save_threshold_set(s, record.model_version_id, "fixed", {}, dict.fromkeys(FINDINGS, 0.3), {})
        second = evaluations.save_evaluation(
            s, record.model_version_id, tset.id, "test", record.aggregates, record.per_class, arrays_path=str(own)
        ).id

    first_ctx, _ = reporting.evaluation_context(url, home, ev_id)
    second_ctx, _ = reporting.evaluation_context(url, home, second)
    np.testing.assert_array_equal(first_ctx.y_prob, stored["y_prob"])
    np.testing.assert_array_equal(second_ctx.y_prob, 1.0 - stored["y_prob"])
    assert second_ctx.embedding_map is None and first_ctx.embedding_map is not None

    def roc_image(ctx) -> str:
        return next(img["src"] for img in parse(render_evaluation_html(ctx)).imgs if img["alt"] == "ROC curves of all findings")

    assert roc_image(first_ctx) != roc_image(second_ctx)
    np.savez_compressed(
        legacy, y_true=stored["y_true"], y_prob=np.full_like(stored["y_prob"], 0.5), study_key=stored["study_key"]
    )
    again, _ = reporting.evaluation_context(url, home, second)
    np.testing.assert_array_equal(again.y_prob, second_ctx.y_prob)


def test_scoring_report_task_end_to_end(tmp_path):
    from test_report_queries import seed

    from tasks.reporting import render_scoring

    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    from db.engine import upgrade_database

    upgrade_database(url)
    ids = seed(url)
    path = Path(render_scoring.fn(url, tmp_path, ids["run_id"]))  # no embedding index: no similar cases, a warning
    assert path == tmp_path / "reports" / f"scoring_{ids['run_id']}.html"
    parsed = parse(path.read_text(encoding="utf-8"))
    assert "refresh-warning" in parsed.ids and "source folder missing" in parsed.text
    assert parsed.tables["failures-table"] == [["bad.png", "unreadable DICOM"]]
    flags = {r[0]: r for r in parsed.tables["flags-table"]}
    assert list(flags) == list(FINDINGS)
    assert flags["Effusion"][1:4] == ["2", "66.7%", "40.0%"] and flags["Hernia"][1:3] == ["0", "0.0%"]
    assert f"Nightly scoring run {ids['run_id']}" in parsed.text and "net-v1" in parsed.text
