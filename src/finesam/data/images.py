"""Reading images and writing masks and overlays (numpy at the edges).

Every image finesam opens (library, data sets, command line) goes through one reader,
:func:`read_image` (masks: :func:`finesam.data.read_mask`, which shares its checks):

- **as displayed**: the EXIF orientation is applied, so masks and prompts are in the pixels
  the user sees;
- **size checked before decoding**: ``Image.open`` only parses the header, and an image that
  is empty or has more than :data:`MAX_IMAGE_PIXELS` pixels (``$FINESAM_MAX_PIXELS``, or
  ``max_pixels=``) is refused with :class:`ImageReadError` before its pixels are decoded.
  While finesam reads, PIL's own decompression-bomb check (``PIL.Image.MAX_IMAGE_PIXELS``)
  is suspended so that finesam's limit is the one that applies, and no PIL warning fires;
  PIL's setting is restored afterwards;
- **high bit depth mapped to 8 bits** by the rules of :func:`depth_to_uint8` (never
  saturated, never silently stretched).

Writers (:func:`save_mask`, :func:`save_overlay`) check the path first
(:func:`check_mask_path`, :func:`check_image_path`: call them before any slow work, e.g.
before loading a model), and write atomically, both through :mod:`finesam.outputs`.
"""

from __future__ import annotations

import numbers
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from ..errors import FinesamError, InvalidInputError, describe_error
from ..outputs import check_output_file, save_image_atomically

PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209]], dtype=np.float32
)

#: The most pixels (width x height) finesam reads or segments by default: 2**27 = 134,217,728
#: (e.g. 13,377 x 10,033 at 4:3). It admits every photo of today's 108-megapixel phone sensors
#: (12,000 x 9,000; 12,032 x 9,024) with a quarter of margin, and all images of the
#: high-resolution benchmarks (DIS5K, UHRSD, BIG: at most a few tens of megapixels). It
#: refuses a 12,000 x 12,000 image (144 MP) and "few hundred KB" PNG decompression bombs.
#: At the limit the (H, W, 3) result is 0.4 GB; reading a JPEG peaks near twice that (OpenCV's
#: decoder), other formats at PIL's decoded image (4 bytes per pixel) plus the result. Measured
#: before the JPEG path (benchmarks/bench_large_image.py, CPU): MobileSAM's ``set_image`` + one box
#: ``predict`` adds ~0.7 GB at its peak to the image it holds (the full-resolution mask logits;
#: about 2 GB, estimated, with the three masks of ``multimask_output``); a whole process stays
#: near 2 GB. Memory grows linearly with the pixel count.
#: Raise it with ``$FINESAM_MAX_PIXELS`` or ``max_pixels=``.
MAX_IMAGE_PIXELS = 2**27
#: The environment variable that overrides :data:`MAX_IMAGE_PIXELS` (a positive integer).
PIXEL_LIMIT_ENV = "FINESAM_MAX_PIXELS"

#: Lossless formats a mask may be written in, by (lower-case) suffix.
MASK_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
#: Formats an overlay may be written in, by (lower-case) suffix.
OVERLAY_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
#: PIL modes of one band with more than 8 bits per pixel, mapped by :func:`depth_to_uint8`.
HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16LS", "I;16BS", "I;32", "F")

_STRIP_PIXELS = 1 << 22  # pixels converted at a time, to keep the peak memory near the result's size


class ImageReadError(InvalidInputError):
    """An image file that cannot be read (missing, corrupt, empty, too large, unsupported)."""


class ImageWriteError(InvalidInputError):
    """An output path that cannot be written (unknown or lossy format, a folder, no permission)."""


# --- the pixel limit -----------------------------------------------------------------------------
def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)):
        raise InvalidInputError(f"{name} must be a positive whole number of pixels, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidInputError(f"{name} must be a positive whole number of pixels, got {value!r}")
    if value < 1:
        raise InvalidInputError(f"{name} must be at least 1 pixel, got {value!r}")
    return int(value)


def pixel_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$FINESAM_MAX_PIXELS`` if set,
    else :data:`MAX_IMAGE_PIXELS`."""
    if max_pixels is not None:
        return _positive_int(max_pixels, "max_pixels")
    text = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not text:
        return _positive_int(MAX_IMAGE_PIXELS, "finesam.data.images.MAX_IMAGE_PIXELS")
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = None
    if value is None or isinstance(value, float) and not (value.is_integer() and value >= 1):
        raise InvalidInputError(
            f"the environment variable {PIXEL_LIMIT_ENV}={text!r} is not a whole number of pixels; "
            f"set it to e.g. {2 * MAX_IMAGE_PIXELS} or unset it (default {MAX_IMAGE_PIXELS})"
        )
    return _positive_int(value, f"the environment variable {PIXEL_LIMIT_ENV}")


def _size_problem(height: int, width: int, limit: int, source: str) -> str | None:
    """Why an image of this size is refused, or None."""
    if height < 1 or width < 1:
        return (f"{source} is empty ({width}x{height} pixels, width x height); "
                "an image needs at least 1x1 pixel")
    pixels = height * width
    if pixels > limit:
        return (
            f"{source} is {width}x{height} pixels (width x height), {pixels:,} pixels ({pixels / 1e6:.3g} MP), over "
            f"finesam's limit of {limit:,} pixels ({limit / 1e6:.3g} MP), which guards against decompression bombs "
            f"and running out of memory. Downscale the image, or raise the limit with max_pixels={pixels} "
            f"(read_image / read_mask) or the environment variable {PIXEL_LIMIT_ENV}={pixels}"
        )
    return None


def check_pixel_count(height: int, width: int, max_pixels: int | None = None, *, source: str = "the image") -> int:
    """Refuse an empty image or one over the pixel limit (:func:`pixel_limit`); return height x width.

    For code that receives arrays: ``check_pixel_count(*array.shape[:2])``. ``source`` names
    the image in the message. Raises :class:`~finesam.errors.InvalidInputError`.
    """
    height, width = int(height), int(width)
    problem = _size_problem(height, width, pixel_limit(max_pixels), source)
    if problem:
        raise InvalidInputError(problem)
    return height * width


_PIL_LIMIT_LOCK = threading.Lock()
_PIL_LIMIT_READERS = 0
_PIL_LIMIT_SAVED: int | None = None


@contextmanager
def _finesam_limit_applies() -> Iterator[None]:
    """Suspend PIL's decompression-bomb check (its warning and error) while finesam reads; finesam
    checks the header size itself. PIL's ``Image.MAX_IMAGE_PIXELS`` is restored when the last
    concurrent finesam read ends, so the user's setting is never changed for good."""
    global _PIL_LIMIT_READERS, _PIL_LIMIT_SAVED
    with _PIL_LIMIT_LOCK:
        if _PIL_LIMIT_READERS == 0:
            _PIL_LIMIT_SAVED = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _PIL_LIMIT_READERS += 1
    try:
        yield
    finally:
        with _PIL_LIMIT_LOCK:
            _PIL_LIMIT_READERS -= 1
            if _PIL_LIMIT_READERS == 0:
                Image.MAX_IMAGE_PIXELS = _PIL_LIMIT_SAVED


# --- reading -------------------------------------------------------------------------------------
def as_displayed(image: Image.Image) -> Image.Image:
    """The image as viewers show it: its EXIF orientation (rotation / mirror) applied."""
    return ImageOps.exif_transpose(image)


def _open_displayed(path: Path, limit: int, label: str) -> Image.Image:
    """Open ``path``, check the header size, decode, apply the EXIF orientation (in place)."""
    try:
        image = Image.open(path)
    except UnidentifiedImageError as error:
        raise ImageReadError(f"cannot read {label}: not an image file (or a format PIL cannot read). "
                             "Pass a PNG/JPEG/BMP/TIFF/WEBP file.") from error
    except (MemoryError, FinesamError):
        raise
    except Exception as error:  # PIL raises many kinds of error on a damaged header
        raise ImageReadError(f"cannot read {label}: {describe_error(error)}. Is the file damaged?") from error
    try:
        width, height = image.size
        problem = _size_problem(height, width, limit, label)  # from the header: nothing decoded yet
        if problem:
            raise ImageReadError(problem)
        # Decode by reading, not by memory-mapping the file: Pillow (13) maps an uncompressed TIFF
        # with a quarter-turn EXIF orientation at its displayed size, which scrambles the pixels.
        image.filename = ""
        try:
            ImageOps.exif_transpose(image, in_place=True)  # decodes the pixels
        except (MemoryError, FinesamError):
            raise
        except Exception as error:
            raise ImageReadError(f"cannot decode {label}: {describe_error(error)}. Is the file truncated or damaged?") from error
        return image
    except BaseException:
        image.close()
        raise


@contextmanager
def opened_image(path: str | os.PathLike, max_pixels: int | None = None, *, what: str = "image") -> Iterator[Image.Image]:
    """The decoded PIL image of ``path`` as displayed, after the checks of :func:`read_image`
    (the file exists, its header size is within the pixel limit, it decodes).

    Raises :class:`ImageReadError`; ``what`` names the file in messages ("image", "mask").
    """
    try:
        path = Path(path)
    except TypeError as error:
        raise ImageReadError(f"{what} path must be a file path (str or os.PathLike), got {path!r}") from error
    label = f"{what} {str(path)!r}"
    limit = pixel_limit(max_pixels)
    if path.is_dir():
        raise ImageReadError(f"cannot read {label}: it is a folder; pass an image file")
    if not path.is_file():
        raise ImageReadError(f"cannot read {label}: no such file")
    with _finesam_limit_applies(), warnings.catch_warnings():
        # PIL warns about damaged metadata (e.g. "Corrupt EXIF data") it can read past; the
        # pixels are what matters, and a file PIL cannot decode is refused below.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        image = _open_displayed(path, limit, label)
        try:
            yield image
        finally:
            image.close()


def depth_to_uint8(values: np.ndarray, source: str = "the image", *, small_values_are_8bit: bool = False) -> np.ndarray:
    """Map single-band pixel values of more than 8 bits to uint8, by these rules:

    - **integers in 0..65535** (16-bit images, and 32-bit ones whose values fit 16 bits): the
      16-bit scale, ``round(v / 257)`` (65535 -> 255, 32896 -> 128). With
      ``small_values_are_8bit`` (masks) values that all fit 0..255 are kept as they are;
    - **integers outside 0..65535** (negative, or beyond 16 bits): refused;
    - **floats in [0, 1]**: ``round(v * 255)``; floats outside [0, 1], NaN or infinite: refused.

    A refusal is an :class:`~finesam.errors.InvalidInputError` naming ``source``, the value
    range found and how to convert the file; nothing is stretched or clipped silently.
    Other dtypes (bool, uint8) are returned as uint8 unchanged.
    """
    values = np.asarray(values)
    if values.dtype == np.uint8 or values.dtype == bool:
        return values.astype(np.uint8)
    if values.ndim == 0:
        return depth_to_uint8(values[None], source, small_values_are_8bit=small_values_are_8bit)[0]
    if values.size == 0:
        return np.zeros(values.shape, np.uint8)
    out = np.empty(values.shape, np.uint8)
    rows = max(1, _STRIP_PIXELS // max(1, int(np.prod(values.shape[1:]))))
    if values.dtype.kind == "f":
        for top in range(0, len(values), rows):
            if not np.isfinite(values[top:top + rows]).all():
                raise InvalidInputError(
                    f"{source} is a floating-point image with NaN or infinite values; save it as an 8- or "
                    "16-bit PNG/TIFF, or as floats in [0, 1]"
                )
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise InvalidInputError(
                f"{source} is a floating-point image with values in [{low:g}, {high:g}]; finesam reads float "
                "images as intensities in [0, 1] (0 black, 1 white). Scale it to [0, 1] (e.g. divide by 255 or by "
                "its maximum), or save it as an 8- or 16-bit PNG/TIFF"
            )
        for top in range(0, len(values), rows):
            out[top:top + rows] = np.rint(values[top:top + rows].astype(np.float32) * np.float32(255))
        return out
    if values.dtype.kind in "iu":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise InvalidInputError(
                f"{source} is an integer image with values in [{low}, {high}], outside the 16-bit range 0..65535 "
                "that finesam maps to 8 bits; rescale it to 0..255 or 0..65535 and save it as an 8- or 16-bit PNG/TIFF"
            )
        if small_values_are_8bit and high <= 255:
            return values.astype(np.uint8)
        for top in range(0, len(values), rows):
            out[top:top + rows] = (values[top:top + rows].astype(np.uint32) + 128) // 257
        return out
    raise InvalidInputError(f"{source} has pixel values of type {values.dtype}; expected integers or floats")


def _to_rgb(image: Image.Image, label: str) -> np.ndarray:
    """(H, W, 3) uint8 of a decoded image, converted strip by strip (the peak memory stays
    near the decoded image plus the result)."""
    width, height = image.size
    if image.mode in HIGH_DEPTH_MODES:
        grey = depth_to_uint8(np.asarray(image), label)
        return np.repeat(grey[..., None], 3, axis=2)
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = image if (top, bottom) == (0, height) else image.crop((0, top, width, bottom))
        if strip.mode != "RGB":
            strip = strip.convert("RGB")
        out[top:bottom] = np.asarray(strip)
    return out


#: EXIF orientation -> the numpy view that displays the stored pixels (as ``ImageOps.exif_transpose``).
_ORIENTATION_VIEWS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def _jpeg_is_complete(path: Path) -> bool:
    """Whether the file ends with the JPEG end-of-image marker (FF D9)."""
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        if stream.tell() < 4:
            return False
        stream.seek(-2, os.SEEK_END)
        return stream.read(2) == b"\xff\xd9"


def _opencv_decode_rgb(path: Path, height: int, width: int) -> np.ndarray | None:
    """(H, W, 3) RGB decoded by OpenCV, or None where OpenCV cannot read it.

    OpenCV >= 4.10 decodes RGB straight into a buffer we allocate (``imread`` with ``dst``):
    the image alone is held. ``imdecode`` (older OpenCV, or a path ``imread`` cannot open, such
    as non-ASCII names on Windows) holds a second copy for the moment of the decode.
    """
    flags = cv2.IMREAD_IGNORE_ORIENTATION
    if hasattr(cv2, "IMREAD_COLOR_RGB"):
        image = np.empty((height, width, 3), np.uint8)
        try:
            decoded = cv2.imread(str(path), image, cv2.IMREAD_COLOR_RGB | flags)
        except (cv2.error, TypeError):  # no dst overload in this OpenCV
            decoded = None
        if decoded is not None and decoded.shape == (height, width, 3) and np.shares_memory(decoded, image):
            return decoded
        del image, decoded
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | flags)
    del data
    if image is None or image.shape != (height, width, 3):
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def _read_complete_jpeg(path, max_pixels: int | None) -> np.ndarray | None:
    """An RGB or greyscale JPEG decoded by OpenCV straight into its (H, W, 3) result, or None
    when the file is anything else (then PIL reads it, and refuses it if it must).

    PIL keeps RGB at 4 bytes per pixel, so reading through it holds the decoded image and the
    3-byte result together (336 MB for 48 megapixels); OpenCV decodes into the result alone
    (144 MB). Both use libjpeg-turbo: the pixels are identical to PIL's (checked in the tests on
    real photos). Only files that end with the JPEG end-of-image marker take this path, so a
    truncated file still gets PIL's error rather than OpenCV's grey fill.
    """
    try:
        path = Path(path)
        limit = pixel_limit(max_pixels)
        if not path.is_file():
            return None
        with _finesam_limit_applies(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as header:  # parses the header only
                if header.format != "JPEG" or header.mode not in ("RGB", "L"):
                    return None
                width, height = header.size
                orientation = header.getexif().get(0x0112, 1)
        if _size_problem(height, width, limit, "the image") or not _jpeg_is_complete(path):
            return None
    except MemoryError:
        raise
    except Exception:  # anything unusual: PIL's path decides and explains
        return None
    image = _opencv_decode_rgb(path, height, width)
    if image is None:
        return None
    view = _ORIENTATION_VIEWS.get(orientation)
    return image if view is None else np.ascontiguousarray(view(image))


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read any PIL-readable image as displayed, (H, W, 3) uint8 RGB.

    - The EXIF orientation is applied: a phone photo stored 4000x3000 with "rotate 90" comes
      back 3000x4000, so masks and prompts are in the pixels the user sees.
    - The size is checked from the file header before decoding: an empty image, or one of more
      than ``max_pixels`` pixels (default: ``$FINESAM_MAX_PIXELS``, else
      :data:`MAX_IMAGE_PIXELS` = 134,217,728) is refused.
    - Greyscale, palette, 1-bit, CMYK and images with alpha are converted to RGB (alpha
      dropped). 16-bit RGB(A) PNGs are read by PIL with 8 bits per channel already.
    - One-band high bit depth (16-bit greyscale PNG/TIFF, 32-bit integer or float TIFF) follows
      :func:`depth_to_uint8`: 16-bit values (and 32-bit values within 0..65535) -> round(v / 257);
      floats in [0, 1] -> round(v * 255); other ranges are refused with a message, never
      saturated or stretched.

    Raises :class:`ImageReadError` (an :class:`~finesam.errors.InvalidInputError`) naming the
    file, the problem and the fix.
    """
    image = _read_complete_jpeg(path, max_pixels)
    if image is not None:
        return image
    with opened_image(path, max_pixels, what="image") as image:
        label = f"image {str(Path(path))!r}"
        try:
            return _to_rgb(image, label)
        except MemoryError:
            raise
        except FinesamError as error:
            raise ImageReadError(str(error)) from error
        except Exception as error:  # e.g. a colour mode PIL cannot convert to RGB
            raise ImageReadError(f"cannot convert {label} (PIL mode {image.mode}) to RGB: {describe_error(error)}. "
                                 "Save it as an RGB or greyscale PNG/JPEG.") from error


# --- writing -------------------------------------------------------------------------------------
def check_mask_path(path: str | os.PathLike) -> Path:
    """Check that a mask can be written to ``path`` (without writing anything) and return it.

    The format comes from the suffix: .png, .bmp, .tif or .tiff (lossless). Refused with
    :class:`ImageWriteError`: a folder, a missing or unknown suffix, a lossy format (.jpg,
    .jpeg, .webp), a path under a file, a folder that is not writable. Missing parent folders
    are fine (they are created when writing).
    """
    return check_output_file(path, MASK_FORMATS, "mask", "mask.png", ImageWriteError)[0]


def check_image_path(path: str | os.PathLike) -> Path:
    """As :func:`check_mask_path` for an output picture (an overlay), which may be PNG (.png) or
    JPEG (.jpg, .jpeg)."""
    return check_output_file(path, OVERLAY_FORMATS, "overlay", "overlay.png", ImageWriteError)[0]


def save_mask(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write an (H, W) mask (non-zero / True = object) as a 0/255 greyscale image, atomically.

    The format comes from the suffix (see :func:`check_mask_path`, checked before anything else).
    """
    path, fmt = check_output_file(path, MASK_FORMATS, "mask", "mask.png", ImageWriteError)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0 or mask.dtype.kind not in "biuf":
        raise InvalidInputError(f"save_mask expects a non-empty (H, W) bool or numeric mask, got shape "
                                f"{mask.shape} dtype {mask.dtype}; for (1, H, W) predictions pass masks[0]")
    pixels = np.where(mask, np.uint8(255), np.uint8(0))
    save_image_atomically(Image.fromarray(pixels), path, fmt, "mask", ImageWriteError)


def save_overlay(image: Image.Image | np.ndarray, path: str | os.PathLike) -> None:
    """Write an overlay (a PIL image, e.g. from :func:`overlay`, or (H, W, 3) uint8) as PNG or
    JPEG (from the suffix, see :func:`check_image_path`), atomically."""
    path, fmt = check_output_file(path, OVERLAY_FORMATS, "overlay", "overlay.png", ImageWriteError)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
            raise InvalidInputError(f"save_overlay expects an (H, W, 3) uint8 image, got shape {image.shape} "
                                    f"dtype {image.dtype}")
        image = Image.fromarray(image)
    if fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    save_image_atomically(image, path, fmt, "overlay", ImageWriteError, **({"quality": 95} if fmt == "JPEG" else {}))


def overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] = (),
    labels: Sequence[int] = (),
    banner: str | None = None,
) -> Image.Image:
    """The image with each (H, W) mask tinted in its own colour, prompts drawn, an optional banner."""
    canvas = image.astype(np.float32)
    for index, mask in enumerate(masks):
        colour = PALETTE[index % len(PALETTE)]
        canvas[mask] = 0.45 * canvas[mask] + 0.55 * colour
    result = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    width = max(2, round(max(image.shape[:2]) / 300))
    for box in boxes:
        draw.rectangle([float(v) for v in box], outline=(0, 255, 0), width=width)
    radius = 2 * width + 2
    for (x, y), label in zip(points, labels):
        fill = (0, 220, 0) if label == 1 else (230, 0, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    if banner:
        box = draw.textbbox((0, 0), banner)
        draw.rectangle([0, 0, box[2] + 8, box[3] + 8], fill=(200, 0, 0))
        draw.text((4, 4), banner, fill=(255, 255, 255))
    return result
