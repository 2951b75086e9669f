"""The fuzz suite's shared parts: generated bad and odd inputs through every public surface.

Each case must end in a clear error (a :class:`finesam.errors.FinesamError` with a message;
exit code 2 and one line on the command line) or a result that is finite and of the documented
shape. ``FUZZ_EXAMPLES=N`` runs N examples per test instead of the defaults (which keep
``make test`` within a few minutes); the cases run per category are printed at the end.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from finesam.errors import FinesamError


def examples(default: int) -> int:
    """Examples per hypothesis test: ``$FUZZ_EXAMPLES`` when set, else ``default``."""
    return int(os.environ.get("FUZZ_EXAMPLES", "0")) or default


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
