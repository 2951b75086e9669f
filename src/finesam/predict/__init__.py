"""Prediction on top of a model: the predictor, interactive sessions, automatic masks."""

from .automatic_mask_generator import AutomaticMaskGenerator
from .interactive import InteractiveSession, SessionResult
from .predictor import SamPredictor
from .transforms import ResizeLongestSide

__all__ = ["AutomaticMaskGenerator", "InteractiveSession", "ResizeLongestSide", "SamPredictor", "SessionResult"]
