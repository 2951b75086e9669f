"""Attention by query rows (:mod:`finesam.ops.attention`, the ViT's inference form) computes
what one SDPA call with the whole decomposed bias computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finesam.ops.attention import QUERY_CHUNK_TOKENS, attention_by_query_rows

from conftest import assert_close_to_plain


@pytest.mark.parametrize("height, width", [(14, 14), (6, 64), (3, 5)])
def test_attention_by_query_rows_equals_sdpa_with_the_whole_bias(height, width):
    """A window (one chunk), a global grid whose last chunk is short (6 rows by 4), a small grid."""
    generator = torch.Generator().manual_seed(height * width)
    batch, heads, head_dim, tokens = 2, 3, 8, height * width
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=generator) for _ in range(3))
    bias_h = torch.randn(batch * heads, height, width, height, generator=generator)
    bias_w = torch.randn(batch * heads, height, width, width, generator=generator)
    whole = (bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]).reshape(batch, heads, tokens, tokens)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=whole)
    ours = attention_by_query_rows(q, k, v, bias_h, bias_w)
    if width == 64:
        assert height % (QUERY_CHUNK_TOKENS // width) != 0  # the short last chunk is exercised
    assert_close_to_plain(ours, reference)
