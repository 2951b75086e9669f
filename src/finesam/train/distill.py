"""``--recipe distill``: MobileSAM-style decoupled distillation of a TinyViT image encoder.

MobileSAM trains its small encoder alone, so that its image embedding matches a large SAM's
(the teacher): the loss is the mean squared error between the two (B, 256, 64, 64) embeddings,
no mask or prompt is involved, and the prompt encoder and mask decoder are the teacher's,
copied unchanged and frozen (they fit the student because both embeddings have one shape).
MobileSAM never published its training code; this module is ours, written from the paper.

Choices (each is documented in the README's "Distillation (MobileSAM-style)"):

- Data: images only. ``--data NAME=DIR`` takes any data set layout (its masks are ignored) or a
  plain folder of images.
- Augmentation: horizontal flip (p = 0.5), then the image is resized so that its long side is
  the model's input size (1024) and padded bottom / right, exactly as the predictor feeds the
  encoder at inference (LSJ with the scale range fixed at 1.0), truncated to integers like the
  uint8 images the predictor sees. With ``--cache-features`` the teacher embedding of view v
  (the augmentation of epoch v) is stored and the student is trained on exactly that view, which
  the data set re-creates from the same seed: epoch e reads view e mod ``--cached-views``.
- Batch norm (TinyViT's convolutions) runs with its running statistics, as at inference (the
  parameters still learn): a sample's loss then does not depend on its batch neighbours, so
  N processes x batch B equal one process x batch N*B, and gradient accumulation is exact.
- Initialisation: ``--init FILE`` starts the student from a file's encoder weights; by default the
  encoder is drawn from a ``torch.Generator`` seeded from ``--seed`` (TinyViT's own scheme: linear
  weights truncated normal with std 0.02 and zero biases, convolutions as PyTorch's default).
- What learns: the encoder's patch embedding, stages and neck; TinyViT's ImageNet classifier
  (``norm_head``, ``head``) is not in the graph and stays as initialised (the official files hold it).

Validation (``--val``): the embedding MSE of student vs teacher on unaugmented images, and the
mask IoU of the student's mask vs the teacher's on the box of each ground-truth mask.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.folders import DatasetError, files_by_stem
from ..data.images import ImageReadError, read_image
from ..distributed import DistributedContext, broadcast_from_main, gather_to_main, shard
from ..errors import InvalidInputError
from ..evaluation.prompts import mask_box
from ..loading import build_seeded, load
from ..metrics import iou
from ..modeling.encoders.tiny_vit import TinyViT
from ..modeling.sam import Sam
from ..predict.predictor import SamPredictor
from ..registry import get_spec
from .data import Augmentation, _open_source, sample_rng, torch_generator
from .feature_cache import EncodedViewCache, _file_identity
from .prompts import FOREGROUND_ABOVE
from .recipes import Recipe
from .validation import open_validation_sets

#: the parts copied from the teacher and frozen
TEACHER_PARTS = ("prompt_encoder.", "mask_decoder.")
#: the last word of the student initialisation generator's seed (after --seed)
INIT_STREAM = 7


def distill_augmentation(size: int) -> Augmentation:
    """Flip (p = 0.5), long side resized to ``size`` and padded (no jitter), integer pixels."""
    return Augmentation(flip_probability=0.5, scale_range=(1.0, 1.0), size=size, truncate_to_uint8=True)


# --- checks before any work -----------------------------------------------------------------------
def embedding_shape(model_name: str) -> tuple[int, ...]:
    """(C, h, w) of ``model_name``'s image embedding, from a weightless meta-device forward."""
    with torch.device("meta"):
        model = get_spec(model_name).build()
        size = model.image_size
        return tuple(model.image_encoder(torch.empty(1, 3, size, size), keep_early=False).embedding.shape[1:])


def check_distill_config(config: Any) -> None:
    """Refuse, in one line, what cannot be distilled (before a model is built or a file written)."""
    if config.teacher_checkpoint is None:
        raise InvalidInputError(f"`recipe` distill needs `teacher_checkpoint` FILE: the weights of the teacher {config.teacher} "
                                "(e.g. sam_vit_h_4b8939.pth)", parameters=("recipe", "teacher_checkpoint"))
    if not Path(config.teacher_checkpoint).is_file():
        raise InvalidInputError(f"`teacher_checkpoint` {str(config.teacher_checkpoint)!r} is not a file",
                                parameters=("teacher_checkpoint",))
    if config.init is not None and config.random_weights:
        raise InvalidInputError("pass at most one of `init` FILE (the student's starting weights) and `random_weights`",
                                parameters=("init", "random_weights"))
    if config.init is not None and not Path(config.init).is_file():
        raise InvalidInputError(f"`init` {str(config.init)!r} is not a file", parameters=("init",))
    if config.init_decoder is not None:
        raise InvalidInputError("`recipe` distill copies the teacher's decoder: `init_decoder` does not apply",
                                parameters=("recipe", "init_decoder"))
    outside = [prefix for prefix in config.trainable if not prefix.startswith("image_encoder.")]
    if outside:
        raise InvalidInputError(f"`recipe` distill trains the image encoder only (the decoder is the teacher's, frozen); "
                                f"`trainable` {outside[0]!r} is outside 'image_encoder.'", parameters=("recipe", "trainable"))
    student, teacher = get_spec(config.model), get_spec(config.teacher)
    with torch.device("meta"):
        student_encoder = student.build().image_encoder
    if not isinstance(student_encoder, TinyViT):
        raise InvalidInputError(f"`recipe` distill trains a TinyViT encoder (mobile_sam, hq_vit_tiny); {config.model}'s encoder is "
                                f"{type(student_encoder).__name__}: pass `model` mobile_sam", parameters=("recipe", "model"))
    student_shape, teacher_shape = embedding_shape(config.model), embedding_shape(config.teacher)
    if student_shape != teacher_shape:
        raise InvalidInputError(f"the teacher {config.teacher}'s embedding is {'x'.join(map(str, teacher_shape))} but the student "
                                f"{config.model}'s is {'x'.join(map(str, student_shape))}; choose a teacher with the student's shape")
    student_shapes, teacher_shapes = (
        {key: shape for key, shape in spec.state_shapes()[1].items() if key.startswith(TEACHER_PARTS)} for spec in (student, teacher)
    )
    if student_shapes != teacher_shapes:
        raise InvalidInputError(f"the teacher {config.teacher}'s prompt encoder and mask decoder do not fit the student {config.model}; "
                                "distil from a SAM teacher (sam_vit_b/l/h) into mobile_sam, then train HQ parts with --recipe hq")


# --- models --------------------------------------------------------------------------------------
def init_student_encoder(encoder: nn.Module, seed: int) -> None:
    """Redraw ``encoder``'s linear and convolution weights from a generator seeded by ``seed``
    (TinyViT's scheme: linear weights truncated normal, std 0.02, zero biases; convolutions as
    PyTorch's default, Kaiming-uniform with a = sqrt(5)); norms keep their constant init."""
    generator = torch_generator(np.random.default_rng([int(seed), INIT_STREAM]))
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(module.weight)[0])
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def build_distillation(config: Any, recipe: Recipe, device: torch.device) -> tuple[Sam, Sam]:
    """(student, teacher): the student with the teacher's prompt encoder and mask decoder, only
    its encoder (the recipe's prefixes, or ``--trainable``) trainable; the teacher frozen."""
    teacher = load(config.teacher, config.teacher_checkpoint, device=device)
    teacher.requires_grad_(False)
    if config.init is not None:
        student = load(config.model, config.init, device=device)
    else:  # the constructor's own draws are replaced by the seeded ones below
        student = build_seeded(get_spec(config.model), config.seed).to(device)
        init_student_encoder(student.image_encoder, config.seed)
    shared = {key: value for key, value in teacher.state_dict().items() if key.startswith(TEACHER_PARTS)}
    student.load_state_dict({**student.state_dict(), **shared}, strict=True)
    from .engine import set_trainable  # the engine imports this module

    set_trainable(student, config.trainable or recipe.trainable)
    return student.eval(), teacher.eval()


class DistillStep(nn.Module):
    """The student's forward and the embedding MSE, as one module so that DDP can wrap it.

    ``forward(images, teacher_embeddings)``: images (B, 3, S, S) 0..255 padded, the teacher's
    embeddings (B, 256, 64, 64) -> ``{"loss": mean squared error over every element}``.
    """

    def __init__(self, student: Sam) -> None:
        super().__init__()
        self.model = student

    def forward(self, images: torch.Tensor, teacher_embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        student = self.model.encode_image(images, frozenset()).embedding
        return {"loss": F.mse_loss(student.float(), teacher_embeddings.float())}


@torch.no_grad()
def teacher_embeddings(teacher: Sam | None, batch: dict, device: torch.device) -> torch.Tensor:
    """(B, 256, 64, 64) float32: the cached embeddings of the batch, else the teacher's."""
    if "embedding" in batch:
        return batch["embedding"].to(device=device, dtype=torch.float32)
    return teacher.encode_image(batch["image"].to(device), frozenset()).embedding.float()


# --- data ----------------------------------------------------------------------------------------
def distill_images(config: Any) -> "DistillImages":
    """The run's :class:`DistillImages`, augmented to the student's input size."""
    with torch.device("meta"):
        size = get_spec(config.model).build().image_size
    return DistillImages(config.data, distill_augmentation(size), config.seed)


def _source_images(name: str, path: Path) -> list[Path]:
    """The images of ``--data NAME=DIR``: a data set layout's (masks ignored), else DIR's own files."""
    try:
        return [pair.image for pair in _open_source(name, path).pairs]
    except DatasetError as layout_error:
        folder = Path(path)
        images = list(files_by_stem(folder).values()) if folder.is_dir() else []
        if not images:
            raise InvalidInputError(f"`data` {name}={path}: no images (neither a known data set layout nor image files: "
                                    f"{layout_error})", parameters=("data",)) from None
        return images


class DistillImages(Dataset):
    """Augmented images without labels for ``--recipe distill``.

    ``dataset[index]``: ``"image"`` float32 (3, S, S) 0..255, padded with 128; ``"index"``,
    ``"epoch"``, ``"name"``. Each sample's augmentation is drawn from
    ``sample_rng(seed, epoch, index, "augment")``, so it is the same in every process and worker.
    """

    def __init__(self, sources: Sequence[tuple[str, Path]], augment: Augmentation, seed: int) -> None:
        sample_rng(seed, 0, 0)  # validates the seed
        if not sources:
            raise InvalidInputError("a training set needs at least one source: pass sources as (NAME, PATH) pairs")
        names = [name for name, _ in sources]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"training source names must be unique, got {names}")
        self.items = [(f"{name}/{image.stem}", image) for name, path in sources for image in _source_images(name, path)]
        self.augment, self.seed, self.epoch = augment, int(seed), 0

    def __len__(self) -> int:
        return len(self.items)

    def names(self) -> list[str]:
        return [name for name, _ in self.items]

    def set_epoch(self, epoch: int) -> None:
        sample_rng(self.seed, epoch, 0)  # validates
        self.epoch = int(epoch)

    def at_epoch(self, epoch: int) -> "DistillImages":
        """A copy that draws epoch ``epoch``'s augmentations."""
        view = copy.copy(self)
        view.set_epoch(epoch)
        return view

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, path = self.items[index]
        try:
            image = read_image(path)
        except ImageReadError as error:
            raise DatasetError(f"{name}: {error}") from None
        blank = np.zeros(image.shape[:2], np.float32)  # no label: the augmentation's crop never redraws
        pixels, _, _ = self.augment(image, blank, sample_rng(self.seed, self.epoch, int(index), "augment"))
        return {"image": pixels, "index": int(index), "epoch": self.epoch, "name": name}


class _CachedDistillView(Dataset):
    """Cached teacher embeddings of one view, each with the augmented image they were computed on."""

    def __init__(self, cache: EncodedViewCache, images: DistillImages, epoch: int) -> None:
        self.cached = cache.epoch_view(epoch)
        self.images = images.at_epoch(epoch % cache.views)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index]["image"], "embedding": self.cached[index]["embedding"], "index": int(index)}


def collate_distill(samples: Sequence[dict]) -> dict[str, Any]:
    """``image`` (B, 3, S, S), ``embedding`` (B, 256, 64, 64) when cached, ``index`` a list."""
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in ("image", "embedding") if key in samples[0]}
    batch["index"] = [sample["index"] for sample in samples]
    return batch


def distill_loader(images: DistillImages, cache: EncodedViewCache | None, batches: list[list[int]], epoch: int, workers: int) -> DataLoader:
    """The epoch's batches: fresh images (the teacher runs in the step) or cached embeddings + their views."""
    dataset: Dataset = _CachedDistillView(cache, images, epoch) if cache is not None else images.at_epoch(epoch)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_distill)


def prepare_teacher_cache(root: Path, teacher: Sam, images: DistillImages, config: Any, settings: dict,
                          context: DistributedContext, dtype: torch.dtype, progress: bool) -> EncodedViewCache:
    """The teacher's embeddings of every image and view, computed once (keyed by the teacher file)."""
    identity = {"teacher": config.teacher, "teacher_checkpoint": _file_identity(config.teacher_checkpoint)}
    return EncodedViewCache.prepare(root, teacher, images, config, settings, context, dtype=dtype, progress=progress,
                                identity=identity, extras=frozenset())


# --- validation ----------------------------------------------------------------------------------
class DistillValidation:
    """Student vs teacher on the ``--val`` images (this process's share): the teacher's embedding
    of each image is computed once, when the run starts; each validation then runs the student.

    ``__call__(student, context)`` -> ``{"embedding_mse", "mask_iou", "images"}``: the mean over
    images of the embedding MSE (unaugmented image, resized and padded as the predictor does) and
    of the IoU between the student's and the teacher's masks for the ground-truth mask's box
    (both through the shared decoder, at the image's resolution).
    """

    def __init__(self, teacher: Sam, sources: Sequence[tuple[str, Path]], limit: int | None, context: DistributedContext) -> None:
        items = []
        for dataset in open_validation_sets(sources):
            items += [(dataset, pair) for pair in (dataset.pairs[:limit] if limit else dataset.pairs)]
        predictor = SamPredictor(teacher, keep_early_feature=False)
        self.items = []
        for dataset, pair in shard(items, context):
            _, image, gt, _ = dataset.load(pair)
            foreground = gt > FOREGROUND_ABOVE
            if not foreground.any():
                continue
            predictor.set_image(image)
            self.items.append((dataset, pair, mask_box(foreground), predictor.image_features.to("cpu")))

    @torch.no_grad()
    def __call__(self, student: Sam, context: DistributedContext) -> dict[str, float]:
        predictor = SamPredictor(student, keep_early_feature=False)
        scores = []
        for dataset, pair, box, teacher_features in self.items:
            image = dataset.load(pair).image
            predictor.set_features(teacher_features, image.shape[:2])
            teacher_mask = predictor.predict(box=box, multimask_output=False)[0][0]
            predictor.set_image(image)
            error = F.mse_loss(predictor.image_features.embedding.float().cpu(), teacher_features.embedding.float())
            student_mask = predictor.predict(box=box, multimask_output=False)[0][0]
            scores.append((float(error), iou(student_mask, teacher_mask.astype(np.uint8) * 255)))
        gathered = gather_to_main(scores, context)
        result: dict[str, float] = {}
        if context.is_main:
            every = [score for part in gathered for score in part]
            result = {"embedding_mse": float(np.mean([s[0] for s in every])) if every else float("nan"),
                      "mask_iou": float(np.mean([s[1] for s in every])) if every else float("nan"), "images": len(every)}
        return broadcast_from_main(result, context)
