"""The resize to the model's frame equals PIL's bilinear resize of the whole image, bit for bit,
also when large images are resized by strips of rows, then of columns (to keep PIL's
4-byte-per-pixel copies small)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from finesam.predict import transforms
from finesam.predict.transforms import ResizeLongestSide


def pil_resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize(size_wh, Image.BILINEAR))


@pytest.mark.parametrize("shape", [(37, 5001), (3001, 7), (333, 517), (2000, 1500), (1, 4000)])
def test_strip_resize_equals_pil(monkeypatch, real_image, shape):
    monkeypatch.setattr(transforms, "_WHOLE_IMAGE_PIXELS", 50_000)  # strips even for small images
    monkeypatch.setattr(transforms, "_STRIP_PIXELS", 20_000)  # several row and column strips
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    photo = np.array(Image.fromarray(real_image).resize(shape[::-1], Image.BICUBIC))  # smooth content
    transform = ResizeLongestSide(1024)
    for image in (noise, photo, photo[:, ::-1]):
        height, width = transform.get_preprocess_shape(*shape)
        np.testing.assert_array_equal(transform.apply_image(image), pil_resize(image, (width, height)))


def test_large_photo_uses_strips_and_equals_pil(real_image):
    photo = np.array(Image.fromarray(real_image).resize((3000, 2250), Image.BICUBIC))
    assert photo.shape[0] * photo.shape[1] > transforms._WHOLE_IMAGE_PIXELS
    np.testing.assert_array_equal(ResizeLongestSide(1024).apply_image(photo), pil_resize(photo, (1024, 768)))
