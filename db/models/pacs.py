"""Tables of the PACS link (issue 23): the pull's cursor, every instance the pull saw with its
outcome, and every object written back with its delivery state. No credentials are stored:
a PACS is named by its DICOMweb URL without user or password."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db.checks import checks
from db.models.base import Base, utcnow
from db.statuses import PacsInstanceStatus, PacsObjectStatus


class PacsCursor(Base):
    """Where the last complete search of a PACS started: the next one searches from there,
    less the overlap window. A failed search leaves it and records why."""

    __tablename__ = "pacs_cursors"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(256), unique=True)
    searched_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PacsInstance(Base):
    """One instance the pull saw (keyed by its SOP Instance UID), with its outcome."""

    __tablename__ = "pacs_instances"
    __table_args__ = checks("pacs_instances")

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(256))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    view: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=PacsInstanceStatus.REGISTERED)
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PacsObject(Base):
    """One object written back (an SR, a heatmap), by its deterministic SOP Instance UID."""

    __tablename__ = "pacs_objects"
    __table_args__ = checks("pacs_objects")

    id: Mapped[int] = mapped_column(primary_key=True)
    pacs_instance_id: Mapped[int] = mapped_column(ForeignKey("pacs_instances.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    threshold_set_id: Mapped[int] = mapped_column(ForeignKey("threshold_sets.id"))
    kind: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=PacsObjectStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
