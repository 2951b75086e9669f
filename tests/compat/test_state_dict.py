"""state_dict() in the official names: a finesam model's dict loads into the official model with
strict=True and the official model's dict into finesam's; official attribute paths and freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import finesam
from finesam.registry import REGISTRY

from conftest import DATA
from official_files import hq_vit_b_file, hq_vit_tiny_file, mobile_sam_file, official_packages, sam_vit_b_file

official_packages()
FILES = {"sam_vit_b": sam_vit_b_file, "mobile_sam": mobile_sam_file, "hq_vit_b": hq_vit_b_file, "hq_vit_tiny": hq_vit_tiny_file}
PI_KEYS = DATA.parent / "reference" / "checkpoint-keys" / "pi_dec_vit_b.txt"
PI_DECODER_FILE = DATA.parent / "reference" / "pi-official-outputs" / "pi_dec_vit_b_seed43.pth"


def assert_same_state(ours: dict, official: dict) -> None:
    assert list(ours) == list(official) or sorted(ours) == sorted(official), sorted(set(ours) ^ set(official))[:10]
    for key, value in official.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("name", list(FILES))
def test_state_dict_round_trips_with_the_official_model(name, tmp_path):
    file = FILES[name](tmp_path)
    official = file.official(str(file.path))
    ours = file.ours(str(file.path))  # official -> finesam
    assert_same_state(ours.state_dict(), official.state_dict())

    # finesam -> official, strictly, from a torch.save(model.state_dict()) file
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.add_(0.5)
    saved = tmp_path / "ours.pth"
    torch.save(ours.state_dict(), saved)
    result = official.load_state_dict(torch.load(saved, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_state(ours.state_dict(), official.state_dict())

    # official -> finesam through load_state_dict, strictly
    fresh = file.ours(str(file.path))
    fresh.load_state_dict(official.state_dict(), strict=True)
    assert_same_state(fresh.state_dict(), official.state_dict())
    # and finesam's own loaders read the file
    assert_same_state(finesam.load(REGISTRY[name].with_encoder(**_overrides(ours)), saved).state_dict(), official.state_dict())


def _overrides(model: nn.Module) -> dict:
    encoder = model.image_encoder
    if hasattr(encoder, "blocks"):
        return dict(depth=len(encoder.blocks), global_attn_indexes=tuple(i for i, b in enumerate(encoder.blocks) if b.window_size == 0))
    return {}


def test_pi_state_dict_speaks_the_official_decoder_names():
    spec = REGISTRY["pi_vit_b"].with_encoder(depth=1, global_attn_indexes=(0,))
    model = finesam.load(spec, random_weights=True)
    state = model.state_dict()
    official = {}
    for line in PI_KEYS.read_text().splitlines():
        if line:
            key, shape = line.split("\t")[:2]
            official[f"mask_decoder.{key}"] = tuple(int(v) for v in shape.strip("[]").split(",") if v.strip())
    decoder = {k: tuple(v.shape) for k, v in state.items() if k.startswith("mask_decoder.") and not k.startswith("mask_decoder.rgb_embed.")}
    assert decoder == official
    if PI_DECODER_FILE.is_file():  # the official decoder file loads through load_state_dict, strictly
        decoder_state = torch.load(PI_DECODER_FILE, weights_only=True)["model_state_dict"]
        merged = {k: v for k, v in state.items() if not k.startswith("mask_decoder.") or k.startswith("mask_decoder.rgb_embed.")}
        merged.update({f"mask_decoder.{k}": v for k, v in decoder_state.items()})
        model.load_state_dict(merged, strict=True)
        assert torch.equal(model.mask_decoder.interact_2.out_cov.weight, decoder_state["interact_2.out_cov.weight"])
        assert torch.equal(model.mask_decoder.hq.hf_token.weight, decoder_state["hf_token.weight"])


OFFICIAL_DECODER_ATTRIBUTES = ("transformer", "iou_token", "mask_tokens", "output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head")
HQ_ATTRIBUTES = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")


def test_official_attribute_paths_are_the_modules_used():
    model = finesam.compat.segment_anything_hq.sam_model_registry["vit_tiny"]()
    decoder = model.mask_decoder
    for name in OFFICIAL_DECODER_ATTRIBUTES:
        assert getattr(decoder, name) is getattr(decoder.sam, name), name
    for name in HQ_ATTRIBUTES:
        assert getattr(decoder, name) is getattr(decoder.hq, name), name
    assert decoder.num_mask_tokens == 5 and decoder.sam.num_mask_tokens == 4  # as the official (HQ token counted)
    replacement = nn.Embedding(1, 256)
    decoder.hf_token = replacement  # assignment reaches the part that runs
    assert decoder.hq.hf_token is replacement and model.state_dict()["mask_decoder.hf_token.weight"] is not None
    pi = finesam.load(REGISTRY["pi_vit_b"].with_encoder(depth=1, global_attn_indexes=(0,)), random_weights=True)
    assert pi.mask_decoder.interact_2 is pi.mask_decoder.interactor
    assert pi.mask_decoder.mask_aspp is pi.mask_decoder.high_res.mask_aspp


def test_hq_builders_freeze_as_the_official_ones(tmp_path):
    file = hq_vit_tiny_file(tmp_path)
    official = file.official(str(file.path))
    ours = file.ours(str(file.path))
    official_trainable = sorted(n for n, p in official.named_parameters() if p.requires_grad)
    ours_trainable = sorted(n.replace("mask_decoder.hq.", "mask_decoder.") for n, p in ours.named_parameters() if p.requires_grad)
    assert len(official_trainable) == 25 and ours_trainable == official_trainable
    baseline = finesam.compat.segment_anything_hq.sam_model_registry_baseline["vit_tiny"]()
    assert all(p.requires_grad for p in baseline.parameters())
