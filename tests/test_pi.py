"""Pi-SAM: parity with the official code's stored outputs, loading, the interactor, sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import finesam
from finesam.checkpoints import CheckpointError
from finesam.modeling.decoders.sam.mask_decoder import MaskDecoder
from finesam.registry import REGISTRY

from conftest import DATA

REFERENCE = DATA.parent / "reference" / "pi-official-outputs"
DECODER_FILE = REFERENCE / "pi_dec_vit_b_seed43.pth"
SAM_FINGERPRINT = -5.944993565219994


def reference_or_skip() -> dict:
    if not (REFERENCE / "reference.npz").is_file():
        pytest.skip(f"official Pi-SAM outputs are not available in {REFERENCE}")
    return dict(np.load(REFERENCE / "reference.npz"))


@pytest.fixture(scope="module")
def official_sam_file(tmp_path_factory) -> Path:
    """The SAM vit_b file of the reference recipe: segment_anything 1.0 after manual_seed(32)."""
    segment_anything = pytest.importorskip("segment_anything")
    torch.manual_seed(32)
    state = segment_anything.sam_model_registry["vit_b"]().state_dict()
    assert state["image_encoder.blocks.0.attn.qkv.weight"].double().sum().item() == pytest.approx(SAM_FINGERPRINT, abs=1e-9)
    path = tmp_path_factory.mktemp("pi") / "sam_vit_b.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def pi_predictor(official_sam_file):
    reference_or_skip()
    model = finesam.load("pi_vit_b", official_sam_file, decoder_checkpoint=DECODER_FILE)
    return finesam.SamPredictor(model)


def test_matches_official_outputs(pi_predictor):
    reference = reference_or_skip()
    for case in (0, 1):
        pi_predictor.set_image(reference[f"image{case}"])
        logits, scores, low_res = pi_predictor.predict(box=reference[f"box{case}"], return_logits=True)
        assert logits.shape == (1, 1024, 1024) and low_res.shape == (1, 256, 256) and scores.shape == (1,)
        assert np.abs(low_res[0] - reference[f"low{case}"]).max() <= 2e-3
        assert np.abs(logits[0] - reference[f"large{case}"]).max() <= 2e-3
        corrected, _, _ = pi_predictor.correct(
            fg_points=reference[f"fg{case}"], bg_points=reference[f"bg{case}"], return_logits=True
        )
        expected = reference[f"large_clicked{case}"]
        assert ((corrected[0] > 0) == (expected > 0)).mean() >= 0.99
        assert np.abs(corrected[0] - expected).max() <= 2e-3
        # The clicks matter: the corrected mask differs from the box prediction.
        assert ((corrected[0] > 0) != (logits[0] > 0)).mean() > 0.01


def test_rgb_embedding_is_the_official_seed_42_one(pi_predictor):
    reference = reference_or_skip()
    rgb = pi_predictor.model.mask_decoder.high_res.rgb_embed
    for name, tensor in (("rgb_w0", rgb[0].weight), ("rgb_b0", rgb[0].bias), ("rgb_w1", rgb[1].weight), ("rgb_b1", rgb[1].bias)):
        assert np.array_equal(tensor.detach().numpy(), reference[name]), name
    # Stable: whatever the caller's seed, a build derives the same values, and it does not
    # reseed the caller's random stream (different seeds still give different numbers after).
    after = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        again = REGISTRY["pi_vit_b"].build().mask_decoder.high_res.rgb_embed
        assert torch.equal(again[0].weight, rgb[0].weight) and torch.equal(again[1].weight, rgb[1].weight)
        after.append(torch.rand(3))
    assert not torch.equal(after[0], after[1])


def test_official_decoder_file_has_exactly_the_official_keys(official_sam_file, tmp_path):
    reference_or_skip()
    expected = [line.split("\t")[0] for line in (DATA.parent / "reference" / "checkpoint-keys" / "pi_dec_vit_b.txt").read_text().splitlines() if line]
    state = torch.load(DECODER_FILE, weights_only=True)["model_state_dict"]
    assert sorted(state) == sorted(expected) and len(state) == 270
    del state["interact_2.out_cov.bias"]
    truncated = tmp_path / "pi_missing_key.pth"
    torch.save({"model_state_dict": state}, truncated)
    with pytest.raises(CheckpointError, match="missing keys: mask_decoder.interact_2.out_cov.bias"):
        finesam.load("pi_vit_b", official_sam_file, decoder_checkpoint=truncated)


def test_pi_needs_its_decoder_file(official_sam_file):
    with pytest.raises(CheckpointError, match="decoder_checkpoint"):
        finesam.load("pi_vit_b", official_sam_file)
    with pytest.raises(ValueError, match="does not fit the decoder of sam_vit_b \\(it looks like a Pi-SAM decoder file\\)"):
        finesam.load("sam_vit_b", official_sam_file, decoder_checkpoint=DECODER_FILE)


def test_finesam_pi_checkpoint_round_trip(pi_predictor, tmp_path):
    """Our own checkpoints store everything, rgb_embed included, and load from one file."""
    path = tmp_path / "pi_full.pth"
    torch.save(pi_predictor.model.state_dict(), path)
    model = finesam.load("pi_vit_b", path)
    for key, value in pi_predictor.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_parameter_counts():
    count = lambda module: sum(p.numel() for p in module.parameters())
    sam_decoder = count(MaskDecoder())
    for name, new in (("pi_vit_b", 1_562_400), ("pi_vit_l", 1_824_544), ("pi_vit_h", 2_086_688)):
        spec = REGISTRY[name].with_encoder(depth=1, global_attn_indexes=(0,))  # decoder sizes do not depend on depth
        decoder = spec.build().mask_decoder
        assert count(decoder) - sam_decoder - count(decoder.high_res.rgb_embed) == new, name
        assert count(decoder.interactor) == 167_113


@pytest.fixture(scope="module")
def small_pi():
    """A shallow random Pi model on a non-square image (fast)."""
    torch.manual_seed(0)
    spec = REGISTRY["pi_vit_b"].with_encoder(depth=2, global_attn_indexes=(1,))
    predictor = finesam.SamPredictor(finesam.load(spec, random_weights=True))
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    return predictor


def test_zero_interactor_is_an_exact_identity(small_pi):
    decoder = small_pi.model.mask_decoder
    assert not decoder.interactor.out_cov.weight.any()  # zero-initialised
    logits, _, _ = small_pi.predict(box=np.array([50, 40, 400, 260]), return_logits=True)
    corrected, _, _ = small_pi.correct(fg_points=np.array([[120, 100]]), bg_points=np.array([[300, 200]]), return_logits=True)
    assert np.array_equal(logits, corrected)


def test_a_click_changes_the_mask_near_the_click(small_pi):
    decoder = small_pi.model.mask_decoder
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        weight = decoder.interactor.out_cov.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)
    try:
        logits, _, _ = small_pi.predict(box=np.array([50, 40, 400, 260]), return_logits=True)
        corrected, _, _ = small_pi.correct(fg_points=np.array([[120, 100]]), return_logits=True)
        change = np.abs(corrected[0] - logits[0])
        assert change[90:110, 110:130].mean() > 0
        assert ((corrected[0] > 0) != (logits[0] > 0))[60:140, 80:160].any()
    finally:
        with torch.no_grad():
            decoder.interactor.out_cov.weight.zero_()


def test_click_samples_the_feature_at_the_clicked_place(small_pi, monkeypatch):
    """On a non-square image, the interactor samples the object embedding where the user clicked
    (x, y in original pixels), not at (row, col) or at a stretched position."""
    interactor = small_pi.model.mask_decoder.interactor
    captured = {}
    original = type(interactor).click_tokens

    def spy(self, feature, points, flags):
        grid = torch.arange(256, dtype=torch.float32)
        coordinate_map = torch.stack([grid[None, :].expand(256, 256), grid[:, None].expand(256, 256)])[None]
        # Sampling a map whose value is the column (x) and row (y) index returns the clicked place.
        captured["xy"] = torch.nn.functional.grid_sample(coordinate_map, 2 * points[:, :, None, :] - 1, align_corners=False)
        return original(self, feature, points, flags)

    monkeypatch.setattr(type(interactor), "click_tokens", spy)
    small_pi.predict(box=np.array([50, 40, 400, 260]))
    clicks = np.array([[450.0, 60.0], [30.0, 280.0]])
    small_pi.correct(fg_points=clicks[:1], bg_points=clicks[1:])
    scale = np.array([1024 / 500, 614 / 300])  # the 500x300 image is resized to 1024x614
    sampled = captured["xy"][0, :, :, 0].T.numpy()  # (N, 2) as (x, y) in grid cells
    expected = clicks * scale / 4 - 0.5  # the 256 grid is the 1024 frame / 4; cell centres at +0.5
    assert np.allclose(sampled, expected, atol=1e-3)


def test_pi_refuses_points_and_masks(small_pi):
    with pytest.raises(ValueError, match="box prompt only"):
        small_pi.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match="box prompt only"):
        small_pi.predict(box=np.array([0, 0, 50, 50]), mask_input=np.zeros((1, 256, 256)))
    with pytest.raises(ValueError, match="at least one click"):
        small_pi.predict(box=np.array([0, 0, 50, 50]))
        small_pi.correct()


@pytest.mark.parametrize("name", ["sam_vit_b", "hq_vit_b", "pi_vit_b"])
def test_interactive_session_with_every_model(name):
    torch.manual_seed(0)
    shallow = REGISTRY[name].with_encoder(depth=2, global_attn_indexes=(1,))  # the session logic does not depend on depth
    predictor = finesam.SamPredictor(finesam.load(shallow, random_weights=True))
    predictor.set_image(np.random.default_rng(2).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    session = finesam.InteractiveSession(predictor)
    if predictor.capabilities.corrects_clicks:
        with pytest.raises(ValueError, match="set_box"):
            session.add_click(100, 100)
        with torch.no_grad():  # a non-zero interactor, so that clicks change the mask
            predictor.model.mask_decoder.interactor.out_cov.weight.normal_(0, 0.05)
    first = session.set_box([40, 30, 260, 200]).copy()
    assert first.shape == (240, 320) and first.dtype == bool
    second = session.add_click(150, 120, positive=True).copy()
    third = session.add_click(60, 40, positive=False).copy()
    assert len(session.clicks) == 2 and session.result.low_res.shape == (1, 256, 256)
    assert np.array_equal(session.undo(), second)
    assert np.array_equal(session.undo(), first)
    # After undo, the same click gives the same mask again.
    assert np.array_equal(session.add_click(150, 120, positive=True), second)
    session.reset()
    assert session.mask is None and not session.clicks
    if not predictor.capabilities.corrects_clicks:
        single = session.add_click(150, 120)  # a click alone works for SAM/HQ
        assert single.shape == (240, 320)
