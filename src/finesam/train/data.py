"""Training samples: image / mask pairs from the data set readers, augmented as in the official recipes.

:class:`TrainingSet` concatenates data sets found by :func:`finesam.data.open_dataset`
(DIS5K-TR, ThinObject5K-TR, FSS-1000, DUTS-TR, DUTS-TE, ECSSD, MSRA-10K, HRSOD-TR,
UHRSD-TR, any ``im/`` + ``gt/`` folder) and augments each pair as HQ-SAM's and Pi-SAM's
training code does (:class:`Augmentation`): horizontal flip, then large-scale jitter (LSJ) to
a 1024 x 1024 frame padded bottom / right (image 128, label 0).

Reproducibility: every random draw of a sample (flip, scale, crop, prompt) comes from a numpy
generator seeded by ``(seed, epoch, index, purpose)`` (:func:`sample_rng`), never from a
global generator, so a sample is the same whatever the number of processes, data-loader
workers or the order of access. Call :meth:`TrainingSet.set_epoch` before each epoch (with
``persistent_workers`` the workers keep their own copy: recreate the loader, or keep
``persistent_workers=False``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from PIL import Image, UnidentifiedImageError

from ..data import FolderDataset, open_dataset, split_from_name
from ..data.folders import DatasetError, Pair, read_mask
from ..data.images import _jpeg_is_complete, _size_problem, pixel_limit, read_image
from ..errors import FinesamError, InvalidInputError
from .prompts import FOREGROUND_ABOVE, PROMPT_KINDS, draw_prompt

#: the independent random streams of one sample (the last word of its generator's seed)
RANDOM_STREAMS = {"augment": 0, "prompt": 1, "clicks": 2, "loss": 3}
#: how many (scale, crop) draws LSJ makes at most to keep some foreground in the crop
CROP_ATTEMPTS = 10


def sample_rng(seed: int, epoch: int, index: int, purpose: str = "augment") -> np.random.Generator:
    """The numpy generator of one sample's ``purpose`` (``augment``, ``prompt``, ``clicks``, ``loss``):
    ``numpy.random.default_rng([seed, epoch, index, stream])``."""
    if purpose not in RANDOM_STREAMS:
        raise InvalidInputError(f"purpose must be one of {tuple(RANDOM_STREAMS)}, got {purpose!r}")
    for label, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InvalidInputError(f"{label} must be a non-negative integer, got {value!r}")
    return np.random.default_rng([int(seed), int(epoch), int(index), RANDOM_STREAMS[purpose]])


def torch_generator(rng: np.random.Generator, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from one 63-bit draw of ``rng``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng.integers(2**63 - 1)))
    return generator


@dataclass(frozen=True)
class Augmentation:
    """Horizontal flip + large-scale jitter, as the official training code.

    1. Flip left-right when ``rng.random() < flip_probability``.
    2. LSJ: ``s = rng.uniform(*scale_range)``; the long side becomes ``round(s * size)``, the
       short side keeps the aspect ratio (``round``); image and label are resized bilinearly
       (``align_corners=False``, no antialiasing; the label stays soft 0..255); then a random
       crop to at most ``size`` x ``size`` (offsets ``rng.integers(0, margin + 1)``, rows
       first) and padding at the bottom / right to ``size`` (image ``image_pad``, label 0).
       If the crop holds no foreground pixel (> 128) while the source label has some, the
       scale and crop are drawn again (same rng, at most 10 times): the official code would
       train on an empty target with a meaningless box.
    3. ``truncate_to_uint8``: the image is truncated to integers as the official HQ-SAM loop
       does (numpy ``astype(uint8)`` before ``Sam.forward``); Pi-SAM keeps float values.
    """

    flip_probability: float = 0.5
    scale_range: tuple[float, float] = (0.1, 2.0)
    size: int = 1024
    image_pad: float = 128.0
    truncate_to_uint8: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_probability <= 1.0:
            raise InvalidInputError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise InvalidInputError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise InvalidInputError(f"size must be a positive integer, got {self.size!r}")
        if not 0.0 <= self.image_pad <= 255.0:
            raise InvalidInputError(f"image_pad must be in [0, 255], got {self.image_pad}")

    @classmethod
    def hq(cls) -> "Augmentation":
        """HQ-SAM: flip 0.5, LSJ 0.1-2.0, image truncated to integers."""
        return cls(flip_probability=0.5, scale_range=(0.1, 2.0), truncate_to_uint8=True)

    @classmethod
    def pi(cls) -> "Augmentation":
        """Pi-SAM: flip 0.5, LSJ 0.8-1.6, float image."""
        return cls(flip_probability=0.5, scale_range=(0.8, 1.6), truncate_to_uint8=False)

    def __call__(
        self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """image (3, H, W) float 0..255, label (1, H, W) float 0..255 (tensors, or numpy (H, W, 3)
        and (H, W)) -> image (3, size, size), label (1, size, size) float32 tensors, and the
        (h, w) of the content before padding."""
        image = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else image
        label = label[0].numpy() if isinstance(label, torch.Tensor) else label
        image, label = np.asarray(image, np.float32), np.asarray(label, np.float32)
        if rng.random() < self.flip_probability:
            image, label = image[:, ::-1], label[:, ::-1]
        source_has_foreground = bool((label > FOREGROUND_ABOVE).any())
        for _ in range(CROP_ATTEMPTS):  # the label decides; the image is resized once, at the end
            new_size, window = self._draw_geometry(label.shape, rng)
            cropped_label = _resize(label, new_size)[window]
            if not source_has_foreground or bool((cropped_label > FOREGROUND_ABOVE).any()):
                break
        cropped_image = _resize(image, new_size)[window]
        height, width = cropped_label.shape
        padded_image = np.full((self.size, self.size, 3), self.image_pad, np.float32)
        padded_image[:height, :width] = cropped_image
        padded_label = np.zeros((1, self.size, self.size), np.float32)
        padded_label[0, :height, :width] = cropped_label
        if self.truncate_to_uint8:
            np.floor(padded_image, out=padded_image)  # values >= 0: astype(uint8) truncation
        return torch.from_numpy(padded_image).permute(2, 0, 1).contiguous(), torch.from_numpy(padded_label), (height, width)

    def _draw_geometry(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[tuple[int, int], tuple[slice, slice]]:
        """(resized (h, w), crop window) for one draw of the scale and the crop offsets."""
        height, width = size
        scale = rng.uniform(*self.scale_range)
        factor = round(scale * self.size) / max(height, width)
        new_size = (max(1, round(height * factor)), max(1, round(width * factor)))
        crop_height, crop_width = min(self.size, new_size[0]), min(self.size, new_size[1])
        top = int(rng.integers(0, new_size[0] - crop_height + 1))
        left = int(rng.integers(0, new_size[1] - crop_width + 1))
        return new_size, (slice(top, top + crop_height), slice(left, left + crop_width))


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W) or (H, W, C) float32 to ``size`` (h, w), half-pixel centres and no
    antialiasing: the same as ``F.interpolate(..., mode="bilinear", align_corners=False)`` (the
    official code), computed by OpenCV (several times faster)."""
    return cv2.resize(np.ascontiguousarray(values), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _open_source(name: str, path: str | os.PathLike) -> FolderDataset:
    if not isinstance(name, str) or not name or "=" in name or "/" in name:
        raise InvalidInputError(f"a training source needs a NAME without '=' or '/', got {name!r}")
    # the training split unless the name says otherwise (ThinObject5K, HRSOD, UHRSD roots hold several)
    return open_dataset(f"{name}={os.fspath(path)}", split=split_from_name(name) or "train")


class TrainingSet(Dataset):
    """Augmented training samples over several data sets, concatenated in the given order.

    Args:
        sources: ``(NAME, PATH)`` pairs, as ``--data NAME=PATH``; NAME picks the layout as in
            :func:`finesam.data.open_dataset` and the split (default: train).
        augment: an :class:`Augmentation` (``Augmentation.hq()`` or ``Augmentation.pi()``).
        seed: the run's seed (non-negative integer).
        prompt_kinds: if given, each sample also holds a ``"prompt"`` drawn by
            :func:`finesam.train.prompts.draw_prompt` from the augmented label.
        num_points: points of a ``"point"`` prompt.

    ``dataset[index]`` is a dict: ``"image"`` float32 (3, 1024, 1024) 0..255 padded with 128;
    ``"label"`` float32 (1, 1024, 1024) 0..255 (soft, bilinear) padded with 0;
    ``"content_size"`` int64 (2,) (h, w) of the content before padding; ``"index"``,
    ``"epoch"`` (ints); ``"name"`` (``"SOURCE/stem"``); and ``"prompt"`` with ``prompt_kinds``.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, Path]],
        augment: Augmentation,
        seed: int,
        *,
        prompt_kinds: Sequence[str] | None = None,
        num_points: int = 10,
    ) -> None:
        if not isinstance(augment, Augmentation):
            raise InvalidInputError(f"augment must be an Augmentation (Augmentation.hq() or .pi()), got {type(augment).__name__}")
        sample_rng(seed, 0, 0)  # validates the seed
        if not sources:
            raise InvalidInputError("a training set needs at least one source: pass sources as (NAME, PATH) pairs")
        if prompt_kinds is not None:
            unknown = [kind for kind in prompt_kinds if kind not in PROMPT_KINDS]
            if not prompt_kinds or unknown:
                raise InvalidInputError(f"prompt_kinds must be a non-empty subset of {PROMPT_KINDS}, got {tuple(prompt_kinds)}")
        self.datasets = [_open_source(name, path) for name, path in sources]
        names = [dataset.name for dataset in self.datasets]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"training source names must be unique, got {names}")
        self.augment = augment
        self.seed = int(seed)
        self.prompt_kinds = tuple(prompt_kinds) if prompt_kinds is not None else None
        self.num_points = num_points
        self.epoch = 0
        self._ends = np.cumsum([len(dataset) for dataset in self.datasets])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws."""
        sample_rng(self.seed, epoch, 0)  # validates
        self.epoch = int(epoch)

    def locate(self, index: int) -> tuple[FolderDataset, int]:
        """The data set holding ``index`` and the position in it."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"sample index {index!r} is out of range for {len(self)} samples")
        which = int(np.searchsorted(self._ends, index, side="right"))
        start = 0 if which == 0 else int(self._ends[which - 1])
        return self.datasets[which], int(index) - start

    def __getitem__(self, index: int) -> dict[str, Any]:
        dataset, position = self.locate(index)
        pair = dataset.pairs[position]
        name = f"{dataset.name}/{pair.name}"
        _, image, gt, _ = dataset.load(pair)
        if not (gt > FOREGROUND_ABOVE).any() and self.prompt_kinds is not None and "noise_mask" not in self.prompt_kinds:
            raise DatasetError(f"{name}: the mask {pair.gt} has no foreground pixel (> 128); remove this pair from the training set")
        image_tensor, label_tensor, (height, width) = self.augment(
            image, gt, sample_rng(self.seed, self.epoch, int(index), "augment")
        )
        sample: dict[str, Any] = {
            "image": image_tensor,
            "label": label_tensor,
            "content_size": torch.tensor([height, width], dtype=torch.int64),
            "index": int(index),
            "epoch": self.epoch,
            "name": name,
        }
        if self.prompt_kinds is not None:
            rng = sample_rng(self.seed, self.epoch, int(index), "prompt")
            sample["prompt"] = draw_prompt(label_tensor, rng, self.prompt_kinds, self.num_points, name=name)
        return sample


#: EXIF orientations that swap width and height (transpose, rotate 90 / 270, transverse)
_QUARTER_TURNS = (5, 6, 7, 8)


def _displayed_size(path: Path, what: str, limit: int) -> tuple[int, int]:
    """(height, width) of an image file as displayed, from its header; the file is checked to
    be complete (JPEG end marker, PNG chunk checksums) or, in any other case, decoded once."""
    label = f"{what} {str(path)!r}"
    try:
        with Image.open(path) as header:
            width, height = header.size
            orientation = header.getexif().get(0x0112, 1) if header.format in ("JPEG", "TIFF", "PNG", "WEBP") else 1
            image_format = header.format
        problem = _size_problem(height, width, limit, label)
        if problem:
            raise DatasetError(problem)
        if image_format == "PNG":
            with Image.open(path) as chunks:
                chunks.verify()  # every chunk's CRC, without decoding the pixels
    except UnidentifiedImageError:
        raise DatasetError(f"cannot read {label}: not an image file (or a format PIL cannot read); "
                           "remove it from the training set or replace it") from None
    except FinesamError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # unreadable (permissions, a folder) or a damaged header / chunk
        raise DatasetError(f"cannot read {label}: {type(error).__name__}: {error}; remove it from the training set "
                           "or replace it") from None
    if image_format not in ("PNG",) and not (image_format == "JPEG" and _jpeg_is_complete(path)):
        try:  # other formats, and JPEGs without their end marker: decode once to be sure
            decoded = read_image(path) if what == "image" else read_mask(path)
        except FinesamError as error:
            raise DatasetError(f"{error}; remove it from the training set or replace it") from None
        return int(decoded.shape[0]), int(decoded.shape[1])
    return (width, height) if orientation in _QUARTER_TURNS else (height, width)


def check_pair(dataset: FolderDataset, pair: Pair, max_pixels: int | None = None) -> None:
    """Raise :class:`~finesam.data.folders.DatasetError`, naming the file, unless ``pair``'s image
    and mask can be read and have the same size as displayed. Reads headers (and PNG checksums),
    not pixels, so that a whole training set is checked in seconds before any model loads."""
    limit = pixel_limit(max_pixels)
    image_size = _displayed_size(pair.image, "image", limit)
    mask_size = _displayed_size(pair.gt, "mask", limit)
    if image_size != mask_size:
        raise DatasetError(
            f"mask {str(pair.gt)!r} is {mask_size[1]}x{mask_size[0]} but its image {str(pair.image)!r} is "
            f"{image_size[1]}x{image_size[0]} (width x height, as displayed) in training set {dataset.name!r}; "
            "they must match: fix or remove the pair"
        )


def check_training_data(training_set: "TrainingSet") -> int:
    """Check every pair of ``training_set`` with :func:`check_pair` before any training work;
    returns the number of pairs checked. The first bad file ends the check with its path."""
    for dataset in training_set.datasets:
        for pair in dataset.pairs:
            check_pair(dataset, pair)
    return len(training_set)


_STACKED = ("image", "label", "content_size")


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`TrainingSet` samples: ``image`` (B, 3, S, S), ``label`` (B, 1, S, S),
    ``content_size`` (B, 2) stacked; ``index`` and ``epoch`` as int64 (B,); every other key
    (``name``, ``prompt``: one dict per sample, since prompt kinds differ) as a list."""
    if not samples:
        raise InvalidInputError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if key in _STACKED:
            batch[key] = torch.stack(values)
        elif key in ("index", "epoch"):
            batch[key] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[key] = values
    return batch
