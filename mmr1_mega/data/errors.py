"""Errors of the data room: DataError stops a run before training; BadRecord skips one record."""

from __future__ import annotations


class DataError(RuntimeError):
    """A data file (or a whole dataset) cannot be used: the message says what and what to do."""


class BadRecord(ValueError):
    """One record is unusable; `reason` is a short category counted in the skip report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
