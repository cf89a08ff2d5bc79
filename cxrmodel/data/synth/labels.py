"""Label and patient sampling that follows the real NIH ChestX-ray14 statistics.

Marginal per-image frequencies are Table 1 of the seed report (counts over 112,120 images).
Images are healthy ("No Finding") with the real 53.8 % probability; otherwise each finding is
drawn with a per-finding probability solved so that, conditioned on at least one finding, its
marginal matches the table. A few clinically common pairs are made more likely together, and
three findings depend on patient features so the tabular branch has something to learn:
Cardiomegaly and Emphysema grow with age, Effusion and Edema are more frequent on AP films.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cxrmodel.findings import FINDINGS

TOTAL_IMAGES = 112_120
NIH_COUNTS: dict[str, int] = {
    "Infiltration": 19_894,
    "Effusion": 13_317,
    "Atelectasis": 11_559,
    "Nodule": 6_331,
    "Mass": 5_782,
    "Pneumothorax": 5_302,
    "Consolidation": 4_667,
    "Pleural_Thickening": 3_385,
    "Cardiomegaly": 2_776,
    "Emphysema": 2_516,
    "Edema": 2_303,
    "Fibrosis": 1_686,
    "Pneumonia": 1_431,
    "Hernia": 227,
}
NO_FINDING_COUNT = 60_361
NIH_PREVALENCE = np.array([NIH_COUNTS[f] / TOTAL_IMAGES for f in FINDINGS])
P_NO_FINDING = NO_FINDING_COUNT / TOTAL_IMAGES

#: (given, then, multiplier): the second finding is this much likelier when the first is present.
CO_OCCURRENCE = (
    ("Cardiomegaly", "Effusion", 2.0),
    ("Edema", "Effusion", 2.0),
    ("Effusion", "Atelectasis", 1.6),
    ("Mass", "Nodule", 1.8),
    ("Pneumonia", "Infiltration", 1.8),
)

P_MALE = 0.565
P_AP = 0.40
AGE_MEAN, AGE_SD = 47.0, 16.8


def age_factor(age: np.ndarray | float) -> np.ndarray:
    """Multiplier for age-dependent findings, averaging about 1 over the NIH age distribution."""
    return np.clip((np.asarray(age, dtype=float) - 12.0) / 35.0, 0.15, 2.4)


def view_factor(view_is_ap: np.ndarray | bool) -> np.ndarray:
    """Multiplier for view-dependent findings: 1.6 on AP, 0.6 on PA (averages 1.0 at 40 % AP)."""
    return np.where(np.asarray(view_is_ap), 1.6, 0.6)


AGE_DEPENDENT = ("Cardiomegaly", "Emphysema")
VIEW_DEPENDENT = ("Effusion", "Edema")


@lru_cache(maxsize=1)
def conditional_probabilities() -> np.ndarray:
    """Per-finding probabilities given "not healthy", corrected for the at-least-one rejection."""
    target = NIH_PREVALENCE / (1.0 - P_NO_FINDING)
    q = target.copy()
    for _ in range(200):
        q = np.clip(target * (1.0 - np.prod(1.0 - q)), 0, 0.95)
    return q


@dataclass(frozen=True)
class Patient:
    patient_id: int
    sex: str
    base_age: int
    n_studies: int


def sample_patient(rng: np.random.Generator, patient_id: int, mean_studies: float = 2.0) -> Patient:
    age = int(np.clip(round(rng.normal(AGE_MEAN, AGE_SD)), 1, 95))
    n = int(min(rng.geometric(1.0 / mean_studies), 12))
    return Patient(patient_id, "M" if rng.random() < P_MALE else "F", age, n)


_age_norm = None


def _age_normaliser() -> float:
    global _age_norm
    if _age_norm is None:
        ages = np.clip(np.random.default_rng(12345).normal(AGE_MEAN, AGE_SD, 200_000), 1, 95)
        _age_norm = float(age_factor(ages).mean())
    return _age_norm


def sample_findings(rng: np.random.Generator, age: float, view: str) -> frozenset[str]:
    """Draw the finding set of one image."""
    if rng.random() < P_NO_FINDING:
        return frozenset()
    q = conditional_probabilities().copy()
    idx = {f: i for i, f in enumerate(FINDINGS)}
    for f in AGE_DEPENDENT:
        q[idx[f]] *= float(age_factor(age)) / _age_normaliser()
    for f in VIEW_DEPENDENT:
        q[idx[f]] *= float(view_factor(view == "AP"))
    q = np.clip(q, 0, 0.95)
    while True:
        present = rng.random(len(FINDINGS)) < q
        for given, then, mult in CO_OCCURRENCE:
            if present[idx[given]] and not present[idx[then]]:
                extra = min(q[idx[then]] * (mult - 1.0), 0.9)
                present[idx[then]] = rng.random() < extra / (1 - q[idx[then]])
        if present.any():
            return frozenset(f for f, p in zip(FINDINGS, present, strict=True) if p)
