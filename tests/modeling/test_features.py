"""Image-only decoder work (HQ fusion) is computed once per image, and never reused stale."""

from __future__ import annotations

import torch

import finesam
from finesam.modeling.contracts.features import ImageFeatures


def _features(seed: int) -> ImageFeatures:
    generator = torch.Generator().manual_seed(seed)
    return ImageFeatures(
        torch.randn(1, 256, 64, 64, generator=generator), torch.randn(1, 64, 64, 160, generator=generator)
    )


def _decode(model, features: ImageFeatures, box) -> torch.Tensor:
    return model.decode(features, boxes=torch.tensor([box], dtype=torch.float32)).logits


def test_hq_fusion_is_reused_across_prompts_and_equals_a_fresh_computation():
    model = finesam.load("hq_vit_tiny", random_weights=True)
    features = _features(0)
    calls = []
    model.mask_decoder.hq.compress_vit_feat.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        first = _decode(model, features, [100, 120, 600, 700])
        second = _decode(model, features, [300, 200, 900, 500])
        fresh = _decode(model, _features(0), [300, 200, 900, 500])
    assert len(calls) == 2  # once for `features`, once for the fresh copy
    assert torch.equal(second, fresh)
    assert not torch.equal(first, second)


def test_weights_loaded_in_place_invalidate_the_cached_fusion():
    model = finesam.load("hq_vit_tiny", random_weights=True)
    other = finesam.load("hq_vit_tiny", random_weights=True)
    with torch.no_grad():
        for parameter in other.mask_decoder.hq.embedding_encoder.parameters():
            parameter.add_(0.5)
    features = _features(1)
    box = [100, 120, 600, 700]
    with torch.no_grad():
        before = _decode(model, features, box)
        model.load_state_dict(other.state_dict())
        after = _decode(model, features, box)
        expected = _decode(other, _features(1), box)
    assert not torch.equal(before, after)
    assert torch.equal(after, expected)


def test_training_recomputes_the_fusion_with_gradients():
    model = finesam.load("hq_vit_tiny", random_weights=True)
    features = _features(2)
    with torch.no_grad():
        _decode(model, features, [100, 120, 600, 700])  # fills the inference cache
    logits = _decode(model, features, [100, 120, 600, 700])
    logits.mean().backward()
    assert model.mask_decoder.hq.compress_vit_feat[0].weight.grad is not None
