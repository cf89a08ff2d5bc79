"""The model registry: versions, the champion, and every change of champion with its reason.

Automatic promotion ranks candidates by their selection figure (:func:`record_selection`: the
configured metric on the validation split, or the mean over patient-grouped cross-validation
folds when the validation split is too small to rank; never the test split) and follows
:func:`promotion_decision` (a pure rule: first champion, a pinned champion stays, otherwise the
best candidate must beat the champion's figure on the same basis by more than the margin)
through :func:`promote_selected`. Every kind can be champion. By hand,
``cxr models ...`` calls :func:`pin`, :func:`unpin` and :func:`rollback`. Every change of
champion is a row in ``promotions`` with its action and reason, so the history reads as a
log. Functions take an open session and leave the transaction to the caller; versions leave
as :class:`db.entities.ModelVersionInfo`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrmodel.models.version_files import ModelVersionFiles
from db.entities import ModelVersionInfo
from db.models import ModelVersion, Promotion
from db.statuses import ModelStatus, PromotionAction, SelectionBasis
from db.thresholds import active_threshold_set


class RegistryError(ValueError):
    """A registry change that is refused, with the reason in its message."""


# --- versions ------------------------------------------------------------------------------------


def register_model_version(session: Session, **fields: Any) -> ModelVersionInfo:
    """A new version (``name``, ``kind``, ``config``, ``artifact_path``, ``sha256`` and
    optionally ``status``, ``parent_id``, ``parameter_count``); a candidate unless told otherwise."""
    version = ModelVersion(**fields)
    session.add(version)
    session.flush()
    return ModelVersionInfo.from_row(version)


def model_version(session: Session, version_id: int) -> ModelVersionInfo:
    """The version with this id (``ValueError`` if there is none)."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise ValueError(f"no model version with id {version_id}")
    return ModelVersionInfo.from_row(version)


def model_version_files(session: Session, version_id: int) -> ModelVersionFiles:
    """What :func:`cxrmodel.models.loading.load_model_version` needs to load this version
    (with its parent network's files for an embedding baseline)."""
    version = model_version(session, version_id)
    parent = model_version(session, version.parent_id) if version.parent_id else None
    return version.files(parent)


def update_model_config(session: Session, version_id: int, **values: Any) -> ModelVersionInfo:
    """Merge ``values`` into the version's config (a new dict: the JSON column does not
    notice in-place changes)."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise ValueError(f"no model version with id {version_id}")
    version.config = {**(version.config or {}), **values}
    session.flush()
    return ModelVersionInfo.from_row(version)


def indexed_network(session: Session, version_id: int | None = None) -> ModelVersionInfo:
    """The network whose embedding index serves ``version_id`` (default: the champion): the
    version itself when it has an index, else its parent network's (embedding baselines share
    their parent's embedding space). ``RuntimeError`` when there is none."""
    version = champion(session) if version_id is None else model_version(session, version_id)
    if version is None:
        raise RuntimeError("no champion model version: train, evaluate and promote one first")
    if (version.config or {}).get("embedding_index"):
        return version
    if version.parent_id:
        parent = model_version(session, version.parent_id)
        if (parent.config or {}).get("embedding_index"):
            return parent
    raise RuntimeError(f"model version {version.name} has no embedding index: run the train flow (index-embeddings) for it")


def _by_name(session: Session, name: str) -> ModelVersion:
    version = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if version is None:
        known = ", ".join(session.scalars(select(ModelVersion.name).order_by(ModelVersion.id))) or "none"
        raise RegistryError(f"no model version named {name!r} (known: {known})")
    return version


def _champion_row(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.CHAMPION))


def champion(session: Session) -> ModelVersionInfo | None:
    row = _champion_row(session)
    return ModelVersionInfo.from_row(row) if row is not None else None


def promote(session: Session, version_id: int, reason: str, action: PromotionAction = PromotionAction.PROMOTE) -> None:
    """Make ``version_id`` the champion (the previous one retires) and record why.

    ``action`` says how: ``promote`` (automatic, after an evaluation), ``pin`` or ``rollback``
    (by hand). A new champion starts unpinned unless it was pinned.
    """
    previous = _champion_row(session)
    if previous is not None and previous.id == version_id:
        return
    if previous is not None:
        previous.status = ModelStatus.RETIRED
        previous.pinned = False
    session.get(ModelVersion, version_id).status = ModelStatus.CHAMPION
    session.add(
        Promotion(
            model_version_id=version_id, previous_champion_id=previous.id if previous else None, reason=reason, action=action
        )
    )
    session.flush()


# --- automatic promotion -------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionDecision:
    """``promote``: record a change of champion; ``champion``: the challenger is (or becomes)
    the champion; ``reason``: why, in words (the promotion's reason, or why not); ``chosen_id``:
    the challenger, the best candidate on the selection basis."""

    promote: bool
    champion: bool
    reason: str
    chosen_id: int | None = None


def promotion_decision(
    metric: str,
    challenger: float | None,
    champion_name: str | None,
    champion_value: float | None,
    *,
    champion_pinned: bool = False,
    challenger_is_champion: bool = False,
    margin: float = 0.0,
) -> PromotionDecision:
    """The promotion rule. No champion: the challenger becomes the first. The challenger is
    already champion: nothing to do. A pinned champion stays. Otherwise the challenger's
    ``metric`` must beat the champion's by more than ``margin`` (a missing value counts as 0)."""
    ours = challenger or 0.0
    if champion_name is None:
        return PromotionDecision(True, True, f"first champion ({metric} {ours:.4f})")
    if challenger_is_champion:
        return PromotionDecision(False, True, f"{champion_name} is already the champion")
    if champion_pinned:
        return PromotionDecision(
            False, False, f"kept champion {champion_name}: it is pinned (cxr models unpin to allow promotion)"
        )
    theirs = champion_value or 0.0
    if ours > theirs + margin:
        return PromotionDecision(
            True, True, f"{metric} {ours:.4f} beats champion {champion_name} ({theirs:.4f}) by more than {margin}"
        )
    return PromotionDecision(False, False, f"kept champion {champion_name}: {metric} {theirs:.4f} vs challenger {ours:.4f}")


def record_selection(
    session: Session, scores: Mapping[int, float | None], basis: SelectionBasis | str, context: str | None = None
) -> None:
    """Store each version's selection figure and what it was measured on (``validation`` or
    ``cross_validation``; never the test split), with the ``context`` of a cross-validated one
    (:func:`recorded_selection` reuses a figure of the same context)."""
    basis = SelectionBasis(basis)
    for version_id, score in scores.items():
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise ValueError(f"no model version with id {version_id}")
        version.selection_score = None if score is None else float(score)
        version.selection_basis = basis
        version.config = {**(version.config or {}), "selection_context": context}
    session.flush()


def recorded_selection(session: Session, version_id: int, basis: SelectionBasis | str, context: str) -> float | None:
    """The figure :func:`record_selection` stored for this version on ``basis`` with ``context``;
    None when it was measured otherwise (or never)."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise ValueError(f"no model version with id {version_id}")
    same = version.selection_basis == SelectionBasis(basis) and (version.config or {}).get("selection_context") == context
    return version.selection_score if same else None


def record_candidate_set(session: Session, version_ids: Sequence[int]) -> None:
    """Store on each version the ids of the candidates trained with it (its config's ``candidates``)."""
    ids = sorted(int(i) for i in version_ids)
    for version_id in ids:
        update_model_config(session, version_id, candidates=ids)


def candidate_set(session: Session, version_id: int) -> list[int]:
    """The candidates trained with ``version_id`` (:func:`record_candidate_set`), itself included;
    just itself for a version trained alone."""
    ids = (model_version(session, version_id).config or {}).get("candidates") or []
    return sorted({int(i) for i in ids} | {version_id})


def promote_selected(
    session: Session, candidate_ids: Sequence[int], metric: str = "macro_auroc", margin: float = 0.0
) -> PromotionDecision:
    """Promote the candidate with the highest recorded selection figure (:func:`record_selection`;
    ties go to the earliest version) if :func:`promotion_decision` lets it replace the champion,
    whose figure counts only when measured on the same basis. Test figures play no part.
    ``RuntimeError`` when no candidate has a selection figure."""
    rows = [session.get(ModelVersion, i) for i in candidate_ids]
    ranked = [r for r in rows if r is not None and r.selection_score is not None]
    if not ranked:
        raise RuntimeError(f"model versions {list(candidate_ids)} have no selection figure: run the selection first")
    best = max(ranked, key=lambda r: (r.selection_score, -r.id))
    current = _champion_row(session)
    same_basis = current is not None and current.selection_basis == best.selection_basis
    # cross-validation always ranks by the folds' macro AUROC
    measured = metric if best.selection_basis == SelectionBasis.VALIDATION else "macro_auroc"
    label = f"{measured} on {best.selection_basis.replace('_', '-')}"
    decision = promotion_decision(
        label,
        best.selection_score,
        current.name if current else None,
        current.selection_score if same_basis else None,
        champion_pinned=bool(current and current.pinned),
        challenger_is_champion=bool(current and current.id == best.id),
        margin=margin,
    )
    decision = PromotionDecision(decision.promote, decision.champion, f"{best.name}: {decision.reason}", best.id)
    if decision.promote:
        promote(session, best.id, decision.reason)
    return decision


# --- by hand -------------------------------------------------------------------------------------


def _check_can_score(session: Session, version: ModelVersion) -> None:
    if active_threshold_set(session, version.id) is None:
        raise RegistryError(f"{version.name} has no active threshold set: calibrate it before making it champion")


def pin(session: Session, name: str, reason: str) -> ModelVersionInfo:
    """Make ``name`` the champion and pin it, so automatic promotion leaves it in place."""
    version = _by_name(session, name)
    _check_can_score(session, version)
    current = _champion_row(session)
    if current is not None and current.id == version.id:
        if not version.pinned:
            version.pinned = True
            session.add(
                Promotion(model_version_id=version.id, previous_champion_id=version.id, reason=reason, action=PromotionAction.PIN)
            )
    else:
        promote(session, version.id, reason, action=PromotionAction.PIN)
        version.pinned = True
    session.flush()
    return ModelVersionInfo.from_row(version)


def unpin(session: Session, reason: str) -> ModelVersionInfo:
    """Let automatic promotion replace the champion again."""
    current = _champion_row(session)
    if current is None:
        raise RegistryError("there is no champion to unpin")
    if current.pinned:
        current.pinned = False
        session.add(
            Promotion(model_version_id=current.id, previous_champion_id=current.id, reason=reason, action=PromotionAction.UNPIN)
        )
        session.flush()
    return ModelVersionInfo.from_row(current)


def rollback(session: Session, reason: str) -> ModelVersionInfo:
    """Undo the last change of champion: the champion it replaced comes back, pinned (so the
    next automatic promotion does not undo the rollback). Rolling back twice toggles back."""
    current = _champion_row(session)
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
    promote(session, previous.id, reason, action=PromotionAction.ROLLBACK)
    previous.pinned = True
    session.flush()
    return ModelVersionInfo.from_row(previous)


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
