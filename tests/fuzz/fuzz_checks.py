"""The property every fuzz case checks."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from finesam.errors import FinesamError


def clear_error_or_result(call: Callable[[], Any]) -> tuple[Any, FinesamError | None]:
    """Run ``call``: return (result, None), or (None, error) for a clear finesam error.

    Any other exception is an unclear crash and fails the test; so does an error without a message.
    """
    try:
        return call(), None
    except FinesamError as error:
        message = str(error)
        assert message.strip(), f"{type(error).__name__} without a message"
        return None, error


def assert_finite(*arrays) -> None:
    """Every numeric output is finite (no NaN, no inf)."""
    for array in arrays:
        values = np.asarray(array)
        if values.dtype.kind in "fc":
            assert np.isfinite(values).all(), "a result holds NaN or inf"
