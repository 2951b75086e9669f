"""SAM and MobileSAM against the official packages, with seeded random official-format checkpoints."""

from __future__ import annotations

import pytest
import torch

import finesam
from finesam.registry import REGISTRY

from conftest import randomize_, save_state
from parity import compare_predictors

segment_anything = pytest.importorskip("segment_anything")


def official_sam(embed_dim: int, depth: int, heads: int, global_indexes: list[int], seed: int):
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(seed)
    return randomize_(_build_sam(embed_dim, depth, heads, global_indexes), seed)


CASES = {
    # reduced: ViT-L with two global blocks (HQ's early feature is the first one's), ViT-H with a
    # windowed and a global block at its width; the full ViT-B has both kinds at every position
    # name: (registry name, official builder args, encoder overrides for a depth-reduced model)
    "vit_b_full": ("sam_vit_b", (768, 12, 12, [2, 5, 8, 11]), {}),
    "vit_l_reduced": ("sam_vit_l", (1024, 2, 16, [0, 1]), dict(depth=2, global_attn_indexes=(0, 1))),
    "vit_h_reduced": ("sam_vit_h", (1280, 2, 16, [1]), dict(depth=2, global_attn_indexes=(1,))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sam_matches_official(case, real_image, tmp_path):
    name, args, overrides = CASES[case]
    official = official_sam(*args, seed=1)
    path = save_state(official, tmp_path / "sam.pth")
    spec = REGISTRY[name].with_encoder(**overrides) if overrides else name
    ours = finesam.load(spec, path)

    ours_predictor = finesam.SamPredictor(ours)
    official_predictor = segment_anything.SamPredictor(official)
    ours_predictor.set_image(real_image)
    official_predictor.set_image(real_image)
    assert ours_predictor.input_size == official_predictor.input_size
    assert ours_predictor.original_size == tuple(official_predictor.original_size)
    assert torch.allclose(ours_predictor.get_image_embedding(), official_predictor.get_image_embedding(), atol=1e-3)
    compare_predictors(ours_predictor, official_predictor, real_image)


def test_mobile_sam_matches_official_baseline(real_image, tmp_path):
    sam_hq = pytest.importorskip("segment_anything_hq")
    from segment_anything_hq.build_sam_baseline import sam_model_registry_baseline

    torch.manual_seed(2)
    official = randomize_(sam_model_registry_baseline["vit_tiny"](), 2)
    path = save_state(official, tmp_path / "mobile_sam.pt")
    official.eval()  # refreshes the official attention-bias cache after the weights changed
    ours = finesam.load("mobile_sam", path)

    ours_predictor = finesam.SamPredictor(ours)
    official_predictor = sam_hq.SamPredictor(official)
    ours_predictor.set_image(real_image)
    official_predictor.set_image(real_image)
    # The early feature is TinyViT's stage-2 output, as Light HQ-SAM uses it.
    assert torch.allclose(ours_predictor.interm_features[0], official_predictor.interm_features[0], atol=1e-3)
    compare_predictors(ours_predictor, official_predictor, real_image, hq_token_only=False)


def test_tiny_vit_does_not_depend_on_eval_order(tmp_path):
    """The official TinyViT caches attention biases at .eval(); ours reads them at forward time."""
    model = finesam.load("mobile_sam", random_weights=True)
    image = torch.rand(1, 3, 1024, 1024) * 255
    with torch.no_grad():
        before = model.encode_image(image).embedding
        for block in model.image_encoder.layers[1].blocks:
            block.attn.attention_biases.add_(0.5)
        after = model.encode_image(image).embedding
    assert not torch.allclose(before, after)


def test_parameter_counts_equal_official():
    expected = {"sam_vit_b": 93_735_472, "sam_vit_l": 312_342_832, "sam_vit_h": 641_090_608, "mobile_sam": 10_130_092}
    for name, count in expected.items():
        model = REGISTRY[name].build()
        assert sum(p.numel() for p in model.parameters()) == count, name
