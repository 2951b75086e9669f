"""finesam: high-quality, high-resolution promptable segmentation (SAM, MobileSAM, HQ-SAM, Pi-SAM)."""

from .automatic_mask_generator import AutomaticMaskGenerator
from .checkpoints import REGISTRY, CheckpointError, CheckpointNotFoundError, ModelSpec, load
from .modeling import ImageFeatures, OutputMode, Sam
from .interactive import InteractiveSession
from .predictor import SamPredictor
from .registry_compat import sam_model_registry

__all__ = [
    "AutomaticMaskGenerator",
    "REGISTRY",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ImageFeatures",
    "InteractiveSession",
    "ModelSpec",
    "OutputMode",
    "Sam",
    "SamPredictor",
    "load",
    "sam_model_registry",
]
__version__ = "0.1.0"
