"""The eager-inference forms (banded TinyViT stage 0, chunked TinyViT blocks, channels-last
decoder upscaling, in-place residuals) compute what the plain graph computes.

``eager_inference()`` is False while gradients are recorded, so the same module run with
gradients on gives the plain graph (the one autograd, tracing and export see) as the oracle.
"""

from __future__ import annotations

import pytest
import torch

import finesam
from finesam.modeling.contracts.decoder_api import OutputMode
from finesam.modeling.contracts.features import ImageFeatures

from conftest import assert_close_to_plain, randomize_


def both_paths(fn):
    """(eager inference result, plain graph result) of ``fn()``."""
    with torch.no_grad():
        eager = fn()
    with torch.enable_grad():
        plain = fn()
    return eager, plain


@pytest.mark.parametrize("batch", [1, 2])
def test_tinyvit_banded_inference_equals_the_plain_graph(batch):
    model = finesam.load("mobile_sam", random_weights=True)
    encoder = randomize_(model.image_encoder, seed=3, scale=0.05).eval()  # batch norm statistics too
    image = torch.randn(batch, 3, 1024, 1024, generator=torch.Generator().manual_seed(batch))
    eager, plain = both_paths(lambda: encoder(image, keep_early=True))
    assert_close_to_plain(eager.embedding, plain.embedding)
    assert_close_to_plain(eager.early, plain.early)
    if batch == 2:  # bands and chunks never mix images
        with torch.no_grad():
            alone = encoder(image[1:], keep_early=False)
        assert_close_to_plain(alone.embedding[0], plain.embedding[1])


def test_tinyvit_in_training_mode_keeps_batch_statistics():
    """Without gradients but in training mode (e.g. a frozen encoder inside ``model.train()``),
    batch norm normalises by the batch: nothing may be folded with the running statistics."""
    encoder = randomize_(finesam.load("mobile_sam", random_weights=True).image_encoder, seed=4, scale=0.05).train()
    image = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(9))
    eager, plain = both_paths(lambda: encoder(image, keep_early=False))
    assert_close_to_plain(eager.embedding, plain.embedding)


def random_features(model, name: str, generator: torch.Generator) -> ImageFeatures:
    needs = model.capabilities.encoder_features
    early_dim = {"hq_vit_tiny": 160, "pi_vit_b": 768}.get(name)
    return ImageFeatures(
        torch.randn(1, 256, 64, 64, generator=generator),
        early=torch.randn(1, 64, 64, early_dim, generator=generator) if "early" in needs else None,
        image=torch.randn(1, 3, 1024, 1024, generator=generator) if "image" in needs else None,
    )


@pytest.mark.parametrize("name", ["mobile_sam", "hq_vit_tiny", "pi_vit_b"])
def test_decoders_inference_equals_the_plain_graph(name):
    """SAM's, HQ's and Pi's decoders (and Pi's correction): logits and scores of two box
    prompts with in-place and channels-last inference equal the plain graph's."""
    model = finesam.load(name, random_weights=True)
    randomize_(model.mask_decoder, seed=11, scale=0.05)  # Pi's zero-initialised interactor output too
    features = random_features(model, name, torch.Generator().manual_seed(7))
    boxes = torch.tensor([[100.0, 150.0, 700.0, 800.0], [20.0, 30.0, 400.0, 300.0]])
    mode = OutputMode(multimask=False)
    eager, plain = both_paths(lambda: model.decode(features, None, boxes, None, mode))
    assert_close_to_plain(eager.logits, plain.logits)
    assert_close_to_plain(eager.scores, plain.scores)
    if model.capabilities.corrects_clicks:
        points = torch.tensor([[[0.3, 0.4], [0.5, 0.5]], [[0.1, 0.2], [0.2, 0.1]]])
        flags = torch.tensor([[1, 0], [1, 1]])
        with torch.no_grad():
            eager_fix = model.correct(eager.state, points, flags)
        with torch.enable_grad():
            plain_fix = model.correct(plain.state, points, flags)
        assert_close_to_plain(eager_fix.logits, plain_fix.logits)


def test_forward_hooks_see_each_module_call_once():
    """A hooked module keeps its calls: the banded and chunked forms step aside for it (they
    would skip it, or call it once per band)."""
    model = finesam.load("mobile_sam", random_weights=True)
    calls = []
    encoder, decoder = model.image_encoder, model.mask_decoder
    for name, module in (("mbconv", encoder.layers[0].blocks[0].conv1), ("attention", encoder.layers[1].blocks[0].attn),
                         ("upscaling", decoder.output_upscaling[0])):
        module.register_forward_hook(lambda *args, name=name: calls.append(name))
    with torch.no_grad():
        features = model.encode_image(torch.rand(1, 3, 1024, 768) * 255)
        model.decode(features, None, torch.tensor([[10.0, 20.0, 500.0, 600.0]]), None, OutputMode(multimask=False))
    assert sorted(calls) == ["attention", "mbconv", "upscaling"]
