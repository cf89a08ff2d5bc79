"""The model registry by hand: list versions, pin a champion, undo the last change.

Automatic promotion (``tasks.evaluation.promote_if_better``) goes through
:func:`db.repository.promote`; the functions here are what ``cxr models ...`` calls. Every
change of champion is a row in ``promotions`` with its action and reason, so the history
reads as a log. Functions take an open session; the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Evaluation, ModelVersion, Promotion
from db.repository import active_threshold_set, champion, promote

# Kinds the scoring task cannot run (embedding baselines): never champions.
BASELINE_KINDS = frozenset({"knn_embedding", "mlp_embedding"})


class RegistryError(ValueError):
    """A registry change that is refused, with the reason in its message."""


@dataclass(frozen=True)
class VersionRow:
    name: str
    kind: str
    status: str
    pinned: bool
    macro_auroc: float | None
    macro_auroc_ci: tuple[float | None, float | None]
    created_at: datetime


def list_versions(session: Session, split: str = "test") -> list[VersionRow]:
    """Every model version, oldest first, with its newest macro AUROC on ``split``."""
    rows = []
    for version in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        ev = session.scalar(
            select(Evaluation)
            .where(Evaluation.model_version_id == version.id, Evaluation.split == split)
            .order_by(Evaluation.id.desc())
        )
        rows.append(
            VersionRow(
                name=version.name,
                kind=version.kind,
                status=version.status,
                pinned=version.pinned,
                macro_auroc=ev.macro_auroc if ev else None,
                macro_auroc_ci=(ev.macro_auroc_ci_low, ev.macro_auroc_ci_high) if ev else (None, None),
                created_at=version.created_at,
            )
        )
    return rows


def _version(session: Session, name: str) -> ModelVersion:
    version = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if version is None:
        known = ", ".join(session.scalars(select(ModelVersion.name).order_by(ModelVersion.id))) or "none"
        raise RegistryError(f"no model version named {name!r} (known: {known})")
    return version


def _check_can_score(session: Session, version: ModelVersion) -> None:
    if version.kind in BASELINE_KINDS:
        raise RegistryError(f"{version.name} is an embedding baseline ({version.kind}); scoring cannot use it as champion")
    if active_threshold_set(session, version.id) is None:
        raise RegistryError(f"{version.name} has no active threshold set: calibrate it before making it champion")


def pin(session: Session, name: str, reason: str) -> ModelVersion:
    """Make ``name`` the champion and pin it, so automatic promotion leaves it in place."""
    version = _version(session, name)
    _check_can_score(session, version)
    current = champion(session)
    if current is not None and current.id == version.id:
        if not version.pinned:
            version.pinned = True
            session.add(Promotion(model_version_id=version.id, previous_champion_id=version.id, reason=reason, action="pin"))
    else:
        promote(session, version.id, reason, action="pin")
        version.pinned = True
    session.flush()
    return version


def unpin(session: Session, reason: str) -> ModelVersion:
    """Let automatic promotion replace the champion again."""
    current = champion(session)
    if current is None:
        raise RegistryError("there is no champion to unpin")
    if current.pinned:
        current.pinned = False
        session.add(Promotion(model_version_id=current.id, previous_champion_id=current.id, reason=reason, action="unpin"))
        session.flush()
    return current


def rollback(session: Session, reason: str) -> ModelVersion:
    """Undo the last change of champion: the champion it replaced comes back, pinned (so the
    next automatic promotion does not undo the rollback). Rolling back twice toggles back."""
    current = champion(session)
    if current is None:
        raise RegistryError("there is no champion to roll back")
    last = session.scalar(
        select(Promotion)
        .where(Promotion.model_version_id == current.id, Promotion.previous_champion_id != current.id)
        .order_by(Promotion.id.desc())
    )
    if last is None or last.previous_champion_id is None:
        raise RegistryError(f"{current.name} replaced no earlier champion: nothing to roll back to")
    previous = session.get(ModelVersion, last.previous_champion_id)
    _check_can_score(session, previous)
    promote(session, previous.id, reason, action="rollback")
    previous.pinned = True
    session.flush()
    return previous


def history(session: Session) -> list[dict]:
    """Every registry change, newest first: when, action, champion after it, the one before, why."""
    names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
    return [
        {
            "at": p.created_at,
            "action": p.action,
            "champion": names.get(p.model_version_id),
            "previous": names.get(p.previous_champion_id) if p.previous_champion_id else None,
            "reason": p.reason,
        }
        for p in session.scalars(select(Promotion).order_by(Promotion.id.desc()))
    ]
