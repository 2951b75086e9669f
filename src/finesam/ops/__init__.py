"""Generic tensor operators in pure torch: modulated deformable convolution, NMS."""

from .deform_conv import DeformableConv2d, deform_conv2d
from .nms import batched_nms, nms

__all__ = ["DeformableConv2d", "batched_nms", "deform_conv2d", "nms"]
