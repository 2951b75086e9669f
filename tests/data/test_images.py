"""Images are read as displayed: the EXIF orientation is applied in the library, the data set
readers and the command line, and prompts are in displayed-image pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

import finesam
from finesam import cli
from finesam.data import open_dataset, read_mask
from finesam.data import images as images_module
from finesam.data.images import ImageReadError, read_image

ROTATE_90_CW = 6  # EXIF orientation "rotate 90 clockwise to display"
BOX = [10, 70, 100, 150]  # x0 y0 x1 y1 in the displayed (rotated) image


def phone_photo(path, stored_size=(160, 120), orientation=ROTATE_90_CW):
    """A JPEG stored landscape (W x H = 160 x 120) with an EXIF rotation, shown portrait (120 x 160)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (stored_size[1], stored_size[0], 3), dtype=np.uint8)
    pixels[:40, :60] = (255, 0, 0)  # a red corner: top-left as stored, top-right as displayed
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_read_image_applies_the_exif_orientation(tmp_path):
    path = phone_photo(tmp_path / "phone.jpg")
    image = read_image(path)
    assert image.shape == (160, 120, 3)  # displayed: 120 wide, 160 high
    with Image.open(path) as stored:
        np.testing.assert_array_equal(image, np.asarray(ImageOps.exif_transpose(stored).convert("RGB")))
    assert image[5, 115, 0] > 200 and image[5, 115, 1] < 60  # the red corner is top-right now


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 7, 8])
def test_every_orientation_is_applied(tmp_path, orientation):
    path = phone_photo(tmp_path / "phone.jpg", orientation=orientation)
    with Image.open(path) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), expected)


def test_masks_are_read_as_displayed_and_match_their_images(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    phone_photo(tmp_path / "im" / "a.jpg")
    gt = Image.fromarray(np.zeros((160, 120), np.uint8))  # drawn on the displayed image
    gt.save(tmp_path / "gt" / "a.png")
    sample = open_dataset(f"phone={tmp_path}")[0]
    assert sample.image.shape[:2] == sample.gt.shape == (160, 120)
    rotated = Image.fromarray(np.zeros((120, 160), np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = ROTATE_90_CW
    rotated.save(tmp_path / "rotated_gt.png", exif=exif.tobytes())
    assert read_mask(tmp_path / "rotated_gt.png").shape == (160, 120)


def test_api_and_cli_give_masks_of_the_displayed_size_with_displayed_prompts(tmp_path):
    path = phone_photo(tmp_path / "phone.jpg")
    predictor = finesam.SamPredictor(finesam.load("mobile_sam", random_weights=True))
    predictor.set_image(read_image(path))
    masks, _, _ = predictor.predict(box=np.array(BOX), multimask_output=False)
    assert masks.shape == (1, 160, 120)
    out = tmp_path / "mask.png"
    assert cli.main(["segment", str(path), "--model", "mobile_sam", "--random-weights",
                     "--box", *map(str, BOX), "--out", str(out)]) == 0
    cli_mask = np.array(Image.open(out)) > 0
    assert cli_mask.shape == (160, 120)
    np.testing.assert_array_equal(cli_mask, masks[0])  # same model, same prompt, same pixels


def pil_reading(path) -> np.ndarray:
    with Image.open(path) as stored:
        return np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))


def test_real_jpegs_take_the_low_memory_path_and_equal_pil():
    from conftest import data_path

    files = sorted(data_path("dis5k_samples", "im").glob("*.jpg")) + sorted(data_path("demo").glob("*.jpg"))
    files += sorted(data_path("ecssd", "im").glob("*.jpg"))[::40]
    for path in files:
        assert images_module._read_complete_jpeg(path, None) is not None, path  # decoded by OpenCV
        np.testing.assert_array_equal(read_image(path), pil_reading(path), err_msg=str(path))


def test_grey_cmyk_and_truncated_jpegs(tmp_path):
    rng = np.random.default_rng(1)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(rng.integers(0, 255, (40, 70), dtype=np.uint8)).save(grey, quality=90)
    assert images_module._read_complete_jpeg(grey, None) is not None
    np.testing.assert_array_equal(read_image(grey), pil_reading(grey))

    cmyk = tmp_path / "cmyk.jpg"  # OpenCV and PIL convert CMYK differently: PIL's reading stands
    Image.fromarray(rng.integers(0, 255, (30, 20, 4), dtype=np.uint8), "CMYK").save(cmyk)
    assert images_module._read_complete_jpeg(cmyk, None) is None
    np.testing.assert_array_equal(read_image(cmyk), pil_reading(cmyk))

    photo = phone_photo(tmp_path / "phone.jpg", stored_size=(300, 200))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:-600])  # no end-of-image marker: PIL's error
    assert images_module._read_complete_jpeg(truncated, None) is None
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(truncated)


def test_jpeg_decoded_by_imdecode_where_imread_cannot(monkeypatch):
    """Older OpenCV (no RGB ``imread`` into a given buffer) or a path ``imread`` cannot open:
    the ``imdecode`` fallback gives the same pixels."""
    from conftest import data_path

    path = sorted(data_path("ecssd", "im").glob("*.jpg"))[0]
    monkeypatch.setattr(images_module.cv2, "imread", lambda *args, **kwargs: None)
    decoded = images_module._read_complete_jpeg(path, None)
    assert decoded is not None
    np.testing.assert_array_equal(decoded, pil_reading(path))
