"""Errors a user causes (a wrong header, an empty file, a missing setting): the run fails once
with one clear line and is never retried, since a retry would read the same input again."""

from __future__ import annotations


class UserInputError(ValueError):
    """The input is wrong, not the system: fix it and run again."""
