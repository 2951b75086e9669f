"""``Sam.forward`` on the official batched dicts, against the official ``Sam.forward`` of
segment_anything and segment_anything_hq; gradients reach the trainable parameters."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

import finesam
from finesam.predict.transforms import ResizeLongestSide
from finesam.registry import REGISTRY

from conftest import data_path, randomize_, save_state
from parity import LOGIT_TOL, MASK_AGREEMENT, SCORE_TOL

segment_anything = pytest.importorskip("segment_anything")
sam_hq = pytest.importorskip("segment_anything_hq")

# Depth-reduced ViT-B: forward's batching and prompt routing do not depend on depth.
OFFICIAL_ARGS = (768, 2, 12, [1])
OVERRIDES = dict(depth=2, global_attn_indexes=(1,))


def _images() -> list[np.ndarray]:
    """Two real photographs of different sizes and orientations."""
    first = np.asarray(Image.open(data_path("ecssd", "im", "0001.jpg")).convert("RGB"))
    second = np.asarray(Image.open(data_path("ecssd", "im", "0042.jpg")).convert("RGB"))[:, :200]
    return [first, second]


def batched_input(images: list[np.ndarray]) -> list[dict]:
    """The official notebook's batch: image 0 with two boxes, image 1 with points and a mask input."""
    transform = ResizeLongestSide(1024)
    batch = []
    for image in images:
        resized = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).contiguous()
        batch.append({"image": resized, "original_size": image.shape[:2]})
    (h0, w0), (h1, w1) = images[0].shape[:2], images[1].shape[:2]
    boxes = np.array([[0.1 * w0, 0.2 * h0, 0.7 * w0, 0.9 * h0], [0.4 * w0, 0.1 * h0, 0.95 * w0, 0.6 * h0]])
    batch[0]["boxes"] = torch.as_tensor(transform.apply_boxes(boxes, images[0].shape[:2]), dtype=torch.float32)
    points = np.array([[[0.5 * w1, 0.5 * h1], [0.1 * w1, 0.1 * h1]]])
    batch[1]["point_coords"] = torch.as_tensor(transform.apply_coords(points, images[1].shape[:2]), dtype=torch.float32)
    batch[1]["point_labels"] = torch.tensor([[1, 0]])
    batch[1]["mask_inputs"] = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    return batch


def assert_forward_outputs_close(ours: list[dict], official: list[dict]) -> None:
    assert len(ours) == len(official)
    for mine, theirs in zip(ours, official):
        assert set(mine) == {"masks", "iou_predictions", "low_res_logits"}
        assert mine["masks"].dtype == torch.bool and mine["masks"].shape == theirs["masks"].shape
        assert mine["low_res_logits"].shape == theirs["low_res_logits"].shape
        assert (mine["low_res_logits"] - theirs["low_res_logits"]).abs().max() <= LOGIT_TOL
        assert (mine["iou_predictions"] - theirs["iou_predictions"]).abs().max() <= SCORE_TOL
        assert (mine["masks"] == theirs["masks"]).float().mean() >= MASK_AGREEMENT


@pytest.fixture(scope="module")
def images():
    return _images()


def encode_each_batch_once(encoder: torch.nn.Module) -> torch.nn.Module:
    """Memoize an image encoder by its input: the forward tests check batching, prompt routing and
    outputs in several modes, and the encoders' parity is tested elsewhere."""
    encoded, encode = {}, encoder.forward

    def forward(images, *args, **kwargs):
        key = (hashlib.sha1(images.detach().numpy().tobytes()).hexdigest(), repr(args), repr(kwargs))
        if key not in encoded:
            encoded[key] = encode(images, *args, **kwargs)
        return encoded[key]

    encoder.forward = forward
    return encoder


def official_and_ours(build_official, name: str, seed: int, folder) -> tuple:
    """A seeded official depth-reduced ViT-B model and ours loaded from its file, each encoding a batch once."""
    torch.manual_seed(seed)
    official = randomize_(build_official(*OFFICIAL_ARGS), seed)
    ours = finesam.load(REGISTRY[name].with_encoder(**OVERRIDES), save_state(official, folder / f"{name}.pth"))
    encode_each_batch_once(official.image_encoder), encode_each_batch_once(ours.image_encoder)
    return official, ours


@pytest.fixture(scope="module")
def sam_pair(tmp_path_factory):
    from segment_anything.build_sam import _build_sam

    return official_and_ours(_build_sam, "sam_vit_b", 5, tmp_path_factory.mktemp("sam"))


@pytest.fixture(scope="module")
def hq_pair(tmp_path_factory):
    from segment_anything_hq.build_sam import _build_sam

    return official_and_ours(_build_sam, "hq_vit_b", 6, tmp_path_factory.mktemp("hq"))


@pytest.mark.parametrize("multimask", [False, True])
def test_sam_forward_matches_official(images, multimask, sam_pair):
    official, ours = sam_pair
    batch = batched_input(images)
    with torch.no_grad():
        expected = official(batch, multimask_output=multimask)
        got = ours(batch, multimask_output=multimask)
    assert got[0]["masks"].shape == (2, 3 if multimask else 1, *images[0].shape[:2])
    assert_forward_outputs_close(got, expected)


@pytest.mark.parametrize("hq_token_only", [False, True])
def test_hq_forward_matches_official(images, hq_token_only, hq_pair):
    official, ours = hq_pair
    batch = batched_input(images)
    with torch.no_grad():
        expected = official(batch, multimask_output=False, hq_token_only=hq_token_only)
        got = ours(batch, multimask_output=False, hq_token_only=hq_token_only)
    assert_forward_outputs_close(got, expected)


def test_forward_trains_the_new_parts_of_a_frozen_sam(images):
    model = finesam.load(REGISTRY["hq_vit_b"].with_encoder(**OVERRIDES), random_weights=True).train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("mask_decoder.hq."))  # HQ-SAM's recipe: only the HQ part learns
    outputs = model(batched_input(images), multimask_output=False, hq_output="hq_only")
    loss = sum(output["low_res_logits"].sigmoid().mean() for output in outputs)
    loss.backward()
    trained = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(grad is not None and grad.abs().sum() > 0 for grad in trained.values())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_forward_runs_pi_models_on_boxes_and_refuses_points(images):
    model = finesam.load(REGISTRY["pi_vit_b"].with_encoder(**OVERRIDES), random_weights=True)
    batch = batched_input(images)
    with torch.no_grad():
        outputs = model(batch[:1], multimask_output=True)
    assert outputs[0]["masks"].shape == (2, 1, *images[0].shape[:2])
    assert outputs[0]["low_res_logits"].shape == (2, 1, 256, 256)
    with pytest.raises(ValueError, match="box prompt only"):
        model(batch, multimask_output=False)


def test_forward_refuses_malformed_records():
    model = finesam.load("mobile_sam", random_weights=True)
    with pytest.raises(ValueError, match="max\\(h, w\\) == 1024"):
        model([{"image": torch.zeros(3, 500, 500), "original_size": (500, 500), "boxes": torch.zeros(1, 4)}], False)
    with pytest.raises(ValueError, match="original_size"):
        model([{"image": torch.zeros(3, 1024, 800), "boxes": torch.zeros(1, 4)}], False)
    with pytest.raises(ValueError, match="HQ-SAM models"):
        model([{"image": torch.zeros(3, 1024, 800), "original_size": (1024, 800)}], False, hq_token_only=True)


def test_forward_in_eval_mode_runs_without_autograd(images):
    """As the official @torch.no_grad Sam.forward: outputs convert to numpy as they are."""
    model = finesam.load("mobile_sam", random_weights=True)  # eval mode, parameters requiring grad
    assert all(p.requires_grad for p in model.parameters())
    outputs = model(batched_input(images)[:1], multimask_output=True)
    assert not any(value.requires_grad for value in outputs[0].values())
    assert outputs[0]["iou_predictions"].cpu().numpy().shape == (2, 3)
    assert torch.is_grad_enabled()  # the caller's mode is left as it was
