"""Loading: official files strictly, clear refusals for the wrong file, safe formats."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import finesam
from finesam.checkpoints import CheckpointError, CheckpointNotFoundError
from finesam.registry import REGISTRY, get_spec


@pytest.fixture(scope="module")
def tiny_states():
    torch.manual_seed(0)
    return {name: REGISTRY[name].build().official_state_dict() for name in ("mobile_sam", "hq_vit_tiny")}


def test_official_key_sets_load_strictly(tmp_path, tiny_states):
    path = tmp_path / "mobile_sam.pt"
    torch.save(tiny_states["mobile_sam"], path)
    model = finesam.load("mobile_sam", path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_states["mobile_sam"][key]), key
    assert not model.training


def test_plain_sam_file_refused_for_hq_model(tmp_path, tiny_states):
    path = tmp_path / "mobile_sam.pt"
    torch.save(tiny_states["mobile_sam"], path)
    with pytest.raises(CheckpointError) as error:
        finesam.load("hq_vit_tiny", path)
    message = str(error.value)
    assert "MobileSAM" in message and "mask_decoder.hf_token.weight" in message and "missing keys" in message


def test_init_missing_hq_initialises_and_says_which(tmp_path, tiny_states):
    path = tmp_path / "mobile_sam.pt"
    torch.save(tiny_states["mobile_sam"], path)
    with pytest.warns(UserWarning, match="hf_token.weight") as record:
        model = finesam.load("hq_vit_tiny", path, init_missing="hq")
    assert "25 HQ keys" in str(record[0].message)
    state = model.official_state_dict()
    assert torch.equal(state["mask_decoder.iou_token.weight"], tiny_states["mobile_sam"]["mask_decoder.iou_token.weight"])
    with pytest.raises(ValueError, match="only valid"):
        finesam.load("mobile_sam", path, init_missing="hq")


def test_hq_file_refused_for_sam_model(tmp_path, tiny_states):
    path = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(tiny_states["hq_vit_tiny"], path)
    with pytest.raises(CheckpointError, match=r"Light HQ-SAM \(hq_vit_tiny\)[\s\S]*unexpected keys: mask_decoder.hf_token"):
        finesam.load("mobile_sam", path)


def test_other_backbone_refused_with_its_name(tmp_path, tiny_states):
    # A ViT-L file for a ViT-B model: the message names ViT-L and lists mismatched shapes.
    state = REGISTRY["sam_vit_l"].build().state_dict()
    path = tmp_path / "sam_vit_l.pth"
    torch.save(state, path)
    del state
    with pytest.raises(CheckpointError) as error:
        finesam.load("sam_vit_b", path)
    message = str(error.value)
    assert "SAM ViT-L (sam_vit_l)" in message
    assert "image_encoder.pos_embed: file (1, 64, 64, 1024) vs model (1, 64, 64, 768)" in message
    # MobileSAM weights for a ViT model.
    mobile = tmp_path / "mobile_sam.pt"
    torch.save(tiny_states["mobile_sam"], mobile)
    with pytest.raises(CheckpointError, match=r"MobileSAM \(mobile_sam\)"):
        finesam.load("sam_vit_b", mobile)


def test_incomplete_state_dict_names_missing_key(tmp_path, tiny_states):
    state = dict(tiny_states["mobile_sam"])
    del state["mask_decoder.iou_prediction_head.layers.2.bias"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing keys: mask_decoder.iou_prediction_head.layers.2.bias"):
        finesam.load("mobile_sam", path)


def test_truncated_file_says_so(tmp_path, tiny_states):
    path = tmp_path / "mobile_sam.pt"
    torch.save(tiny_states["mobile_sam"], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        finesam.load("mobile_sam", path)


def test_pickled_objects_are_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"x": Payload()}, handle)
    with pytest.raises(CheckpointError):
        finesam.load("mobile_sam", path)


def test_safetensors_accepted(tmp_path, tiny_states):
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "mobile_sam.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in tiny_states["mobile_sam"].items()}, str(path))
    model = finesam.load("mobile_sam", path)
    assert torch.equal(model.state_dict()["image_encoder.neck.0.weight"], tiny_states["mobile_sam"]["image_encoder.neck.0.weight"])


def test_missing_checkpoint_says_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("FINESAM_CHECKPOINTS", str(tmp_path / "ckpts"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointNotFoundError) as error:
        finesam.load("mobile_sam", download=False)
    message = str(error.value)
    assert "mobile_sam.pt" in message and "https://github.com/ChaoningZhang/MobileSAM" in message
    assert str(tmp_path / "home" / ".cache" / "finesam" / "mobile_sam.pt") in message


def test_checkpoint_found_in_env_dir(tmp_path, monkeypatch, tiny_states):
    directory = tmp_path / "ckpts"
    directory.mkdir()
    torch.save(tiny_states["mobile_sam"], directory / "mobile_sam.pt")
    monkeypatch.setenv("FINESAM_CHECKPOINTS", str(directory))
    model = finesam.load("mobile_sam", download=False)
    assert torch.equal(model.state_dict()["image_encoder.neck.0.weight"], tiny_states["mobile_sam"]["image_encoder.neck.0.weight"])


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(KeyError, match="sam_vit_b"):
        finesam.load("sam_vit_x", random_weights=True)


def test_official_registry_keys_build_models():
    assert set(finesam.sam_model_registry) == {"default", "vit_h", "vit_l", "vit_b", "vit_t"}
    model = finesam.sam_model_registry["vit_t"]()
    assert isinstance(model, finesam.Sam) and not model.training


def test_bfloat16_encoder_keeps_float32_outputs():
    spec = get_spec("sam_vit_b").with_encoder(depth=1, global_attn_indexes=(0,))  # bf16 is slow on most CPUs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = finesam.load(spec, random_weights=True, dtype=torch.bfloat16)
    slow_warning = [w for w in caught if "bfloat16" in str(w.message)]
    assert bool(slow_warning) != finesam.loading.cpu_has_native_bfloat16()
    assert next(model.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(model.mask_decoder.parameters()).dtype == torch.float32
    with torch.no_grad():
        features = model.encode_image(torch.rand(1, 3, 1024, 768) * 255)
    assert features.embedding.dtype == torch.float32 and features.embedding.shape == (1, 256, 64, 64)


# --- decoder-only files: the official HQ-SAM training output (epoch_N.pth) ----------------------
SMALL_VIT = dict(depth=1, embed_dim=64, num_heads=2, global_attn_indexes=(0,))


@pytest.fixture(scope="module")
def official_hq_training_files(tmp_path_factory):
    """A depth-reduced official SAM file (segment_anything) and the decoder file the official HQ-SAM
    train.py saves (``net.module.state_dict()``: the keys of its MaskDecoderHQ, no prefix), both seeded."""
    pytest.importorskip("segment_anything")
    sam_hq = pytest.importorskip("segment_anything_hq")
    from segment_anything.build_sam import _build_sam as build_official_sam
    from segment_anything_hq.build_sam import _build_sam as build_official_hq

    folder = tmp_path_factory.mktemp("official_hq")
    arguments = (SMALL_VIT["embed_dim"], SMALL_VIT["depth"], SMALL_VIT["num_heads"], list(SMALL_VIT["global_attn_indexes"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        sam = build_official_sam(*arguments)
        torch.manual_seed(12)
        trained_decoder = build_official_hq(*arguments).mask_decoder  # SAM's parts differ from the SAM file's too
    torch.save(sam.state_dict(), folder / "sam_small.pth")
    torch.save(trained_decoder.state_dict(), folder / "epoch_11.pth")
    return folder, sam.state_dict(), trained_decoder.state_dict(), sam_hq


def test_official_hq_decoder_file_replaces_the_sam_decoder(tmp_path, official_hq_training_files):
    folder, sam_state, decoder_state, sam_hq = official_hq_training_files
    spec = get_spec("hq_vit_b").with_encoder(**SMALL_VIT)
    model = finesam.load(spec, folder / "sam_small.pth", decoder_checkpoint=folder / "epoch_11.pth")
    merged = model.official_state_dict()
    # the official merge: the SAM file with its mask_decoder.* keys replaced by the decoder file's
    expected = {**{k: v for k, v in sam_state.items() if not k.startswith("mask_decoder.")},
                **{f"mask_decoder.{k}": v for k, v in decoder_state.items()}}
    assert merged.keys() == expected.keys()
    for key in expected:
        assert torch.equal(merged[key], expected[key]), key
    # finesam.save writes the merged full file, which the official package loads strictly
    saved = finesam.save(model, tmp_path / "sam_hq_merged.pth")
    from segment_anything_hq.build_sam import _build_sam as build_official_hq

    official = build_official_hq(SMALL_VIT["embed_dim"], SMALL_VIT["depth"], SMALL_VIT["num_heads"], list(SMALL_VIT["global_attn_indexes"]))
    official.load_state_dict(torch.load(saved, weights_only=True), strict=True)


def test_wrong_decoder_files_are_refused_clearly(tmp_path, official_hq_training_files):
    from segment_anything_hq.modeling import MaskDecoderHQ, TwoWayTransformer

    folder, _, _, _ = official_hq_training_files
    # a ViT-B decoder (early feature width 768) beside a ViT-L SAM (width 1024; depth-reduced)
    vit_b_decoder = MaskDecoderHQ(transformer_dim=256, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                  vit_dim=768)
    torch.save(vit_b_decoder.state_dict(), tmp_path / "epoch_vit_b.pth")
    vit_l = get_spec("hq_vit_l").with_encoder(depth=1, global_attn_indexes=(0,))
    sam_vit_l = {k: v for k, v in finesam.load(vit_l, random_weights=True).official_state_dict().items()
                 if not k.startswith(tuple(f"mask_decoder.{p}" for p in ("hf_", "compress_vit_feat", "embedding_")))}
    torch.save(sam_vit_l, tmp_path / "sam_vit_l_small.pth")
    with pytest.raises(CheckpointError) as error:
        finesam.load(vit_l, tmp_path / "sam_vit_l_small.pth", decoder_checkpoint=tmp_path / "epoch_vit_b.pth")
    message = str(error.value)
    assert "epoch_vit_b.pth" in message and "an HQ-SAM decoder for ViT-B" in message
    assert "mask_decoder.compress_vit_feat.0.weight: file (768, 256, 2, 2) vs model (1024, 256, 2, 2)" in message
    small = get_spec("hq_vit_b").with_encoder(**SMALL_VIT)
    # a Pi-SAM decoder file ({'model_state_dict': ...}) for an HQ model
    pi_state = finesam.load(get_spec("pi_vit_b").with_encoder(**SMALL_VIT), random_weights=True).official_state_dict()
    pi_decoder = {k[len("mask_decoder."):]: v for k, v in pi_state.items() if k.startswith("mask_decoder.") and "rgb_embed" not in k}
    torch.save({"model_state_dict": pi_decoder}, tmp_path / "pi_decoder.pth")
    with pytest.raises(CheckpointError, match=r"pi_decoder.pth' does not fit the decoder of hq_vit_b \(it looks like a Pi-SAM decoder file\)"):
        finesam.load(small, folder / "sam_small.pth", decoder_checkpoint=tmp_path / "pi_decoder.pth")
    # a whole file passed as the decoder file
    with pytest.raises(CheckpointError, match="whole-model file"):
        finesam.load(small, folder / "sam_small.pth", decoder_checkpoint=folder / "sam_small.pth")
    # a truncated decoder file
    data = (folder / "epoch_11.pth").read_bytes()
    (tmp_path / "epoch_cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="epoch_cut.pth.*damaged or truncated"):
        finesam.load(small, folder / "sam_small.pth", decoder_checkpoint=tmp_path / "epoch_cut.pth")


def test_loading_neither_uses_nor_changes_the_global_random_state(official_hq_training_files):
    """A SAM file for an HQ model with init_missing: the HQ parts come from ``seed``, whatever the caller's state."""
    folder, _, _, _ = official_hq_training_files
    spec = get_spec("hq_vit_b").with_encoder(**SMALL_VIT)
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            states.append(finesam.load(spec, folder / "sam_small.pth", init_missing="hq", seed=5).official_state_dict())
        assert torch.equal(before, torch.get_rng_state())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
