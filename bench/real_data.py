"""Patient-grouped cross-validation of every candidate the system trains, on the 690 real NIH
images of ``data/real-dev``, beside a pixel-logistic reference computed in the same run.

Everything goes through the project's own code: the metadata parser and image location
(:func:`cxrmodel.data.labelled.read_labelled_dataset`), the image cache, the training-data
preparation and :func:`cxrmodel.training.network.train_network`, a network's predictions as
evaluation makes them (:class:`cxrmodel.models.loading.LoadedModel`, with or without flip TTA),
the k-NN and MLP embedding heads and the classical :class:`PixelLogisticModel`.

Folds: :func:`cxrmodel.data.splits.patient_folds` (5, patient-grouped). In each fold every
candidate learns from the same rows: the training part minus a patient-grouped validation
share (``val_fraction`` of the recipe), which the networks validate on, as the pipeline's
train/val split would. Scores: macro AUROC over the findings with at least 5 positives in the
held-out fold (:func:`cxrmodel.evaluation.crossval.supported_macro_auroc`).

Candidates: ``seed004`` (the seed-004 network with ``configs/small-real.yaml``), ``seed004_tta``
(the same fitted network, predicting with horizontal-flip TTA), ``chexnet`` (CheXNet-style
DenseNet121, the recipe's ``candidates.chexnet``), ``knn`` and ``mlp`` (heads on the seed004
network's embeddings), ``pixel_logistic`` (the reference). Also retrieval precision@5 of the
held-out studies against the training studies, raw and whitened embeddings, against random
retrieval and the prevalence list.

    python bench/real_data.py                        # the full run
    python bench/real_data.py --folds 2 --epochs 2   # a quick look (about 6 min on one busy core)

On a machine whose cores are shared with other work, pass ``--threads 1``: two OpenMP threads
that wait for each other on an overloaded machine run many times slower than one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import emit  # noqa: E402

DATA_DIR = ROOT / "data" / "real-dev"
RECIPE = ROOT / "configs" / "small-real.yaml"
CANDIDATES = ("seed004", "seed004_tta", "chexnet", "knn", "mlp", "pixel_logistic")
REFERENCE = "pixel_logistic"
MIN_POSITIVES = 5
RETRIEVAL_K = 5


def load_dev_set(root: Path, cache_root: Path, image_size: int):
    """(frame of labelled studies as the database would return it, ``uint8 [N, S, S]`` images
    decoded through the image cache)."""
    import numpy as np
    import pandas as pd

    from cxrmodel.config import DataConfig
    from cxrmodel.data.cache import ImageCache, cached_loader
    from cxrmodel.data.labelled import read_labelled_dataset
    from cxrmodel.findings import FINDINGS

    batch = read_labelled_dataset(root, "nih-local", DataConfig(image_size=image_size), hash_threads=2)
    frame = pd.DataFrame(batch.records)
    for finding in FINDINGS:
        frame[finding] = [batch.labels[key][finding] for key in frame["study_key"]]
    frame["flip"] = False
    frame = frame.sort_values("study_key").reset_index(drop=True)
    load = cached_loader(ImageCache(cache_root, image_size), frame)
    images = np.stack([load(i) for i in range(len(frame))])
    return frame, images


def fold_training_frame(frame, train_index, val_fraction: float, seed: int):
    """The fold's training rows with ``split`` 'train' or 'val' (a patient-grouped share of
    about ``val_fraction``, never a patient on both sides)."""
    import numpy as np

    from cxrmodel.data.splits import patient_folds

    rows = frame.iloc[train_index].reset_index(drop=True)
    inner = patient_folds(rows, n_folds=max(2, round(1 / val_fraction)), seed=seed)
    rows["split"] = np.where(inner == 0, "val", "train")
    return rows


def pixel_logistic_predict(images, frame, fit_rows, test_index):
    """The reference: :class:`PixelLogisticModel` fitted on ``fit_rows`` (positions in ``frame``)."""
    from cxrmodel.data.metadata import AgeScaler, labels_matrix, patient_features
    from cxrmodel.models.classical import PixelLogisticModel

    train, test = frame.iloc[fit_rows], frame.iloc[test_index]
    scaler = AgeScaler.fit(train["age"])
    model = PixelLogisticModel.fit(images[fit_rows], patient_features(train, scaler), labels_matrix(train))
    return model.predict_proba(images[test_index], patient_features(test, scaler))


def _train(rows, cache_root: Path, data, recipe):
    """Train one network on ``rows`` (split train/val) with the project's training path; the
    loaded model as evaluation would use it."""
    import torch

    from cxrmodel.models.loading import LoadedModel
    from cxrmodel.training.data import prepare_training_data
    from cxrmodel.training.loop import seed_everything
    from cxrmodel.training.network import train_network

    seed_everything(recipe.seed)
    prepared = prepare_training_data(rows, cache_root, data, recipe)
    with tempfile.TemporaryDirectory() as out:
        model, result = train_network(prepared, Path(out), recipe, device=torch.device("cpu"))
    model.load_state_dict(result.best_state)
    loaded = LoadedModel(0, recipe.architecture, model.eval(), data.image_size, prepared.scaler, tta_hflip=recipe.tta_hflip)
    return loaded, result


def _retrieval(train_embeddings, train_labels, test_embeddings, test_labels) -> dict[str, float]:
    from cxrmodel.explain.retrieval import (
        EmbeddingWhitening,
        precision_at_k,
        prevalence_precision_at_k,
        random_precision_at_k,
    )

    whitening = EmbeddingWhitening.fit(train_embeddings)
    white_train, white_test = whitening.transform(train_embeddings), whitening.transform(test_embeddings)
    centred = train_embeddings.mean(axis=0)
    return {
        "raw": precision_at_k(train_embeddings, train_labels, RETRIEVAL_K, test_embeddings, test_labels),
        "centred": precision_at_k(train_embeddings - centred, train_labels, RETRIEVAL_K, test_embeddings - centred, test_labels),
        "whitened": precision_at_k(white_train, train_labels, RETRIEVAL_K, white_test, test_labels),
        "random": random_precision_at_k(train_labels, test_labels),
        "prevalence": prevalence_precision_at_k(train_labels, RETRIEVAL_K, test_labels),
        "raw_cosine_median": _median_top_cosine(train_embeddings, test_embeddings),
        "whitened_cosine_median": _median_top_cosine(white_train, white_test),
    }


def _median_top_cosine(index, queries) -> float:
    import numpy as np

    from cxrmodel.explain.similarity import l2_normalise

    sims = l2_normalise(queries) @ l2_normalise(index).T
    return float(np.median(np.sort(sims, axis=1)[:, -RETRIEVAL_K:]))


def run_fold(frame, images, train_index, test_index, candidates, config, cache_root: Path, seed: int):
    """Probabilities of each candidate on ``test_index``, and the fold's notes."""
    import numpy as np

    from cxrmodel.data.metadata import labels_matrix
    from cxrmodel.models.embedding import KnnEmbeddingModel, MlpEmbeddingModel

    rows = fold_training_frame(frame, train_index, config.data.val_fraction, seed)
    fit_rows = train_index[(rows["split"] == "train").to_numpy()]
    test = frame.iloc[test_index].reset_index(drop=True)
    out, notes = {}, {"n_train": int(len(fit_rows)), "n_val": int((rows["split"] == "val").sum()), "n_test": len(test_index)}
    if REFERENCE in candidates:
        out[REFERENCE] = pixel_logistic_predict(images, frame, fit_rows, test_index)
    if {"seed004", "seed004_tta", "knn", "mlp"} & set(candidates):
        started = time.perf_counter()
        loaded, result = _train(rows, cache_root, config.data, config.train)
        notes["seed004_seconds"] = round(time.perf_counter() - started, 1)
        notes["seed004_val_auroc_by_epoch"] = [r.mean_auroc for r in result.history]
        notes["seed004_kept_epoch"] = result.best_epoch
        if "seed004" in candidates:
            out["seed004"] = replace(loaded, tta_hflip=False).predict_frame(test, cache_root, device="cpu")
        if "seed004_tta" in candidates:
            out["seed004_tta"] = replace(loaded, tta_hflip=True).predict_frame(test, cache_root, device="cpu")
        train_rows = frame.iloc[fit_rows].reset_index(drop=True)
        train_embeddings = loaded.embed_frame(train_rows, cache_root, device="cpu")
        test_embeddings = loaded.embed_frame(test, cache_root, device="cpu")
        train_labels, test_labels = labels_matrix(train_rows), labels_matrix(test)
        if "knn" in candidates:
            out["knn"] = KnnEmbeddingModel.fit(train_embeddings, train_labels).predict_proba(test_embeddings)
        if "mlp" in candidates:
            out["mlp"] = MlpEmbeddingModel.fit(train_embeddings, train_labels, seed=seed).predict_proba(test_embeddings)
        notes["retrieval"] = _retrieval(train_embeddings, train_labels, test_embeddings, test_labels)
    if "chexnet" in candidates:
        started = time.perf_counter()
        chexnet, _ = _train(rows, cache_root, config.data, config.candidates.chexnet)
        notes["chexnet_seconds"] = round(time.perf_counter() - started, 1)
        out["chexnet"] = chexnet.predict_frame(test, cache_root, device="cpu")
    return {name: np.asarray(out[name]) for name in candidates}, notes


def bench_config(epochs: int | None, chexnet_epochs: int | None):
    """``configs/small-real.yaml`` on the CPU, its epochs overridden when asked."""
    from cxrmodel.config import load_pipeline_config

    config = load_pipeline_config(RECIPE)
    train = config.train.model_copy(update={"device": "cpu", **({"epochs": epochs} if epochs else {})})
    chexnet = config.candidates.chexnet or config.train.model_copy(update={"architecture": "densenet121"})
    chexnet_epochs = chexnet_epochs or epochs
    chexnet = chexnet.model_copy(update={"device": "cpu", **({"epochs": chexnet_epochs} if chexnet_epochs else {})})
    candidates = config.candidates.model_copy(update={"chexnet": chexnet})
    return config.model_copy(update={"train": train, "candidates": candidates})


def cross_validate_candidates(frame, images, candidates, config, cache_root: Path, n_folds: int, seed: int = 0):
    """Per candidate a :class:`CrossValidationResult` on the same patient folds, and per-fold notes."""
    from cxrmodel.data.metadata import labels_matrix
    from cxrmodel.data.splits import patient_folds
    from cxrmodel.evaluation.crossval import cross_validate

    folds = patient_folds(frame, n_folds=n_folds, seed=seed)
    per_fold: dict[int, dict] = {}
    notes: list[dict] = []

    def fold_predictions(train_index, test_index):
        key = int(test_index[0])
        if key not in per_fold:
            started = time.perf_counter()
            per_fold[key], fold_notes = run_fold(frame, images, train_index, test_index, candidates, config, cache_root, seed)
            notes.append({**fold_notes, "seconds": round(time.perf_counter() - started, 1)})
            print(f"fold {len(notes)}/{n_folds} done in {notes[-1]['seconds']:.0f}s", file=sys.stderr, flush=True)
        return per_fold[key]

    labels = labels_matrix(frame)
    results = {}
    for name in candidates:
        results[name] = cross_validate(
            lambda tr, te, name=name: fold_predictions(tr, te)[name], labels, folds, min_positives=MIN_POSITIVES
        )
    return results, notes


def summarise(results, notes, reference: str | None) -> dict:
    import numpy as np

    from cxrmodel.evaluation.crossval import paired_difference

    summary = {}
    for name, cv in results.items():
        row = {"mean": cv.mean, "std": cv.std, "folds": list(cv.fold_scores), "findings": [list(f) for f in cv.fold_findings]}
        if reference in results and name != reference:
            row["diff_mean"], row["diff_std"] = paired_difference(cv, results[reference])
        summary[name] = row
    retrieval = [n["retrieval"] for n in notes if "retrieval" in n]
    if retrieval:
        summary["retrieval_p_at_5"] = {k: float(np.mean([r[k] for r in retrieval])) for k in retrieval[0]}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="Override the recipe's epochs (both networks).")
    parser.add_argument("--chexnet-epochs", type=int, default=None)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"Comma-separated subset of {CANDIDATES}.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="Image cache folder (default: a temporary one).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_data.json")
    args = parser.parse_args(argv)
    candidates = tuple(c.strip() for c in args.candidates.split(",") if c.strip())
    unknown = set(candidates) - set(CANDIDATES)
    if unknown:
        parser.error(f"unknown candidate(s) {sorted(unknown)}; choose from {CANDIDATES}")

    import torch

    torch.set_num_threads(args.threads)
    config = bench_config(args.epochs, args.chexnet_epochs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache_root = args.cache or Path(tmp) / "cache"
        frame, images = load_dev_set(DATA_DIR, cache_root, config.data.image_size)
        results, notes = cross_validate_candidates(frame, images, candidates, config, cache_root, args.folds)
    wall = time.perf_counter() - started
    summary = summarise(results, notes, REFERENCE if REFERENCE in candidates else None)
    ref = summary.get(REFERENCE)
    for name in candidates:
        row = summary[name]
        spread = f"±{row['std']:.3f}" if row["std"] is not None else ""
        against = (
            f"; {row['diff_mean']:+.3f}±{row['diff_std'] or 0:.3f} vs pixel-logistic {ref['mean']:.3f}"
            if "diff_mean" in row
            else ""
        )
        emit(
            f"real dev {args.folds}-fold CV macro AUROC: {name}", round(row["mean"], 4), "AUROC", f"{spread} over folds{against}"
        )
    if "retrieval_p_at_5" in summary:
        r = summary["retrieval_p_at_5"]
        emit("real dev retrieval p@5 (whitened embeddings)", round(r["whitened"], 4), "share",
             f"raw {r['raw']:.3f}, random {r['random']:.3f}, prevalence list {r['prevalence']:.3f}")  # fmt: skip
    emit("real dev CV wall time", round(wall, 1), "s", f"{args.folds} folds, {torch.get_num_threads()} threads (target < 1800 s)",
         wall < 1800 if args.folds == 5 and args.epochs is None else None)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "wall_seconds": round(wall, 1),
        "recipe": config.train.model_dump(mode="json"),
        "chexnet_recipe": config.candidates.chexnet.model_dump(mode="json"),
        "n_studies": len(frame),
        "n_patients": int(frame["patient_id"].nunique()),
        "candidates": summary,
        "folds": notes,
    }
    args.out.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
