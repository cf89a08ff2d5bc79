"""What each flow returns: frozen dataclasses of plain values (ids, counts, paths as strings).

Prefect persists and passes them like any Python object; the CLI prints them as JSON with
``dataclasses.asdict``; callers read attributes, never string keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RefreshResult:
    """One refresh run: its id, the summed counts of its steps, and the dataset report."""

    refresh_run_id: int
    rows: int
    added: int
    updated: int
    unchanged: int
    quarantined: int
    dataset_report: str | None = None


@dataclass(frozen=True)
class TrainResult:
    """The trained network's version, its embedding index, and the baselines fitted on it."""

    model_version_id: int
    embedding_index: str | None = None
    knn_version_id: int | None = None
    mlp_version_id: int | None = None

    @property
    def baseline_version_ids(self) -> dict[str, int]:
        """``{"knn": id, "mlp": id}`` of the embedding baselines that were fitted."""
        return {k: v for k, v in (("knn", self.knn_version_id), ("mlp", self.mlp_version_id)) if v is not None}


@dataclass(frozen=True)
class EvaluateResult:
    evaluation_id: int
    promoted: bool


@dataclass(frozen=True)
class ScoreResult:
    scoring_run_id: int
    report: str | None = None


@dataclass(frozen=True)
class PipelineResult:
    """Everything one end-to-end run produced, with the seconds of each stage."""

    refresh: RefreshResult
    model_version_id: int
    knn_version_id: int | None
    mlp_version_id: int | None
    embedding_index: str | None
    evaluation_id: int
    baseline_evaluation_id: int | None
    mlp_baseline_evaluation_id: int | None
    chexnet_evaluation_id: int | None
    promoted: bool
    scoring: ScoreResult
    report: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrainResult:
    """The weekly retrain: the challenger, its evaluation, the baselines' evaluations, the report."""

    model_version_id: int
    evaluation_id: int
    promoted: bool
    baseline_evaluation_ids: dict[str, int]
    report: str


@dataclass(frozen=True)
class NightResult:
    """What one night did: the refresh (None when it failed) and the scoring run."""

    refresh: RefreshResult | None
    refresh_error: str | None
    scoring_run_id: int
    scoring_report: str | None
