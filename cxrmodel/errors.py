"""The one exception type for a user's mistake.

A :class:`UserError` is something the person running the pipeline can fix (a missing file or
folder, a wrong header, an empty file, an unknown name, nothing to work on yet). The command
line prints its message in one line and exits with status 2; Prefect tasks never retry it,
since a retry would read the same input again.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; its message says what and how, in one line."""
