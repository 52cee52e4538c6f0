"""The error local mode reports to the user: one class, so the front door prints it and exits 1."""

from __future__ import annotations


class PlatformError(RuntimeError):
    """A failure the user can act on; the message says what and where to look."""
