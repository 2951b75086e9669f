"""ONNX export: onnxruntime against torch for SAM, HQ-SAM and Pi-SAM graphs (random weights,
a real image), the exported mask resizing against the torch postprocess, and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import finesam
from finesam import cli
from finesam.errors import CallOrderError, InvalidInputError
from finesam.registry import REGISTRY
from finesam.predict.transforms import preprocess_shape

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from finesam.onnx import export_onnx, read_metadata  # noqa: E402
from finesam.onnx import OnnxPredictor  # noqa: E402

from conftest import randomize_  # noqa: E402

LOGITS_TOL = 1e-3  # the acceptance bound, in logits
BOX = np.array([30, 40, 380, 250])


def max_difference(torch_outputs, onnx_outputs) -> list[float]:
    return [float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()) for a, b in zip(torch_outputs, onnx_outputs)]


def assert_close(torch_outputs, onnx_outputs, what: str) -> None:
    for (a, b), name in zip(zip(torch_outputs, onnx_outputs), ("masks", "scores", "low_res")):
        assert np.shape(a) == np.shape(b), f"{what} {name}: shape {np.shape(a)} vs {np.shape(b)}"
    differences = max_difference(torch_outputs, onnx_outputs)
    assert max(differences) <= LOGITS_TOL, f"{what}: max |torch - onnxruntime| (masks, scores, low_res) = {differences}"


@pytest.fixture(scope="module")
def sam_export(tmp_path_factory):
    """mobile_sam exported by the command line, with seeded random weights."""
    folder = tmp_path_factory.mktemp("mobile_sam_onnx")
    assert cli.main(["export", "onnx", "--model", "mobile_sam", "--random-weights", "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def sam_model():
    return finesam.load("mobile_sam", random_weights=True)  # the weights --random-weights exported


def test_sam_matches_torch(sam_export, sam_model, real_image):
    reference = finesam.SamPredictor(sam_model)
    reference.set_image(real_image)
    predictor = OnnxPredictor(sam_export)
    assert predictor.metadata["model"] == "mobile_sam" and predictor.metadata["random_weights"] is True
    predictor.set_image(real_image)
    assert (predictor.features - reference.features).abs().max() <= LOGITS_TOL
    points, labels = np.array([[200, 150], [40, 30]]), np.array([1, 0])
    for prompts in (dict(box=BOX), dict(point_coords=points, point_labels=labels),
                    dict(point_coords=points[:1], point_labels=labels[:1], box=BOX)):
        expected = reference.predict(**prompts, return_logits=True)
        assert_close(expected, predictor.predict(**prompts, return_logits=True), f"SAM {sorted(prompts)}")
        previous = expected[2][:1]  # refinement with the previous low-res logits
        assert_close(reference.predict(**prompts, mask_input=previous, return_logits=True),
                     predictor.predict(**prompts, mask_input=previous, return_logits=True), f"SAM {sorted(prompts)} + mask")
    previous = reference.predict(box=BOX)[2][:1]  # a mask prompt alone: no points, no padding point
    assert_close(reference.predict(mask_input=previous, return_logits=True),
                 predictor.predict(mask_input=previous, return_logits=True), "SAM mask only")
    boxes = np.array([BOX, [5, 5, 120, 90]])
    assert_close(reference.predict_batch(boxes=boxes, multimask_output=True, return_logits=True),
                 predictor.predict_batch(boxes=boxes, return_logits=True), "SAM batch")
    masks, _, _ = predictor.predict(box=BOX)
    assert masks.dtype == bool and masks.shape == (3, *real_image.shape[:2])


def test_exported_resizing_matches_the_torch_postprocess(sam_export, sam_model):
    """The decoder's orig_im_size path against Sam.postprocess_masks on its own low-res logits,
    for sizes whose rounding is delicate (odd, 1-pixel strips, just under / over 1024)."""
    session = onnxruntime.InferenceSession(str(sam_export / "decoder.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    for size in ((300, 400), (1023, 1025), (7, 3), (1, 2000), (683, 1024), (1365, 2048)):
        masks, _, low_res = session.run(None, {
            "image_embeddings": embedding,
            "point_coords": np.array([[[200.0, 300.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1.0, -1.0]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(size, np.float32),
        })
        expected = sam_model.postprocess_masks(torch.from_numpy(low_res), preprocess_shape(*size, 1024), size)
        assert masks.shape == tuple(expected.shape), size
        assert np.abs(masks - expected.numpy()).max() <= 1e-4, size


def test_hq_matches_torch_with_external_data(tmp_path, real_image, monkeypatch):
    spec = REGISTRY["hq_vit_tiny"].with_encoder(depths=(1, 1, 1, 1))  # the graphs do not depend on depth
    model = finesam.load(spec, random_weights=True)
    modes = [module.training for module in model.modules()]
    weights = {key: value.clone() for key, value in model.state_dict().items()}
    # Weights over the limit go to one external file (ViT-H's path; the limit lowered for a small model).
    monkeypatch.setattr("finesam.onnx.export.EXTERNAL_DATA_BYTES", 100_000)
    files = export_onnx(model, tmp_path, model_name="hq_small", multimask=False, hq_token_only=True)
    # The model comes back as it was: same weights, same train/eval modes.
    assert [module.training for module in model.modules()] == modes
    assert all(torch.equal(weights[key], value) for key, value in model.state_dict().items())
    for graph in ("encoder.onnx", "decoder.onnx"):  # the weights live beside the graph
        assert (tmp_path / graph).stat().st_size < (tmp_path / f"{graph}.data").stat().st_size
    assert files.interactor is None and read_metadata(files.decoder)["mode"] == {"multimask": False, "hq": "hq_only"}
    import onnxruntime as ort
    names = [entry.name for entry in ort.InferenceSession(str(files.decoder), providers=["CPUExecutionProvider"]).get_inputs()]
    assert names[:2] == ["image_embeddings", "early_features"] and names[-1] == "orig_im_size"  # one early feature only

    reference = finesam.SamPredictor(model)
    reference.set_image(real_image)
    predictor = OnnxPredictor(tmp_path)
    predictor.set_image(real_image)
    assert (predictor.interm_features[0] - reference.interm_features[0]).abs().max() <= LOGITS_TOL
    for prompts in (dict(box=BOX), dict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]))):
        expected = reference.predict(**prompts, multimask_output=False, hq_token_only=True, return_logits=True)
        assert_close(expected, predictor.predict(**prompts, hq_token_only=True, return_logits=True), f"HQ {sorted(prompts)}")
    with pytest.raises(InvalidInputError, match="export again"):
        predictor.predict(box=BOX, hq_output="sum")  # fixed at export
    with pytest.raises(InvalidInputError, match="export again"):
        predictor.predict(box=BOX, multimask_output=True)


def test_pi_matches_torch_predict_and_correct(tmp_path, real_image):
    # A one-block, narrow ViT (the graphs do not depend on its size; the HQ fusion takes its width).
    spec = REGISTRY["pi_vit_b"].with_encoder(depth=1, embed_dim=192, num_heads=3, global_attn_indexes=(0,))
    model = finesam.load(spec, random_weights=True)
    randomize_(model.mask_decoder, seed=3, scale=0.05)  # a non-zero interactor output conv: clicks change the mask
    files = export_onnx(model, tmp_path, model_name="pi_small")
    assert files.interactor is not None
    reference = finesam.SamPredictor(model)
    reference.set_image(real_image)
    predictor = OnnxPredictor(tmp_path)
    with pytest.raises(CallOrderError):
        predictor.predict(box=BOX)
    predictor.set_image(real_image)
    for name in ("embedding", "early", "image"):  # the ViT encoder's outputs
        assert (getattr(predictor.image_features, name) - getattr(reference.image_features, name)).abs().max() <= LOGITS_TOL, name
    predicted = reference.predict(box=BOX, return_logits=True)
    assert_close(predicted, predictor.predict(box=BOX, return_logits=True), "Pi predict")
    clicks = dict(fg_points=np.array([[200, 150]]), bg_points=np.array([[60, 50], [300, 200]]))
    corrected = reference.correct(**clicks, return_logits=True)
    assert np.abs(corrected[0] - predicted[0]).max() > 10 * LOGITS_TOL  # the comparison below is not vacuous
    assert_close(corrected, predictor.correct(**clicks, return_logits=True), "Pi correct")
    masks, scores, _ = predictor.correct(**clicks)
    assert masks.dtype == bool and masks.shape == (1, *real_image.shape[:2]) and scores.shape == (1,)
    with pytest.raises(InvalidInputError, match="box"):
        predictor.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))  # Pi takes boxes only


@pytest.mark.parametrize("args, fragment", [
    (["--model", "no_such_model"], "no_such_model"),
    (["--model", "mobile_sam", "--hq-token-only"], "HQ"),
    (["--model", "mobile_sam", "--opset", "11"], "opset"),
    (["--model", "pi_vit_b", "--multimask"], "one mask"),
    (["--model", "mobile_sam", "--checkpoint", "x.pth"], "--random-weights"),
])
def test_bad_options_are_refused_before_loading(tmp_path, capsys, monkeypatch, args, fragment):
    from finesam.cli import model_options

    monkeypatch.setattr(model_options, "load", lambda *a, **k: pytest.fail("the model must not load"))
    out = tmp_path / "out"
    code = cli.main(["export", "onnx", *args, "--random-weights", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("finesam export: ") and err.count("\n") == 1 and fragment in err, err
    assert not out.exists()


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="finesam export onnx"):
        OnnxPredictor(tmp_path / "nothing")


def rewrite_metadata(path, change) -> None:
    """Replace the finesam metadata of a graph file by ``change(text)``."""
    import onnx

    proto = onnx.load(str(path))
    entry = next(entry for entry in proto.metadata_props if entry.key == "finesam")
    entry.value = change(entry.value)
    onnx.save(proto, str(path))


def edit_json(**changes):
    import json

    def change(text: str) -> str:
        metadata = json.loads(text)
        for key, value in changes.items():
            if value is None:
                del metadata[key]
            else:
                metadata[key] = value
        return json.dumps(metadata)

    return change


@pytest.mark.parametrize("damage, file, fragment", [
    ("swap", "encoder.onnx", "swapped"),
    (lambda text: "{not json", "decoder.onnx", "not JSON"),
    (lambda text: "[1, 2]", "decoder.onnx", "not a JSON object"),
    (edit_json(capabilities=None), "decoder.onnx", "incomplete"),
    (edit_json(image_size=0), "decoder.onnx", "image_size"),
    (edit_json(pixel_std=[1.0, 0.0, 1.0]), "decoder.onnx", "pixel_std"),
    (edit_json(mode={"multimask": True, "hq": None, "tokens": "some"}), "decoder.onnx", "tokens"),
    (edit_json(model="another"), "encoder.onnx", "different exports"),
])
def test_damaged_graphs_are_refused_when_opened(sam_export, tmp_path, damage, file, fragment):
    import shutil

    folder = tmp_path / "graphs"
    shutil.copytree(sam_export, folder)
    if damage == "swap":
        (folder / "encoder.onnx").rename(folder / "x.onnx")
        (folder / "decoder.onnx").rename(folder / "encoder.onnx")
        (folder / "x.onnx").rename(folder / "decoder.onnx")
    else:
        rewrite_metadata(folder / "decoder.onnx", damage)
    with pytest.raises(InvalidInputError) as raised:
        OnnxPredictor(folder)
    message = str(raised.value)
    assert str(folder / file) in message and fragment in message and "export" in message, message


@pytest.fixture(scope="module")
def quantized_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mobile_sam_int8")
    assert cli.main(["export", "onnx", "--model", "mobile_sam", "--random-weights", "--quantize", "int8",
                     "--out", str(folder)]) == 0
    return folder


# The bar of issue 23 on the mean IoU of the int8 masks with the float32 ones. Measured with
# seeded random weights on these 10 photos (ground-truth boxes, 3 masks each): mean 0.9865,
# lowest mask 0.974 (AMD EPYC Zen 5, AVX512-VNNI). The integer products are exact on every CPU
# (VNNI, or the exact path OnnxPredictor turns on without it: test below), so the figure moves
# only with float rounding.
INT8_MEAN_IOU = 0.98
INT8_LOWEST_IOU = 0.95
AGREEMENT_PHOTOS = [f"{number:04d}" for number in range(1, 801, 80)]  # every 80th ECSSD photo


def ground_truth_box(name: str) -> np.ndarray:
    """The xyxy box (4,) around an ECSSD photo's ground-truth object (as the box protocol takes it)."""
    from conftest import data_path
    from finesam.data.folders import read_mask
    from finesam.evaluation.prompts import mask_box

    return mask_box(read_mask(data_path("ecssd", "gt", f"{name}.png")) > 128)


def test_int8_masks_agree_with_float32(sam_export, quantized_export):
    """The int8 encoder (int8 weight MatMuls, attention output projections float32) beside the
    float32 decoder, through OnnxPredictor: masks of mean IoU >= 0.98 with the float32 graphs'
    on real photos with their ground-truth boxes (seeded weights)."""
    from conftest import data_path
    from finesam.data.images import read_image

    import onnx

    assert read_metadata(quantized_export / "encoder.onnx")["quantize"] == "int8"
    encoder = onnx.load(str(quantized_export / "encoder.onnx")).graph
    integer = [node.name for node in encoder.node if node.op_type == "MatMulInteger"]
    projections = [node.name for node in encoder.node if node.op_type == "MatMul" and "/attn/proj/" in node.name]
    assert len(integer) == 30 and len(projections) == 10, (len(integer), projections)  # TinyViT: 10 blocks x (qkv, fc1, fc2)
    assert (quantized_export / "encoder.onnx").stat().st_size < 0.5 * (sam_export / "encoder.onnx").stat().st_size
    decoder = onnx.load(str(quantized_export / "decoder.onnx")).graph
    assert not any(node.op_type.endswith("Integer") for node in decoder.node)  # the decoder stays float32
    exact, quantized = OnnxPredictor(sam_export), OnnxPredictor(quantized_export)
    ious = []
    for name in AGREEMENT_PHOTOS:
        image = read_image(data_path("ecssd", "im", f"{name}.jpg"))
        box = ground_truth_box(name)
        exact.set_image(image)
        quantized.set_image(image)
        expected, got = exact.predict(box=box)[0], quantized.predict(box=box)[0]
        for one, other in zip(expected, got):
            assert 0 < one.sum() < one.size  # masks with both classes: the comparison is not trivial
            ious.append((one & other).sum() / (one | other).sum())
    assert np.mean(ious) >= INT8_MEAN_IOU and min(ious) >= INT8_LOWEST_IOU, (np.mean(ious), min(ious))


def test_int8_encoder_is_exact_without_vnni(quantized_export, real_image, monkeypatch):
    """On x86 CPUs without VNNI OnnxPredictor has onnxruntime multiply the int8 weights without
    saturation: forced here, the encoder's output is the one of this CPU's own path, bit for bit
    (on a CPU without VNNI: the exact path against itself, the check still holds)."""
    from finesam.onnx import predictor as onnx_predictor

    monkeypatch.setattr(onnx_predictor, "int8_saturates", lambda: False)
    default = OnnxPredictor(quantized_export)
    monkeypatch.setattr(onnx_predictor, "int8_saturates", lambda: True)
    options = onnxruntime.SessionOptions()
    precise = OnnxPredictor(quantized_export, session_options=options)
    assert options.get_session_config_entry(onnx_predictor.PRECISE_INT8_OPTION) == "1"
    default.set_image(real_image)
    precise.set_image(real_image)
    assert torch.equal(default.features, precise.features)
    kept = onnxruntime.SessionOptions()
    kept.add_session_config_entry(onnx_predictor.PRECISE_INT8_OPTION, "0")  # the caller's choice stays
    OnnxPredictor(quantized_export, session_options=kept)
    assert kept.get_session_config_entry(onnx_predictor.PRECISE_INT8_OPTION) == "0"


# Run under tools/avx2_only.py: the encoder's features of each graph (float32; int8 with the exact
# products OnnxPredictor asks for on an AVX2-only CPU; int8 without them), from onnxruntime's
# AVX2 kernels.
AVX2_ENCODER_SCRIPT = """
import sys
import numpy as np
import onnxruntime
from numpy._core._multiarray_umath import __cpu_features__ as seen
from finesam.onnx import OnnxPredictor
from finesam.onnx.predictor import PRECISE_INT8_OPTION

assert seen["AVX2"] and not seen["AVX512F"] and not seen["AVX512VNNI"], "CPUID still shows AVX-512"
float_folder, int8_folder, image_path, out = sys.argv[1:5]
image = np.load(image_path)
features = {}
for name, folder, exact in (("float32", float_folder, "0"), ("exact", int8_folder, "1"), ("saturating", int8_folder, "0")):
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry(PRECISE_INT8_OPTION, exact)
    predictor = OnnxPredictor(folder, session_options=options)
    predictor.set_image(image)
    features[name] = predictor.features.numpy()
np.savez(out, **features)
"""


def test_int8_encoder_on_avx2_kernels(sam_export, quantized_export, real_image, tmp_path):
    """On an AVX2-only CPU (emulated: tools/avx2_only.py hides AVX-512 and VNNI from onnxruntime's
    CPUID checks) the int8 encoder with the option OnnxPredictor sets there is as close to the
    float32 features as int8 is on this CPU's own kernels (measured: mean error 0.0229 against
    0.0233); without the option the saturating products make it 12x worse (0.294)."""
    import subprocess
    import sys

    from conftest import avx2_only_tool

    avx2_only = avx2_only_tool()
    library = avx2_only.build_preload(tmp_path / "build")
    np.save(tmp_path / "image.npy", real_image)
    result = subprocess.run([sys.executable, "-c", AVX2_ENCODER_SCRIPT, str(sam_export), str(quantized_export),
                             str(tmp_path / "image.npy"), str(tmp_path / "features.npz")],
                            env=avx2_only.avx2_only_environment(library), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    avx2 = np.load(tmp_path / "features.npz")
    native = {}
    for name, folder in (("float32", sam_export), ("int8", quantized_export)):
        predictor = OnnxPredictor(folder)  # this CPU's kernels (with the option where OnnxPredictor sets it)
        predictor.set_image(real_image)
        native[name] = predictor.features.numpy()
    assert 0 < np.abs(avx2["float32"] - native["float32"]).max() < 1e-4  # AVX2 float kernels: the emulation took effect
    own_error = np.abs(native["int8"] - native["float32"]).mean()  # int8's error on this CPU's kernels
    exact_error = np.abs(avx2["exact"] - native["float32"]).mean()
    saturating_error = np.abs(avx2["saturating"] - native["float32"]).mean()
    assert exact_error <= 1.2 * own_error, (exact_error, own_error)
    assert saturating_error >= 5 * own_error, (saturating_error, own_error)
