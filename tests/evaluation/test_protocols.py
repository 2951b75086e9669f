"""Each protocol end to end on real images (ECSSD, GrabCut, a downscaled DIS sample) with seeded
random MobileSAM / Light HQ-SAM weights, checked against a by-hand replay of its recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import data_path
from eval_helpers import cached_image_encoder, seeded_model, small_dis
import finesam
from finesam import SamPredictor
from finesam.registry import REGISTRY
from finesam.data import open_dataset
from finesam.evaluation import (
    BoxProtocol,
    Click,
    ClicksProtocol,
    NoisyBoxProtocol,
    PiClicksProtocol,
    PointsProtocol,
    interior_point,
    make_protocol,
    mask_box,
    score,
)
from finesam.evaluation.prompts import original_to_squashed
from finesam.metrics import METRIC_KEYS, iou
from finesam.modeling import PiMaskDecoder


@pytest.fixture(scope="module", autouse=True)
def _encoder_cache():
    with cached_image_encoder():
        yield


@pytest.fixture(scope="module")
def mobile():
    return SamPredictor(seeded_model("mobile_sam"))


@pytest.fixture(scope="module")
def ecssd_sample():
    return open_dataset(f"ECSSD={data_path('ecssd')}")[0]


@pytest.fixture(scope="module")
def grabcut_sample():
    """GrabCut 124080: has a 128 band (2,503 ignored pixels)."""
    dataset = open_dataset(f"GrabCut={data_path('grabcut')}")
    return dataset[dataset.names.index("124080")]


def official_box_logits(predictor, sample, **hq):
    """HQ-SAM's train.py evaluation, written out step by step."""
    image = torch.from_numpy(sample.image).permute(2, 0, 1).float()[None]
    squashed = F.interpolate(image, (1024, 1024), mode="bilinear")[0].permute(1, 2, 0).numpy().astype(np.uint8)
    label = F.interpolate(torch.from_numpy(sample.gt).float()[None, None], (1024, 1024), mode="bilinear")[0, 0]
    ys, xs = torch.nonzero(label > 128, as_tuple=True)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
    predictor.set_torch_image(torch.as_tensor(squashed).permute(2, 0, 1)[None].float(), (1024, 1024))
    _, _, low_res = predictor.predict(box=box, multimask_output=False, **hq)
    logits = F.interpolate(torch.from_numpy(low_res[None]), sample.gt.shape, mode="bilinear", align_corners=False)
    return logits[0, 0].numpy(), box, low_res


def prompt_box(prompt: str, squashed_from=None) -> np.ndarray:
    """The box of a prompt text (original-image pixels), or in the 1024 frame with ``squashed_from`` = (H, W)."""
    text = prompt.split("box_xyxy=")[1].split(" ")[0]
    box = np.array([float(v) for v in text.split(",")])
    return box if squashed_from is None else original_to_squashed(box.reshape(2, 2), squashed_from).ravel()


def test_box_protocol_is_the_official_hq_sam_recipe(mobile, ecssd_sample):
    (outcome,) = BoxProtocol().run(mobile, ecssd_sample)
    logits, box, _ = official_box_logits(mobile, ecssd_sample)
    assert outcome.variant == "box" and outcome.mask.shape == ecssd_sample.gt.shape
    np.testing.assert_array_equal(outcome.mask, logits > 0)
    # the prompt text is in original-image pixels: the squashed box mapped back (pixel centres aligned)
    np.testing.assert_allclose(prompt_box(outcome.prompt, ecssd_sample.gt.shape), box, atol=2e-3)
    assert np.abs(prompt_box(outcome.prompt) - mask_box(ecssd_sample.gt > 128)).max() <= 1.0
    record = score(outcome, ecssd_sample, "ECSSD")
    assert set(METRIC_KEYS) <= set(record.values) and record.curves.shape == (2, 256)
    assert record.values["iou"] == pytest.approx(iou(outcome.mask, ecssd_sample.gt))


def test_box_aspect_prompts_the_original_image(mobile, grabcut_sample):
    (outcome,) = make_protocol("box-aspect").run(mobile, grabcut_sample)
    box = mask_box(grabcut_sample.gt > 128)
    assert outcome.prompt == "box_xyxy=" + ",".join(f"{v:g}" for v in box)
    assert outcome.mask.shape == grabcut_sample.gt.shape
    mobile.set_image(grabcut_sample.image)
    masks, _, _ = mobile.predict(box=box, multimask_output=False)
    np.testing.assert_array_equal(outcome.mask, masks[0])


def test_hq_models_are_scored_on_the_hq_logits(ecssd_sample):
    hq = SamPredictor(seeded_model("hq_vit_tiny"))
    (default,) = BoxProtocol().run(hq, ecssd_sample)
    (summed,) = BoxProtocol(hq_output="sum").run(hq, ecssd_sample)
    hq_only, _, _ = official_box_logits(hq, ecssd_sample, hq_token_only=True)
    np.testing.assert_array_equal(default.mask, hq_only > 0)
    both, _, _ = official_box_logits(hq, ecssd_sample, hq_token_only=False)
    np.testing.assert_array_equal(summed.mask, both > 0)
    assert not np.array_equal(hq_only > 0, both > 0)
    assert BoxProtocol(hq_output="sum").config(hq) == {"protocol": "box", "hq_output": "sum"}  # it applies here


def test_config_records_only_what_applies(mobile):
    """A run's identity (summary.json, resume check) leaves out options the model or protocol ignores."""
    assert BoxProtocol(hq_output="sum", seed=5).config(mobile) == {"protocol": "box"}
    assert NoisyBoxProtocol(seed=3).config(mobile) == {"protocol": "noisy-box", "seed": 3, "scales": [0.2, 0.4]}
    assert ClicksProtocol(max_clicks=4).config(mobile) == {"protocol": "clicks", "max_clicks": 4}
    assert "hq_output" in BoxProtocol().config()  # no model given: everything


def test_noisy_box_jitters_within_the_dn_detr_bounds(mobile, ecssd_sample):
    protocol = NoisyBoxProtocol(seed=3)
    outcomes = protocol.run(mobile, ecssd_sample)
    assert [(o.variant, o.trial) for o in outcomes] == protocol.variants() == [("noise0.2", 0), ("noise0.4", 0)]
    _, clean, _ = official_box_logits(mobile, ecssd_sample)
    for outcome, scale in zip(outcomes, (0.2, 0.4)):
        noisy = prompt_box(outcome.prompt, ecssd_sample.gt.shape)
        size, noisy_size = clean[2:] - clean[:2], noisy[2:] - noisy[:2]
        centre_shift = np.abs((noisy[:2] + noisy[2:]) / 2 - (clean[:2] + clean[2:]) / 2)
        assert not np.allclose(noisy, clean, atol=0.05)
        assert (noisy >= -0.01).all() and (noisy <= 1024.01).all()
        assert (centre_shift <= scale * size / 2 + 0.1).all() and (noisy_size <= (1 + scale) * size + 0.1).all()
        assert outcome.mask.shape == ecssd_sample.gt.shape
    again = NoisyBoxProtocol(seed=3).run(mobile, ecssd_sample)
    assert [o.prompt for o in again] == [o.prompt for o in outcomes]
    assert NoisyBoxProtocol(seed=4).run(mobile, ecssd_sample)[0].prompt != outcomes[0].prompt


def _points(prompt: str) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([[float(v) for v in p.split(",")] for p in prompt.removeprefix("points_xy_label=").split(";")])
    return values[:, :2], values[:, 2].astype(int)


def test_points_centre_point_and_random_trials(mobile, grabcut_sample):
    sample = grabcut_sample
    protocol = PointsProtocol()
    outcomes = protocol.run(mobile, sample)
    assert [(o.variant, o.trial) for o in outcomes] == protocol.variants()
    assert [o.variant for o in outcomes][:4] == ["1pt", "3pt", "3pt", "3pt"] and outcomes[-1].variant == "10pt+5neg"
    fg, valid = sample.gt > 128, ~sample.ignore
    coords, labels = _points(outcomes[0].prompt)
    assert coords.tolist() == [list(interior_point(fg & valid))] and labels.tolist() == [1]
    mobile.set_image(sample.image)
    masks, scores, _ = mobile.predict(coords, labels, multimask_output=True)
    np.testing.assert_array_equal(outcomes[0].mask, masks[np.argmax(scores)])  # best of 3 for one click
    trials = [o for o in outcomes if o.variant == "3pt"]
    assert len({o.prompt for o in trials}) == 3
    coords, labels = _points(outcomes[-1].prompt)
    assert labels.tolist() == [1] * 10 + [0] * 5
    rows, cols = coords[:, 1].astype(int), coords[:, 0].astype(int)
    assert fg[rows, cols][:10].all() and not fg[rows, cols][10:].any() and valid[rows, cols].all()
    assert len({o.prompt for o in outcomes}) == len(outcomes)


def test_clicks_follow_the_robot_user_and_skip_the_ignore_band(mobile, grabcut_sample):
    sample = grabcut_sample
    (outcome,) = ClicksProtocol().run(mobile, sample)
    assert len(outcome.ious) == 20 and all(0 <= v <= 1 for v in outcome.ious)
    fg, valid = sample.gt > 128, ~sample.ignore
    first = outcome.clicks[0]
    assert (first.x, first.y) == interior_point(fg & valid) and first.positive
    assert all(valid[c.y, c.x] for c in outcome.clicks)  # no click in the 128 band
    assert len({(c.x, c.y) for c in outcome.clicks}) == len(outcome.clicks)
    # replay clicks 1 and 2: multimask best for the first, then the previous logits fed back
    mobile.set_image(sample.image)
    masks, scores, low = mobile.predict(np.array([[first.x, first.y]]), np.array([1]), multimask_output=True)
    best = int(np.argmax(scores))
    assert outcome.ious[0] == pytest.approx(iou(masks[best], sample.gt, sample.ignore))
    second = outcome.clicks[1]
    pred = masks[best]
    assert second.positive == bool(fg[second.y, second.x]) and pred[second.y, second.x] != fg[second.y, second.x]
    masks, _, _ = mobile.predict(np.array([[first.x, first.y], [second.x, second.y]]), np.array([1, int(second.positive)]),
                                 mask_input=low[best][None], multimask_output=False)
    assert outcome.ious[1] == pytest.approx(iou(masks[0], sample.gt, sample.ignore))
    values = score(outcome, sample, "GrabCut").values
    assert values["noc85"] == next((k for k, v in enumerate(outcome.ious, 1) if v >= 0.85), 20)
    assert values["iou_20"] == outcome.ious[-1]
    # every measure of the mask after the final click
    assert outcome.mask.shape == sample.gt.shape and set(METRIC_KEYS) <= set(values)
    assert values["iou"] == pytest.approx(outcome.ious[-1], abs=1e-12)
    assert outcome.prompt == "clicks_xy_label=" + ";".join(f"{c.x},{c.y},{int(c.positive)}" for c in outcome.clicks)


def test_pi_clicks_with_mask_feedback_for_sam(mobile, grabcut_sample):
    sample = grabcut_sample
    protocol = PiClicksProtocol()
    outcomes = protocol.run(mobile, sample)
    assert [(o.variant, o.trial) for o in outcomes] == protocol.variants()
    assert [o.variant for o in outcomes] == ["box", "fg1", "fg2", "fg5", "bg1", "bg2", "bg5", "all1", "all2", "all5"]
    (box_outcome,) = BoxProtocol().run(mobile, sample)
    np.testing.assert_array_equal(outcomes[0].mask, box_outcome.mask)
    first, fg, valid = box_outcome.mask, sample.gt > 128, ~sample.ignore
    by_variant = {o.variant: o for o in outcomes}
    for kind in ("fg", "bg", "all"):
        clicks = [by_variant[f"{kind}{n}"].prompt.split("clicks_xy_label=")[1] for n in (1, 2, 5)]
        assert clicks[2].startswith(clicks[1]) and clicks[1].startswith(clicks[0])  # nested
        for x, y, positive in (map(int, c.split(",")) for c in clicks[2].split(";") if c):
            assert valid[y, x] and (fg[y, x] and not first[y, x] if positive else first[y, x] and not fg[y, x])
            assert kind == "all" or positive == (kind == "fg")
    # replay "all1": box + click + the box mask's low-res logits
    _, box, low_res = official_box_logits(mobile, sample)
    np.testing.assert_allclose(prompt_box(by_variant["all1"].prompt, sample.gt.shape), box, atol=2e-3)
    x, y, positive = map(int, by_variant["all1"].prompt.split("clicks_xy_label=")[1].split(","))
    coords = PiClicksProtocol.to_squashed([Click(x, y, bool(positive))], sample.gt.shape)
    _, _, low = mobile.predict(coords, np.array([positive]), box=box, mask_input=low_res, multimask_output=False)
    logits = F.interpolate(torch.from_numpy(low[None]), sample.gt.shape, mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_array_equal(by_variant["all1"].mask, logits.numpy() > 0)
    rows = [score(o, sample, "GrabCut", hce=False).values for o in outcomes]
    assert all(np.isnan(r["hce"]) and 0 <= r["iou"] <= 1 for r in rows)


class StubPiPredictor(SamPredictor):
    """Pi-SAM's predictor surface on a MobileSAM model, fast on CPU: it declares Pi-SAM's
    decoder capabilities, ``predict`` takes boxes only and returns 1024x1024 logits (SAM's,
    upscaled), ``correct`` returns +1 logits within 60 px of each fg point."""

    capabilities = PiMaskDecoder.capabilities

    def __init__(self, model):
        super().__init__(model)
        self.corrections: list = []

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False, **hq):
        assert point_coords is None and mask_input is None and not hq, "Pi models take a box only"
        return super().predict(box=box, multimask_output=False, return_logits=return_logits)

    def correct(self, fg_points=None, bg_points=None, return_logits=False):
        assert return_logits
        self.corrections.append((fg_points, bg_points))
        yy, xx = np.mgrid[:1024, :1024]
        logits = -np.ones((1, 1024, 1024), np.float32)
        for x, y in fg_points if fg_points is not None else []:
            logits[0][(xx - x) ** 2 + (yy - y) ** 2 < 60**2] = 1.0
        return logits, np.ones(1), np.zeros((1, 256, 256), np.float32)


def _resized(logits, size):
    return F.interpolate(torch.from_numpy(logits)[None, None], size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _clicks(prompt: str) -> list[tuple[int, int, int]]:
    text = prompt.split("clicks_xy_label=")[1]
    return [tuple(map(int, c.split(","))) for c in text.split(";")] if text else []


def test_pi_branch_routes_boxes_and_clicks(ecssd_sample):
    pi = StubPiPredictor(seeded_model("mobile_sam"))
    outcomes = PiClicksProtocol().run(pi, ecssd_sample)
    masks, _, _ = pi.predict(box=prompt_box(outcomes[0].prompt, ecssd_sample.gt.shape), return_logits=True)
    assert masks.shape == (1, 1024, 1024)  # the squashed image's size: resized straight to the GT size
    np.testing.assert_array_equal(outcomes[0].mask, _resized(masks[0], ecssd_sample.gt.shape) > 0)
    with_clicks = [o for o in outcomes[1:] if _clicks(o.prompt)]
    assert len(pi.corrections) == len(with_clicks) > 0
    for (fg_points, bg_points), outcome in zip(pi.corrections, with_clicks):
        clicks = _clicks(outcome.prompt)
        expected = PiClicksProtocol.to_squashed([Click(x, y, bool(p)) for x, y, p in clicks], ecssd_sample.gt.shape)
        positive = np.array([p for _, _, p in clicks], bool)
        for given, wanted in ((fg_points, expected[positive]), (bg_points, expected[~positive])):
            assert (given is None) == (len(wanted) == 0)
            if given is not None:
                np.testing.assert_allclose(given, wanted)
        assert outcome.mask.any() == positive.any()  # the stub's logits, resized to the GT size
    with pytest.raises(ValueError, match="takes box prompts only"):
        ClicksProtocol().run(pi, ecssd_sample)


def test_real_pi_model_box_and_correction(ecssd_sample):
    """A shallow random Pi-SAM (ViT-B with 2 blocks; the HR head is slow on CPU)."""
    torch.manual_seed(0)
    pi = SamPredictor(finesam.load(REGISTRY["pi_vit_b"].with_encoder(depth=2, global_attn_indexes=(0, 1)),
                                   random_weights=True))
    outcomes = PiClicksProtocol(counts=(1,), kinds=("all",)).run(pi, ecssd_sample)
    assert [o.variant for o in outcomes] == ["box", "all1"] and len(_clicks(outcomes[1].prompt)) == 1
    assert all(o.mask.shape == ecssd_sample.gt.shape for o in outcomes)
    assert pi.correction_state is not None and pi.original_size == (1024, 1024)  # predicted on the squashed image
    with pytest.raises(ValueError, match="box prompts only"):
        PointsProtocol().check(pi)


def test_downscaled_dis_sample(mobile, tmp_path):
    dataset = open_dataset(f"DIS-sample={small_dis(tmp_path)}")
    sample = dataset[0]
    assert max(sample.gt.shape) == 480 and sample.gt.dtype == np.uint8
    for protocol in (BoxProtocol(), PiClicksProtocol(counts=(1, 2), kinds=("all",))):
        outcomes = protocol.run(mobile, sample)
        rows = [score(o, sample, "DIS-sample").values for o in outcomes]
        assert len(rows) == len(protocol.variants())
        assert all(o.mask.shape == sample.gt.shape for o in outcomes)
        assert all(0 <= r["biou"] <= 1 and r["hce"] >= 0 for r in rows)
