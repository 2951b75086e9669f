"""deform_conv2d / DeformableConv2d against torchvision.ops.deform_conv2d (test oracle only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finesam.ops import deform_conv as dc
from finesam.ops.deform_conv import DeformableConv2d, deform_conv2d

torchvision = pytest.importorskip("torchvision")
tv_deform_conv2d = torchvision.ops.deform_conv2d


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - (dil * (k - 1) + 1)) // stride + 1


def _case(seed, batch, c_in, h, w, c_out, k, stride=1, pad=None, dil=1, offset_groups=1,
          groups=1, offset_scale=2.0, mask=True, bias=True, dtype=torch.float64):
    """Random (input, offset, weight, bias, mask, kwargs); offsets ~N(0, scale) are
    fractional and, for large scales, often land outside the image."""
    gen = torch.Generator().manual_seed(seed)
    pad = k // 2 if pad is None else pad
    h_out, w_out = _out_size(h, k, stride, pad, dil), _out_size(w, k, stride, pad, dil)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    x = randn(batch, c_in, h, w)
    weight = randn(c_out, c_in // groups, k, k) / (c_in // groups * k * k) ** 0.5  # outputs ~O(1)
    b = randn(c_out) if bias else None
    offset = randn(batch, 2 * offset_groups * k * k, h_out, w_out) * offset_scale
    m = None
    if mask:
        m = torch.rand(batch, offset_groups * k * k, h_out, w_out, generator=gen, dtype=dtype) * 2
    return x, offset, weight, b, m, dict(stride=stride, padding=pad, dilation=dil)


CASES = {
    "k3": dict(batch=1, c_in=4, h=9, w=9, c_out=5, k=3),
    "k3-nonsquare-batch": dict(batch=2, c_in=6, h=7, w=12, c_out=3, k=3),
    "k7": dict(batch=1, c_in=4, h=11, w=13, c_out=4, k=7),
    "k7-far-offsets": dict(batch=2, c_in=3, h=8, w=6, c_out=2, k=7, offset_scale=8.0),
    "k3-outside": dict(batch=1, c_in=3, h=5, w=6, c_out=2, k=3, offset_scale=30.0),
    "k5-no-mask-no-bias": dict(batch=1, c_in=3, h=10, w=7, c_out=4, k=5, mask=False, bias=False),
    "stride2-dil2-pad0": dict(batch=2, c_in=4, h=13, w=10, c_out=3, k=3, stride=2, dil=2, pad=0),
    "stride3-pad2": dict(batch=1, c_in=2, h=11, w=14, c_out=3, k=3, stride=3, pad=2),
    "offset-groups": dict(batch=2, c_in=6, h=8, w=9, c_out=4, k=3, offset_groups=3),
    "weight-groups": dict(batch=1, c_in=8, h=7, w=8, c_out=6, k=3, groups=2),
    "both-groups": dict(batch=2, c_in=8, h=6, w=9, c_out=8, k=3, offset_groups=2, groups=4),
    "both-groups-k7": dict(batch=1, c_in=4, h=9, w=8, c_out=4, k=7, offset_groups=4, groups=2),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_torchvision(name, dtype):
    x, offset, weight, bias, mask, kw = _case(0, dtype=dtype, **CASES[name])
    expected = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    got = deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    assert got.shape == expected.shape and got.dtype == dtype and got.is_contiguous()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, rtol=0, atol=tol)


def test_border_samples_match_torchvision():
    """Samples exactly on / just inside / just outside the -1 and H (W) borders, and
    integer positions: torchvision blends border pixels with zero in (-1, 0) and
    (H-1, H) and drops samples at or beyond -1 / H entirely."""
    torch.manual_seed(0)
    h, w, k = 5, 6, 3
    x = torch.randn(1, 2, h, w, dtype=torch.float64)
    weight = torch.randn(3, 2, k, k, dtype=torch.float64)
    values = torch.tensor([-7.0, -1.0, -0.999, -0.5, -1e-9, 0.0, 0.25, 1.0, 3.5, 4.0, 4.5, 4.999,
                           5.0, 5.5, 6.0, 9.0], dtype=torch.float64)
    # every tap of every output position gets an absolute target coordinate from `values`
    idx = torch.randint(0, len(values), (2, 1, k * k, h, w))
    target = values[idx]  # (2, 1, taps, h, w) absolute (y, x)
    base_y = torch.arange(h).view(h, 1) - 1 + torch.arange(k).repeat_interleave(k).view(k * k, 1, 1)
    base_x = torch.arange(w).view(1, w) - 1 + torch.arange(k).repeat(k).view(k * k, 1, 1)
    offset = torch.stack([target[0, 0] - base_y, target[1, 0] - base_x], dim=1).reshape(1, 2 * k * k, h, w)
    mask = torch.rand(1, k * k, h, w, dtype=torch.float64)
    expected = tv_deform_conv2d(x, offset, weight, padding=1, mask=mask)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=1, mask=mask), expected,
                               rtol=0, atol=1e-12)


def test_infinite_offsets_sample_zero_like_torchvision():
    x, offset, weight, bias, mask, kw = _case(1, 1, 3, 6, 7, 2, 3)
    offset[0, 0, 2, 3] = float("inf")
    offset[0, 5, 1, 1] = -float("inf")
    offset[0, 7, 4, 4] = 1e30
    expected = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, mask=mask, **kw), expected,
                               rtol=0, atol=1e-10)


def test_nan_offsets_propagate_instead_of_crashing():
    x, offset, weight, bias, mask, kw = _case(2, 1, 3, 6, 7, 2, 3)
    offset[0, 0, 2, 3] = float("nan")
    out = deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    assert out[0, :, 2, 3].isnan().all()
    assert out.isnan().sum() == out.shape[1]  # only that output position


@pytest.mark.parametrize(
    "name", ["k3-nonsquare-batch", "k7-far-offsets", "stride2-dil2-pad0", "both-groups"]
)
def test_gradients_match_torchvision(name):
    x, offset, weight, bias, mask, kw = _case(3, **CASES[name])
    inputs = [t for t in (x, offset, weight, bias, mask) if t is not None]
    has = [t is not None for t in (x, offset, weight, bias, mask)]

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        it = iter(leaves)
        args = [next(it) if present else None for present in has]
        out = fn(args[0], args[1], args[2], args[3], mask=args[4], **kw)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=out.dtype)
        return out, torch.autograd.grad(out, leaves, grad_out)

    out, grads = run(deform_conv2d)
    out_tv, grads_tv = run(tv_deform_conv2d)
    torch.testing.assert_close(out, out_tv, rtol=0, atol=1e-10)
    for g, g_tv in zip(grads, grads_tv):
        torch.testing.assert_close(g, g_tv, rtol=0, atol=1e-9)


def test_gradcheck_tiny():
    x, offset, weight, bias, mask, kw = _case(5, 1, 2, 4, 5, 2, 3, offset_scale=0.7)
    args = [t.requires_grad_() for t in (x, offset, weight, bias, mask)]
    assert torch.autograd.gradcheck(
        lambda x, o, w, b, m: deform_conv2d(x, o, w, b, mask=m, **kw), args, eps=1e-6, atol=1e-6,
        fast_mode=True,
    )


def test_many_blocks_match_single_block(monkeypatch):
    """Tiny block / matmul budgets: several images per block, row bands of one image,
    positions split across matmuls; forward and backward."""
    for blocks, gemm in ((200, 64), (5000, 300), (30, 10**6)):
        monkeypatch.setattr(dc, "_BLOCK_SAMPLES", blocks)
        monkeypatch.setattr(dc, "_GEMM_ELEMENTS", gemm)
        for name in ("k3-nonsquare-batch", "both-groups", "stride2-dil2-pad0"):
            x, offset, weight, bias, mask, kw = _case(6, **CASES[name])
            expected = tv_deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
            torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, mask=mask, **kw), expected,
                                       rtol=0, atol=1e-10)
            leaves = [t.clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
            tv_leaves = [t.clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
            out = deform_conv2d(*leaves[:4], mask=leaves[4], **kw)
            out_tv = tv_deform_conv2d(*tv_leaves[:4], mask=tv_leaves[4], **kw)
            torch.testing.assert_close(out, out_tv, rtol=0, atol=1e-10)
            grads = torch.autograd.grad(out.square().sum(), leaves)
            grads_tv = torch.autograd.grad(out_tv.square().sum(), tv_leaves)
            for g, g_tv in zip(grads, grads_tv):
                torch.testing.assert_close(g, g_tv, rtol=0, atol=1e-9)


def test_channels_last_and_strided_inputs():
    x, offset, weight, bias, mask, kw = _case(7, 2, 4, 9, 8, 3, 3)
    expected = deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, offset, mask)]
    torch.testing.assert_close(deform_conv2d(cl[0], cl[1], weight, bias, mask=cl[2], **kw), expected,
                               rtol=0, atol=1e-12)
    # non-contiguous views (every other column of a wider tensor)
    wide = [torch.cat([t, t], dim=-1)[..., ::2] for t in (x, offset, mask)]
    torch.testing.assert_close(deform_conv2d(wide[0], wide[1], weight, bias, mask=wide[2], **kw),
                               deform_conv2d(*(t.contiguous() for t in (wide[0], wide[1], weight, bias)),
                                             mask=wide[2].contiguous(), **kw), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision(dtype, tol):
    x, offset, weight, bias, mask, kw = _case(8, 1, 4, 8, 9, 3, 3, dtype=torch.float32)
    expected = deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    got = deform_conv2d(*(t.to(dtype) for t in (x, offset, weight, bias)), mask=mask.to(dtype), **kw)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, offset, weight, bias, mask, kw = _case(9, 2, 4, 9, 8, 3, 3)
    leaves = [t.cuda().requires_grad_() for t in (x, offset, weight, bias, mask)]
    out = deform_conv2d(*leaves[:4], mask=leaves[4], **kw)
    torch.testing.assert_close(out.cpu(), tv_deform_conv2d(x, offset, weight, bias, mask=mask, **kw),
                               rtol=0, atol=1e-10)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.isfinite().all() for t in leaves)


@pytest.mark.parametrize("k", [3, 7])
def test_module_checkpoint_keys_and_shapes(k):
    module = DeformableConv2d(32, 32, kernel_size=k, padding=k // 2)
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    assert shapes == {
        "offset_conv.weight": (2 * k * k, 32, k, k),
        "offset_conv.bias": (2 * k * k,),
        "modulator_conv.weight": (k * k, 32, k, k),
        "modulator_conv.bias": (k * k,),
        "regular_conv.weight": (32, 32, k, k),
    }


@pytest.mark.parametrize("k,stride", [(3, 1), (7, 1), (3, 2)])
def test_module_at_init_is_a_plain_conv(k, stride):
    torch.manual_seed(10)
    module = DeformableConv2d(6, 5, kernel_size=k, stride=stride, padding=k // 2)
    x = torch.randn(2, 6, 15, 12)
    expected = F.conv2d(x, module.regular_conv.weight, stride=stride, padding=k // 2)
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=0, atol=1e-5)


def test_module_matches_torchvision_with_trained_like_weights():
    torch.manual_seed(11)
    module = DeformableConv2d(8, 8, kernel_size=3, padding=1).double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(1, 8, 12, 10, dtype=torch.float64)
    offset = module.offset_conv(x)
    mask = 2 * torch.sigmoid(module.modulator_conv(x))
    expected = tv_deform_conv2d(x, offset, module.regular_conv.weight, padding=1, mask=mask)
    assert offset.abs().max() > 1  # offsets really move the samples
    torch.testing.assert_close(module(x), expected, rtol=0, atol=1e-10)


ERRORS = [
    # (what to break, expected message fragment)
    ("input_3d", "input must be 4-D"),
    ("offset_channels", r"offset.shape\[1\] \(17\) must be a positive multiple of 2 \* kh \* kw = 18"),
    ("offset_spatial", r"offset spatial size \(6, 7\) does not match the output size \(6, 8\)"),
    ("offset_batch", r"offset batch size \(2\) does not match input batch size \(1\)"),
    ("mask_channels", r"mask.shape\[1\] \(8\) must be offset_groups \* kh \* kw = 1 \* 9 = 9"),
    ("mask_spatial", r"mask spatial size \(6, 7\) does not match the output size \(6, 8\)"),
    ("weight_in_channels", r"input channels \(4\) must be a multiple of weight.shape\[1\] \(3\)"),
    ("weight_out_groups", r"weight.shape\[0\] \(5\) must be divisible by the number of weight groups \(2"),
    ("offset_groups", r"input channels \(4\) must be divisible by the number of offset groups \(3"),
    ("bias_size", r"bias has 4 elements but weight has 5 output channels"),
    ("dtype", r"weight dtype torch.float32 does not match input dtype torch.float64"),
    ("stride", r"stride must be positive"),
    ("padding", r"padding must be non-negative"),
    ("empty_output", r"computed output size \(0, 1\) is empty"),
]


@pytest.mark.parametrize("what,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_shape_errors(what, message):
    x = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    offset = torch.randn(1, 18, 6, 8, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    mask = torch.rand(1, 9, 6, 8, dtype=torch.float64)
    bias, kw = None, dict(padding=1)
    if what == "input_3d":
        x = x[0]
    elif what == "offset_channels":
        offset = offset[:, :17]
    elif what == "offset_spatial":
        offset = offset[..., :7]
    elif what == "offset_batch":
        offset = torch.cat([offset, offset])
    elif what == "mask_channels":
        mask = mask[:, :8]
    elif what == "mask_spatial":
        mask = mask[..., :7]
    elif what == "weight_in_channels":
        weight = weight[:, :3]
    elif what == "weight_out_groups":
        weight = weight[:, :2]
    elif what == "offset_groups":
        offset = torch.randn(1, 54, 6, 8, dtype=torch.float64)
        mask = None
    elif what == "bias_size":
        bias = torch.randn(4, dtype=torch.float64)
    elif what == "dtype":
        weight = weight.float()
    elif what == "stride":
        kw["stride"] = 0
    elif what == "padding":
        kw["padding"] = -1
    elif what == "empty_output":
        x, offset, mask = x[:, :, :2, :3], offset[..., :0, :1], None
        kw["padding"] = 0
    with pytest.raises(ValueError, match=message):
        deform_conv2d(x, offset, weight, bias, mask=mask, **kw)


def test_empty_batch():
    x, offset, weight = torch.randn(0, 4, 6, 7), torch.randn(0, 18, 6, 7), torch.randn(5, 4, 3, 3)
    out = deform_conv2d(x, offset, weight, padding=1)
    assert out.shape == (0, 5, 6, 7)
