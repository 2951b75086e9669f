"""``segment_anything.modeling``: the model classes under their official names.

They are finesam's own classes (the modules ``finesam.load`` and the builders return), so
class checks of a built model against these names hold, and their official methods and attribute
paths are there (``Sam.forward``, ``MaskDecoder.forward`` / ``predict_masks``, the encoder
called with the image alone). Constructors take finesam's keyword arguments.
"""

from ...modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TinyViT", "TwoWayTransformer"]
