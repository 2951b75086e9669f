"""The exportable deformable convolution (grid_sample per tap) against the pure-torch one."""

from __future__ import annotations

import pytest
import torch

from finesam.ops.deform_conv import DeformableConv2d, deform_conv2d, deform_conv2d_by_sampling


@pytest.mark.parametrize("kernel, stride, padding, dilation", [(3, 1, 1, 1), (7, 1, 3, 1), (3, 2, 1, 1), (3, 1, 2, 2)])
def test_sampling_formulation_equals_deform_conv2d(kernel, stride, padding, dilation):
    generator = torch.Generator().manual_seed(kernel + stride + dilation)
    height, width = 17, 13
    x = torch.randn(2, 5, height, width, generator=generator)
    weight = torch.randn(4, 5, kernel, kernel, generator=generator)
    bias = torch.randn(4, generator=generator)
    out_h = (height + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    # Offsets of a few pixels: many samples straddle or leave the image border.
    offset = torch.randn(2, 2 * kernel * kernel, out_h, out_w, generator=generator) * 4
    mask = torch.rand(2, kernel * kernel, out_h, out_w, generator=generator) * 2
    for modulation in (mask, None):
        expected = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, modulation)
        got = deform_conv2d_by_sampling(x, offset, weight, bias, stride, padding, dilation, modulation)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5), (got - expected).abs().max()


def test_layer_exports_with_the_sampling_formulation(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    layer = DeformableConv2d(6, 4, kernel_size=3, padding=1).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    x = torch.randn(1, 6, 12, 10, generator=generator)
    with torch.no_grad():
        expected = layer(x)
        torch.onnx.export(layer, (x,), str(tmp_path / "deform.onnx"), input_names=["x"], opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "deform.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    assert abs(got - expected.numpy()).max() <= 1e-4
