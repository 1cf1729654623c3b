"""The validation gate's error, light enough for the command layer to catch without importing Great Expectations."""

from __future__ import annotations


class ValidationFailed(RuntimeError):
    """Data failed its suites; the message names each failed expectation and what was observed."""
