"""The open registry: a model registered from outside the library works through ``finesam.load``,
``finesam.save``, ``SamPredictor``, the CLI, and as an installed plugin; random weights are seeded."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import finesam
from finesam import cli
from finesam.checkpoints import CheckpointError
from finesam.modeling import HQMaskDecoder, ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT
from finesam.registry import HQ_DECODER, REGISTRY, DecoderFactory, SamArchitecture

from conftest import REPO


SMALL_VIT = dict(embed_dim=768, depth=2, num_heads=12, global_attn_indexes=(1,))


def small_vit_sam() -> Sam:
    """A ViT-B-width SAM with 2 blocks: a variant no built-in name describes."""
    encoder = ImageEncoderViT(embed_dim=768, depth=2, num_heads=12, global_attn_indexes=(1,))
    return Sam(encoder, PromptEncoder(), MaskDecoder()).eval()


def small_vit_hq() -> Sam:
    encoder = ImageEncoderViT(embed_dim=768, depth=2, num_heads=12, global_attn_indexes=(1,))
    return Sam(encoder, PromptEncoder(), HQMaskDecoder(vit_dim=768)).eval()


@pytest.fixture
def registered():
    names = []

    def register(name, build, **fields):
        names.append(name)
        return finesam.register_model(name, finesam.ModelSpec(build, description=f"test {name}", **fields))

    yield register
    for name in names:
        finesam.unregister_model(name)


def test_registered_model_loads_saves_and_predicts(registered, tmp_path):
    registered("test_small_vit", small_vit_sam)
    model = finesam.load("test_small_vit", random_weights=True)
    path = finesam.save(model, tmp_path / "small.pth")
    loaded = finesam.load("test_small_vit", path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    predictions = []
    for candidate in (model, loaded):
        predictor = finesam.SamPredictor(candidate)
        predictor.set_image(image)
        masks, scores, low_res = predictor.predict(box=np.array([20, 10, 140, 100]), multimask_output=False)
        assert masks.shape == (1, 120, 160) and scores.shape == (1,) and low_res.shape == (1, 256, 256)
        predictions.append(low_res)
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_registered_hq_model_saves_official_key_names(registered, tmp_path):
    registered("test_small_hq", small_vit_hq)
    model = finesam.load("test_small_hq", random_weights=True)
    safetensors_path = finesam.save(model, tmp_path / "small_hq.safetensors")
    state = finesam.checkpoints.read_state_dict(safetensors_path)
    assert "mask_decoder.hf_token.weight" in state and "mask_decoder.iou_token.weight" in state
    assert not any(key.startswith(("mask_decoder.sam.", "mask_decoder.hq.")) for key in state)
    # The official HQ-SAM model class reads the file unchanged.
    sam_hq = pytest.importorskip("segment_anything_hq")
    from segment_anything_hq.build_sam import _build_sam

    official = _build_sam(768, 2, 12, [1])
    official.load_state_dict(state, strict=True)
    assert torch.equal(official.mask_decoder.hf_token.weight, model.mask_decoder.hq.hf_token.weight)
    del sam_hq


def test_registered_model_through_the_cli(registered, tmp_path):
    registered("test_small_vit", small_vit_sam)
    image = np.random.default_rng(1).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "mask.png"
    code = cli.main(["segment", str(tmp_path / "in.png"), "--model", "test_small_vit", "--random-weights",
                     "--box", "10", "10", "100", "80", "--out", str(out)])
    assert code == 0
    predictor = finesam.SamPredictor(finesam.load("test_small_vit", random_weights=True))
    predictor.set_image(image)
    masks, _, _ = predictor.predict(box=np.array([10, 10, 100, 80]), multimask_output=False)
    np.testing.assert_array_equal(np.array(Image.open(out)) > 0, masks[0])


def test_names_are_checked(registered):
    registered("test_small_vit", small_vit_sam)
    with pytest.raises(ValueError, match="already registered"):
        finesam.register_model("test_small_vit", finesam.ModelSpec(small_vit_sam))
    with pytest.raises(ValueError, match="letters, digits"):
        finesam.register_model("bad name", finesam.ModelSpec(small_vit_sam))
    with pytest.raises(KeyError, match="test_small_vit"):  # the message lists the known names
        finesam.load("no_such_model", random_weights=True)


def test_refusal_names_the_registered_model_a_file_belongs_to(registered, tmp_path):
    registered("test_small_vit", small_vit_sam)
    path = finesam.save(finesam.load("test_small_vit", random_weights=True), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"looks like test test_small_vit \(test_small_vit\)"):
        finesam.load("sam_vit_b", path)


def test_specs_declare_capabilities_and_new_parts_without_weights(registered):
    """``ModelSpec.capabilities`` / ``new_parts`` equal what the built model declares, and are
    read off one meta-device build kept per spec (no weights, no second build)."""
    for name in ("mobile_sam", "hq_vit_tiny", "pi_vit_b"):
        spec = REGISTRY[name]
        with torch.device("meta"):
            model = spec.build()
        assert spec.capabilities == model.capabilities
        assert spec.new_parts == tuple(model.mask_decoder.new_parts)
    assert REGISTRY["mobile_sam"].new_parts == () and REGISTRY["hq_vit_tiny"].new_parts == ("hq",)
    assert REGISTRY["hq_vit_tiny"].capabilities.output_modes[0] == "sum"
    assert REGISTRY["pi_vit_b"].capabilities.corrects_clicks

    devices = []

    def counted_build() -> Sam:
        model = small_vit_hq()
        devices.append(model.device.type)
        return model

    spec = registered("test_counted_hq", counted_build)
    assert spec.new_parts == ("hq",) and spec.capabilities.output_modes == ("sum", "hq_only", "sam_only", "candidates")
    spec.state_shapes()
    assert devices == ["meta"]  # one build, on the meta device, for all three questions


def test_architectures_compose_any_encoder_with_a_decoder_factory(registered):
    """Built-in models are SamArchitecture(encoder class, settings, DecoderFactory) like any
    user model; a factory's seeded parts come from its seed, whatever the caller's random state."""
    assert REGISTRY["hq_vit_b"].build.decoder is HQ_DECODER and REGISTRY["mobile_sam"].build.encoder is TinyViT
    assert pickle.loads(pickle.dumps(REGISTRY["pi_vit_b"])) == REGISTRY["pi_vit_b"]  # spawned workers get specs

    def with_seeded_linear(image_encoder, extra):
        decoder = MaskDecoder()
        decoder.extra = extra
        return decoder

    factory = DecoderFactory(with_seeded_linear, seed=7, drawn=lambda: {"extra": nn.Linear(4, 4)})
    spec = registered("test_seeded_decoder", SamArchitecture(ImageEncoderViT, SMALL_VIT, factory))
    torch.manual_seed(1)
    first = spec.build()
    state = torch.random.get_rng_state()
    torch.manual_seed(2)
    second = spec.build()
    assert torch.equal(first.mask_decoder.extra.weight, second.mask_decoder.extra.weight)
    assert not torch.equal(first.mask_decoder.iou_token.weight, second.mask_decoder.iou_token.weight)
    torch.manual_seed(1)
    MaskDecoder()
    assert torch.equal(torch.random.get_rng_state(), state)  # the seeded encoders leave the caller's state alone
    hq = registered("test_small_hq", SamArchitecture(ImageEncoderViT, SMALL_VIT, HQ_DECODER))
    assert hq.new_parts == ("hq",) and hq.with_encoder(depth=1).build().image_encoder.blocks.__len__() == 1


def test_random_weights_are_seeded_and_the_same_everywhere():
    first = finesam.load("mobile_sam", random_weights=True)
    torch.manual_seed(123)  # the global random state does not matter
    second = finesam.load("mobile_sam", random_weights=True)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other = finesam.load("mobile_sam", random_weights=True, seed=finesam.RANDOM_WEIGHTS_SEED + 1)
    assert not torch.equal(first.mask_decoder.iou_token.weight, other.mask_decoder.iou_token.weight)
    registry_model = finesam.sam_model_registry["vit_t"]()  # the official builders without a file
    assert torch.equal(registry_model.mask_decoder.iou_token.weight, first.mask_decoder.iou_token.weight)
    with pytest.raises(ValueError, match="seed applies to random_weights=True or init_missing only"):
        finesam.load("mobile_sam", "mobile_sam.pt", seed=1)


PLUGIN = '''
import finesam
from finesam.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam


def build():
    encoder = ImageEncoderViT(embed_dim=64, depth=1, num_heads=2, global_attn_indexes=(0,))
    return Sam(encoder, PromptEncoder(), MaskDecoder()).eval()


SPEC = finesam.ModelSpec(build, description="a plugin model")
'''


def test_installed_plugin_models_work_from_the_command_line(tmp_path):
    """A package that declares an entry point in ``finesam.models`` adds its model to the CLI."""
    site = tmp_path / "site"
    (site / "tiny_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "tiny_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (site / "tiny_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (site / "tiny_plugin-0.1.dist-info" / "entry_points.txt").write_text("[finesam.models]\nplugin_vit = tiny_plugin:SPEC\n")
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "in.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src")]), "FINESAM_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "finesam.cli", "segment", str(tmp_path / "in.png"), "--model", "plugin_vit",
         "--random-weights", "--box", "5", "5", "50", "40", "--out", str(tmp_path / "m.png")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "m.png").size == (80, 60)
    assert "plugin_vit" not in REGISTRY  # this process never loaded it
