"""Generic tensor operators in pure torch: modulated deformable convolution, NMS, mask
upsampling, and the kernels the model's modules call in eager inference (banded convolution
pairs, channels-last upscaling, in-place GELU, attention by query rows;
:func:`~finesam.ops.inference.eager_inference` says when they apply)."""

from .deform_conv import DeformableConv2d, deform_conv2d
from .nms import batched_nms, nms

__all__ = ["DeformableConv2d", "batched_nms", "deform_conv2d", "nms"]
