"""Drop-in: a user of segment_anything or segment_anything_hq changes one import and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import finesam
from finesam.compat import segment_anything_hq as finesam_hq
from finesam.registry import REGISTRY

from conftest import randomize_, save_state

segment_anything = pytest.importorskip("segment_anything")
sam_hq = pytest.importorskip("segment_anything_hq")


def test_segment_anything_names_are_one_import_away():
    from finesam import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    assert set(segment_anything.sam_model_registry) <= set(sam_model_registry)  # plus vit_t (MobileSAM)
    assert SamAutomaticMaskGenerator is finesam.AutomaticMaskGenerator and SamPredictor is finesam.SamPredictor
    for name in ("build_sam", "build_sam_vit_b", "build_sam_vit_l", "build_sam_vit_h"):
        assert hasattr(finesam.compat.segment_anything, name)


def test_segment_anything_hq_registries_have_the_official_keys():
    from segment_anything_hq.build_sam_baseline import sam_model_registry_baseline

    assert set(finesam_hq.sam_model_registry) == set(sam_hq.sam_model_registry)
    assert set(finesam_hq.sam_model_registry_baseline) == set(sam_model_registry_baseline)
    tiny = finesam_hq.sam_model_registry["vit_tiny"]()  # Light HQ-SAM, as the official key
    assert tiny.capabilities.output_modes and "early" in tiny.capabilities.encoder_features
    mobile = finesam_hq.sam_model_registry_baseline["vit_tiny"]()
    assert not mobile.capabilities.output_modes


def test_official_hq_script_runs_unchanged_with_the_official_file(real_image, tmp_path):
    """The HQ-SAM demo's code, with only the import changed, on an official-format vit_tiny file."""
    from segment_anything_hq.build_sam import build_sam_vit_t

    torch.manual_seed(4)
    official = randomize_(build_sam_vit_t(), 4)
    checkpoint = save_state(official, tmp_path / "sam_hq_vit_tiny.pth")
    official.eval()

    from finesam.compat.segment_anything_hq import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    sam = sam_model_registry["vit_tiny"](checkpoint=str(checkpoint))
    predictor = SamPredictor(sam)
    predictor.set_image(real_image)
    box = np.array([40, 50, 300, 250])
    masks, scores, logits = predictor.predict(box=box, multimask_output=False, hq_token_only=True)
    reference = sam_hq.SamPredictor(official)
    reference.set_image(real_image)
    expected, _, _ = reference.predict(box=box, multimask_output=False, hq_token_only=True)
    assert masks.shape == expected.shape and (masks == expected).mean() > 0.9999
    generator = SamAutomaticMaskGenerator(sam, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    records = generator.generate(real_image)
    assert all(record["segmentation"].shape == real_image.shape[:2] for record in records)


@pytest.mark.parametrize("name", ["sam_vit_b", "mobile_sam", "hq_vit_tiny"])
def test_image_encoders_expose_img_size(name):
    with torch.device("meta"):
        model = REGISTRY[name].build()
    assert model.image_encoder.img_size == 1024 == model.image_size


def test_encoders_keep_only_what_the_decoder_declares():
    image = torch.zeros(1, 3, 1024, 768)
    with torch.no_grad():
        sam = finesam.load("mobile_sam", random_weights=True).encode_image(image)
        hq = finesam.load("hq_vit_tiny", random_weights=True).encode_image(image)
        pi_model = finesam.load(REGISTRY["pi_vit_b"].with_encoder(depth=2, global_attn_indexes=(0, 1)), random_weights=True)
        pi = pi_model.encode_image(image)
    assert sam.early is None and sam.image is None
    assert hq.early.shape == (1, 64, 64, 160) and hq.image is None
    assert pi.early.shape == (1, 64, 64, 768) and pi.image.shape == (1, 3, 1024, 1024)
