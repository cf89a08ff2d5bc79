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
class CandidatesTrained:
    """The candidates one training run registered (``network``, ``knn``, ``mlp``, ``chexnet``,
    ``classical`` -> version id) and the network's embedding index."""

    versions: dict[str, int]
    embedding_index: str | None = None


@dataclass(frozen=True)
class EvaluateResult:
    evaluation_id: int
    promoted: bool


@dataclass(frozen=True)
class SelectionResult:
    """How the candidates were ranked: ``basis`` ('validation' or 'cross_validation'), the
    ``metric``, each ranked version's figure (the champion's too), the best candidate
    (``chosen_id``, None when none could be ranked) and the champion before the selection."""

    basis: str
    metric: str
    scores: dict[int, float | None]
    chosen_id: int | None
    previous_champion_id: int | None = None


@dataclass(frozen=True)
class ScoreResult:
    scoring_run_id: int
    report: str | None = None


@dataclass(frozen=True)
class CandidatesResult:
    """The candidates one run trained (``network``, ``knn``, ``mlp``, ``chexnet``, ``classical``
    -> version id), each calibrated; how they were ranked; each one's single test evaluation;
    whether the best candidate is the champion now; and the report of the best candidate."""

    versions: dict[str, int]
    selection: SelectionResult
    test_evaluations: dict[str, int]
    champion: bool
    report: str
    embedding_index: str | None = None

    @property
    def chosen(self) -> str | None:
        """The name of the best candidate (``network``, ``classical``, ...)."""
        return next((n for n, v in self.versions.items() if v == self.selection.chosen_id), None)


@dataclass(frozen=True)
class PipelineResult:
    """Everything one end-to-end run produced, with the seconds of each stage."""

    refresh: RefreshResult
    candidates: CandidatesResult
    scoring: ScoreResult
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def report(self) -> str:
        return self.candidates.report

    @property
    def model_version_id(self) -> int:
        """Seed 004's network of this run."""
        return self.candidates.versions["network"]

    @property
    def promoted(self) -> bool:
        return self.candidates.champion


@dataclass(frozen=True)
class RetrainResult:
    """The weekly retrain: the candidates, their selection, test evaluations and the report."""

    candidates: CandidatesResult


@dataclass(frozen=True)
class NightResult:
    """What one night did: the refresh (None when it failed) and the scoring run."""

    refresh: RefreshResult | None
    refresh_error: str | None
    scoring_run_id: int
    scoring_report: str | None
    #: The PACS steps when CXR_DICOMWEB_URL is set (issue 23): {"pull": ..., "push": ..., "errors": [...]}.
    pacs: dict | None = None
