"""The official calls one level below the predictor: the image encoder called with the image
alone, the mask decoder with the official keywords, predict_masks, and the HQ ONNX wrapper."""

from __future__ import annotations

import itertools

import pytest
import torch

from official_files import hq_vit_tiny_file, official_packages, small_sam_file
from parity import LOGIT_TOL, SCORE_TOL

official_packages()


def close(ours: torch.Tensor, official: torch.Tensor, tolerance: float = LOGIT_TOL) -> None:
    assert ours.shape == official.shape and not ours.requires_grad
    assert (ours - official).abs().max() <= tolerance


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, 1024, 1024, generator=generator)
    box = torch.tensor([[120.0, 200.0, 700.0, 650.0]])
    return image, box


@pytest.fixture(scope="module")
def hq_pair(tmp_path_factory):
    file = hq_vit_tiny_file(tmp_path_factory.mktemp("hq"))
    return file.official(str(file.path)).eval(), file.ours(str(file.path))


def test_hq_encoder_and_decoder_official_calls(hq_pair):
    official, ours = hq_pair
    image, box = inputs(1)
    with torch.no_grad():
        embedding, interm = official.image_encoder(image)
        our_embedding, our_interm = ours.image_encoder(image)
        close(our_embedding, embedding)
        assert len(our_interm) == len(interm) == 1
        close(our_interm[0], interm[0])
        sparse, dense = official.prompt_encoder(points=None, boxes=box, masks=None)
        for multimask_output, hq_token_only in itertools.product((False, True), (False, True)):
            kwargs = dict(image_embeddings=embedding, image_pe=official.prompt_encoder.get_dense_pe(),
                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                          multimask_output=multimask_output, hq_token_only=hq_token_only, interm_embeddings=interm)
            masks, iou = official.mask_decoder(**kwargs)
            our_masks, our_iou = ours.mask_decoder(**kwargs)
            close(our_masks, masks)
            close(our_iou, iou, SCORE_TOL)
        decoder = ours.mask_decoder  # predict_masks with the fused features built the official way
        hq_features = decoder.embedding_encoder(embedding) + decoder.compress_vit_feat(interm[0].permute(0, 3, 1, 2))
        args = (embedding, official.prompt_encoder.get_dense_pe(), sparse, dense, hq_features)
        masks, iou = official.mask_decoder.predict_masks(*args)
        our_masks, our_iou = decoder.predict_masks(*args)
        assert our_masks.shape == (1, 5, 256, 256)
        close(our_masks, masks)
        close(our_iou, iou, SCORE_TOL)


@pytest.mark.parametrize("hq_token_only, multimask_output", [(False, False), (True, True)])
def test_hq_onnx_wrapper_matches_official(hq_pair, hq_token_only, multimask_output):
    from segment_anything_hq.utils.onnx import SamOnnxModel as OfficialOnnx

    from finesam.compat.segment_anything_hq.utils.onnx import SamOnnxModel

    official, ours = hq_pair
    image, _ = inputs(2)
    with torch.no_grad():
        embedding, interm = official.image_encoder(image)
    args = (embedding, torch.stack(interm), torch.tensor([[[300.0, 400.0], [500.0, 300.0], [0.0, 0.0]]]),
            torch.tensor([[1.0, 0.0, -1.0]]), torch.zeros(1, 1, 256, 256), torch.tensor([0.0]), torch.tensor([600.0, 800.0]))
    for use_stability_score in (False, True):
        expected = OfficialOnnx(official, hq_token_only, multimask_output, use_stability_score, True)(*args)
        got = SamOnnxModel(ours, hq_token_only, multimask_output, use_stability_score, True)(*args)
        assert len(got) == len(expected) == 5
        for mine, theirs in zip(got, expected):
            close(mine.float(), theirs.float(), LOGIT_TOL if theirs.shape[-1] > 1 else 1e-3)


def test_sam_encoder_and_decoder_official_calls(tmp_path):
    file = small_sam_file(tmp_path)
    official, ours = file.official(str(file.path)), file.ours(str(file.path))
    image, box = inputs(3)
    with torch.no_grad():
        embedding = official.image_encoder(image)
        close(ours.image_encoder(image), embedding)
        points = (torch.tensor([[[300.0, 400.0]]]), torch.tensor([[1]]))
        sparse, dense = official.prompt_encoder(points=points, boxes=None, masks=None)
        for multimask_output in (False, True):
            kwargs = dict(image_embeddings=embedding, image_pe=official.prompt_encoder.get_dense_pe(),
                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output)
            masks, iou = official.mask_decoder(**kwargs)
            our_masks, our_iou = ours.mask_decoder(*kwargs.values())  # positionally too
            close(our_masks, masks)
            close(our_iou, iou, SCORE_TOL)
        kwargs.pop("multimask_output")
        masks, iou = official.mask_decoder.predict_masks(**kwargs)
        our_masks, our_iou = ours.mask_decoder.predict_masks(**kwargs)
        close(our_masks, masks)
        close(our_iou, iou, SCORE_TOL)
