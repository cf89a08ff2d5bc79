"""The one exception type for a user's mistake.

A :class:`UserError` is something the person running the pipeline can fix (a missing file or
folder, an unknown name, nothing to work on yet). The command line prints its message in one
line and exits with status 2; Prefect tasks never retry it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; its message says what and how, in one line."""
