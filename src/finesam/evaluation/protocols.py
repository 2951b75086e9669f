"""Evaluation protocols: from one :class:`~finesam.data.Sample` to predicted masks (or a click run).

Each protocol works on any :class:`~finesam.predict.predictor.SamPredictor` of a model from
``finesam.load``: SAM / MobileSAM, HQ-SAM (``hq_output``, default ``"hq_only"`` as HQ-SAM's
evaluation) and Pi-SAM. Protocols ask the decoder's declaration (``predictor.capabilities``):
a decoder with a higher ``output_size`` has its own logits used (Pi-SAM's 1024x1024 head), one
that ``corrects_clicks`` gets corrections through ``predictor.correct``, and one that takes no
points is refused by the point protocols.

========== =================================================================================
protocol   definition
========== =================================================================================
box        HQ-SAM's official evaluation: image squashed to 1024x1024 (bilinear on the float
           image, truncated to uint8), box from the squashed GT > 128, one mask
           (``multimask_output=False``, HQ logits only for HQ models); the 256x256 logits
           (Pi: the 1024x1024 logits) resized bilinearly (align_corners=False) straight to
           the GT size, > 0.
box-aspect ``set_image`` on the original image (aspect kept), box from the original GT, the
           predictor's own upscaling to the original size, > 0.
noisy-box  ``box`` with the box jittered by DN-DETR's noise at scales 0.2 and 0.4 (seeded per
           image), clipped to the image (HQ-SAM Table 13).
points     aspect kept. ``1pt``: one positive click at the GT's interior distance-transform
           maximum, best of 3 multimask outputs. ``3pt``/``5pt``/``10pt``: random positive
           GT pixels, ``10pt+5neg``: plus 5 random background pixels; one mask; 3 seeded
           trials each (HQ-SAM Figure 5 and its supplement). Not for Pi models (box only).
clicks     aspect kept. RITM's robot user for up to 20 clicks (see :func:`.prompts.next_click`);
           click 1 takes the best of 3 multimask outputs, later clicks pass every click and
           the previous low-res logits as ``mask_input`` with ``multimask_output=False``.
           IoU per click, NoC@85 / NoC@90. The ignore band is neither scored nor clicked.
           Not for Pi models (box only: use ``pi-clicks``).
pi-clicks  ``box``, then corrections from the box mask's errors (Pi-SAM, see
           :func:`.prompts.error_component_clicks`): 1, 2, 5 clicks on missed foreground
           (``fg``), false foreground (``bg``) or both (``all``). Pi models: the Precise
           Interactor (``predictor.correct``); SAM / HQ: the box, the clicks and the box
           mask's low-res logits as ``mask_input``.
========== =================================================================================
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..data import Sample
from ..errors import InvalidInputError
from ..metrics import iou
from ..modeling.contracts.decoder_api import HQ_OUTPUTS
from ..predict.predictor import SamPredictor
from .prompts import (
    ERROR_KINDS,
    SQUASH_SIZE,
    Click,
    dn_box_noise,
    error_component_clicks,
    interior_point,
    mask_box,
    next_click,
    original_to_squashed,
    random_points,
    resize_logits,
    seeded_rng,
    squash_image,
    squash_mask,
    squashed_to_original,
)

#: What ``MaskOutcome.prompt`` / ``ClickOutcome.prompt`` hold: every coordinate in pixels of the
#: original image (x right, y down), whatever frame the model was prompted in.
PROMPT_FRAME = "original-image pixels: box_xyxy=x0,y0,x1,y1; points/clicks x,y,label (1 object, 0 background)"


class SkipSample(Exception):
    """This sample cannot be evaluated by the protocol (e.g. an empty ground truth)."""


@dataclass
class MaskOutcome:
    """One predicted mask: (H, W) bool at the GT size, for ``variant`` / ``trial``; ``prompt``: the
    prompt in original-image pixels (see :data:`PROMPT_FRAME`)."""

    variant: str
    trial: int
    mask: np.ndarray
    prompt: str


@dataclass
class ClickOutcome:
    """An interactive run: IoU after each click (``max_clicks`` values), the clicks (original-image
    pixels) and ``mask``, the (H, W) bool prediction after the last click (None before any click)."""

    variant: str
    trial: int
    ious: list[float]
    clicks: list[Click] = field(default_factory=list)
    mask: np.ndarray | None = None

    @property
    def prompt(self) -> str:
        return _clicks_text(self.clicks)


# --- model helpers -----------------------------------------------------------------------------
def has_output_modes(predictor: SamPredictor) -> bool:
    """HQ-SAM-like models: the decoder declares output modes (``hq_output``)."""
    return bool(predictor.capabilities.output_modes)


def _number(value) -> str:
    return f"{float(value):.6g}"


def _box_text(box: np.ndarray, squashed_from: tuple[int, int] | None = None) -> str:
    """``box_xyxy=x0,y0,x1,y1`` in original-image pixels; ``squashed_from``: the (H, W) of the
    original image when ``box`` is in the 1024x1024 squashed frame."""
    box = np.asarray(box, dtype=np.float64).reshape(2, 2)
    if squashed_from is not None:
        box = squashed_to_original(box, squashed_from)
    return "box_xyxy=" + ",".join(_number(v) for v in box.ravel())


def _points_text(coords: np.ndarray, labels: np.ndarray) -> str:
    return "points_xy_label=" + ";".join(f"{_number(x)},{_number(y)},{int(l)}" for (x, y), l in zip(coords, labels))


def _clicks_text(clicks) -> str:
    return "clicks_xy_label=" + ";".join(f"{c.x},{c.y},{int(c.positive)}" for c in clicks)


def _require_points(predictor: SamPredictor, protocol: str) -> None:
    if "points" not in predictor.capabilities.prompts:
        raise InvalidInputError(
            f"protocol {protocol!r} prompts with points, but this model takes {predictor.capabilities.prompt_names} prompts only "
            "(Pi-SAM); use box, box-aspect, noisy-box or pi-clicks (clicks through the Precise Interactor)"
        )


def _fg_valid(sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    valid = None if sample.ignore is None else ~sample.ignore
    return sample.gt > 128, valid


class Protocol(abc.ABC):
    """Base: ``run(predictor, sample)`` -> outcomes; ``variants()`` lists the (variant, trial) rows."""

    name = ""
    kind = "mask"  # or "clicks"
    draws_random = False  # True: ``seed`` changes the prompts (recorded with the run)

    def __init__(self, hq_output: str | None = "hq_only", seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise InvalidInputError(f"seed must be an integer >= 0, got {seed!r}")
        if hq_output is not None and hq_output not in HQ_OUTPUTS:
            raise InvalidInputError(f"hq_output must be one of {', '.join(HQ_OUTPUTS)}, got {hq_output!r}")
        self.hq_output = hq_output
        self.seed = int(seed)

    @abc.abstractmethod
    def variants(self) -> list[tuple[str, int]]:
        """The (variant, trial) rows this protocol writes per image."""

    def config(self, predictor: SamPredictor | None = None) -> dict:
        """Settings that change the results (stored with a run, checked on resume).

        With ``predictor``, only what applies to its model: ``hq_output`` when the decoder declares
        output modes (HQ-SAM), ``seed`` when the protocol draws random prompts."""
        config = {"protocol": self.name}
        if predictor is None or has_output_modes(predictor):
            config["hq_output"] = self.hq_output
        if predictor is None or self.draws_random:
            config["seed"] = self.seed
        return config

    @abc.abstractmethod
    def run(self, predictor: SamPredictor, sample: Sample) -> list:
        """Outcomes for one sample, one per row of ``variants()``."""

    def check(self, predictor: SamPredictor) -> None:
        """Raise ``ValueError`` if this protocol cannot run on the predictor's model."""

    # shared steps
    def _hq(self, predictor: SamPredictor) -> dict:
        return {"hq_output": self.hq_output} if has_output_modes(predictor) and self.hq_output else {}

    def _set_squashed(self, predictor: SamPredictor, sample: Sample) -> np.ndarray:
        """Set the squashed image; return the box of the squashed GT (in the 1024 frame)."""
        box = mask_box(squash_mask(sample.gt) > 128)
        if box is None:
            raise SkipSample("empty ground truth (no pixel > 128 after squashing)")
        predictor.set_image(squash_image(sample.image))
        return box

    def _squashed_box_logits(self, predictor: SamPredictor, box: np.ndarray, gt_size) -> tuple[np.ndarray, np.ndarray]:
        """Logits (H, W) at the GT size and low-res logits (1, 256, 256) for a box in the 1024 frame.

        A decoder with a finer output than 256x256 (Pi-SAM's 1024x1024 head) has its own logits resized."""
        if predictor.capabilities.output_size > 256:
            masks, _, low_res = predictor.predict(box=box, multimask_output=False, return_logits=True)
            return resize_logits(masks[0], gt_size), low_res[:1]
        _, _, low_res = predictor.predict(box=box, multimask_output=False, **self._hq(predictor))
        return resize_logits(low_res[0], gt_size), low_res[:1]


class BoxProtocol(Protocol):
    """``box`` (squashed, HQ-SAM's official protocol) or ``box-aspect`` (``squash=False``)."""

    def __init__(self, squash: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.squash = squash
        self.name = "box" if squash else "box-aspect"

    def variants(self) -> list[tuple[str, int]]:
        return [("box", 0)]

    def run(self, predictor: SamPredictor, sample: Sample) -> list[MaskOutcome]:
        if self.squash:
            box = self._set_squashed(predictor, sample)
            logits, _ = self._squashed_box_logits(predictor, box, sample.gt.shape)
            return [MaskOutcome("box", 0, logits > 0, _box_text(box, sample.gt.shape))]
        box = mask_box(sample.gt > 128)
        if box is None:
            raise SkipSample("empty ground truth")
        predictor.set_image(sample.image)
        masks, _, _ = predictor.predict(box=box, multimask_output=False, return_logits=True, **self._hq(predictor))
        return [MaskOutcome("box", 0, masks[0] > 0, _box_text(box))]


class NoisyBoxProtocol(Protocol):
    """``box`` with DN-DETR box noise at each of ``scales`` (one seeded draw per image and scale)."""

    name = "noisy-box"
    draws_random = True

    def __init__(self, scales: Sequence[float] = (0.2, 0.4), **kwargs) -> None:
        super().__init__(**kwargs)
        self.scales = tuple(float(s) for s in scales)

    def variants(self) -> list[tuple[str, int]]:
        return [(f"noise{s:g}", 0) for s in self.scales]

    def config(self, predictor: SamPredictor | None = None) -> dict:
        return {**super().config(predictor), "scales": list(self.scales)}

    def run(self, predictor: SamPredictor, sample: Sample) -> list[MaskOutcome]:
        box = self._set_squashed(predictor, sample)
        outcomes = []
        for scale in self.scales:
            rng = seeded_rng(self.seed, sample.name, round(scale * 1000))
            noisy = dn_box_noise(box, scale, rng, (SQUASH_SIZE, SQUASH_SIZE))
            logits, _ = self._squashed_box_logits(predictor, noisy, sample.gt.shape)
            outcomes.append(MaskOutcome(f"noise{scale:g}", 0, logits > 0, _box_text(noisy, sample.gt.shape)))
        return outcomes


class PointsProtocol(Protocol):
    """One centre point, and random positive (and negative) points averaged over trials."""

    name = "points"
    draws_random = True

    def __init__(self, counts: Sequence[int] = (3, 5, 10), negatives: int = 5, trials: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.counts = tuple(int(c) for c in counts)
        self.negatives = int(negatives)
        self.trials = int(trials)

    def _random_settings(self) -> list[tuple[str, int, int]]:
        settings = [(f"{n}pt", n, 0) for n in self.counts]
        if self.negatives and self.counts:
            top = max(self.counts)
            settings.append((f"{top}pt+{self.negatives}neg", top, self.negatives))
        return settings

    def variants(self) -> list[tuple[str, int]]:
        rows = [("1pt", 0)]
        return rows + [(variant, t) for variant, _, _ in self._random_settings() for t in range(self.trials)]

    def config(self, predictor: SamPredictor | None = None) -> dict:
        return {**super().config(predictor), "counts": list(self.counts), "negatives": self.negatives,
                "trials": self.trials}

    def check(self, predictor: SamPredictor) -> None:
        _require_points(predictor, self.name)

    def _predict(self, predictor: SamPredictor, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        multimask = len(coords) == 1  # a single click is ambiguous: keep the best of 3 (SAM's rule)
        masks, scores, _ = predictor.predict(coords, labels, multimask_output=multimask, **self._hq(predictor))
        return masks[int(np.argmax(scores))]

    def run(self, predictor: SamPredictor, sample: Sample) -> list[MaskOutcome]:
        self.check(predictor)
        fg, valid = _fg_valid(sample)
        scored_fg = fg if valid is None else fg & valid
        centre = interior_point(scored_fg)
        if centre is None:
            raise SkipSample("empty ground truth")
        predictor.set_image(sample.image)
        coords, labels = np.array([centre], dtype=np.float64), np.array([1])
        outcomes = [MaskOutcome("1pt", 0, self._predict(predictor, coords, labels), _points_text(coords, labels))]
        background = ~fg if valid is None else ~fg & valid
        for variant, positives, negatives in self._random_settings():
            for trial in range(self.trials):
                rng = seeded_rng(self.seed, sample.name, positives, negatives, trial)
                pos = random_points(scored_fg, positives, rng)
                neg = random_points(background, negatives, rng)
                coords = np.concatenate([pos, neg])
                labels = np.array([1] * len(pos) + [0] * len(neg))
                outcomes.append(MaskOutcome(variant, trial, self._predict(predictor, coords, labels), _points_text(coords, labels)))
        return outcomes


class ClicksProtocol(Protocol):
    """RITM-style interactive evaluation: IoU after each of ``max_clicks`` clicks."""

    name = "clicks"
    kind = "clicks"

    def __init__(self, max_clicks: int = 20, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_clicks < 1:
            raise InvalidInputError(f"max_clicks must be >= 1, got {max_clicks}")
        self.max_clicks = int(max_clicks)

    def variants(self) -> list[tuple[str, int]]:
        return [("clicks", 0)]

    def config(self, predictor: SamPredictor | None = None) -> dict:
        return {**super().config(predictor), "max_clicks": self.max_clicks}

    def check(self, predictor: SamPredictor) -> None:
        _require_points(predictor, self.name)

    def run(self, predictor: SamPredictor, sample: Sample) -> list[ClickOutcome]:
        self.check(predictor)
        fg, valid = _fg_valid(sample)
        if not (fg if valid is None else fg & valid).any():
            raise SkipSample("empty ground truth")
        predictor.set_image(sample.image)
        pred = np.zeros_like(fg)
        not_clicked = np.ones_like(fg)
        clicks: list[Click] = []
        ious: list[float] = []
        low_res = None
        final = None
        for _ in range(self.max_clicks):
            click = next_click(pred, fg, valid, not_clicked)
            if click is None:  # nothing left to correct: the mask stays as it is
                ious.append(ious[-1])
                continue
            clicks.append(click)
            not_clicked[click.y, click.x] = False
            coords = np.array([[c.x, c.y] for c in clicks], dtype=np.float64)
            labels = np.array([int(c.positive) for c in clicks])
            if low_res is None:
                masks, scores, lows = predictor.predict(coords, labels, multimask_output=True, **self._hq(predictor))
            else:
                masks, scores, lows = predictor.predict(
                    coords, labels, mask_input=low_res, multimask_output=False, **self._hq(predictor)
                )
            best = int(np.argmax(scores))
            pred, low_res = masks[best], lows[best][None]
            final = pred
            ious.append(iou(pred, sample.gt, sample.ignore))
        return [ClickOutcome("clicks", 0, ious, clicks, final)]


class PiClicksProtocol(Protocol):
    """Pi-SAM's correction protocol: the box mask, then 1 / 2 / 5 error clicks of each kind."""

    name = "pi-clicks"
    draws_random = True

    def __init__(self, counts: Sequence[int] = (1, 2, 5), kinds: Sequence[str] = ERROR_KINDS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.counts = tuple(int(c) for c in counts)
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(ERROR_KINDS)
        if unknown:
            raise InvalidInputError(f"unknown click kinds {sorted(unknown)}; use {ERROR_KINDS}")

    def variants(self) -> list[tuple[str, int]]:
        return [("box", 0)] + [(f"{kind}{n}", 0) for kind in self.kinds for n in self.counts]

    def config(self, predictor: SamPredictor | None = None) -> dict:
        return {**super().config(predictor), "counts": list(self.counts), "kinds": list(self.kinds)}

    @staticmethod
    def to_squashed(clicks: Sequence[Click], gt_size: tuple[int, int]) -> np.ndarray:
        """(N, 2) click pixels of the GT frame -> the 1024 frame, pixel centres kept aligned."""
        return original_to_squashed(np.array([[c.x, c.y] for c in clicks], dtype=np.float64), gt_size)

    def _correct(self, predictor: SamPredictor, box, low_res, clicks: list[Click], gt_size) -> np.ndarray:
        coords = self.to_squashed(clicks, gt_size)
        positive = np.array([c.positive for c in clicks])
        if predictor.capabilities.corrects_clicks:  # correct() refines the last predict (the box); calls do not stack
            fg_points = coords[positive] if positive.any() else None
            bg_points = coords[~positive] if (~positive).any() else None
            masks, _, _ = predictor.correct(fg_points=fg_points, bg_points=bg_points, return_logits=True)
            return resize_logits(masks[0], gt_size)
        _, _, lows = predictor.predict(
            coords, positive.astype(int), box=box, mask_input=low_res, multimask_output=False, **self._hq(predictor)
        )
        return resize_logits(lows[0], gt_size)

    def run(self, predictor: SamPredictor, sample: Sample) -> list[MaskOutcome]:
        fg, valid = _fg_valid(sample)
        box = self._set_squashed(predictor, sample)
        logits, low_res = self._squashed_box_logits(predictor, box, sample.gt.shape)
        first = logits > 0
        box_text = _box_text(box, sample.gt.shape)
        outcomes = [MaskOutcome("box", 0, first, box_text)]
        for kind_index, kind in enumerate(self.kinds):
            rng = seeded_rng(self.seed, sample.name, kind_index)
            all_clicks = error_component_clicks(first, fg, valid, max(self.counts), kind, rng)
            for count in self.counts:
                clicks = all_clicks[:count]
                mask = first if not clicks else self._correct(predictor, box, low_res, clicks, sample.gt.shape) > 0
                outcomes.append(MaskOutcome(f"{kind}{count}", 0, mask, f"{box_text} {_clicks_text(clicks)}"))
        return outcomes


PROTOCOLS = ("box", "box-aspect", "noisy-box", "points", "clicks", "pi-clicks")


def make_protocol(name: str, **options) -> Protocol:
    """A protocol by name; ``options``: hq_output, seed, and the protocol's own settings."""
    factories = {
        "box": lambda **o: BoxProtocol(squash=True, **o),
        "box-aspect": lambda **o: BoxProtocol(squash=False, **o),
        "noisy-box": NoisyBoxProtocol,
        "points": PointsProtocol,
        "clicks": ClicksProtocol,
        "pi-clicks": PiClicksProtocol,
    }
    if name not in factories:
        raise InvalidInputError(f"unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}")
    return factories[name](**options)
