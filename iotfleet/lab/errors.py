"""The one exception the lab raises for things a user can fix."""

from __future__ import annotations


class LabError(Exception):
    """A problem the user can act on; the message says what and how (never a secret)."""
