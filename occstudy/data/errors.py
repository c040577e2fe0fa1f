"""The single exception type raised for bad dataset input."""

from __future__ import annotations


class DataError(ValueError):
    """Bad dataset input: wrong layout, missing or corrupt file, unknown name, split or option.

    The message always names the offending file, field or value so that a user can fix the
    download without reading a stack trace from PIL or torch.
    """
