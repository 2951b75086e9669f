"""``--layout anylabeling`` driven by the annotation tools' own model classes, each in its own
venv (tests/onnx/anylabeling_driver.py through a subprocess), against the official SAM / HQ-SAM
ONNX decoders (``SamOnnxModel`` with ``return_single_mask=True`` / the HQ export's defaults) on
the same seeded weights, fed the same points by the same tool code.

AnyLabeling 0.4.43 (``make test`` builds ``.venv-anylabeling``): mobile_sam and a two-block ViT-B
SAM (the graphs do not depend on the depth; a full ViT-B adds minutes on this machine).
X-AnyLabeling (``sam_hq`` contract): hq_vit_tiny, through its own ``sam_hq`` module where its
venv runs (``.venv-xanylabeling``), else through that module's pre- and post-processing
replayed here from its source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import finesam
from finesam.registry import REGISTRY

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from finesam.onnx import export_onnx  # noqa: E402

from conftest import REPO, avx2_only_tool, randomize_, save_state  # noqa: E402

LOGITS_TOL = 1e-3
DRIVER = Path(__file__).with_name("anylabeling_driver.py")
ANYLABELING = ("anylabeling.services.auto_labeling.sam_onnx", "FINESAM_ANYLABELING_PYTHON", ".venv-anylabeling")
X_ANYLABELING = ("anylabeling.services.auto_labeling.sam_hq", "FINESAM_X_ANYLABELING_PYTHON", ".venv-xanylabeling")


def tool_python(tool) -> Path | None:
    _, variable, venv = tool
    python = Path(os.environ.get(variable, REPO / venv / "bin" / "python"))
    return python if python.exists() else None


def run_tool(tool, encoder: Path, decoder: Path, image: Path, marks: Path, out: Path, features: Path | None = None,
             environment: dict[str, str] | None = None) -> dict:
    """The tool's own model class on ``image`` with ``marks`` (in ``environment``: default ours)."""
    python = tool_python(tool)
    command = [str(python), str(DRIVER), "--module", tool[0], "--encoder", str(encoder), "--decoder", str(decoder),
               "--image", str(image), "--marks", str(marks), "--out", str(out)]
    if features is not None:
        command += ["--features", str(features)]
    env = {**(os.environ if environment is None else environment), "QT_QPA_PLATFORM": "offscreen"}
    env.pop("PYTHONPATH", None)  # the tool's venv, not finesam's sources
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as result:
        return dict(result)


def tool_marks(image: np.ndarray) -> list[list[dict]]:
    """A box and a click in the photo's pixels, as the tools' marks."""
    height, width = image.shape[:2]
    box = [{"type": "rectangle", "data": [int(0.15 * width), int(0.2 * height), int(0.8 * width), int(0.85 * height)]}]
    click = [{"type": "point", "data": [int(0.5 * width), int(0.45 * height)], "label": 1}]
    return [box, click]


def export_official_decoder(official, path: Path, hq: bool) -> None:
    """The official export of the decoder (as its scripts/export_onnx_model.py: opset 17,
    dynamic point count); HQ-SAM's with its defaults (hq_token_only=False, multimask_output=False).
    The dummy ``orig_im_size`` is the tools' canvas: SAM's trace keeps its pre-padding crop as
    constants (``int()`` of a tensor in ``mask_postprocessing``)."""
    names = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    dummy = [torch.randn(1, 256, 64, 64), torch.randint(0, 1024, (1, 5, 2), dtype=torch.float),
             torch.randint(0, 4, (1, 5), dtype=torch.float), torch.randn(1, 1, 256, 256), torch.tensor([1.0]),
             torch.tensor([684.0, 1024.0])]
    if hq:
        from segment_anything_hq.utils.onnx import SamOnnxModel

        graph = SamOnnxModel(official, hq_token_only=False, multimask_output=False)
        channels = official.mask_decoder.compress_vit_feat[0].in_channels
        names.insert(1, "interm_embeddings")
        dummy.insert(1, torch.randn(1, 1, 64, 64, channels))
    else:
        from segment_anything.utils.onnx import SamOnnxModel

        graph = SamOnnxModel(official, return_single_mask=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(dummy), str(path), input_names=names,
                          output_names=["masks", "iou_predictions", "low_res_masks"],
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                          opset_version=17, do_constant_folding=True, dynamo=False)


def official_features(official, canvas: np.ndarray, hq: bool) -> dict[str, np.ndarray]:
    """The official encoder on the canvas the tool fed ours (its own preprocess: normalise, pad)."""
    official.eval()  # torch.onnx.export of the official wrapper left it in train mode (TinyViT's batch norms)
    with torch.no_grad():
        image = official.preprocess(torch.from_numpy(np.ascontiguousarray(canvas)).float().permute(2, 0, 1)[None])
        if hq:
            embedding, interm = official.image_encoder(image)
            return {"image_embeddings": embedding.numpy(), "interm_embeddings": torch.stack(interm).numpy()}
        embedding = official.image_encoder(image)
        if isinstance(embedding, tuple):  # the HQ package's TinyViT (official MobileSAM) adds its early features
            embedding = embedding[0]
        return {"image_embedding": embedding.numpy()}


def official_model(case: str):
    if case == "mobile_sam":
        from segment_anything_hq.build_sam_baseline import sam_model_registry_baseline

        torch.manual_seed(2)
        return randomize_(sam_model_registry_baseline["vit_tiny"](), 2).eval(), "mobile_sam"
    if case == "sam_vit_b":
        from segment_anything.build_sam import _build_sam

        torch.manual_seed(3)
        official = randomize_(_build_sam(768, 2, 12, [1]), 3).eval()
        return official, REGISTRY["sam_vit_b"].with_encoder(depth=2, global_attn_indexes=(1,))
    from segment_anything_hq.build_sam import build_sam_vit_t

    torch.manual_seed(4)
    return randomize_(build_sam_vit_t(), 4).eval(), "hq_vit_tiny"


def photo(tmp_path: Path, real_image: np.ndarray) -> Path:
    path = tmp_path / "photo.npy"
    np.save(path, real_image)
    return path


@pytest.mark.parametrize("case", ["mobile_sam", "sam_vit_b"])
def test_anylabeling_class_gives_the_official_masks(case, tmp_path, real_image):
    if tool_python(ANYLABELING) is None:
        pytest.skip("AnyLabeling's venv .venv-anylabeling is missing: `make anylabeling-venvs` (make test builds it)")
    official, spec = official_model(case)
    model = finesam.load(spec, save_state(official, tmp_path / "weights.pth"))
    files = export_onnx(model, tmp_path / "export", model_name=case, layout="anylabeling")
    config = files.config.read_text()
    assert "type: \"segment_anything\"" in config and "encoder_model_path: \"encoder.onnx\"" in config
    export_official_decoder(official, tmp_path / "official_decoder.onnx", hq=False)
    marks = tmp_path / "marks.json"
    marks.write_text(json.dumps(tool_marks(real_image)))
    image = photo(tmp_path, real_image)

    ours = run_tool(ANYLABELING, files.encoder, files.decoder, image, marks, tmp_path / "ours.npz")
    canvas = ours["canvas"]
    assert canvas.shape == (684, 1024, 3) and canvas.dtype == np.float32  # as the tool feeds a float encoder
    features = official_features(official, canvas, hq=False)
    assert np.abs(ours["features_image_embedding"] - features["image_embedding"]).max() <= LOGITS_TOL
    np.savez(tmp_path / "official_features.npz", **features)
    expected = run_tool(ANYLABELING, files.encoder, tmp_path / "official_decoder.onnx", image, marks,
                        tmp_path / "official.npz", features=tmp_path / "official_features.npz")
    assert_same_masks(ours, expected, real_image)
    if case == "mobile_sam":  # the int8 graphs of the same layout run in the tool too
        assert_int8_graphs_agree(model, ours, image, marks, tmp_path)


def assert_int8_graphs_agree(model, ours: dict, image: Path, marks: Path, tmp_path: Path) -> None:
    """The layout's int8 graphs in AnyLabeling: masks of IoU >= 0.95 with the float32 graphs'
    (the per-mask floor of test_onnx_export.INT8_LOWEST_IOU), on this CPU's kernels and, where
    tools/avx2_only.py runs, on onnxruntime's AVX2 ones. The tool opens the graphs without
    onnxruntime's exact-int8 option: their uint8 weights keep the products exact without it."""
    import onnx

    quantized = export_onnx(model, tmp_path / "int8", model_name="mobile_sam", layout="anylabeling", quantize="int8")
    graph = onnx.load(str(quantized.encoder)).graph
    weights = {tensor.name: tensor.data_type for tensor in graph.initializer}
    integer = [node for node in graph.node if node.op_type == "MatMulInteger"]
    assert integer and all(weights[node.input[1]] == onnx.TensorProto.UINT8 for node in integer)
    environments = {"this CPU": None}
    try:
        avx2_only = avx2_only_tool()
        environments["AVX2 kernels"] = avx2_only.avx2_only_environment(avx2_only.build_preload(tmp_path / "build"))
    except pytest.skip.Exception as skipped:
        print(f"AnyLabeling int8 on AVX2 kernels not run: {skipped}")
    for label, environment in environments.items():
        got = run_tool(ANYLABELING, quantized.encoder, quantized.decoder, image, marks, tmp_path / "int8.npz", environment=environment)
        for index in (0, 1):
            one, other = ours[f"masks_{index}"] > 0, got[f"masks_{index}"] > 0
            assert one.shape == other.shape and 0 < one.sum() < one.size
            iou = (one & other).sum() / (one | other).sum()
            print(f"AnyLabeling int8, {label}, prompt {index}: IoU {iou:.4f} with float32")
            assert iou >= 0.95, f"{label}, prompt {index}: int8 mask IoU {iou:.4f} with float32"


def assert_same_masks(ours: dict, expected: dict, image: np.ndarray) -> None:
    box, click = ours["masks_0"], ours["masks_1"]
    assert box.shape == click.shape == (1, 1, *image.shape[:2])  # the one mask the tools read: masks[0][0]
    for index in (0, 1):
        difference = np.abs(ours[f"masks_{index}"] - expected[f"masks_{index}"]).max()
        assert difference <= LOGITS_TOL, f"prompt {index}: max |ours - official| = {difference}"
    assert np.abs(box - click).max() > 100 * LOGITS_TOL  # the prompts matter: the comparison is not vacuous


class ReplayedSamHq:
    """X-AnyLabeling 4.2.1's ``sam_hq.SegmentAnythingONNX`` pre- and post-processing, replayed
    from its source for machines where its module (PyQt6 and its app) cannot be imported:
    the affine warp into the 684x1024 canvas fed as float32, ``interm_embeddings`` stacked
    from the encoder's outputs after the first, the padding point, the coordinates mapped by
    the same matrix, the masks warped back with its inverse."""

    input_size = (684, 1024)

    def __init__(self, encoder: Path, decoder: Path) -> None:
        self.encoder = onnxruntime.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
        self.decoder = onnxruntime.InferenceSession(str(decoder), providers=["CPUExecutionProvider"])

    def encode(self, image: np.ndarray) -> dict:
        import cv2

        scale = min(self.input_size[1] / image.shape[1], self.input_size[0] / image.shape[0])
        matrix = np.array([[scale, 0, 0], [0, scale, 0], [0, 0, 1]])
        canvas = cv2.warpAffine(image, matrix[:2], (self.input_size[1], self.input_size[0]), flags=cv2.INTER_LINEAR)
        outputs = self.encoder.run(None, {self.encoder.get_inputs()[0].name: canvas.astype(np.float32)})
        return {"image_embeddings": outputs[0], "interm_embeddings": np.stack(outputs[1:]), "canvas": canvas.astype(np.float32),
                "original_size": image.shape[:2], "transform_matrix": matrix}

    def predict_masks(self, embedding: dict, marks: list[dict]) -> np.ndarray:
        import cv2

        points, labels = [], []
        for mark in marks:
            if mark["type"] == "point":
                points.append(mark["data"])
                labels.append(mark["label"])
            else:
                points += [mark["data"][:2], mark["data"][2:]]
                labels += [2, 3]
        coords = np.concatenate([np.array(points, float), [[0.0, 0.0]]])[None]
        labels = np.concatenate([np.array(labels), [-1]])[None].astype(np.float32)
        # apply_coords from the canvas to the 1024 frame: the canvas is already there (scale 1).
        coords = np.concatenate([coords, np.ones((1, coords.shape[1], 1))], axis=2) @ embedding["transform_matrix"].T
        masks, _, _ = self.decoder.run(None, {
            "image_embeddings": embedding["image_embeddings"], "interm_embeddings": embedding["interm_embeddings"],
            "point_coords": coords[:, :, :2].astype(np.float32), "point_labels": labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(self.input_size, np.float32),
        })
        inverse = np.linalg.inv(embedding["transform_matrix"])[:2]
        height, width = embedding["original_size"]
        return np.array([[cv2.warpAffine(mask, inverse, (width, height), flags=cv2.INTER_LINEAR) for mask in batch]
                         for batch in masks])


def replay_tool(encoder: Path, decoder: Path, image: np.ndarray, prompts: list, features: dict | None = None) -> dict:
    pytest.importorskip("cv2", reason="the replay of X-AnyLabeling's warps needs OpenCV")
    model = ReplayedSamHq(encoder, decoder)
    embedding = model.encode(image)
    embedding.update(features or {})
    results = {"canvas": embedding["canvas"], "features_image_embeddings": embedding["image_embeddings"],
               "features_interm_embeddings": embedding["interm_embeddings"]}
    for index, marks in enumerate(prompts):
        results[f"masks_{index}"] = model.predict_masks(embedding, marks)
    return results


def test_x_anylabeling_sam_hq_gives_the_official_hq_masks(tmp_path, real_image):
    official, spec = official_model("hq_vit_tiny")
    model = finesam.load(spec, save_state(official, tmp_path / "weights.pth"))
    files = export_onnx(model, tmp_path / "export", model_name="hq_vit_tiny", layout="anylabeling")
    assert "type: \"sam_hq\"" in files.config.read_text()
    decoder_inputs = [entry.name for entry in onnxruntime.InferenceSession(
        str(files.decoder), providers=["CPUExecutionProvider"]).get_inputs()]
    assert decoder_inputs == ["image_embeddings", "interm_embeddings", "point_coords", "point_labels", "mask_input",
                              "has_mask_input", "orig_im_size"]  # X-AnyLabeling's sam_hq names, in its order
    official_decoder = tmp_path / "official_decoder.onnx"
    export_official_decoder(official, official_decoder, hq=True)
    prompts = tool_marks(real_image)
    if tool_python(X_ANYLABELING) is not None:
        marks = tmp_path / "marks.json"
        marks.write_text(json.dumps(prompts))
        image = photo(tmp_path, real_image)
        ours = run_tool(X_ANYLABELING, files.encoder, files.decoder, image, marks, tmp_path / "ours.npz")
    else:
        ours = replay_tool(files.encoder, files.decoder, real_image, prompts)
    features = official_features(official, ours["canvas"], hq=True)
    for key, value in features.items():
        assert ours[f"features_{key}"].shape == value.shape, key
        assert np.abs(ours[f"features_{key}"] - value).max() <= LOGITS_TOL, key
    if tool_python(X_ANYLABELING) is not None:
        np.savez(tmp_path / "official_features.npz", **features)
        expected = run_tool(X_ANYLABELING, files.encoder, official_decoder, image, marks, tmp_path / "official.npz",
                            features=tmp_path / "official_features.npz")
    else:
        expected = replay_tool(files.encoder, official_decoder, real_image, prompts, features)
    assert_same_masks(ours, expected, real_image)
