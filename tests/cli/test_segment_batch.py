"""``finesam segment INPUT... --out DIR``: folders and prompt files in, standard formats out;
one encoding per image, resume, bad images and prompts reported and skipped, torchrun sharding."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import weakref
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import data_path
from PIL import Image

import finesam
from finesam import cli
from finesam.cli import model_options
from finesam.formats import decode_rle
from finesam.modeling.sam import Sam

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
STEMS = ("0001", "0002")


@pytest.fixture(scope="module")
def model():
    return finesam.load("mobile_sam", random_weights=True)


ENCODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {image digest: features}


@pytest.fixture
def encodings(monkeypatch, model):
    """Count the command's image encodings (each image's features are computed once per module
    and reused: the tests are about the command); the command gets the module's model."""
    calls = []
    real = Sam.encode_image

    def encode_image(self, image, *args, **kwargs):
        calls.append(1)
        cache = ENCODED.setdefault(self, {})
        key = (hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest(), repr(args), repr(kwargs))
        if key not in cache:
            cache[key] = real(self, image, *args, **kwargs)
        return cache[key]

    monkeypatch.setattr(Sam, "encode_image", encode_image)
    monkeypatch.setattr(model_options, "load", lambda *args, **kwargs: model)
    return calls


@pytest.fixture
def photos(tmp_path):
    """Two real ECSSD photographs (at most 400x400) in a folder."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for stem in STEMS:
        shutil.copy(data_path("ecssd", "im", f"{stem}.jpg"), folder / f"{stem}.jpg")
    return folder


def run(args, capsys):
    code = cli.main(["segment", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def coco_prompts(folder) -> dict:
    """COCO ground-truth style prompts: two boxes on the first image, one on the others."""
    images, annotations = [], []
    for number, stem in enumerate(STEMS, start=1):
        width, height = Image.open(folder / f"{stem}.jpg").size
        images.append({"id": 100 + number, "file_name": f"{stem}.jpg", "width": width, "height": height})
        boxes = [[20, 30, width // 2, height // 2]] + ([[width // 3, height // 4, width // 2, height // 2]] if number == 1 else [])
        for box in boxes:
            annotations.append({"id": 1000 + len(annotations), "image_id": 100 + number, "bbox": box,
                                "category_id": 1 + len(annotations) % 2, "score": 0.5 + 0.1 * len(annotations),
                                "area": box[2] * box[3], "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def test_folder_and_coco_boxes_give_coco_results_equal_to_the_predictor(photos, tmp_path, encodings, model, capsys):
    coco_mask = pytest.importorskip("pycocotools.mask")
    from pycocotools.coco import COCO

    prompts = coco_prompts(photos)
    (tmp_path / "gt.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    code, stdout, err = run([photos, "--model", "mobile_sam", "--random-weights", "--prompts", tmp_path / "gt.json",
                             "--out", out, "--format", "png,instances,coco,polygons,overlay"], capsys)
    assert code == 0, err
    assert len(encodings) == len(STEMS)  # each image encoded once, for all its boxes
    results = json.loads((out / "coco_results.json").read_text())
    annotations = prompts["annotations"]
    assert [r["prompt_id"] for r in results] == [a["id"] for a in annotations]
    for result, annotation in zip(results, annotations):
        assert set(result) == {"image_id", "category_id", "bbox", "area", "score", "detector_score", "prompt_id", "segmentation"}
        assert (result["image_id"], result["category_id"]) == (annotation["image_id"], annotation["category_id"])
        assert result["detector_score"] == pytest.approx(annotation["score"])
        assert isinstance(result["segmentation"]["counts"], str)
        assert result["area"] == int(coco_mask.area(result["segmentation"]))
        assert result["bbox"] == pytest.approx(coco_mask.toBbox(result["segmentation"]).tolist())

    ground_truth = COCO()
    ground_truth.dataset = prompts
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(str(out / "coco_results.json"))  # pycocotools reads the file
    predictor = finesam.SamPredictor(model, keep_early_feature=False)  # as the command: its encodings are reused
    for image in prompts["images"]:
        boxes = [a["bbox"] for a in annotations if a["image_id"] == image["id"]]
        predictor.set_image(np.asarray(Image.open(photos / image["file_name"]).convert("RGB")))
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=float)
        expected, scores, _ = predictor.predict_batch(boxes=xyxy, multimask_output=False)
        entries = loaded.loadAnns(loaded.getAnnIds(imgIds=[image["id"]]))
        assert len(entries) == len(boxes)
        for k, (entry, mask, score) in enumerate(zip(entries, expected[:, 0], scores[:, 0])):
            np.testing.assert_array_equal(loaded.annToMask(entry).astype(bool), mask)
            assert entry["score"] == pytest.approx(float(score), abs=1e-6)  # the predicted IoU
            png = np.asarray(Image.open(out / "masks" / image["file_name"][:-4] / f"{k}.png"))
            np.testing.assert_array_equal(png == 255, mask)
        instances = np.asarray(Image.open(out / "instances" / f"{image['file_name'][:-4]}.png"))
        assert set(np.unique(instances)) <= set(range(len(boxes) + 1)) and (instances > 0).any()
    assert len(encodings) == 2 * len(STEMS)  # (the reference predictor reuses the command's features)
    first = json.loads((out / "polygons" / "0001.json").read_text())
    assert [o["prompt_id"] for o in first["objects"]] == [1000, 1001]
    geojson = json.loads((out / "polygons" / "0001.geojson").read_text())
    assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == 2
    assert Image.open(out / "overlays" / "0001.png").size == Image.open(photos / "0001.jpg").size


def test_corrupt_image_is_reported_the_rest_written_and_the_run_resumes(photos, tmp_path, encodings, capsys):
    (photos / "0005.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    args = ["--model", "mobile_sam", "--random-weights", "--box", "20", "20", "200", "150", "--out", out]
    code, stdout, err = run([photos, *args], capsys)
    assert code == 1  # something failed
    assert "0005.jpg" in err and "1 image(s) and 0 prompt(s) failed" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done_now"] == len(STEMS) and summary["exit_code"] == 1 and summary["failed_images"][0].startswith("0005:")
    assert [r["image_id"] for r in json.loads((out / "coco_results.json").read_text())] == [f"{s}.jpg" for s in STEMS]
    assert sorted(p.name for p in (out / "masks").iterdir()) == list(STEMS)
    assert len(encodings) == len(STEMS)

    code, stdout, err = run([photos, *args], capsys)  # resume: done images skipped, the bad one tried again
    assert code == 1 and len(encodings) == len(STEMS) and f"{len(STEMS)} done before, skipped" in stdout

    Image.open(photos / "0001.jpg").save(photos / "0005.jpg")  # repaired
    code, stdout, err = run([photos, *args], capsys)
    assert code == 0, err
    assert len(encodings) == len(STEMS) + 1  # only the repaired image
    assert len(json.loads((out / "coco_results.json").read_text())) == len(STEMS) + 1

    code, _, err = run([photos, *args, "--overwrite"], capsys)
    assert code == 0 and len(encodings) == 2 * (len(STEMS) + 1)

    code, _, err = run([photos, *args, "--format", "png"], capsys)  # other settings: refused, not mixed
    assert code == 2 and "pass --overwrite to redo every image, or choose another --out folder" in err


def test_bad_prompts_are_skipped_before_encoding(photos, tmp_path, encodings, capsys):
    (tmp_path / "boxes.csv").write_text("image,x0,y0,x1,y1,label\n0001.jpg,10,10,100,100,cat\n"
                                        "0001.jpg,10,10,1e9,100,dog\n0002.jpg,5,5,1e9,9,cat\n")
    out = tmp_path / "out"
    code, _, err = run([photos / "0001.jpg", photos / "0002.jpg", "--model", "mobile_sam", "--random-weights",
                        "--prompts", tmp_path / "boxes.csv", "--out", out, "--format", "coco"], capsys)
    assert code == 1
    assert "prompt 1: box coordinates hold 1e+09, far outside" in err and "0002" in err
    assert len(encodings) == 1  # 0002 has no valid prompt: not encoded
    results = json.loads((out / "coco_results.json").read_text())
    assert [(r["image_id"], r["prompt_id"], r["category_id"]) for r in results] == [("0001.jpg", 0, "cat")]
    assert len(json.loads((out / "summary.json").read_text())["bad_prompts"]) == 2


def test_globs_and_automatic_masks(photos, tmp_path, encodings, capsys):
    out = tmp_path / "out"
    code, _, err = run([str(photos / "000[12].jpg"), "--model", "mobile_sam", "--random-weights", "--auto",
                        "--points-per-side", "4", "--out", out, "--format", "instances,coco"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (out / "instances").iterdir()) == ["0001.png", "0002.png"]
    for entry in json.loads((out / "coco_results.json").read_text()):
        assert decode_rle(entry["segmentation"]).sum() == entry["area"] > 0


@pytest.mark.parametrize("extra, fragment", [
    (["--out", "{tmp}/o.jpg", "--box", "1", "1", "9", "9"], "lossy"),
    (["--out", "{tmp}/o", "--box", "1", "1", "9", "9", "--format", "png,tiff"], "--format 'png,tiff'"),
    (["--out", "{tmp}/o", "--box", "1", "1", "9", "9", "--overlay", "{tmp}/v.png"], "--overlay FILE goes with"),
    (["--out", "{tmp}/m.png", "--auto"], "give a folder as --out"),
    (["--out", "{tmp}/o", "--auto", "--box", "1", "1", "9", "9"], "exclude each other"),
    (["--out", "{tmp}/o", "--box", "1", "1", "9", "9", "--fix-point", "3", "3"], "corrects clicks"),
    (["--out", "{tmp}/o", "--prompts", "{tmp}/none.csv"], "no such file"),
])
def test_refusals_come_before_any_work(photos, tmp_path, capsys, extra, fragment, monkeypatch):
    monkeypatch.setattr(model_options, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    code, _, err = run([photos, "--model", "mobile_sam", "--random-weights",
                        *[a.format(tmp=tmp_path) for a in extra]], capsys)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_pi_sam_correction_clicks_go_to_correct(tmp_path, capsys, encodings, monkeypatch, request):
    spec = finesam.registry.REGISTRY["pi_vit_b"].with_encoder(depth=1, global_attn_indexes=(0,))
    finesam.register_model("pi_vit_b_1block_cli_test", spec, replace_existing=True)
    request.addfinalizer(lambda: finesam.registry.unregister_model("pi_vit_b_1block_cli_test"))
    pi_model = finesam.load("pi_vit_b_1block_cli_test", random_weights=True)
    with torch.no_grad():  # the interactor starts as an identity: make the clicks matter
        torch.nn.init.normal_(pi_model.mask_decoder.interactor.out_cov.weight, std=2.0, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(model_options, "load", lambda name, *args, **kwargs: pi_model)
    calls = {}
    real_predict, real_correct = finesam.SamPredictor.predict, finesam.SamPredictor.correct

    def predict(self, *args, **kwargs):
        calls["predict"] = real_predict(self, *args, **kwargs)
        return calls["predict"]

    def correct(self, fg_points=None, bg_points=None, **kwargs):
        calls["clicks"] = (np.asarray(fg_points).tolist(), np.asarray(bg_points).tolist())
        calls["correct"] = real_correct(self, fg_points, bg_points, **kwargs)
        return calls["correct"]

    monkeypatch.setattr(finesam.SamPredictor, "predict", predict)
    monkeypatch.setattr(finesam.SamPredictor, "correct", correct)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    code, _, err = run([tmp_path / "in.png", "--model", "pi_vit_b_1block_cli_test", "--random-weights",
                        "--box", "10", "10", "100", "80", "--fix-point", "50", "40", "--fix-negative", "15", "70",
                        "--out", tmp_path / "out", "--format", "png"], capsys)
    assert code == 0, err
    assert calls["clicks"] == ([[50.0, 40.0]], [[15.0, 70.0]])  # image pixels, as given
    written = np.asarray(Image.open(tmp_path / "out" / "masks" / "in" / "0.png")) == 255
    np.testing.assert_array_equal(written, calls["correct"][0][0])
    assert not np.array_equal(written, calls["predict"][0][0])  # the corrected mask, not the box's


def test_help_shows_the_prompt_file_formats(capsys):
    with pytest.raises(SystemExit):
        cli.main(["segment", "--help"])
    text = capsys.readouterr().out
    for fragment in ("COCO JSON", "detector results", "image,x0,y0,x1,y1[,label]", "JSON lines", "exit codes"):
        assert fragment in text


@contextmanager
def torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_torchrun_processes_give_the_single_process_outputs(photos, tmp_path, capsys):
    (photos / "0003.jpg").write_bytes(b"broken")  # a failure on one rank is merged too
    # rank 0: 0001 and the broken 0003, rank 1: 0002
    args = ["segment", str(photos), "--model", "mobile_sam", "--random-weights", "--box", "20", "20", "200", "150",
            "--format", "png,coco,instances", "--device", "cpu"]
    with torch_threads(1):  # as each torchrun process: same arithmetic
        assert cli.main([*args, "--out", str(tmp_path / "single")]) == 1
    capsys.readouterr()
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), "-m", "finesam.cli", *args, "--out", str(tmp_path / "sharded")],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert result.returncode != 0 and "0003" in result.stderr, result.stderr[-2000:]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert (sharded / "coco_results.json").read_text() == (single / "coco_results.json").read_text()
    assert json.loads((sharded / "summary.json").read_text()) == json.loads((single / "summary.json").read_text())
    records = sorted(p.name for p in (single / "records").iterdir())
    assert records == sorted(p.name for p in (sharded / "records").iterdir()) == ["0001.json", "0002.json"]
    for stem in ("0001", "0002"):
        for name in (f"masks/{stem}/0.png", f"instances/{stem}.png"):
            np.testing.assert_array_equal(np.asarray(Image.open(single / name)), np.asarray(Image.open(sharded / name)))


def _mask_files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))


def test_rerun_with_fewer_objects_replaces_the_image_outputs_as_a_whole(photos, tmp_path, encodings, capsys, monkeypatch):
    from finesam.pipeline import folder

    out = tmp_path / "out"
    base = [photos / "0001.jpg", "--model", "mobile_sam", "--random-weights", "--out", out]
    two = ["--box", "20", "20", "200", "150", "--box", "10", "10", "90", "90"]
    assert run([*base, *two, "--format", "png,coco,instances,overlay"], capsys)[0] == 0
    assert _mask_files(out) == ["instances/0001.png", "masks/0001/0.png", "masks/0001/1.png", "overlays/0001.png"]

    # other --box values (no other settings): the image is redone; a kill after its record is
    # written but before the old files go leaves them only until the next run
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    remove = folder.remove_stale_outputs
    monkeypatch.setattr(folder, "remove_stale_outputs", killed)
    assert run([*base, "--box", "20", "20", "200", "150", "--format", "png,coco,instances,overlay"], capsys)[0] == 130
    monkeypatch.setattr(folder, "remove_stale_outputs", remove)
    code, stdout, _ = run([*base, "--box", "20", "20", "200", "150", "--format", "png,coco,instances,overlay"], capsys)
    assert code == 0 and "1 done before, skipped" in stdout
    assert _mask_files(out) == ["instances/0001.png", "masks/0001/0.png", "overlays/0001.png"]
    assert len(json.loads((out / "coco_results.json").read_text())) == 1

    # --overwrite with fewer formats: the formats no longer written go too
    assert run([*base, "--box", "20", "20", "200", "150", "--format", "png,coco", "--overwrite"], capsys)[0] == 0
    assert _mask_files(out) == ["masks/0001/0.png"]

    # an edited prompts file with no valid box left for the image: no masks of the old prompts remain
    (tmp_path / "boxes.csv").write_text("0001.jpg,10,10,100,100\n0001.jpg,20,20,90,90\n")
    prompted = [*base[:-2], "--prompts", tmp_path / "boxes.csv", "--out", out, "--format", "png,coco"]
    assert run([*prompted, "--overwrite"], capsys)[0] == 0 and _mask_files(out) == ["masks/0001/0.png", "masks/0001/1.png"]
    (tmp_path / "boxes.csv").write_text("0001.jpg,10,10,1e9,100\n")
    assert run(prompted, capsys)[0] == 1
    assert _mask_files(out) == [] and json.loads((out / "coco_results.json").read_text()) == []


def test_outputs_inside_out_never_land_on_an_input(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(model_options, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "masks" / "0002").mkdir(parents=True)
    shutil.copy(photos / "0001.jpg", out / "overlays" / "0001.png")  # a folder run's overlays segmented again
    shutil.copy(photos / "0001.jpg", out / "masks" / "0002" / "0.png")  # where 0002.jpg's first mask goes
    os.symlink(out / "masks" / "0002", tmp_path / "masks_link")
    (tmp_path / "gt.json").write_text(json.dumps(coco_prompts(photos)))
    shutil.copy(tmp_path / "gt.json", out / "coco_results.json")
    box = ["--box", "20", "20", "200", "150"]
    cases = [([out / "overlays", *box, "--format", "png"], "overlays/0001.png"),       # stale overlays would be removed
             ([out / "overlays" / "0001.png", *box, "--format", "overlay"], "overlays/0001.png"),
             ([tmp_path / "masks_link" / "0.png", photos / "0002.jpg", *box], "masks/0002/0.png"),  # via a symlink
             ([photos, "--prompts", out / "coco_results.json"], "coco_results.json")]
    for inputs, fragment in cases:
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        code, _, err = run([*inputs, "--model", "mobile_sam", "--random-weights", "--out", out], capsys)
        assert code == 2 and fragment in err and "is the input" in err and len(err.strip().splitlines()) == 1, err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


DAMAGED_STATE = [
    ("run.json", "[]", "it holds a list, not the settings of a run"),
    ("run.json", "null", "it holds null"),
    ("run.json", "{\"formats\": [\"png\"", "not valid JSON"),
    ("run.json/", "", "it is not a file"),
    ("records/0001.json", '{"fingerprint": "0123"}', "'objects' list is missing"),
    ("records/0001.json", '{"fingerprint": "0123", "objects": [{"image_id": [1]}]}', "an object lacks category_id"),
    ("records/0001.json", '{"fingerprint": "0123", "objects": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], '
                          '"area": -1, "score": "high", "segmentation": {"size": [3], "counts": ""}}]}',
     "an object's score, area, segmentation are not"),
    ("records/0001.json", '{"fingerprint": "0123", "objects": [], "bad_prompts": "x"}', "'bad_prompts' is not a list"),
    ("records/0001.json", "null", "a record is a JSON object, not null"),
    ("records/0001.json", "\xff", "not valid JSON"),
    ("records/0001.json/", "", "it is not a file"),
]


def test_damaged_resume_state_is_one_line_naming_the_file(photos, tmp_path, encodings, capsys, monkeypatch):
    done = tmp_path / "done"
    args = [photos / "0001.jpg", "--model", "mobile_sam", "--random-weights", "--box", "20", "20", "200", "150"]
    assert run([*args, "--out", done], capsys)[0] == 0
    for number, (name, content, fragment) in enumerate(DAMAGED_STATE):
        out = tmp_path / f"out{number}"
        shutil.copytree(done, out)
        path = out / name.rstrip("/")
        path.unlink()
        if name.endswith("/"):
            path.mkdir()
        else:
            path.write_text(content)
        code, _, err = run([*args, "--out", out], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, (name, content, err)
        assert str(path) in err and fragment in err and "move it away, or pass --overwrite" in err, (name, content, err)
    for out in (tmp_path / "out0", tmp_path / "out4"):  # run.json = [], a record without objects: redone
        code, _, err = run([*args, "--out", out, "--overwrite"], capsys)
        assert code == 0, err
        assert len(json.loads((out / "coco_results.json").read_text())) == 1


def test_dot_and_superscript_names_get_outputs_of_their_own(photos, tmp_path, encodings, capsys):
    """``..png`` (stem ".") writes under masks/%2E/, not into masks/ itself; ``².png`` matches the
    detector image_id "²" (str.isdigit is true for it, int() refuses it)."""
    shutil.copy(photos / "0001.jpg", tmp_path / "..jpg")
    shutil.copy(photos / "0002.jpg", tmp_path / "².jpg")
    (tmp_path / "det.json").write_text(json.dumps([{"image_id": "²", "bbox": [20, 20, 100, 100], "score": 0.9},
                                                   {"image_id": ".", "bbox": [10, 10, 50, 50], "category_id": "--5"}]))
    out = tmp_path / "out"
    code, _, err = run([tmp_path / "..jpg", tmp_path / "².jpg", "--model", "mobile_sam", "--random-weights",
                        "--prompts", tmp_path / "det.json", "--out", out, "--format", "png,coco,instances"], capsys)
    assert code == 0, err
    assert _mask_files(out) == ["instances/%2E.png", "instances/².png", "masks/%2E/0.png", "masks/²/0.png"]
    results = json.loads((out / "coco_results.json").read_text())
    assert [(r["image_id"], r["category_id"]) for r in results] == [(".", "--5"), ("²", 1)]
