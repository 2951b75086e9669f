"""The fuzz suite's shared parts: generated bad and odd inputs through every public surface.

Each case must end in a clear error (a :class:`finesam.errors.FinesamError` with a message;
exit code 2 and one line on the command line) or a result that is finite and of the documented
shape. ``FUZZ_EXAMPLES=N`` runs N examples per test instead of the defaults (which keep
``make test`` within a few minutes); the cases run per category are printed at the end.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from finesam.errors import FinesamError
from finesam.modeling.sam import Sam


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


@contextmanager
def cached_models(command_module) -> Iterator[None]:
    """While active, ``command_module.load`` loads each model once and ``Sam.encode_image``
    encodes each image once: command-line fuzz cases are about the command, not the encoder."""
    loaded, encoded = {}, {}
    real_load, real_encode = command_module.load, Sam.encode_image

    def load(name, checkpoint=None, **kwargs):
        key = (name, str(checkpoint), repr(sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = real_load(name, checkpoint, **kwargs)
        return loaded[key]

    def encode_image(self, x, extras=None):
        key = (id(self), hashlib.sha1(x.numpy().tobytes()).hexdigest(), repr(extras))
        if key not in encoded:
            encoded[key] = real_encode(self, x, extras)
        return encoded[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(command_module, "load", load)
        patch.setattr(Sam, "encode_image", encode_image)
        yield
