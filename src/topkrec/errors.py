"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class TopkrecError(Exception):
    """A problem with the user's input or files: the message says what and what to do.

    The CLI catches these and prints ``error: <message>`` without a traceback (``--debug`` shows it),
    exiting with status 2.
    """


class DataError(TopkrecError):
    """Bad or missing input data (file, column, row, value)."""


class ArtifactError(TopkrecError):
    """A dataset, embeddings or model directory that is missing, corrupt or mismatched."""
