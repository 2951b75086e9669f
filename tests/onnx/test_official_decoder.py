"""SAM decoder graphs against the official ONNX export (``segment_anything.utils.onnx.SamOnnxModel``
traced with ``torch.onnx.export``, as the official ``scripts/export_onnx_model.py`` does) on the
same seeded official-format weights, both run with onnxruntime: the default graph returns the
official 4 masks, ``--single-mask`` the official ``return_single_mask=True`` choice."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import finesam
from finesam import cli
from finesam.errors import InvalidInputError
from finesam.registry import REGISTRY

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
segment_anything = pytest.importorskip("segment_anything")

from finesam.onnx import OnnxPredictor  # noqa: E402

from conftest import randomize_, save_state  # noqa: E402

LOGITS_TOL = 1e-3
OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


def official_sam(seed: int = 5):
    """A one-block ViT-B SAM (the decoder graphs do not depend on the encoder's depth)."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(seed)
    return randomize_(_build_sam(768, 1, 12, [0]), seed).eval()


def export_official(model, path, return_single_mask: bool, image_size: tuple[int, int]):
    """The official export of the decoder (its script's inputs, names and dynamic axes). Its
    trace keeps the pre-padding crop of the dummy ``orig_im_size`` as constants (``int()`` of a
    tensor in ``mask_postprocessing``): the dummy is the test image's size, where it is right."""
    from segment_anything.utils.onnx import SamOnnxModel

    graph = SamOnnxModel(model, return_single_mask=return_single_mask)
    dummy = (
        torch.randn(1, 256, 64, 64), torch.randint(0, 1024, (1, 5, 2), dtype=torch.float),
        torch.randint(0, 4, (1, 5), dtype=torch.float), torch.randn(1, 1, 256, 256), torch.tensor([1.0]),
        torch.tensor(image_size, dtype=torch.float),
    )
    names = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the official module's tracer warnings
        torch.onnx.export(graph, dummy, str(path), input_names=names, output_names=list(OUTPUTS),
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, real_image):
    folder = tmp_path_factory.mktemp("official_decoder")
    official = official_sam()
    checkpoint = save_state(official, folder / "sam.pth")
    spec = REGISTRY["sam_vit_b"].with_encoder(depth=1, global_attn_indexes=(0,))
    model = finesam.load(spec, checkpoint)
    from finesam.onnx import export_onnx

    export_onnx(model, folder / "all", model_name="sam_b_small")
    export_onnx(model, folder / "single", model_name="sam_b_small", single_mask=True)
    sessions = {
        ("official", False): export_official(official, folder / "official_all.onnx", False, real_image.shape[:2]),
        ("official", True): export_official(official, folder / "official_single.onnx", True, real_image.shape[:2]),
        ("ours", False): onnxruntime.InferenceSession(str(folder / "all" / "decoder.onnx"), providers=["CPUExecutionProvider"]),
        ("ours", True): onnxruntime.InferenceSession(str(folder / "single" / "decoder.onnx"), providers=["CPUExecutionProvider"]),
    }
    official.eval()  # torch.onnx.export of the official wrapper restores its train mode on the model
    predictor = segment_anything.SamPredictor(official)
    predictor.set_image(real_image)
    return dict(folder=folder, model=model, sessions=sessions, predictor=predictor, image=real_image)


def prompts(predictor, image):
    """SAM's ONNX decoder inputs as the official notebook builds them: points (+ the padding
    point when there is no box) and box corners labelled 2, 3, in the 1024 frame."""
    height, width = image.shape[:2]
    one_click = (np.array([[0.5 * width, 0.45 * height]]), np.array([1]), None)
    three_clicks = (np.array([[0.5 * width, 0.45 * height], [0.3 * width, 0.6 * height], [0.1 * width, 0.1 * height]]),
                    np.array([1, 1, 0]), None)
    box = (np.zeros((0, 2)), np.zeros(0), np.array([0.15 * width, 0.2 * height, 0.8 * width, 0.85 * height]))
    cases = {}
    for name, (points, labels, corners) in {"one click": one_click, "three clicks": three_clicks, "box": box}.items():
        if corners is None:
            points, labels = np.concatenate([points, [[0.0, 0.0]]]), np.concatenate([labels, [-1]])
        else:
            points, labels = np.concatenate([points, corners.reshape(2, 2)]), np.concatenate([labels, [2, 3]])
        coords = predictor.transform.apply_coords(points, image.shape[:2])
        cases[name] = {
            "image_embeddings": predictor.get_image_embedding().numpy(),
            "point_coords": coords[None].astype(np.float32), "point_labels": labels[None].astype(np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(image.shape[:2], np.float32),
        }
    return cases


@pytest.mark.parametrize("single_mask", [False, True], ids=["four masks", "single mask"])
def test_decoder_graph_equals_the_official_export(setup, single_mask):
    chosen = []
    for name, inputs in prompts(setup["predictor"], setup["image"]).items():
        expected = setup["sessions"]["official", single_mask].run(None, inputs)
        got = setup["sessions"]["ours", single_mask].run(None, inputs)
        for output, a, b in zip(OUTPUTS, expected, got):
            assert a.shape == b.shape, f"{name} {output}: {a.shape} vs official {b.shape}"
            assert np.abs(a - b).max() <= LOGITS_TOL, f"{name} {output}: {np.abs(a - b).max()}"
        assert expected[0].shape[1] == (1 if single_mask else 4)
        if single_mask:  # which token the official picked: the comparison covers both branches
            four = setup["sessions"]["official", False].run(None, inputs)[2][0]
            chosen.append(int(np.argmin([np.abs(four[k] - expected[2][0, 0]).max() for k in range(4)])))
    if single_mask:  # one click, three clicks, box: best multimask, token 0, best multimask
        assert chosen[0] != 0 and chosen[1] == 0 and chosen[2] != 0, chosen


def test_predictor_on_the_four_mask_graph_gives_both_multimask_modes(setup):
    reference = finesam.SamPredictor(setup["model"])
    reference.set_image(setup["image"])
    predictor = OnnxPredictor(setup["folder"] / "all")
    predictor.set_image(setup["image"])
    box = np.array([60, 60, 300, 250])
    for multimask in (True, False):
        expected = reference.predict(box=box, multimask_output=multimask, return_logits=True)
        got = predictor.predict(box=box, multimask_output=multimask, return_logits=True)
        for a, b in zip(expected, got):
            assert a.shape == b.shape and np.abs(a - b).max() <= LOGITS_TOL
    assert predictor.predict(box=box)[0].shape[0] == 3  # SamPredictor's default


def test_predictor_on_the_single_mask_graph(setup):
    predictor = OnnxPredictor(setup["folder"] / "single")
    predictor.set_image(setup["image"])
    point = np.array([[200, 140]])
    masks, scores, low_res = predictor.predict(point_coords=point, point_labels=np.array([1]), return_logits=True)
    inputs = {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": np.array([[[*setup["predictor"].transform.apply_coords(point.astype(float), setup["image"].shape[:2])[0]],
                                   [0.0, 0.0]]], np.float32),
        "point_labels": np.array([[1.0, -1.0]], np.float32), "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array(setup["image"].shape[:2], np.float32),
    }
    expected = setup["sessions"]["official", True].run(None, inputs)
    assert masks.shape == (1, *setup["image"].shape[:2]) and np.abs(masks - expected[0][0]).max() <= LOGITS_TOL
    with pytest.raises(InvalidInputError, match="single-mask"):
        predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)


@pytest.mark.parametrize("args, fragment", [
    (["--model", "mobile_sam", "--multimask"], "4 masks"),
    (["--model", "hq_vit_tiny", "--single-mask"], "SAM and MobileSAM"),
    (["--model", "pi_vit_b", "--single-mask"], "SAM and MobileSAM"),
])
def test_mask_options_are_refused_where_they_do_not_apply(tmp_path, capsys, args, fragment):
    code = cli.main(["export", "onnx", *args, "--random-weights", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()
