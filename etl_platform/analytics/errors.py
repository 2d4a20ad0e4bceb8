"""The stream analytics engine's errors: every one a ValueError, so callers can treat it as bad input."""

from __future__ import annotations


class AnalyticsError(ValueError):
    """Base class of the engine's errors (a ValueError, so callers can treat it as bad input)."""


class AnalyticsConfigError(AnalyticsError):
    """A constructor setting is invalid; the message names the setting."""


class AnalyticsInputError(AnalyticsError):
    """A batch was rejected; ``column`` and ``row`` (first offending row, or None) say where."""

    def __init__(self, message: str, column: str, row: int | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.row = row


class AnalyticsSnapshotError(AnalyticsError):
    """A snapshot blob is not one this version can restore."""
