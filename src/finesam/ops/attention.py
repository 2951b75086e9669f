"""SDPA with an additive bias decomposed over key rows and key columns (SAM's ViT relative
positions), a few query rows at a time: the whole (B, heads, N, N) bias is never made, nor copied
(805 MB in float32 for ViT-B's global attention at 64x64 tokens); same values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Queries per chunk: 4 rows of the 64x64 grid in global attention (a 50 MB bias buffer for
#: ViT-B in float32); a 14x14 window is one chunk.
QUERY_CHUNK_TOKENS = 256


def attention_by_query_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_h: torch.Tensor, bias_w: torch.Tensor
) -> torch.Tensor:
    """``scaled_dot_product_attention(q, k, v, bias)`` with the bias of query (h, w) and key
    (kh, kw) ``bias_h[h, w, kh] + bias_w[h, w, kw]``, built for a few query rows at a time into
    one reused contiguous buffer.

    q, k, v: (B, heads, H*W, hd); bias_h: (B*heads, H, W, H); bias_w: (B*heads, H, W, W).
    Returns (B, heads, H*W, hd).
    """
    batch, heads, tokens, _ = q.shape
    _, height, width, _ = bias_h.shape
    rows = max(1, QUERY_CHUNK_TOKENS // width)
    out = torch.empty_like(q)
    buffer = q.new_empty(batch * heads, rows, width, height, width)
    for top in range(0, height, rows):
        count = min(rows, height - top)
        bias = buffer if count == rows else q.new_empty(batch * heads, count, width, height, width)
        torch.add(bias_h[:, top:top + count, :, :, None], bias_w[:, top:top + count, :, None, :], out=bias)
        queries = slice(top * width, (top + count) * width)
        out[:, :, queries] = F.scaled_dot_product_attention(
            q[:, :, queries], k, v, attn_mask=bias.view(batch, heads, count * width, tokens)
        )
    return out
