"""The base of every report contract: frozen models, embedded-image and array fields."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict

#: The dataset report lists at most this many quarantined rows (all are counted).
QUARANTINE_DETAIL_LIMIT = 500


def _data_image_uri(value: object) -> object:
    """Images must be embedded, never a link that would leave the file."""
    if not isinstance(value, str) or not value.startswith("data:image/"):
        raise ValueError(f"must be a 'data:image/...' URI, got {str(value)[:40]!r}")
    return value


Array = Annotated[np.ndarray, BeforeValidator(np.asarray)]
Ages = Annotated[np.ndarray, BeforeValidator(lambda v: np.asarray([] if v is None else v, dtype=float).ravel())]
DataImageUri = Annotated[str, BeforeValidator(_data_image_uri)]
Id = int | str


class Contract(BaseModel):
    """Frozen; an unknown field is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class StoredRow(Contract):
    """A row read from storage: columns the report does not show are ignored."""

    model_config = ConfigDict(extra="ignore")
