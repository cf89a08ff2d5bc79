"""Configuration models: one validated place for every recipe knob.

Plain pydantic models that flows take as typed parameters (what to do), loadable from a
pipeline YAML (the shipped ones are in ``configs/``). Where things live and when they run (the
``CXR_*`` operations settings) is :mod:`deployments.settings`, outside the ML library.
"""

from __future__ import annotations

import warnings
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrmodel.findings import FINDINGS
from cxrmodel.io import MissingInputError
from cxrmodel.models.kinds import ModelKind


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthConfig(_Frozen):
    """Synthetic NIH-layout dataset."""

    n_studies: int = Field(2000, ge=10, description="Labelled studies to generate.")
    n_incoming: int = Field(200, ge=0, description="Unlabelled studies for nightly scoring.")
    image_size: int = Field(256, ge=32, le=2048, description="Side of the written PNGs in pixels.")
    seed: int = 0
    incoming_dicom_fraction: float = Field(0.25, ge=0.0, le=1.0)


class HubConfig(_Frozen):
    """A Hugging Face dataset repository holding NIH ChestX-ray14 (see :mod:`cxrmodel.data.hub`)."""

    repo_id: str = Field(..., min_length=3, description="e.g. 'org/NIH-Chest-X-ray-dataset'")
    revision: str = Field(..., min_length=1, description="A commit hash (reproducible) or a tag/branch.")
    archive_pattern: str = "images_{index:03d}.tar.gz"
    archives: list[int] = Field(default_factory=lambda: list(range(1, 13)))
    cache_dir: str | None = Field(None, description="Defaults to huggingface_hub's cache (HF_HUB_CACHE).")


class BalancingStep(_Frozen):
    """One step of a balancing recipe, applied to the training split only."""

    kind: Literal["keep_fraction_only", "keep_fraction_any", "flip_duplicate_under", "replicate_to"]
    finding: str | None = None
    fraction: float | None = Field(None, gt=0.0, le=1.0)
    count: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> BalancingStep:
        if self.finding is not None and self.finding not in (*FINDINGS, "No Finding"):
            raise ValueError(f"unknown finding {self.finding!r}")
        if self.kind.startswith("keep_fraction") and (self.finding is None or self.fraction is None):
            raise ValueError(f"{self.kind} needs finding and fraction")
        if self.kind in ("flip_duplicate_under", "replicate_to") and self.count is None:
            raise ValueError(f"{self.kind} needs count")
        return self


class DataConfig(_Frozen):
    """How studies become tensors: image size, split proportions, balancing preset."""

    image_size: int = Field(64, ge=32, le=1024, description="Model input side (pixels).")
    val_fraction: float = Field(0.08, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.20, gt=0.0, lt=0.5)
    split_seed: int = 0
    balancing: str = Field("demo", description="Name of a preset in cxrmodel.data.balancing.PRESETS, or 'none'.")
    balancing_seed: int = 0


#: Training-recipe fields renamed: old name -> (new name, old value -> new value).
_RENAMED_TRAIN_FIELDS = {
    "selection_metric": ("checkpoint_selection", {"macro_f1": "macro_f1", "mean_auroc": "val_auroc"}),
    "augment": ("augmentation", {True: "seed004", False: "none"}),
}


class TrainConfig(_Frozen):
    """Seed 004's training recipe; every number here is a parameter, not a constant."""

    architecture: Literal[ModelKind.DENSENET121_FPN, ModelKind.DENSENET121] = ModelKind.DENSENET121_FPN
    backbone: Literal["densenet121", "densenet_small"] = Field(
        "densenet121", description="The DenseNet under the network; 'densenet_small' (3 blocks, ~0.5 M) for small sets."
    )
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw"] = Field("adam", description="'adamw': decoupled weight decay.")
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["plateau", "cosine"] = Field(
        "plateau", description="'plateau': ReduceLROnPlateau on validation loss, per epoch; 'cosine': per batch."
    )
    warmup_epochs: int = Field(0, ge=0, description="cosine: linear warm-up from 1 % of the rate over these epochs.")
    scheduler_patience: int = Field(2, ge=0)
    scheduler_factor: float = Field(0.5, gt=0, lt=1)
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Exponential moving average of the weights (validated and saved); None: off."
    )
    early_stopping_patience: int | None = Field(None, ge=1)
    checkpoint_selection: Literal["last", "val_loss", "val_auroc", "macro_f1"] = Field(
        "macro_f1",
        description="Which epoch is kept: 'last', lowest validation loss, highest validation mean AUROC or macro-F1. "
        "On a small validation split the per-epoch AUROC and F1 are noisy and their maximum is a chance peak: "
        "keep 'last' (with a cosine schedule and EMA) or 'val_loss'. (Replaces selection_metric.)",
    )
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout of seed 004's dense head (the CheXNet-style head has none).")
    pos_weight_overrides: dict[str, float] = Field(
        default_factory=dict, description="Manual positive weights, e.g. Pneumonia: 4.5"
    )
    pos_weight_max: float | None = Field(None, gt=0, description="Clip computed positive weights.")
    weights: Literal["scratch", "imagenet", "file", "hub"] = Field(
        "scratch", description="Backbone initialisation; see cxrmodel.models.weights."
    )
    pretrained_weights: Path | None = Field(None, description="weights='file': a local DenseNet121 state dict.")
    weights_hub_repo: str | None = Field(None, description="weights='hub': a Hugging Face model repo id.")
    weights_hub_file: str = Field("densenet121.pth", description="weights='hub': state-dict file in that repo.")
    weights_hub_revision: str | None = None
    weights_hub_cache_dir: str | None = Field(None, description="Defaults to huggingface_hub's cache.")
    augmentation: Literal["none", "light", "seed004"] = Field(
        "seed004", description="Training augmentation strength (cxrmodel.data.transforms). (Replaces augment.)"
    )
    tta_hflip: bool = Field(
        False, description="Predict as the mean of the image and its mirror (validation, evaluation, scoring)."
    )
    num_workers: int = Field(0, ge=0)
    prefetch_factor: int | None = Field(None, ge=1, description="Batches each loader worker prepares ahead.")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision: 'auto' = bf16 on a CUDA device that supports it, else off."
    )
    channels_last: bool | None = Field(None, description="NHWC memory format; None = on CUDA only.")
    compile: bool = Field(False, description="torch.compile the training forward pass.")
    resume_checkpoint: Path | None = Field(None, description="checkpoint.pt of an earlier run to continue.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, raw):
        """Recipes written before the rename say ``selection_metric`` (macro_f1 | mean_auroc) and
        ``augment`` (true | false); they are read into ``checkpoint_selection`` and
        ``augmentation`` (the new name wins when both are given), with a warning naming it."""
        if not isinstance(raw, dict) or not set(_RENAMED_TRAIN_FIELDS) & set(raw):
            return raw
        raw = dict(raw)
        for old, (new, translate) in _RENAMED_TRAIN_FIELDS.items():
            if old in raw:
                value = raw.pop(old)
                if new not in raw:
                    raw[new] = translate.get(value, value)
                warnings.warn(f"training recipe: {old!r} is replaced by {new!r}", FutureWarning, stacklevel=2)
        return raw

    @model_validator(mode="before")
    @classmethod
    def _file_implies_weights_file(cls, raw):
        """A ``pretrained_weights`` file with no ``weights`` means ``weights: file``."""
        if isinstance(raw, dict) and raw.get("pretrained_weights") is not None and "weights" not in raw:
            return {**raw, "weights": "file"}
        return raw

    @model_validator(mode="after")
    def _weights_source(self) -> TrainConfig:
        if self.backbone != "densenet121" and self.weights in ("imagenet", "hub"):
            raise ValueError(f"weights={self.weights!r} exist for the densenet121 backbone only, not {self.backbone!r}")
        if self.weights == "file" and self.pretrained_weights is None:
            raise ValueError("weights='file' needs pretrained_weights")
        if self.pretrained_weights is not None and self.weights != "file":
            raise ValueError(f"pretrained_weights is read with weights='file' only, not weights={self.weights!r}")
        if self.weights == "hub" and not self.weights_hub_repo:
            raise ValueError("weights='hub' needs weights_hub_repo")
        return self

    def model_kwargs(self, with_weights: bool = True) -> dict:
        """Keyword arguments for :func:`cxrmodel.models.networks.build_model`: the backbone, its
        initial weights (unless ``with_weights`` is false: random, e.g. for data-parallel ranks
        that receive rank 0's), and the dropout for the architecture that has one."""
        dropout = {"dropout": self.dropout} if self.architecture == ModelKind.DENSENET121_FPN else {}
        return {"backbone": self.backbone, **dropout, **(self.backbone_kwargs() if with_weights else {})}

    def backbone_kwargs(self) -> dict:
        """Keyword arguments for :func:`cxrmodel.models.networks.build_model`: the one ``weights``
        value of this recipe's source (fetches hub weights)."""
        if self.weights == "imagenet":
            return {"weights": "imagenet"}
        if self.weights == "file":
            return {"weights": self.pretrained_weights}
        if self.weights == "hub":
            from cxrmodel.models.weights import fetch_hub_weights

            path = fetch_hub_weights(
                self.weights_hub_repo, self.weights_hub_file, self.weights_hub_revision, self.weights_hub_cache_dir
            )
            return {"weights": path}
        return {}

    @field_validator("pos_weight_overrides")
    @classmethod
    def _known_findings(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(FINDINGS)
        if unknown:
            raise ValueError(f"unknown finding(s) in pos_weight_overrides: {sorted(unknown)}")
        return value


class ThresholdMethod(StrEnum):
    """How a threshold set was chosen: the four calibration methods, or ``fixed`` by hand."""

    YOUDEN = "youden"
    PRECISION_CONSTRAINED_F1 = "precision_constrained_f1"
    DYNAMIC_F1 = "dynamic_f1"
    FIXED_SENSITIVITY = "fixed_sensitivity"
    FIXED = "fixed"


class ThresholdConfig(_Frozen):
    """Per-finding decision thresholds (seed 004, 'dynamic threshold per class')."""

    method: Literal[
        ThresholdMethod.YOUDEN,
        ThresholdMethod.PRECISION_CONSTRAINED_F1,
        ThresholdMethod.DYNAMIC_F1,
        ThresholdMethod.FIXED_SENSITIVITY,
    ] = ThresholdMethod.DYNAMIC_F1
    min_precision: float = Field(0.40, ge=0, le=1)
    min_sensitivity: float = Field(0.90, gt=0, le=1, description="fixed_sensitivity: the operating point for triage.")
    grid_start: float = 0.10
    grid_stop: float = 0.85
    grid_step: float = 0.05
    low_f1: float = Field(0.30, ge=0, le=1, description="Dynamic method: lower the threshold under this F1.")
    adjustment: float = Field(0.05, ge=0, le=0.5)


class EvaluationConfig(_Frozen):
    """What an evaluation computes beyond the point metrics, and how promotion decides."""

    n_bootstrap: int = Field(1000, ge=0, description="Patient-level bootstrap resamples for the CIs (0: none).")
    confidence: float = Field(0.95, gt=0, lt=1)
    calibration: Literal["none", "temperature", "platt"] = Field(
        "none", description="Per-class probability calibration fitted on validation; Brier and ECE before/after."
    )
    ece_bins: int = Field(15, ge=2, le=100)
    subgroup_min_studies: int = Field(20, ge=1, description="Smaller subgroups are listed without metrics.")
    embedding_map: bool = Field(True, description="2-D t-SNE map of the test studies' embeddings in the report.")
    map_max_points: int = Field(2000, ge=10)
    random_state: int = 0
    promotion_metric: Literal["macro_auroc", "macro_f1", "micro_f1"] = Field(
        "macro_auroc", description="What the registry ranks candidates by on the validation split (never on test)."
    )
    promotion_margin: float = Field(0.0, ge=0, le=1)
    min_validation_studies: int = Field(
        200,
        ge=1,
        description="A validation split smaller than this cannot rank candidates: they are ranked by "
        "patient-grouped cross-validation over train + val instead (each candidate retrained per fold).",
    )
    cv_folds: int = Field(5, ge=2, le=20, description="Folds of that cross-validation.")
    cv_min_positives: int = Field(
        5, ge=1, description="A finding enters a fold's macro AUROC with at least this many held-out positives."
    )


class ClassicalConfig(_Frozen):
    """The classical baseline (:mod:`cxrmodel.models.classical`): one logistic regression per
    finding on the cached image shrunk to ``side x side`` pixels plus age, sex and view."""

    side: int = Field(32, ge=4, le=256, description="Side of the downsampled image the regression reads.")
    c: float = Field(0.01, gt=0, description="Inverse L2 strength (scikit-learn's C).")
    max_iter: int = Field(2000, ge=10)


class CandidatesConfig(_Frozen):
    """The candidates one training run trains, named once: ``cxr train``, the pipeline, the demo
    and the weekly retrain all train exactly these (:func:`flows.pipeline.train_candidates_flow`).

    Seed 004's network is always a candidate (its recipe is the configuration's ``train:``
    section; the k-NN and MLP heads, the retrieval index and the map sit on it). The others are
    each ``false`` or their recipe: ``knn``/``mlp`` switch the embedding heads on that network;
    ``chexnet`` is the image-only CheXNet-style DenseNet's training recipe (its architecture is
    always ``densenet121``); ``classical`` is the pixel-logistic regression's (``true``: defaults).
    """

    knn: bool = True
    mlp: bool = True
    chexnet: TrainConfig | Literal[False] = False
    classical: ClassicalConfig | Literal[False] = False

    @field_validator("chexnet", "classical", mode="before")
    @classmethod
    def _true_is_the_defaults(cls, value):
        return {} if value is True else value

    @field_validator("chexnet")
    @classmethod
    def _chexnet_is_image_only(cls, value):
        if value is False or value.architecture == ModelKind.DENSENET121:
            return value
        return TrainConfig.model_validate({**value.model_dump(exclude_unset=True), "architecture": ModelKind.DENSENET121})

    def kinds(self) -> set[ModelKind]:
        """The model kinds a training run with this section registers."""
        kinds = {ModelKind.DENSENET121_FPN}
        kinds |= {ModelKind.KNN_EMBEDDING} if self.knn else set()
        kinds |= {ModelKind.MLP_EMBEDDING} if self.mlp else set()
        kinds |= {ModelKind.DENSENET121} if self.chexnet is not False else set()
        kinds |= {ModelKind.PIXEL_LOGISTIC} if self.classical is not False else set()
        return kinds


#: Top-level keys of configurations written before the ``candidates:`` section, and what replaced them.
_LEGACY_CANDIDATE_KEYS = {
    "chexnet_baseline": "candidates.chexnet",
    "classical_baseline": "candidates.classical",
    "classical": "candidates.classical",
}


class PipelineConfig(_Frozen):
    """Everything one end-to-end run needs."""

    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    thresholds: ThresholdConfig = ThresholdConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    synth: SynthConfig | None = Field(None, description="The synthetic dataset cxr demo generates (default: SynthConfig()).")

    @model_validator(mode="before")
    @classmethod
    def _legacy_candidate_keys(cls, raw):
        """Configurations written before the ``candidates:`` section named the CheXNet-style
        recipe ``chexnet_baseline`` and the classical one ``classical_baseline: true`` plus
        ``classical:``; they are read into ``candidates`` with a warning naming the new keys."""
        if not isinstance(raw, dict) or not set(_LEGACY_CANDIDATE_KEYS) & set(raw):
            return raw
        raw = dict(raw)
        used = sorted(set(_LEGACY_CANDIDATE_KEYS) & set(raw))
        if "candidates" in raw:
            raise ValueError(f"{used} and 'candidates' both name candidates: keep 'candidates' only")
        candidates: dict = {}
        if (chexnet := raw.pop("chexnet_baseline", None)) is not None:
            candidates["chexnet"] = chexnet
        wanted, recipe = raw.pop("classical_baseline", False), raw.pop("classical", {})
        candidates["classical"] = (recipe or True) if wanted else False
        raw["candidates"] = candidates
        replaced = ", ".join(f"{old!r} by {_LEGACY_CANDIDATE_KEYS[old]!r}" for old in used)
        warnings.warn(f"configuration keys replaced: {replaced}", FutureWarning, stacklevel=2)
        return raw


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Read a YAML file into a validated :class:`PipelineConfig` (a missing file is an error
    naming it, never a silent fall-back to the defaults)."""
    if not Path(path).is_file():
        raise MissingInputError(f"configuration file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return PipelineConfig.model_validate(raw)
