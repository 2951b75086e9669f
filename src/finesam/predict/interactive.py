"""`InteractiveSession`: one object, refined click by click, with undo, for every model.

Models whose decoder takes points (SAM, HQ-SAM): each step predicts from the box (if any), all
clicks so far and the previous low-res logits as ``mask_input`` (SAM's own refinement). Models
whose decoder corrects clicks (Pi-SAM): the box gives the mask, and the clicks go to
``predictor.correct``, all together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError, NothingToUndoError
from .predictor import SamPredictor, validate_boxes, validate_points


@dataclass(frozen=True)
class SessionResult:
    """mask: (H, W) bool; score: the model's predicted quality; low_res: (1, 256, 256) logits."""

    mask: np.ndarray
    score: float
    low_res: np.ndarray


@dataclass(frozen=True)
class _Snapshot:
    box: tuple[float, ...] | None
    clicks: tuple[tuple[float, float, bool], ...]
    result: SessionResult | None
    correction_state: object = None


@dataclass
class InteractiveSession:
    """Keeps one object's prompts and mask across clicks.

    >>> session = InteractiveSession(predictor)          # predictor.set_image(...) done before
    >>> session.set_box([30, 40, 380, 290])              # optional for SAM/HQ, required first for Pi-SAM
    >>> session.add_click(200, 150, positive=True)       # returns the new (H, W) mask
    >>> session.undo()                                   # back to the previous mask, exactly
    """

    predictor: SamPredictor
    box: tuple[float, ...] | None = None
    clicks: list[tuple[float, float, bool]] = field(default_factory=list)
    result: SessionResult | None = None
    _history: list[_Snapshot] = field(default_factory=list, repr=False)

    @property
    def mask(self) -> np.ndarray | None:
        """Current (H, W) bool mask, or None before the first prompt."""
        return None if self.result is None else self.result.mask

    def set_box(self, box) -> np.ndarray:
        """Set (or replace) the object's box (x0, y0, x1, y1) pixels; returns the new mask."""
        values = tuple(float(v) for v in validate_boxes(box, batched=False).reshape(-1))
        self._push()
        self.box = values
        return self._update(box_changed=True)

    def add_click(self, x: float, y: float, positive: bool = True) -> np.ndarray:
        """Add a foreground (``positive``) or background click at pixel (x, y); returns the new mask."""
        if self._corrects and self.box is None:
            raise InvalidInputError("this model corrects a box prediction (Pi-SAM): call set_box(...) before adding clicks")
        coords, _ = validate_points([[x, y]], [1], batched=False, name="click (x, y)")
        if not isinstance(positive, (bool, np.bool_)) and positive not in (0, 1):
            raise InvalidInputError(f"positive must be True (foreground) or False (background), got {positive!r}")
        click = (float(coords[0, 0]), float(coords[0, 1]), bool(positive))
        self._push()
        self.clicks.append(click)
        return self._update(box_changed=False)

    def undo(self) -> np.ndarray | None:
        """Drop the last box or click; returns the previous mask exactly (None if nothing is left)."""
        if not self._history:
            raise NothingToUndoError("nothing to undo")
        snapshot = self._history.pop()
        self.box, self.clicks, self.result = snapshot.box, list(snapshot.clicks), snapshot.result
        self.predictor.correction_state = snapshot.correction_state
        return self.mask

    def reset(self) -> None:
        """Forget the object's prompts, mask and history (the image embedding is kept)."""
        self.box, self.clicks, self.result, self._history = None, [], None, []
        self.predictor.correction_state = None

    @property
    def _corrects(self) -> bool:
        return self.predictor.capabilities.corrects_clicks

    def _push(self) -> None:
        self._history.append(_Snapshot(self.box, tuple(self.clicks), self.result, self.predictor.correction_state))

    def _update(self, box_changed: bool) -> np.ndarray:
        try:
            self.result = self._predict_corrected(box_changed) if self._corrects else self._predict_sam()
        except Exception:
            self.undo()  # leave the session as it was before the failed step
            raise
        return self.result.mask

    def _predict_sam(self) -> SessionResult:
        points = np.array([c[:2] for c in self.clicks]) if self.clicks else None
        labels = np.array([int(c[2]) for c in self.clicks]) if self.clicks else None
        box = np.array(self.box) if self.box is not None else None
        previous = self.result.low_res if self.result is not None else None
        # A single click alone is ambiguous: let SAM propose 3 masks and keep the best.
        multimask = box is None and len(self.clicks) == 1 and previous is None
        masks, scores, low_res = self.predictor.predict(points, labels, box, previous, multimask_output=multimask)
        best = int(np.argmax(scores))
        return SessionResult(masks[best], float(scores[best]), low_res[best : best + 1])

    def _predict_corrected(self, box_changed: bool) -> SessionResult:
        if box_changed or self.predictor.correction_state is None:
            masks, scores, low_res = self.predictor.predict(box=np.array(self.box))
        if self.clicks:
            fg = [c[:2] for c in self.clicks if c[2]]
            bg = [c[:2] for c in self.clicks if not c[2]]
            masks, scores, low_res = self.predictor.correct(np.array(fg) if fg else None, np.array(bg) if bg else None)
        return SessionResult(masks[0], float(scores[0]), low_res[:1])
