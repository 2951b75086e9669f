"""finesam: high-quality, high-resolution promptable segmentation (SAM, MobileSAM, HQ-SAM)."""

from .checkpoints import REGISTRY, CheckpointError, CheckpointNotFoundError, ModelSpec, load
from .modeling import ImageFeatures, OutputMode, Sam
from .predictor import SamPredictor
from .registry_compat import sam_model_registry

__all__ = [
    "REGISTRY",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ImageFeatures",
    "ModelSpec",
    "OutputMode",
    "Sam",
    "SamPredictor",
    "load",
    "sam_model_registry",
]
__version__ = "0.1.0"
