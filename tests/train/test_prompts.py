"""Training prompts: tight box, positive points, noisy mask input; kind choice and empty labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finesam.errors import InvalidInputError
from finesam.modeling.contracts.prompt_checks import check_model_prompts
from finesam.train.prompts import PROMPT_KINDS, choose_kind, draw_prompt, incoherent_region, noisy_mask_input, positive_points, tight_box


def rectangle_label(top=300, left=200, bottom=700, right=900, value=255.0) -> torch.Tensor:
    """(1, 1024, 1024) label: a filled rectangle rows top..bottom-1, cols left..right-1, soft 128 rim."""
    label = torch.zeros(1, 1024, 1024)
    label[0, top - 1 : bottom + 1, left - 1 : right + 1] = 128.0  # not foreground (> 128 counts)
    label[0, top:bottom, left:right] = value
    return label


def draw(label, kinds, seed=0, **kwargs):
    return draw_prompt(label, np.random.default_rng(seed), kinds, **kwargs)


def test_box_is_the_tight_xyxy_box_of_pixels_above_128():
    prompt = draw(rectangle_label(), ("box",))
    assert prompt["kind"] == "box"
    assert prompt["boxes"].tolist() == [[200.0, 300.0, 899.0, 699.0]]  # max pixel index included


def test_points_are_distinct_foreground_pixels_in_xy_order():
    label = rectangle_label(top=100, left=600, bottom=140, right=1000)  # wide, off-centre: x and y differ
    prompt = draw(label, ("point",), seed=3)
    coords, labels = prompt["point_coords"], prompt["point_labels"]
    assert coords.shape == (1, 10, 2) and labels.shape == (1, 10) and (labels == 1).all()
    x, y = coords[0, :, 0].long(), coords[0, :, 1].long()
    assert ((600 <= x) & (x < 1000)).all() and ((100 <= y) & (y < 140)).all()
    assert (label[0, y, x] > 128).all()
    assert len({(int(a), int(b)) for a, b in zip(x, y)}) == 10  # without replacement


def test_too_few_foreground_pixels_for_points_switches_kind_deterministically():
    label = torch.zeros(1, 64, 64)
    label[0, 10, 10:15] = 255.0  # 5 foreground pixels < 10 points
    kinds = [draw(label, ("point", "box"), seed=s)["kind"] for s in range(20)]
    assert set(kinds) == {"box"}
    assert [draw(label, ("point", "box"), seed=s)["boxes"].tolist() for s in range(3)] == [[[10.0, 10.0, 14.0, 10.0]]] * 3
    with pytest.raises(InvalidInputError, match="fewer than the 10 points"):
        draw(label, ("point",))


def test_kinds_are_drawn_uniformly():
    counts = {"box": 0, "point": 0, "noise_mask": 0}
    rng = np.random.default_rng(0)
    for _ in range(600):
        counts[choose_kind(rng, PROMPT_KINDS, foreground_count=100)] += 1
    assert all(160 <= count <= 240 for count in counts.values()), counts
    assert draw(rectangle_label(), PROMPT_KINDS, seed=4)["kind"] == choose_kind(np.random.default_rng(4), PROMPT_KINDS, 280000)


def test_noise_only_changes_the_incoherent_region():
    label = rectangle_label()
    clean = F.interpolate(label[None] / 255.0, (256, 256), mode="bilinear", align_corners=False)
    incoherent = incoherent_region(clean)[0, 0]
    assert 0 < incoherent.sum() < 0.2 * incoherent.numel()  # a band along the rectangle's outline
    noisy = noisy_mask_input(label, np.random.default_rng(1))
    assert noisy.shape == (1, 1, 256, 256) and set(noisy.unique().tolist()) <= {0.0, 255.0}
    plain = ((clean > 0.5).float() * 255.0)[0, 0]
    changed = noisy[0, 0] != plain
    assert changed.any(), "the noise must flip some pixels of the incoherent band"
    assert not (changed & ~incoherent).any(), "pixels outside the incoherent band must not change"
    again = noisy_mask_input(label, np.random.default_rng(1))
    assert torch.equal(noisy, again)


def test_prompts_are_accepted_by_the_model_checks():
    label = rectangle_label()
    for kinds in (("box",), ("point",), ("noise_mask",)):
        prompt = draw(label, kinds)
        points = (prompt["point_coords"], prompt["point_labels"]) if "point_coords" in prompt else None
        check_model_prompts(points, prompt.get("boxes"), prompt.get("mask_inputs"), 1024)


def test_empty_label_gets_a_noise_mask_or_a_clear_error():
    empty = torch.zeros(1, 1024, 1024)
    prompt = draw(empty, ("box", "point", "noise_mask"), name="ECSSD/0042")
    assert prompt["kind"] == "noise_mask" and prompt["mask_inputs"].sum() == 0
    with pytest.raises(InvalidInputError, match="ECSSD/0042: the label has no foreground"):
        draw(empty, ("box", "point"), name="ECSSD/0042")
    with pytest.raises(InvalidInputError, match="no foreground"):
        tight_box(empty)
    with pytest.raises(InvalidInputError, match="non-empty subset"):
        draw(empty, ("scribble",))
    with pytest.raises(InvalidInputError, match=r"\(1, H, W\)"):
        positive_points(torch.zeros(1024, 1024), np.random.default_rng(0))
