"""finesam: high-quality, high-resolution promptable segmentation (SAM, MobileSAM, HQ-SAM, Pi-SAM).

``from finesam import SamPredictor, SamAutomaticMaskGenerator, sam_model_registry`` replaces the
same import from ``segment_anything``; ``finesam.compat.segment_anything_hq`` replaces
``segment_anything_hq``.
"""

from .checkpoints import CheckpointError, CheckpointNotFoundError
from .compat.segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from .loading import RANDOM_WEIGHTS_SEED, load, save
from .modeling import DecoderCapabilities, DecoderOutput, ImageFeatures, OutputMode, Sam
from .predict import AutomaticMaskGenerator, InteractiveSession, SamPredictor
from .registry import REGISTRY, ModelSpec, SamArchitecture, get_spec, register_model, unregister_model

__all__ = [
    "AutomaticMaskGenerator",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DecoderCapabilities",
    "DecoderOutput",
    "ImageFeatures",
    "InteractiveSession",
    "ModelSpec",
    "OutputMode",
    "RANDOM_WEIGHTS_SEED",
    "REGISTRY",
    "Sam",
    "SamArchitecture",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "get_spec",
    "load",
    "register_model",
    "sam_model_registry",
    "save",
    "unregister_model",
]
__version__ = "0.1.0"
