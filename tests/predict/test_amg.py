"""AutomaticMaskGenerator against the official SamAutomaticMaskGenerator (segment_anything 1.0 and
segment_anything_hq 0.3) with the same seeded random weights, plus the amg_utils helpers."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys

import numpy as np
import pytest
import torch

import finesam
from finesam.modeling.contracts.decoder_api import DecoderOutput, OutputMode
from finesam.predict import amg_utils
from finesam.predict.automatic_mask_generator import AutomaticMaskGenerator
from finesam.registry import REGISTRY

from conftest import randomize_, save_state

sam_hq = pytest.importorskip("segment_anything_hq")
segment_anything = pytest.importorskip("segment_anything")
from segment_anything.utils import amg as official_amg  # noqa: E402

MIN_IOU = 0.99


# --- test scaffolding ----------------------------------------------------------------------
def blob_logits(points: torch.Tensor, masks_per_point: int) -> torch.Tensor:
    """(B, 1, 2) points in the 1024 frame -> (B, K, 256, 256) logits of an ellipse around each point.

    Radius and steepness (hence stability) vary with the position; some points also get a small
    satellite island and some a small hole (for ``min_mask_region_area``). With K = 3 the masks
    are nested (1, 1.1, 0.7 x radius; SAM's third token scores lowest with these weights)."""
    centre = points[:, 0].double()
    grid = (torch.arange(256, dtype=torch.float64) + 0.5) * 4  # low-res pixel centres, 1024 frame
    x, y = centre[:, 0, None, None], centre[:, 1, None, None]
    radius = 95 + 55 * torch.sin(x / 83.0) * torch.cos(y / 61.0)
    height = 8 + 4 * torch.cos(x / 50.0 + y / 37.0)

    def cone(cx, cy, r):
        return height * (1 - torch.sqrt((grid[None, None, :] - cx) ** 2 + (1.3 * (grid[None, :, None] - cy)) ** 2) / r)

    island = torch.where(torch.sin(x / 37.0) > 0, cone(x + 1.5 * radius, y, 0.15 * radius), -torch.inf)
    hole = torch.where(torch.cos(y / 41.0) > 0, -cone(x + 0.3 * radius, y - 0.3 * radius, 0.12 * radius), torch.inf)
    scales = (1.0, 1.1, 0.7) if masks_per_point == 3 else (1.0,) * masks_per_point
    blobs = [torch.minimum(torch.maximum(cone(x, y, radius * scale), island), hole) for scale in scales]
    return torch.stack(blobs, dim=1).clamp(-12, 12).float()


class PointBlobs:
    """Adds :func:`blob_logits` to a model's low-res mask logits (official or ours alike).

    Random weights give checkerboard-noise logits that cover the whole image: every box would be
    the image, and NMS, crop-edge filtering and small-region removal would have nothing to do.
    The same blob around each prompt point makes object-like masks whose ragged borders, holes,
    scores and HQ variants still come from the model's own logits.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.points = None
        self.decode = model.mask_decoder.forward  # replaced by tests that need other outputs
        prompt_forward = model.prompt_encoder.forward

        def prompt(*args, **kwargs):
            points = kwargs["points"] if "points" in kwargs else args[0]
            self.points = points[0]
            return prompt_forward(*args, **kwargs)

        def decode(*args, **kwargs):
            result = self.decode(*args, **kwargs)
            if isinstance(result, DecoderOutput):  # ours
                logits = result.logits + blob_logits(self.points, result.logits.shape[1])
                return dataclasses.replace(result, logits=logits, low_res=logits)
            masks, iou = result  # the official decoders
            return masks + blob_logits(self.points, masks.shape[1]), iou

        model.prompt_encoder.forward = prompt
        model.mask_decoder.forward = decode


class EncoderCache:
    """Encodes each distinct image (or crop) once per predictor: several generations run on one image."""

    def __init__(self) -> None:
        self.store: dict = {}

    def attach(self, predictor) -> None:
        encode = predictor.set_image

        def set_image(image, image_format="RGB"):
            image = np.ascontiguousarray(image)
            key = (image.shape, hashlib.sha1(image.data).hexdigest(), image_format)
            if key not in self.store:
                encode(image, image_format)
                self.store[key] = {
                    k: v for k, v in vars(predictor).items() if k not in ("model", "transform", "set_image", "predict_torch")
                }
            for name, value in self.store[key].items():
                setattr(predictor, name, value)

        predictor.set_image = set_image


class Pair:
    """Our model and the official one with the same weights, blobs and encoder caches."""

    def __init__(self, ours, official, official_generator_cls):
        self.ours, self.official = ours, official
        self.blobs = PointBlobs(ours)
        self.official_blobs = PointBlobs(official)
        self.ours_cache, self.official_cache = EncoderCache(), EncoderCache()
        self.official_generator_cls = official_generator_cls

    def ours_generator(self, **kwargs) -> AutomaticMaskGenerator:
        generator = AutomaticMaskGenerator(self.ours, **kwargs)
        self.ours_cache.attach(generator.predictor)
        return generator

    def official_generator(self, **kwargs):
        generator = self.official_generator_cls(self.official, **kwargs)
        self.official_cache.attach(generator.predictor)
        return generator


def official_candidates(decoder):
    """The official HQ decoder's outputs as our hq_output="candidates": SAM's 3 multimask logits each + HQ."""

    def forward(**kw):
        early = kw["interm_embeddings"][0].permute(0, 3, 1, 2)
        hq_features = decoder.embedding_encoder(kw["image_embeddings"]) + decoder.compress_vit_feat(early)
        masks, iou = decoder.predict_masks(
            kw["image_embeddings"], kw["image_pe"], kw["sparse_prompt_embeddings"], kw["dense_prompt_embeddings"],
            hq_features,
        )
        return masks[:, 1:4] + masks[:, 4:5], iou[:, 1:4]

    return forward


def compare_records(ours: list[dict], official: list[dict]) -> dict:
    """One-to-one match of binary masks by IoU (>= MIN_IOU both ways) and of the other fields."""
    assert len(ours) == len(official), f"{len(ours)} masks vs official {len(official)}"
    if not official:
        return {"count": 0, "min_iou": None}
    a = torch.as_tensor(np.stack([r["segmentation"] for r in ours])).flatten(1).float()
    b = torch.as_tensor(np.stack([r["segmentation"] for r in official])).flatten(1).float()
    inter = a @ b.T
    iou = inter / (a.sum(1)[:, None] + b.sum(1)[None, :] - inter)
    best_for_official = iou.max(dim=0)
    best_for_ours = iou.max(dim=1)
    assert best_for_official.values.min() >= MIN_IOU, f"official masks without a match: {best_for_official.values}"
    assert best_for_ours.values.min() >= MIN_IOU, f"our masks without an official match: {best_for_ours.values}"
    assert sorted(best_for_official.indices.tolist()) == list(range(len(ours))), "matching is not one-to-one"
    for j, i in enumerate(best_for_official.indices.tolist()):
        mine, ref = ours[i], official[j]
        assert set(mine) == set(ref)
        assert np.allclose(mine["point_coords"], ref["point_coords"], atol=1e-6)
        assert mine["crop_box"] == ref["crop_box"]  # ints, or floats where the official's are (an empty crop)
        assert [type(v) for v in mine["crop_box"]] == [type(v) for v in ref["crop_box"]]
        assert all(isinstance(v, int) for v in mine["bbox"]) and isinstance(mine["area"], int)
        assert np.abs(np.array(mine["bbox"]) - np.array(ref["bbox"])).max() <= 2
        assert abs(mine["area"] - ref["area"]) <= 0.01 * ref["area"]
        assert mine["area"] == int(mine["segmentation"].sum())
        assert abs(mine["predicted_iou"] - ref["predicted_iou"]) <= 1e-3
        assert abs(mine["stability_score"] - ref["stability_score"]) <= 1e-2
    return {"count": len(ours), "min_iou": float(best_for_official.values.min())}


# --- models --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hq_pair(tmp_path_factory):
    """Light HQ-SAM (vit_tiny), seeded random weights, as in test_hq_parity."""
    from segment_anything_hq.build_sam import build_sam_vit_t

    torch.manual_seed(3)
    official = randomize_(build_sam_vit_t(), 3)
    path = save_state(official, tmp_path_factory.mktemp("amg_hq") / "sam_hq_vit_tiny.pth")
    official.eval()  # refresh TinyViT's attention-bias cache after the weights changed
    return Pair(finesam.load("hq_vit_tiny", path), official, sam_hq.SamAutomaticMaskGenerator)


@pytest.fixture(scope="module")
def sam_pair(tmp_path_factory):
    """A narrow 2-block SAM ViT (one windowed, one global block): fast enough to encode 5 crops."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(5)
    official = randomize_(_build_sam(64, 2, 2, [1]), 5).eval()
    path = save_state(official, tmp_path_factory.mktemp("amg_sam") / "sam.pth")
    spec = REGISTRY["sam_vit_b"].with_encoder(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,))
    return Pair(finesam.load(spec, path), official, segment_anything.SamAutomaticMaskGenerator)


# Lowered thresholds for random weights (HQ predicted IoUs are ~0.4, SAM's ~0.1), still filtering some.
# Six prompts (an explicit grid) keep the HQ decoder's cost down.
HQ_POINTS = np.array([[0.2, 0.25], [0.5, 0.2], [0.8, 0.3], [0.25, 0.7], [0.55, 0.55], [0.8, 0.8]])
HQ_PARAMS = dict(points_per_side=None, point_grids=[HQ_POINTS], pred_iou_thresh=0.19, stability_score_thresh=0.5)
CROP_POINTS = np.array([[0.25, 0.3], [0.7, 0.75]])
SAM_PARAMS = dict(points_per_side=4, pred_iou_thresh=0.02, stability_score_thresh=0.55, box_nms_thresh=0.7)


# --- parity --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["sum", "hq_token_only", "candidates", "single"])
def test_hq_matches_official(hq_pair, real_image, case):
    # Candidates: keep the low-scored ones too, so that NMS meets nested masks of one point.
    params = dict(HQ_PARAMS, pred_iou_thresh=0.0) if case == "candidates" else HQ_PARAMS
    ours = hq_pair.ours_generator(**params)
    official = hq_pair.official_generator(**params)
    blobs = hq_pair.official_blobs
    if case == "sum":
        got = ours.generate(real_image)
        ref = official.generate(real_image, multimask_output=True)
    elif case == "single":
        got = ours.generate(real_image, multimask_output=False, hq_token_only=False)
        ref = official.generate(real_image, multimask_output=False)
    elif case == "hq_token_only":
        got = ours.generate(real_image, hq_token_only=True)
        official.predictor.predict_torch = functools.partial(official.predictor.predict_torch, hq_token_only=True)
        ref = official.generate(real_image, multimask_output=True)
    else:
        got = ours.generate(real_image, hq_output="candidates")
        original, blobs.decode = blobs.decode, official_candidates(hq_pair.official.mask_decoder)
        try:
            ref = official.generate(real_image, multimask_output=True)
        finally:
            blobs.decode = original
    stats = compare_records(got, ref)
    print(case, stats)
    assert stats["count"] >= 3, stats
    if case == "candidates":  # some points keep several nested masks
        assert len({tuple(r["point_coords"][0]) for r in got}) < len(got)


def test_call_time_options_override_constructor(hq_pair):
    generator = AutomaticMaskGenerator(hq_pair.ours, points_per_side=1, hq_output="candidates", multimask_output=False)
    assert generator._mode(None, None, None) == OutputMode(False, "candidates")
    assert generator._mode(True, True, None) == OutputMode(True, "hq_only")  # either HQ option replaces both
    assert generator._mode(None, None, "sam_only") == OutputMode(False, "sam_only")
    assert generator._mode(None, False, None) == OutputMode(False, None)


def test_sam_crops_and_small_regions_match_official(sam_pair, real_image):
    # Layer 1 gets two points per crop; some of its masks touch inner crop edges and are dropped.
    params = dict(
        SAM_PARAMS, points_per_side=None, point_grids=[amg_utils.build_point_grid(3), CROP_POINTS],
        crop_n_layers=1, crop_nms_thresh=0.5, min_mask_region_area=100,
    )
    got = sam_pair.ours_generator(**params).generate(real_image)
    ref = sam_pair.official_generator(**params).generate(real_image)
    stats = compare_records(got, ref)
    crops = {tuple(r["crop_box"]) for r in got}
    print("crops", stats, sorted(crops))
    assert stats["count"] >= 6 and len(crops) >= 3, "the crop path is not exercised"
    for record in got:  # no hole or island below min_mask_region_area is left
        for mode in ("holes", "islands"):
            assert not amg_utils.remove_small_regions(record["segmentation"], 100, mode)[1]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
def test_output_modes(sam_pair, real_image, monkeypatch):
    params = dict(SAM_PARAMS, points_per_side=2)
    binary = sam_pair.ours_generator(**params).generate(real_image)
    rle = sam_pair.ours_generator(**params, output_mode="uncompressed_rle").generate(real_image)
    assert len(binary) == len(rle) >= 1
    height, width = real_image.shape[:2]
    for mask_record, rle_record in zip(binary, rle):
        mask = mask_record["segmentation"]
        assert mask.dtype == bool and mask.shape == (height, width)
        segmentation = rle_record["segmentation"]
        assert segmentation["size"] == [height, width]
        assert np.array_equal(amg_utils.rle_to_mask(segmentation), mask)
        assert segmentation == official_amg.mask_to_rle_pytorch(torch.as_tensor(mask)[None])[0]
        assert {k: v for k, v in mask_record.items() if k != "segmentation"} == {
            k: v for k, v in rle_record.items() if k != "segmentation"
        }
    with monkeypatch.context() as without_pycocotools:  # coco_rle needs no pycocotools
        without_pycocotools.setitem(sys.modules, "pycocotools", None)
        without_pycocotools.setitem(sys.modules, "pycocotools.mask", None)
        coco = sam_pair.ours_generator(**params, output_mode="coco_rle").generate(real_image)
    mask_utils = pytest.importorskip("pycocotools.mask")  # the oracle
    assert len(coco) == len(binary)
    for mask_record, coco_record in zip(binary, coco):
        mask = mask_record["segmentation"]
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco_record["segmentation"] == {"size": reference["size"], "counts": reference["counts"].decode("ascii")}
        assert {k: v for k, v in mask_record.items() if k != "segmentation"} == {
            k: v for k, v in coco_record.items() if k != "segmentation"
        }


def test_progress_bar(sam_pair, real_image, capfd):
    generator = sam_pair.ours_generator(points_per_side=1, progress=True)
    generator.generate(real_image)
    err = capfd.readouterr().err
    assert "masks" in err and "1/1" in err


def test_argument_validation(sam_pair, hq_pair):
    model = sam_pair.ours
    bad = [
        dict(point_grids=[amg_utils.build_point_grid(4)]),  # with points_per_side=32
        dict(points_per_side=None),
        dict(output_mode="png"),
        dict(points_per_batch=0),
        dict(crop_n_layers=-1),
        dict(crop_overlap_ratio=1.0),
        dict(points_per_side=None, point_grids=[np.array([[0.5, 1.5]])]),
        dict(points_per_side=None, point_grids=[amg_utils.build_point_grid(2)], crop_n_layers=1),
        dict(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2),
        dict(hq_token_only=True),  # a SAM model has no HQ token
        dict(hq_output="bogus"),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            AutomaticMaskGenerator(model, **kwargs)
    with pytest.raises(ValueError, match="contradicts"):
        AutomaticMaskGenerator(hq_pair.ours, hq_token_only=True, hq_output="sum")
    generator = AutomaticMaskGenerator(model, points_per_side=2)
    for image in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)):
        with pytest.raises(ValueError, match="uint8"):
            generator.generate(image)
    with pytest.raises(ValueError, match="HQ"):
        generator.generate(np.zeros((8, 8, 3), np.uint8), hq_output="candidates")
    # Explicit point grids work (no points_per_side).
    AutomaticMaskGenerator(model, points_per_side=None, point_grids=[amg_utils.build_point_grid(2)])


# --- helpers against segment_anything.utils.amg --------------------------------------------
def random_masks(seed: int, count: int = 6, size: tuple[int, int] = (37, 53)) -> torch.Tensor:
    """Blobby random masks, plus an empty, a full and a one-pixel mask."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(count, 1, size[0] // 4 + 1, size[1] // 4 + 1, generator=generator)
    masks = torch.nn.functional.interpolate(noise, size=size, mode="bilinear")[:, 0] > 0.55
    extra = torch.zeros(3, *size, dtype=torch.bool)
    extra[1] = True
    extra[2, size[0] - 1, 0] = True
    return torch.cat([masks, extra])


def test_rle_matches_official():
    masks = random_masks(0)
    ours = amg_utils.mask_to_rle(masks)
    assert ours == official_amg.mask_to_rle_pytorch(masks)
    for mask, rle in zip(masks, ours):
        assert np.array_equal(amg_utils.rle_to_mask(rle), mask.numpy())
        assert np.array_equal(amg_utils.rle_to_mask(rle), official_amg.rle_to_mask(rle))
        assert amg_utils.area_from_rle(rle) == int(mask.sum()) == official_amg.area_from_rle(rle)
    # Column-major (COCO) order: a mask with only the first column set is one run after the start.
    column = torch.zeros(1, 3, 4, dtype=torch.bool)
    column[0, :, 0] = True
    assert amg_utils.mask_to_rle(column)[0] == {"size": [3, 4], "counts": [0, 3, 9]}
    with pytest.raises(ValueError):
        amg_utils.rle_to_mask({"size": [3, 4], "counts": [0, 3, 8]})
    assert amg_utils.mask_to_rle(torch.zeros(0, 3, 4, dtype=torch.bool)) == []


def test_boxes_stability_and_edges_match_official():
    masks = random_masks(1)
    assert torch.equal(amg_utils.batched_mask_to_box(masks), official_amg.batched_mask_to_box(masks))
    assert torch.equal(amg_utils.batched_mask_to_box(masks.view(3, 3, *masks.shape[1:])),
                       official_amg.batched_mask_to_box(masks.view(3, 3, *masks.shape[1:])))
    for mask in masks:
        assert np.array_equal(amg_utils.mask_to_box_np(mask.numpy()), official_amg.batched_mask_to_box(mask).numpy())
    logits = torch.randn(5, 40, 30, generator=torch.Generator().manual_seed(2)) * 3
    for threshold, offset in ((0.0, 1.0), (0.5, 0.3)):
        assert torch.equal(
            amg_utils.calculate_stability_score(logits, threshold, offset),
            official_amg.calculate_stability_score(logits, threshold, offset),
        )
    boxes = torch.tensor([[0, 0, 30, 40], [5, 5, 100, 90], [21, 21, 50, 50], [180, 0, 199, 150]])
    for crop in ([0, 0, 200, 150], [100, 0, 200, 150], [20, 20, 120, 120]):
        assert torch.equal(
            amg_utils.is_box_near_crop_edge(boxes, crop, [0, 0, 200, 150]),
            official_amg.is_box_near_crop_edge(boxes, crop, [0, 0, 200, 150]),
        )
        assert torch.equal(amg_utils.uncrop_boxes_xyxy(boxes, crop), official_amg.uncrop_boxes_xyxy(boxes, crop))
    assert torch.equal(
        amg_utils.uncrop_masks(masks, [4, 6, 57, 43], 50, 70), official_amg.uncrop_masks(masks, [4, 6, 57, 43], 50, 70)
    )


def test_grids_and_crops_match_official():
    for n, layers, scale in ((32, 0, 1), (5, 2, 2), (16, 1, 1), (9, 3, 2)):
        ours = amg_utils.build_all_layer_point_grids(n, layers, scale)
        ref = official_amg.build_all_layer_point_grids(n, layers, scale)
        assert len(ours) == len(ref) and all(np.array_equal(a, b) for a, b in zip(ours, ref))
    for size in ((300, 400), (1080, 1920), (77, 51)):
        for layers in (0, 1, 2):
            for overlap in (512 / 1500, 0.0, 0.5):
                ours = amg_utils.generate_crop_boxes(size, layers, overlap)
                assert ours == official_amg.generate_crop_boxes(size, layers, overlap)


def test_small_regions_match_official():
    for seed in range(4):
        mask = random_masks(seed, count=1, size=(60, 80))[0].numpy()
        for mode in ("holes", "islands"):
            for area in (5, 30, 400, 10_000):
                ours, changed = amg_utils.remove_small_regions(mask, area, mode)
                ref, ref_changed = official_amg.remove_small_regions(mask, area, mode)
                assert changed == ref_changed and np.array_equal(ours, ref), (seed, mode, area)


def test_mask_data():
    data = amg_utils.MaskData(a=torch.arange(4), b=np.arange(4) * 2, c=list("wxyz"))
    data.filter(torch.tensor([True, False, True, True]))
    assert data["a"].tolist() == [0, 2, 3] and data["b"].tolist() == [0, 4, 6] and data["c"] == ["w", "y", "z"]
    data.filter(torch.tensor([2, 0]))  # indices reorder
    assert data["a"].tolist() == [3, 0] and data["c"] == ["z", "w"] and len(data) == 2
    data.cat(amg_utils.MaskData(a=torch.tensor([9]), b=np.array([1]), c=["q"]))
    assert data["a"].tolist() == [3, 0, 9] and data["b"].tolist() == [6, 0, 1] and data["c"] == ["z", "w", "q"]
    data.to_numpy()
    assert isinstance(data["a"], np.ndarray)
    with pytest.raises(TypeError):
        data["d"] = 3


def test_pi_models_are_refused():
    import finesam

    spec = finesam.REGISTRY["pi_vit_b"].with_encoder(depth=1, global_attn_indexes=(0,))
    with pytest.raises(ValueError, match="trained on boxes"):
        AutomaticMaskGenerator(finesam.load(spec, random_weights=True))


@pytest.mark.parametrize("shape", [(5, 37, 41), (2, 3, 16, 9), (0, 8, 8), (4, 1, 1)])
def test_count_true_counts_every_mask(shape):
    generator = torch.Generator().manual_seed(len(shape))
    masks = torch.rand(shape, generator=generator) > 0.4
    counts = amg_utils.count_true(masks)
    assert counts.dtype == torch.int64 and counts.shape == shape[:-2]
    assert torch.equal(counts, masks.sum(dim=(-1, -2)))
    transposed = masks.transpose(-1, -2)  # not contiguous
    assert torch.equal(amg_utils.count_true(transposed), counts)
