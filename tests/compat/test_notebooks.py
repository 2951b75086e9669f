"""The official notebooks' and demos' code, run unchanged against segment_anything /
segment_anything_hq and against finesam.compat (the one import changed), on the same seeded
official-format files: the outputs agree (logits within 2e-3; masks, records and files equal)."""

from __future__ import annotations

import csv
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import data_path
from official_files import hq_vit_b_file, hq_vit_tiny_file, official_packages, small_sam_file
from parity import LOGIT_TOL, MASK_AGREEMENT

official_packages()
import segment_anything  # noqa: E402
import segment_anything_hq  # noqa: E402
from segment_anything.utils import amg as official_amg  # noqa: E402
from segment_anything.utils import onnx as official_onnx  # noqa: E402
from segment_anything.utils import transforms as official_transforms  # noqa: E402

from finesam.compat import segment_anything as compat_sam  # noqa: E402
from finesam.compat import segment_anything_hq as compat_hq  # noqa: E402
from finesam.compat.segment_anything.utils import amg as compat_amg  # noqa: E402
from finesam.compat.segment_anything.utils import onnx as compat_onnx  # noqa: E402
from finesam.compat.segment_anything.utils import transforms as compat_transforms  # noqa: E402

OFFICIAL = SimpleNamespace(sam=segment_anything, hq=segment_anything_hq, amg=official_amg, onnx=official_onnx,
                           transforms=official_transforms)
COMPAT = SimpleNamespace(sam=compat_sam, hq=compat_hq, amg=compat_amg, onnx=compat_onnx, transforms=compat_transforms)


def read_rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(data_path("ecssd", "im", name)).convert("RGB"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return read_rgb("0001.jpg")


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    return small_sam_file(tmp_path_factory.mktemp("sam"))


def assert_same(name: str, ours, official) -> None:
    """Arrays/tensors: integer ones equal; masks equal but for pixels whose logit lies within
    float noise of the threshold (MASK_AGREEMENT); float ones within the logit tolerance."""
    ours, official = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v) for v in (ours, official))
    assert ours.shape == official.shape, f"{name}: {ours.shape} vs {official.shape}"
    assert ours.dtype.kind == official.dtype.kind, f"{name}: {ours.dtype} vs {official.dtype}"
    if official.dtype.kind == "b":
        assert np.mean(ours == official) >= MASK_AGREEMENT, f"{name}: {np.mean(ours != official)} of the pixels differ"
    elif official.dtype.kind in "iu":
        assert np.array_equal(ours, official), f"{name}: {np.mean(ours != official)} of the values differ"
    else:
        assert np.abs(ours - official).max() <= LOGIT_TOL, f"{name}: {np.abs(ours - official).max()}"


def assert_all_same(ours: dict, official: dict) -> None:
    assert ours.keys() == official.keys()
    for key in official:
        assert_same(key, ours[key], official[key])


# --- predictor_example.ipynb -------------------------------------------------------------------
def predictor_notebook(pkg, sam, image: np.ndarray) -> dict:
    """The predictor notebook's cells (plus cached embeddings and a promptless call)."""
    out = {}
    predictor = pkg.sam.SamPredictor(sam)
    predictor.set_image(image)
    h, w = image.shape[:2]
    input_point, input_label = np.array([[0.5 * w, 0.45 * h]]), np.array([1])
    masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=input_label, multimask_output=True)
    out.update(point_masks=masks, point_scores=scores, point_logits=logits)
    mask_input = logits[np.argmax(scores), :, :]
    input_point = np.array([[0.5 * w, 0.45 * h], [0.3 * w, 0.6 * h]])
    masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=np.array([1, 1]),
                                              mask_input=mask_input[None, :, :], multimask_output=False)
    out.update(chained_masks=masks, chained_logits=logits)
    input_box = np.array([0.2 * w, 0.1 * h, 0.8 * w, 0.9 * h])
    masks, _, logits = predictor.predict(point_coords=None, point_labels=None, box=input_box[None, :], multimask_output=False)
    out.update(box_masks=masks, box_logits=logits)
    masks, _, _ = predictor.predict(point_coords=np.array([[0.6 * w, 0.5 * h]]), point_labels=np.array([0]),
                                    box=input_box, multimask_output=False)
    out.update(box_point_masks=masks)
    input_boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.5 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.95 * h]])
    transformed_boxes = predictor.transform.apply_boxes_torch(input_boxes, image.shape[:2])
    masks, scores, logits = predictor.predict_torch(point_coords=None, point_labels=None, boxes=transformed_boxes,
                                                    multimask_output=False)
    out.update(batch_masks=masks, batch_scores=scores, batch_logits=logits)
    masks, scores, logits = predictor.predict()  # no prompt at all
    out.update(empty_masks=masks, empty_logits=logits)
    # cached embeddings assigned to a fresh predictor
    cached = pkg.sam.SamPredictor(sam)
    cached.features = predictor.get_image_embedding()
    cached.original_size, cached.input_size, cached.is_image_set = predictor.original_size, predictor.input_size, True
    masks, _, logits = cached.predict(point_coords=input_point, point_labels=np.array([1, 0]), multimask_output=True)
    out.update(cached_masks=masks, cached_logits=logits)
    return out


def test_predictor_notebook(sam_file, image):
    official = predictor_notebook(OFFICIAL, sam_file.official(str(sam_file.path)), image)
    ours = predictor_notebook(COMPAT, sam_file.ours(str(sam_file.path)), image)
    assert ours["empty_masks"].shape == (3, *image.shape[:2])
    assert_all_same(ours, official)


def batched_notebook(pkg, sam, images: list[np.ndarray]) -> dict:
    """The predictor notebook's last part: sam(batched_input) without any no_grad of its own."""
    resize_transform = pkg.transforms.ResizeLongestSide(sam.image_encoder.img_size)

    def prepare_image(image, transform, device):
        image = transform.apply_image(image)
        image = torch.as_tensor(image, device=device)
        return image.permute(2, 0, 1).contiguous()

    (h0, w0), (h1, w1) = images[0].shape[:2], images[1].shape[:2]
    boxes0 = torch.tensor([[0.1 * w0, 0.1 * h0, 0.6 * w0, 0.7 * h0], [0.3 * w0, 0.2 * h0, 0.9 * w0, 0.9 * h0]])
    boxes1 = torch.tensor([[0.2 * w1, 0.2 * h1, 0.8 * w1, 0.8 * h1]])
    batched_input = [
        {"image": prepare_image(images[0], resize_transform, "cpu"),
         "boxes": resize_transform.apply_boxes_torch(boxes0, images[0].shape[:2]), "original_size": images[0].shape[:2]},
        {"image": prepare_image(images[1], resize_transform, "cpu"),
         "boxes": resize_transform.apply_boxes_torch(boxes1, images[1].shape[:2]), "original_size": images[1].shape[:2]},
    ]
    batched_output = sam(batched_input, multimask_output=False)
    out = {}
    for index, record in enumerate(batched_output):
        out[f"masks{index}"] = record["masks"].cpu().numpy()
        out[f"iou{index}"] = record["iou_predictions"].cpu().numpy()  # raises if the outputs required grad
        out[f"low_res{index}"] = record["low_res_logits"].cpu().numpy()
    return out


def test_batched_forward_notebook(sam_file, image):
    images = [image, read_rgb("0042.jpg")[:, :200]]
    official = batched_notebook(OFFICIAL, sam_file.official(str(sam_file.path)), images)
    ours = batched_notebook(COMPAT, sam_file.ours(str(sam_file.path)), images)
    assert_all_same(ours, official)


# --- automatic_mask_generator_example.ipynb and scripts/amg.py -----------------------------------
# A 3x3 grid on the image, two points per crop of layer 1, masks touching inner crop edges dropped,
# small regions removed; no score filter (the official generator raises when no mask survives).
AMG_KWARGS = dict(points_per_side=None, point_grids=[official_amg.build_point_grid(3), np.array([[0.25, 0.3], [0.7, 0.75]])],
                  pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.7, crop_n_layers=1,
                  crop_nms_thresh=0.5, min_mask_region_area=100)


def write_masks_to_folder(masks: list[dict], path: str) -> None:
    """scripts/amg.py's writer: one PNG per mask and metadata.csv."""
    header = "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"  # noqa
    metadata = [header]
    for i, mask_data in enumerate(masks):
        mask = mask_data["segmentation"]
        Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(path, f"{i}.png"))
        mask_metadata = [
            str(i), str(mask_data["area"]), *[str(x) for x in mask_data["bbox"]],
            *[str(x) for x in mask_data["point_coords"][0]], str(mask_data["predicted_iou"]),
            str(mask_data["stability_score"]), *[str(x) for x in mask_data["crop_box"]],
        ]
        metadata.append(",".join(mask_metadata))
    with open(os.path.join(path, "metadata.csv"), "w") as f:
        f.write("\n".join(metadata))


def amg_script(pkg, sam, inputs: list[str], output: str, output_mode: str) -> None:
    """scripts/amg.py's main loop over a folder of images."""
    generator = pkg.sam.SamAutomaticMaskGenerator(sam, output_mode=output_mode, **AMG_KWARGS)
    os.makedirs(output, exist_ok=True)
    for t in inputs:
        image = np.asarray(Image.open(t).convert("RGB"))
        masks = generator.generate(image)
        base = os.path.splitext(os.path.basename(t))[0]
        save_base = os.path.join(output, base)
        if output_mode == "binary_mask":
            os.makedirs(save_base, exist_ok=False)
            write_masks_to_folder(masks, save_base)
        else:
            with open(save_base + ".json", "w") as f:
                json.dump(masks, f)


FLOAT_COLUMNS = ("predicted_iou", "stability_score")


def assert_same_files(ours: str, official: str) -> int:
    """The same files; PNG masks byte-equal, metadata equal (score columns within 1e-4)."""
    names = sorted(os.listdir(official))
    assert sorted(os.listdir(ours)) == names
    for name in names:
        mine, theirs = os.path.join(ours, name), os.path.join(official, name)
        if os.path.isdir(theirs):
            assert_same_files(mine, theirs)
        elif name.endswith(".csv"):
            rows, ref_rows = (list(csv.DictReader(open(p))) for p in (mine, theirs))
            assert len(rows) == len(ref_rows)
            for row, ref in zip(rows, ref_rows):
                for key in ref:
                    if key in FLOAT_COLUMNS:
                        assert abs(float(row[key]) - float(ref[key])) <= 1e-4, (name, key)
                    else:  # ints stay ints and floats floats, as the official writes them
                        assert row[key] == ref[key], (name, key, row[key], ref[key])
        elif name.endswith(".json"):
            records, ref_records = (json.load(open(p)) for p in (mine, theirs))
            assert len(records) == len(ref_records)
            for record, ref in zip(records, ref_records):
                assert record["segmentation"] == ref["segmentation"]
                for key in ref:
                    if key in FLOAT_COLUMNS:
                        assert abs(record[key] - ref[key]) <= 1e-4
                    elif key != "point_coords":
                        assert record[key] == ref[key] and type(record[key]) is type(ref[key]), key
                assert np.allclose(record["point_coords"], ref["point_coords"], atol=1e-6)
        else:
            with open(mine, "rb") as a, open(theirs, "rb") as b:
                assert a.read() == b.read(), name
    return len(names)


@pytest.mark.parametrize("output_mode", ["binary_mask", "coco_rle"])
def test_amg_script_with_crops(sam_file, tmp_path, output_mode):
    # One image (the official generator raises on an image where no mask survives, with crops)
    inputs = [str(data_path("ecssd", "im", "0001.jpg"))]
    amg_script(OFFICIAL, sam_file.official(str(sam_file.path)), inputs, str(tmp_path / "official"), output_mode)
    amg_script(COMPAT, sam_file.ours(str(sam_file.path)), inputs, str(tmp_path / "ours"), output_mode)
    assert assert_same_files(str(tmp_path / "ours"), str(tmp_path / "official")) == 1
    if output_mode == "coco_rle":
        assert json.load(open(tmp_path / "ours" / "0001.json")), "no mask to compare"


# --- onnx_model_example.ipynb -------------------------------------------------------------------
def onnx_notebook(pkg, sam, image: np.ndarray, folder) -> dict:
    """Export with return_single_mask=True, then the notebook's three queries in onnxruntime:
    one point, two points chained with the previous low-res logits, a box with a point."""
    import onnxruntime
    import warnings

    onnx_model = pkg.onnx.SamOnnxModel(sam, return_single_mask=True)
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    mask_input_size = [4 * x for x in embed_size]
    dummy_inputs = {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, dtype=torch.float),
        "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, *mask_input_size, dtype=torch.float),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    output_names = ["masks", "iou_predictions", "low_res_masks"]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "sam_onnx_example.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            onnx_model, tuple(dummy_inputs.values()), path, export_params=True, verbose=False, opset_version=17,
            do_constant_folding=True, input_names=list(dummy_inputs.keys()), output_names=output_names,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}, dynamo=False,
        )
    ort_session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    predictor = pkg.sam.SamPredictor(sam)
    predictor.set_image(image)
    image_embedding = predictor.get_image_embedding().cpu().numpy()
    h, w = image.shape[:2]

    def run(points, labels, mask_input, has_mask):
        coords = predictor.transform.apply_coords(points, image.shape[:2]).astype(np.float32)
        ort_inputs = {
            "image_embeddings": image_embedding, "point_coords": coords[None, :, :],
            "point_labels": labels[None, :].astype(np.float32), "mask_input": mask_input,
            "has_mask_input": np.array([has_mask], dtype=np.float32), "orig_im_size": np.array(image.shape[:2], dtype=np.float32),
        }
        masks, scores, low_res_logits = ort_session.run(None, ort_inputs)
        return masks > predictor.model.mask_threshold, scores, low_res_logits

    out = {}
    input_point, input_label = np.array([[0.5 * w, 0.45 * h]]), np.array([1])
    onnx_coord = np.concatenate([input_point, np.array([[0.0, 0.0]])], axis=0)
    onnx_label = np.concatenate([input_label, np.array([-1])], axis=0)
    masks, scores, low_res_logits = run(onnx_coord, onnx_label, np.zeros((1, 1, 256, 256), dtype=np.float32), 0)
    out.update(one_masks=masks, one_scores=scores, one_low=low_res_logits)
    input_point = np.array([[0.5 * w, 0.45 * h], [0.3 * w, 0.6 * h]])
    onnx_coord = np.concatenate([input_point, np.array([[0.0, 0.0]])], axis=0)
    onnx_label = np.concatenate([np.array([1, 1]), np.array([-1])], axis=0)
    masks, scores, low_res_logits = run(onnx_coord, onnx_label, low_res_logits, 1)  # mask_input chaining
    out.update(chained_masks=masks, chained_scores=scores, chained_low=low_res_logits)
    input_box = np.array([0.2 * w, 0.1 * h, 0.8 * w, 0.9 * h])
    onnx_coord = np.concatenate([np.array([[0.6 * w, 0.5 * h]]), input_box.reshape(2, 2)], axis=0)
    onnx_label = np.concatenate([np.array([0]), np.array([2, 3])], axis=0)
    masks, _, low_res_logits = run(onnx_coord, onnx_label, np.zeros((1, 1, 256, 256), dtype=np.float32), 0)
    out.update(box_masks=masks, box_low=low_res_logits)
    return out


def test_onnx_notebook(sam_file, image, tmp_path):
    pytest.importorskip("onnxruntime")
    official = onnx_notebook(OFFICIAL, sam_file.official(str(sam_file.path)), image, str(tmp_path / "a"))
    ours = onnx_notebook(COMPAT, sam_file.ours(str(sam_file.path)), image, str(tmp_path / "b"))
    assert ours["one_masks"].shape == (1, 1, *image.shape[:2])
    assert_all_same(ours, official)


# --- sam-hq demo/demo_hqsam.py and demo_hqsam_light.py -------------------------------------------
def hq_demo(pkg, sam, image: np.ndarray) -> dict:
    """The HQ demos' prompts (a box, points, several boxes at once) in both hq_token_only modes,
    plus cached features (embedding and interm_features) assigned to a fresh predictor."""
    sam.eval()  # as demo_hqsam_light (the official TinyViT's attention biases need it)
    predictor = pkg.hq.SamPredictor(sam)
    predictor.set_image(image)
    h, w = image.shape[:2]
    out = {}
    for hq_token_only in (False, True):
        input_box = np.array([[0.2 * w, 0.1 * h, 0.8 * w, 0.9 * h]])
        masks, scores, logits = predictor.predict(point_coords=None, point_labels=None, box=input_box,
                                                  multimask_output=False, hq_token_only=hq_token_only)
        out.update({f"box{hq_token_only}": masks, f"box_scores{hq_token_only}": scores, f"box_logits{hq_token_only}": logits})
        input_point, input_label = np.array([[0.5 * w, 0.45 * h], [0.3 * w, 0.6 * h]]), np.ones(2)
        masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=input_label, box=None,
                                                  multimask_output=True, hq_token_only=hq_token_only)
        out.update({f"points{hq_token_only}": masks, f"points_logits{hq_token_only}": logits})
        input_boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.5 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.95 * h]])
        transformed_box = predictor.transform.apply_boxes_torch(input_boxes, image.shape[:2])
        masks, scores, logits = predictor.predict_torch(point_coords=None, point_labels=None, boxes=transformed_box,
                                                        multimask_output=False, hq_token_only=hq_token_only)
        out.update({f"boxes{hq_token_only}": masks, f"boxes_logits{hq_token_only}": logits})
    cached = pkg.hq.SamPredictor(sam)
    cached.features, cached.interm_features = predictor.features, predictor.interm_features
    cached.original_size, cached.input_size, cached.is_image_set = predictor.original_size, predictor.input_size, True
    masks, _, logits = cached.predict(box=np.array([0.2 * w, 0.1 * h, 0.8 * w, 0.9 * h]), multimask_output=False)
    out.update(cached=masks, cached_logits=logits)
    return out


@pytest.mark.parametrize("make_file", [hq_vit_tiny_file, hq_vit_b_file], ids=["demo_hqsam_light", "demo_hqsam"])
def test_hq_demos(make_file, image, tmp_path):
    file = make_file(tmp_path)
    official = hq_demo(OFFICIAL, file.official(str(file.path)), image)
    ours = hq_demo(COMPAT, file.ours(str(file.path)), image)
    assert_all_same(ours, official)
