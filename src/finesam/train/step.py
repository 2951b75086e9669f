"""One training step's model work: prompts -> decoder -> the recipe's loss, per sample.

Every random draw of a sample (its prompt, the loss's point sampling, simulated clicks) comes
from generators seeded by (seed, epoch, sample index, stream), so a sample contributes the same
loss whichever process, batch position or data-loader worker handles it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.contracts.decoder_api import DecoderOutput, OutputMode
from ..modeling.contracts.features import ImageFeatures
from ..modeling.sam import Sam
from .clicks import GRID, simulate_correction_clicks
from .data import sample_rng
from .losses import point_sampled_mask_loss
from .prompts import FOREGROUND_ABOVE, draw_prompt
from .recipes import Recipe


def sample_torch_seed(seed: int, epoch: int, index: int) -> int:
    """The torch seed of one sample's loss point draws (from its ``loss`` stream)."""
    return int(sample_rng(seed, epoch, index, "loss").integers(2**62))


class TrainStep(nn.Module):
    """The model plus the recipe's forward-and-loss, as one module so that DDP can wrap it.

    ``forward(features, labels, indices, epoch)``: features for B samples (:class:`ImageFeatures`,
    batch B), labels (B, 1, 1024, 1024) in 0..255, the samples' data-set indices (B,) and the epoch.
    """

    def __init__(self, model: Sam, recipe: Recipe, seed: int) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.seed = seed

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """(B, 3, 1024, 1024) padded images 0..255 -> features of the frozen encoder (no grad)."""
        with torch.no_grad():
            return self.model.encode_image(images)

    def forward(self, features: ImageFeatures, labels: torch.Tensor, indices: list[int], epoch: int) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (scalar with grad), detached ``bce`` and ``dice`` and the number of
        ``supervised`` samples (a plain dict, which DDP knows how to search for tensors)."""
        terms, weights = [], []
        for b, index in enumerate(indices):
            target = labels[b : b + 1] / 255.0
            output, weight = self.sample_output(features.select(b), labels[b], index, epoch)
            loss_seed = sample_torch_seed(self.seed, epoch, index)
            supervised = self.supervised_logits(output)
            parts = [_seeded_loss(logits, target, loss_seed + k) for k, logits in enumerate(supervised)]
            terms.append((sum(p[0] for p in parts), sum(p[1] for p in parts)))
            weights.append(weight)
        weight = torch.tensor(weights, dtype=labels.dtype, device=labels.device)
        # official normalisers: num_masks = B, or the number of samples with an error component (stage 2)
        normaliser = weight.sum().clamp(min=1.0) if self.recipe.corrects_clicks else float(len(indices))
        bce = sum(w * t[0] for w, t in zip(weight, terms)) / normaliser
        dice = sum(w * t[1] for w, t in zip(weight, terms)) / normaliser
        return {"loss": bce + dice, "bce": bce.detach(), "dice": dice.detach(), "supervised": weight.gt(0).sum()}

    def sample_output(
        self, features: ImageFeatures, label: torch.Tensor, index: int, epoch: int, training: bool = True
    ) -> tuple[DecoderOutput, float]:
        """The decoder output the recipe supervises for one sample, and the sample's loss weight.

        label: (1, 1024, 1024) in 0..255. Stage 2 runs stage 1 without gradients, simulates
        correction clicks from its 256x256 errors and returns the corrected output (weight 0 when
        the stage-1 mask has no error component to click on).
        """
        weight = 1.0
        if (label > FOREGROUND_ABOVE).any() or "noise_mask" in self.recipe.prompt_kinds:
            prompt = draw_prompt(label, sample_rng(self.seed, epoch, index, "prompt"), self.recipe.prompt_kinds, name=f"sample {index}")
        else:  # no object left (an empty mask, or one that augmentation thinned away): runs, but does not count
            prompt, weight = {"boxes": torch.tensor([[0.0, 0.0, label.shape[-1] - 1.0, label.shape[-2] - 1.0]])}, 0.0
        points = (prompt["point_coords"], prompt["point_labels"]) if "point_coords" in prompt else None
        device = label.device
        move = (lambda t: None if t is None else t.to(device))
        points = None if points is None else (move(points[0]), move(points[1]))
        args = (features, points, move(prompt.get("boxes")), move(prompt.get("mask_inputs")))
        mode = OutputMode(multimask=False, hq=self.recipe.hq_output)
        if not self.recipe.corrects_clicks:
            return self.model.decode(*args, mode=mode), weight
        with torch.no_grad():
            first = self.model.decode(*args, mode=mode)
        label_256 = F.interpolate(label[None], (GRID, GRID), mode="bilinear", align_corners=False) / 255.0
        clicks = simulate_correction_clicks(
            first.low_res, label_256, [sample_rng(self.seed, epoch, index, "clicks")], training=training
        )
        points, flags, padding, valid = (t.to(device) for t in clicks)
        return self.model.correct(first.state, points, flags, padding), weight * float(valid[0])

    def supervised_logits(self, output: DecoderOutput) -> list[torch.Tensor]:
        """The (1, 1, h, w) logits the recipe's loss reads (``recipe.supervised``, in order), each
        against the 1024x1024 target."""
        return [getattr(output, name) for name in self.recipe.supervised]


def _seeded_loss(logits: torch.Tensor, target: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`point_sampled_mask_loss` of one mask, its point draws from a generator seeded with ``seed``."""
    generator = torch.Generator(device=logits.device)
    generator.manual_seed(seed)
    return point_sampled_mask_loss(logits.float(), target, 1, generators=[generator])
