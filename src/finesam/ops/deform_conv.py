"""Modulated deformable convolution (DCNv2) in pure PyTorch.

:func:`deform_conv2d` reproduces ``torchvision.ops.deform_conv2d`` (same
arguments, offset/mask layout and bilinear boundary handling) without importing
torchvision, so it runs wherever plain PyTorch runs (CPU, CUDA, autograd).
:class:`DeformableConv2d` is the layer of Pi-SAM's Object Embedder, with
parameter names matching the official checkpoints.

How it works, per output position ``p`` and kernel tap ``t``::

    y, x = base(p, t) + offset(p, t)                      # fractional sample point
    col[p, t, :] = mask(p, t) * bilinear(input, y, x)     # C_in values
    out[:, p]    = W.view(C_out, -1) @ col[p].flatten() + bias

The four bilinear corners are fetched and summed by one ``F.embedding_bag``
call (a fused gather + weighted sum over a zero-padded channels-last copy of
the input), so the 4x corner tensor is never materialised. Sample coordinates
are computed for blocks of output rows, and the im2col matrix ``col`` is only
ever built for a few hundred positions at a time, right before its matmul, so
peak memory stays small whatever the kernel size (torchvision materialises
``col`` for a whole image: 400 MB for 32 channels, 7x7 taps, 256x256).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inference import eager_inference

__all__ = ["deform_conv2d", "deform_conv2d_by_sampling", "DeformableConv2d"]

# Samples (position x tap x offset group) whose coordinates are computed in one
# go: big enough to amortise per-op overhead, small enough to bound memory.
_BLOCK_SAMPLES = 1 << 18
# im2col elements gathered per matmul (2 MiB in fp32): ``col`` stays in cache
# between the gather that writes it and the matmul that reads it.
_GEMM_ELEMENTS = 1 << 19

# The input is zero-padded by this much on every side, so that all four
# bilinear corners of a clamped sample index land inside the padded table.
_PAD = 2

_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def _check_inputs(input, offset, weight, bias, mask, stride, padding, dilation):
    """Validate shapes like torchvision does; return the derived sizes."""
    for name, t in (("input", input), ("offset", offset), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(t.shape)}")
    if mask is not None and mask.dim() != 4:
        raise ValueError(f"mask must be 4-D, got shape {tuple(mask.shape)}")
    if bias is not None and bias.dim() != 1:
        raise ValueError(f"bias must be 1-D, got shape {tuple(bias.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got {input.dtype}")
    for name, t in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
        if t is None:
            continue
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise ValueError(f"{name} dtype {t.dtype} does not match input dtype {input.dtype}")

    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    if sh <= 0 or sw <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if dh <= 0 or dw <= 0:
        raise ValueError(f"dilation must be positive, got {dilation}")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")

    b, c_in, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    if kh <= 0 or kw <= 0:
        raise ValueError(f"weight has an empty kernel: shape {tuple(weight.shape)}")
    if c_per_group <= 0 or c_in % c_per_group != 0:
        raise ValueError(
            f"input channels ({c_in}) must be a multiple of weight.shape[1] ({c_per_group})"
        )
    groups = c_in // c_per_group
    if c_out % groups != 0:
        raise ValueError(
            f"weight.shape[0] ({c_out}) must be divisible by the number of weight groups "
            f"({groups} = input channels {c_in} / weight.shape[1] {c_per_group})"
        )
    if bias is not None and bias.shape[0] != c_out:
        raise ValueError(f"bias has {bias.shape[0]} elements but weight has {c_out} output channels")

    taps = kh * kw
    if offset.shape[1] == 0 or offset.shape[1] % (2 * taps) != 0:
        raise ValueError(
            f"offset.shape[1] ({offset.shape[1]}) must be a positive multiple of "
            f"2 * kh * kw = {2 * taps} for a {kh}x{kw} kernel"
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if c_in % offset_groups != 0:
        raise ValueError(
            f"input channels ({c_in}) must be divisible by the number of offset groups "
            f"({offset_groups} = offset.shape[1] {offset.shape[1]} / {2 * taps})"
        )

    h_out = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    w_out = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if h_out <= 0 or w_out <= 0:
        raise ValueError(
            f"computed output size ({h_out}, {w_out}) is empty for input {h}x{w}, "
            f"kernel {kh}x{kw}, padding {padding}, dilation {dilation}, stride {stride}"
        )
    if offset.shape[0] != b:
        raise ValueError(f"offset batch size ({offset.shape[0]}) does not match input batch size ({b})")
    if tuple(offset.shape[2:]) != (h_out, w_out):
        raise ValueError(
            f"offset spatial size {tuple(offset.shape[2:])} does not match the output size "
            f"({h_out}, {w_out})"
        )
    if mask is not None:
        if mask.shape[0] != b:
            raise ValueError(f"mask batch size ({mask.shape[0]}) does not match input batch size ({b})")
        if mask.shape[1] != offset_groups * taps:
            raise ValueError(
                f"mask.shape[1] ({mask.shape[1]}) must be offset_groups * kh * kw = "
                f"{offset_groups} * {taps} = {offset_groups * taps}"
            )
        if tuple(mask.shape[2:]) != (h_out, w_out):
            raise ValueError(
                f"mask spatial size {tuple(mask.shape[2:])} does not match the output size "
                f"({h_out}, {w_out})"
            )
    return groups, offset_groups, h_out, w_out


def _nhwc(t: Tensor) -> Tensor:
    """(B, C, H, W) in any memory format -> contiguous (B, H, W, C); free when
    ``t`` is already channels-last, one plain copy for a channel slice of such a map."""
    b, c, h, w = t.shape
    out = t.permute(0, 2, 3, 1)
    if out.stride(-1) == 1 or t.device.type != "cpu":  # channels-last already (maybe a channel slice)
        return out.contiguous()
    out = t.new_empty(b, h, w, c)
    for i in range(b):
        # 2-D transposes hit PyTorch's blocked-transpose copy, several times
        # faster on CPU than permute().contiguous().
        out[i].view(h * w, c).copy_(t[i].reshape(c, h * w).t())
    return out


@dataclass
class _Geometry:
    """Sizes and small precomputed tensors shared by all blocks of one call."""

    h: int
    w: int
    h_out: int
    w_out: int
    kh: int
    kw: int
    stride_h: int
    offset_groups: int
    groups: int
    coord_dtype: torch.dtype
    index_dtype: torch.dtype
    tap_y: Tensor  # (W_out, G, kh, kw): i*dil_h - pad_h
    base_x: Tensor  # (W_out, G, kh, kw): wo*stride_w - pad_w + j*dil_w
    start: Tensor  # (B, G): flat table index of padded pixel (0, 0) of image b, group g
    fast_stack: bool  # no autograd: stack float weights through an int view


@dataclass
class _Block:
    """Output rows ``row : row + rows`` of images ``image : image + images``
    (either whole images, or a band of rows of one image)."""

    image: int
    images: int
    row: int
    rows: int


def _corners(blk: _Block, offset: Tensor, mask: Tensor | None, table: Tensor,
             geo: _Geometry) -> tuple[Tensor, Tensor]:
    """Bilinear corners of every sample of a block of output rows.

    ``offset`` (rows, W_out, 2*G*kh*kw) and ``mask`` (rows, W_out, G*kh*kw) are
    the block's NHWC rows. Returns (idx, wts), both (images, rows * W_out * G *
    kh * kw, 4): flat row indices into ``table`` and weights (modulation
    included) of the corners (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1).
    """
    g, kh, kw, w_out = geo.offset_groups, geo.kh, geo.kw, geo.w_out
    wp = geo.w + 2 * _PAD
    nb, h0, nh = blk.images, blk.row, blk.rows
    dims = (nb, nh, w_out, g, kh, kw)  # layout of every per-sample tensor below

    # offset and mask are contiguous NHWC rows, so every per-sample op below is
    # a flat, vectorised op.
    off = offset.view(*dims, 2)
    if off.dtype != geo.coord_dtype:
        off = off.to(geo.coord_dtype)
    # Integer base coordinates are summed first, then the offset added, in the
    # same order as torchvision, so fp32 coordinates round identically.
    rows = torch.arange(h0, h0 + nh, device=off.device).to(geo.coord_dtype).mul_(geo.stride_h)
    y = off[..., 0] + (geo.tap_y + rows.view(nh, 1, 1, 1, 1))
    x = off[..., 1] + geo.base_x
    # Any sample at or beyond -1 / size is outside the image. Clamped to
    # [-PAD, size], all four of its corners fall in the zero padding of the
    # table, so it contributes 0 (and no offset gradient) as in torchvision,
    # infinite offsets included.
    y = y.clamp_(-_PAD, geo.h)
    x = x.clamp_(-_PAD, geo.w)

    # The int clamps only matter for NaN coordinates (whatever the cast makes
    # of them, the index stays in range; their NaN weights reach the output).
    y0 = torch.floor(y.detach())
    x0 = torch.floor(x.detach())
    idx = y0.to(geo.index_dtype).clamp_(-_PAD, geo.h).mul_(wp)
    idx += x0.to(geo.index_dtype).clamp_(-_PAD, geo.w)
    idx += geo.start[blk.image : blk.image + nb].view(nb, 1, 1, g, 1, 1)
    # (stacking flat tensors is much faster than broadcasting against a size-4
    # last dimension)
    idx = torch.stack([idx, idx + 1, idx + wp, idx + (wp + 1)], dim=-1)

    ly = y - y0
    lx = x - x0
    if mask is None:
        top, bottom = 1 - ly, ly
    else:
        m = mask.view(dims)
        bottom = ly * (m if m.dtype == geo.coord_dtype else m.to(geo.coord_dtype))
        top = m - bottom
    left = 1 - lx
    wts = [top * left, top * lx, bottom * left, bottom * lx]
    if wts[0].dtype != table.dtype:
        wts = [t.to(table.dtype) for t in wts]
    if geo.fast_stack:
        # torch.stack is ~4x slower for floats than for same-size ints on CPU
        # (different cat kernel); the bits are the same, so stack them as ints.
        as_int = _SAME_SIZE_INT[table.dtype.itemsize]
        wts = torch.stack([t.view(as_int) for t in wts], dim=-1).view(table.dtype)
    else:
        wts = torch.stack(wts, dim=-1)
    return idx.view(nb, -1, 4), wts.view(nb, -1, 4)


def _block(blk: _Block, offset: Tensor, mask: Tensor | None, table: Tensor, wmat: Tensor,
           bias: Tensor | None, geo: _Geometry, out: Tensor | None = None) -> Tensor | None:
    """Convolve one block (``offset``/``mask``: its NHWC rows, see :func:`_corners`).

    Without autograd, writes into ``out`` (B, C_out, H_out * W_out), gathering
    and multiplying a few hundred positions at a time. With autograd, returns
    (images, C_out, rows * W_out) from one gather: every gather's backward
    allocates a gradient the size of the whole table, so there must be few.
    """
    idx, wts = _corners(blk, offset, mask, table, geo)
    spp = geo.offset_groups * geo.kh * geo.kw  # samples per output position
    n_pos = blk.rows * geo.w_out
    if out is None:
        cols = F.embedding_bag(idx.view(-1, 4), table, per_sample_weights=wts.view(-1, 4), mode="sum")
        res = _matmul(cols.view(blk.images * n_pos, -1), wmat, bias, geo, None)
        return res.view(-1, blk.images, n_pos).transpose(0, 1)
    step = max(1, _GEMM_ELEMENTS // (spp * table.shape[1]))
    for i in range(blk.images):
        for p0 in range(0, n_pos, step):
            p1 = min(p0 + step, n_pos)
            # im2col for positions p0:p1: (positions, G * taps * C_in/G)
            cols = F.embedding_bag(idx[i, p0 * spp : p1 * spp], table,
                                   per_sample_weights=wts[i, p0 * spp : p1 * spp], mode="sum")
            l0 = blk.row * geo.w_out
            _matmul(cols.view(p1 - p0, -1), wmat, bias, geo, out[blk.image + i, :, l0 + p0 : l0 + p1])
    return None


def _matmul(cols: Tensor, wmat: Tensor, bias: Tensor | None, geo: _Geometry,
            dest: Tensor | None) -> Tensor:
    """(C_out, P) = W @ cols.T + bias, for cols (P, G * taps * C_in/G); into ``dest`` if given."""
    if geo.groups == 1:
        # (C_out, K) @ (K, P): the result is already NCHW, no transpose needed.
        if dest is None:
            if bias is None:
                return torch.mm(wmat, cols.t())
            return torch.addmm(bias[:, None], wmat, cols.t())
        if bias is None:
            return torch.mm(wmat, cols.t(), out=dest)
        return torch.addmm(bias[:, None], wmat, cols.t(), out=dest)
    # Weight groups: regroup channels as (groups, P, taps * C_in/groups), one bmm.
    n_pos, g, groups = cols.shape[0], geo.offset_groups, geo.groups
    taps = geo.kh * geo.kw
    c_in = cols.shape[1] // taps
    cols = cols.view(n_pos, g, taps, -1).transpose(1, 2).reshape(n_pos, taps, groups, c_in // groups)
    cols = cols.permute(2, 0, 1, 3).reshape(groups, n_pos, -1)
    res = torch.bmm(wmat, cols.transpose(1, 2)).view(-1, n_pos)  # (C_out, P)
    if bias is not None:
        res = res + bias[:, None]
    return res if dest is None else dest.copy_(res)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution v1/v2, a drop-in for ``torchvision.ops.deform_conv2d``.

    Args:
        input: (B, C_in, H, W).
        offset: (B, 2 * G * kh * kw, H_out, W_out). For offset group ``g`` and tap
            ``t = i * kw + j`` (row-major), channel ``g*2*kh*kw + 2*t`` is the y (row)
            offset and ``+1`` the x (column) offset, in input pixels. ``G`` (offset
            groups) is inferred; it must divide C_in, and group ``g`` deforms input
            channels ``[g*C_in/G, (g+1)*C_in/G)``.
        weight: (C_out, C_in / groups, kh, kw); ``groups = C_in // weight.shape[1]``.
        bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w) pair.
        mask: (B, G * kh * kw, H_out, W_out) modulation scalars (DCNv2), channel
            ``g*kh*kw + t``; None means all ones (DCNv1).

    Returns:
        (B, C_out, H_out, W_out), where
        ``H_out = (H + 2*pad_h - dil_h*(kh-1) - 1) // stride_h + 1`` (same for W).

    Tap ``(i, j)`` of output ``(ho, wo)`` samples the input at
    ``(ho*stride_h - pad_h + i*dil_h + dy, wo*stride_w - pad_w + j*dil_w + dx)``
    with bilinear interpolation; pixels outside the image count as zero, so a
    sample between -1 and 0 (or H-1 and H) blends the border pixel with zero and
    a sample at or beyond -1 / H contributes nothing.

    Any memory format is accepted; channels-last ``input``/``offset``/``mask``
    save a transpose on CPU. The output is always contiguous NCHW. Sample
    coordinates are computed in float32 for fp16/bf16 inputs. Without autograd,
    peak extra memory is a few tens of MiB beyond NHWC copies of the inputs,
    whatever the kernel size; with autograd, the im2col matrix is kept for
    backward (B * H_out * W_out * kh * kw * C_in values, as in torchvision).
    """
    stride = _pair(stride, "stride")
    padding = _pair(padding, "padding")
    dilation = _pair(dilation, "dilation")
    groups, g, h_out, w_out = _check_inputs(
        input, offset, weight, bias, mask, stride, padding, dilation
    )
    batch, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    taps = kh * kw
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if batch == 0:
        return input.new_zeros(0, c_out, h_out, w_out)
    dev = input.device
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, offset, weight, bias, mask)
    )

    # Zero-padded channels-last copy of the input, one slab per offset group:
    # row ((g*B + b)*Hp + y)*Wp + x holds the C_in/G channels of group g.
    hp, wp = h + 2 * _PAD, w + 2 * _PAD
    table = F.pad(_nhwc(input), (0, 0, _PAD, _PAD, _PAD, _PAD))
    if g > 1:
        table = table.view(batch, hp, wp, g, c_in // g).permute(3, 0, 1, 2, 4).contiguous()
    table = table.view(-1, c_in // g)
    # Offsets and mask position-major: (B, H_out, W_out, 2*G*taps) and (B, H_out, W_out, G*taps).
    offset = _nhwc(offset)
    mask = None if mask is None else _nhwc(mask)

    # Weight laid out to match the im2col columns.
    if groups == 1:
        # (C_out, K), K ordered (offset group, tap, channel in group)
        wmat = weight.view(c_out, g, c_in // g, taps).transpose(2, 3).reshape(c_out, -1)
    else:
        # (groups, C_out/groups, taps * C_in/groups), ordered (tap, channel)
        wmat = weight.view(groups, c_out // groups, c_in // groups, taps)
        wmat = wmat.transpose(2, 3).reshape(groups, c_out // groups, -1)

    coord_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    # int32 indices are a bit faster; int64 only for huge tables
    index_dtype = torch.int32 if g * batch * hp * wp < 2**31 - 4 * wp else torch.int64
    full = (w_out, g, kh, kw)  # base coordinates pre-expanded, so later broadcasts are cheap
    col = torch.arange(w_out, device=dev).view(w_out, 1, 1, 1)
    tap_i = torch.arange(kh, device=dev).view(1, 1, kh, 1)
    tap_j = torch.arange(kw, device=dev).view(1, 1, 1, kw)
    image = torch.arange(batch, device=dev).view(batch, 1)
    group = torch.arange(g, device=dev).view(1, g)
    geo = _Geometry(
        h=h, w=w, h_out=h_out, w_out=w_out, kh=kh, kw=kw, stride_h=sh,
        offset_groups=g, groups=groups, coord_dtype=coord_dtype, index_dtype=index_dtype,
        tap_y=(tap_i * dh - ph).expand(full).to(coord_dtype),
        base_x=(col * sw - pw + tap_j * dw).expand(full).to(coord_dtype),
        start=((group * batch + image) * (hp * wp) + (_PAD * wp + _PAD)).to(index_dtype),
        fast_stack=not needs_grad,
    )

    # Blocks: several whole images when they fit the budget, else row bands of one image.
    per_row = w_out * g * taps
    if h_out * per_row <= _BLOCK_SAMPLES:
        step = max(1, _BLOCK_SAMPLES // (h_out * per_row))
        blocks = [_Block(b, min(step, batch - b), 0, h_out) for b in range(0, batch, step)]
    else:
        step = max(1, _BLOCK_SAMPLES // per_row)
        blocks = [_Block(b, 1, r, min(step, h_out - r))
                  for b in range(batch) for r in range(0, h_out, step)]
    # Each block's rows of the (B * H_out)-row NHWC offset and mask. split() keeps
    # autograd cheap: one concatenation in backward, not a full-size gradient per block.
    sizes = [blk.images * blk.rows for blk in blocks]
    offsets = offset.view(batch * h_out, w_out, -1).split(sizes)
    masks = [None] * len(blocks) if mask is None else mask.view(batch * h_out, w_out, -1).split(sizes)

    if needs_grad:
        # Autograd keeps each block's im2col matrix for the weight gradient:
        # B * H_out * W_out * kh * kw * C_in values in all, like torchvision.
        parts = [_block(blk, o, m, table, wmat, bias, geo)
                 for blk, o, m in zip(blocks, offsets, masks)]
        if blocks[0].rows == h_out:  # whole images
            out = torch.cat(parts)
        else:  # row bands, the same number per image
            per_image = len(parts) // batch
            out = torch.cat([torch.cat(parts[i : i + per_image], dim=2)
                             for i in range(0, len(parts), per_image)])
    else:
        out = input.new_empty(batch, c_out, h_out * w_out)
        for blk, o, m in zip(blocks, offsets, masks):
            _block(blk, o, m, table, wmat, bias, geo, out=out)
    return out.view(batch, c_out, h_out, w_out)


def deform_conv2d_by_sampling(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """:func:`deform_conv2d` from standard operators, for ONNX export: per kernel tap, one
    bilinear ``F.grid_sample`` with zero padding (the same boundary rule) and a 1x1 convolution
    with that tap's weights. One weight group and one offset group (Pi-SAM's layers); same
    arguments and shapes as :func:`deform_conv2d`, equal up to float rounding."""
    stride = _pair(stride, "stride")
    padding = _pair(padding, "padding")
    dilation = _pair(dilation, "dilation")
    groups, offset_groups, h_out, w_out = _check_inputs(input, offset, weight, bias, mask, stride, padding, dilation)
    if groups != 1 or offset_groups != 1:
        raise ValueError("deform_conv2d_by_sampling supports one weight group and one offset group")
    batch, _, height, width = input.shape
    kh, kw = (int(size) for size in weight.shape[-2:])  # static kernel taps (the exporter traces shapes as tensors)
    taps = kh * kw
    device, dtype = input.device, offset.dtype
    # Sample points of every tap, (B, taps, H_out, W_out) input pixels, in one go.
    tap_rows = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dilation[0]
    tap_cols = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dilation[1]
    rows = torch.arange(h_out, device=device, dtype=dtype) * stride[0] - padding[0]
    cols = torch.arange(w_out, device=device, dtype=dtype) * stride[1] - padding[1]
    yx = offset.reshape(batch, taps, 2, h_out, w_out)
    y = yx[:, :, 0] + (tap_rows.view(taps, 1, 1) + rows.view(1, h_out, 1))
    x = yx[:, :, 1] + (tap_cols.view(taps, 1, 1) + cols.view(1, 1, w_out))
    # Pixel p is grid (2p + 1) / size - 1 with align_corners=False; outside pixels are 0.
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1).to(input.dtype)
    out = None
    for tap in range(taps):
        sampled = F.grid_sample(input, grid[:, tap], mode="bilinear", padding_mode="zeros", align_corners=False)
        if mask is not None:
            sampled = sampled * mask[:, tap : tap + 1]
        i, j = divmod(tap, kw)
        term = F.conv2d(sampled, weight[:, :, i : i + 1, j : j + 1])
        out = term if out is None else out + term
    return out if bias is None else out + bias.view(1, -1, 1, 1)


class DeformableConv2d(nn.Module):
    """Modulated deformable conv layer (DCNv2) as in Pi-SAM's Object Embedder.

    Offsets and modulation scalars are predicted from the input by two plain
    convolutions with the same kernel, stride and padding. Both are
    zero-initialised, so a fresh layer is an ordinary convolution (offsets 0,
    modulation ``2 * sigmoid(0) = 1``).

    Parameter names follow the official Pi-SAM checkpoints, e.g. for k=3 and
    32 -> 32 channels: ``offset_conv.weight [18, 32, 3, 3]`` + ``bias [18]``,
    ``modulator_conv.weight [9, 32, 3, 3]`` + ``bias [9]``,
    ``regular_conv.weight [32, 32, 3, 3]`` (no bias unless ``bias=True``).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H_out, W_out).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        taps = kernel_size[0] * kernel_size[1]
        conv = dict(kernel_size=kernel_size, stride=self.stride, padding=self.padding)
        self.offset_conv = nn.Conv2d(in_channels, 2 * taps, bias=True, **conv)
        self.modulator_conv = nn.Conv2d(in_channels, taps, bias=True, **conv)
        # Only a weight holder: applied through deform_conv2d.
        self.regular_conv = nn.Conv2d(in_channels, out_channels, bias=bias, **conv)
        # Start as a plain convolution: zero offsets, unit modulation.
        for m in (self.offset_conv, self.modulator_conv):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, H, W) -> (B, out_channels, H_out, W_out)."""
        # On CPU, work on a channels-last x: the predictor convs then return NHWC
        # offsets and modulators, the layout deform_conv2d works in (no
        # transposes of their 3*k*k channels), and oneDNN is no slower that way.
        exporting = torch.onnx.is_in_onnx_export()
        if x.device.type == "cpu" and not exporting:  # (its copy loop would be traced as a constant)
            x = _nhwc(x).permute(0, 3, 1, 2)
        if exporting or not eager_inference(self.offset_conv, self.modulator_conv):
            offset = self.offset_conv(x)  # (B, 2*kh*kw, H_out, W_out)
            modulator = 2.0 * torch.sigmoid(self.modulator_conv(x))  # (B, kh*kw, H_out, W_out)
        else:
            # Inference: both predictors in one convolution (one pass over x, same sums).
            weight = torch.cat([self.offset_conv.weight, self.modulator_conv.weight])
            bias = torch.cat([self.offset_conv.bias, self.modulator_conv.bias])
            both = F.conv2d(x, weight, bias, self.stride, self.padding)
            offset, modulator = both.split([self.offset_conv.out_channels, self.modulator_conv.out_channels], dim=1)
            modulator = torch.sigmoid(modulator).mul_(2.0)
        # The exporters cannot trace deform_conv2d's blocked gathers; its standard-op twin.
        convolve = deform_conv2d_by_sampling if exporting else deform_conv2d
        return convolve(
            x,
            offset,
            self.regular_conv.weight,
            self.regular_conv.bias,
            stride=self.stride,
            padding=self.padding,
            mask=modulator,
        )
