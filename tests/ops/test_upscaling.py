"""The channels-last upscaling kernels (:mod:`finesam.ops.upscaling`) compute what the
modules they replace in eager inference compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import finesam
from finesam.ops.upscaling import channels_last_upscaling, transposed_conv_2x2

from conftest import assert_close_to_plain, randomize_


@pytest.mark.parametrize("shape,bias", [((1, 64, 64, 256), True), ((3, 5, 7, 16), False), ((2, 1, 9, 8), True)])
def test_transposed_conv_2x2_equals_conv_transpose(shape, bias):
    generator = torch.Generator().manual_seed(sum(shape))
    conv = nn.ConvTranspose2d(shape[-1], max(1, shape[-1] // 2), kernel_size=2, stride=2, bias=bias)
    with torch.no_grad():
        for tensor in conv.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
        x = torch.randn(shape, generator=generator)
        ours = transposed_conv_2x2(x, conv)
        reference = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert ours.is_contiguous()
    assert_close_to_plain(ours, reference)


def test_channels_last_upscaling_equals_the_sequential():
    decoder = randomize_(finesam.load("mobile_sam", random_weights=True).mask_decoder, seed=5, scale=0.2)
    src = torch.randn(2, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = channels_last_upscaling(decoder.output_upscaling, src)
        reference = decoder.output_upscaling(src)
    assert ours.shape == (2, 32, 256, 256) and ours.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_plain(ours, reference)
