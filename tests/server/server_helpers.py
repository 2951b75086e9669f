"""Shared pieces of the web tool's tests: one mobile_sam (random weights) and one feature cache per
test process, so that the real ECSSD image is encoded once for all server tests."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web tool needs the serve extra: pip install 'finesam[serve]'")

import finesam  # noqa: E402
from finesam.data.images import read_image  # noqa: E402
from finesam.predict.interactive import InteractiveSession  # noqa: E402
from finesam.server.cache import FeatureCache, image_key  # noqa: E402


@functools.lru_cache(maxsize=None)
def shared_model():
    model = finesam.load("mobile_sam", random_weights=True)
    model.encoder_calls = 0

    def count(*_):
        model.encoder_calls += 1

    model.image_encoder.register_forward_hook(count)
    return model


@functools.lru_cache(maxsize=None)
def shared_cache() -> FeatureCache:
    return FeatureCache(512 * 10**6)


def make_app(**options):
    from finesam.server.app import create_app

    options.setdefault("cache", shared_cache())
    return create_app(shared_model(), model_name="mobile_sam", random_weights=True, **options)


def runs_to_mask(runs: list[int], height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of the page's row-major run lengths (background first)."""
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    assert flat.size == height * width
    return flat.reshape(height, width)


def reference_session(image_path) -> InteractiveSession:
    """An InteractiveSession on the same image and model, with the features the server cached
    (encoded by the server when it opened the image)."""
    image = read_image(image_path)
    entry = shared_cache().get(image_key(image))
    assert entry is not None, "the server should have cached the image's features"
    predictor = finesam.SamPredictor(shared_model(), keep_early_feature=False)
    predictor.set_features(entry.features, image.shape[:2])
    return InteractiveSession(predictor)


@contextlib.contextmanager
def serving(app):
    """``app`` under uvicorn on a free loopback port, in a thread; yields its URL."""
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
