"""``finesam eval``: output files, resume = uninterrupted run, clicks on GrabCut, clear refusals."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import data_path
from eval_helpers import cached_image_encoder, subset
from finesam import cli
from finesam.data import read_mask
from finesam.evaluation import BoxProtocol
from finesam.metrics import iou


@pytest.fixture(scope="module", autouse=True)
def _encoder_cache():
    with cached_image_encoder():
        yield


def eval_args(out, *extra, data=None, protocol="box", model="mobile_sam"):
    data = data or f"ECSSD={data_path('ecssd')}"
    return ["eval", "--model", model, "--random-weights", "--data", data, "--protocol", protocol,
            "--out", str(out), "--device", "cpu", "--quiet", *extra]


def rows(out) -> list[dict]:
    with open(out / "per_image.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def saved_mask(out, dataset, variant, name):
    """A --save-masks file: lossless 0/255 PNG."""
    path = out / "masks" / dataset / variant / f"{name}.png"
    assert Image.open(path).format == "PNG"
    mask = read_mask(path)
    assert set(np.unique(mask)) <= {0, 255}
    return mask > 128


def test_box_run_writes_outputs_and_resume_gives_the_same_summary(tmp_path, monkeypatch, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(eval_args(full, "--limit", "2", "--save-masks")) == 0
    out = capsys.readouterr()
    assert "| ECSSD | 2 |" in out.out and "RANDOM WEIGHTS" in out.err
    for name in ("per_image.csv", "curves.npz", "summary.json", "table.md", "recall_biou.png", "run.json"):
        assert (full / name).is_file(), name
    plot = Image.open(full / "recall_biou.png")
    assert plot.size == (520, 422) and "RANDOM WEIGHTS" in plot.text["Warning"]  # the banner of table.md's warning
    assert [r["name"] for r in rows(full)] == ["0001", "0002"]
    # the saved masks are the scored predictions, at the image size
    for row in rows(full):
        gt = read_mask(data_path("ecssd", "gt", f"{row['name']}.png"))
        mask = saved_mask(full, "ECSSD", "box", row["name"])
        assert mask.shape == gt.shape and iou(mask, gt) == pytest.approx(float(row["iou"]), abs=1e-12)
    # the prompt column names its frame: original-image pixels, inside the image
    box = [float(v) for v in rows(full)[0]["prompt_original_px"].removeprefix("box_xyxy=").split(",")]
    assert 0 <= box[0] < box[2] <= 266.5 and 0 <= box[1] < box[3] <= 399.5
    # summary.json records what applies: no hq_output for MobileSAM, no seed for a protocol that draws nothing
    summary = json.loads((full / "summary.json").read_text())
    assert "hq_output" not in summary["run"] and "seed" not in summary["run"] and summary["masks"] == "masks/"

    # an interrupted run: image 0001 done, 0002 cut in the middle of its CSV line
    assert cli.main(eval_args(part, "--limit", "1")) == 0
    with open(part / "per_image.csv", "a", encoding="utf-8") as handle:
        handle.write("ECSSD,0002,box,0,400,267,0.12")
    evaluated = []
    original_run = BoxProtocol.run
    monkeypatch.setattr(BoxProtocol, "run", lambda self, p, s: evaluated.append(s.name) or original_run(self, p, s))
    assert cli.main(eval_args(part, "--limit", "2", "--save-masks")) == 0
    assert evaluated == ["0002"]  # 0001 came from the CSV
    assert "1 image(s) resumed from the earlier run" in capsys.readouterr().err  # its mask was never saved
    assert (part / "masks/ECSSD/box/0002.png").is_file() and not (part / "masks/ECSSD/box/0001.png").exists()
    full_summary = json.loads((full / "summary.json").read_text())
    part_summary = json.loads((part / "summary.json").read_text())
    assert part_summary["datasets"] == full_summary["datasets"]
    assert part_summary["timing"]["resumed_images"] == 1
    assert rows(part) == rows(full)
    assert (part / "table.md").read_text() == (full / "table.md").read_text()


def test_clicks_run_on_grabcut_with_its_ignore_band(tmp_path, capsys):
    root = subset(tmp_path, "grabcut", ["124080"])
    out = tmp_path / "out"
    assert cli.main(eval_args(out, "--max-clicks", "5", "--save-masks", data=f"GrabCut={root}", protocol="clicks")) == 0
    (row,) = rows(out)
    assert list(row)[6:13] == ["noc85", "noc90", "iou_1", "iou_2", "iou_3", "iou_4", "iou_5"]
    assert 1 <= int(row["noc85"]) <= 5 and len(row["prompt_original_px"].split(";")) <= 5
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["datasets"]["GrabCut"]["variants"]["clicks"]
    assert len(entry["miou_per_click"]) == 5
    # every measure at the final click (the mask after click 5), saved for inspection
    assert float(row["iou"]) == pytest.approx(float(row["iou_5"]), abs=1e-12)
    assert entry["metrics"]["iou"] == pytest.approx(entry["miou_per_click"][-1], abs=1e-12)
    assert all(entry["metrics"][k] is not None for k in ("biou", "mba", "max_f", "weighted_f", "s_measure", "mae"))
    gt = read_mask(root / "gt" / "124080.bmp")
    final = saved_mask(out, "GrabCut", "clicks", "124080")
    assert iou(final, gt, gt == 128) == pytest.approx(float(row["iou_5"]), abs=1e-12)
    assert (out / "iou_per_click.png").is_file()
    printed = capsys.readouterr().out
    assert "NoC@85" in printed and "## after the final click (5)" in printed and "| GrabCut | 1 |" in printed


def test_pi_clicks_run_without_hce(tmp_path):
    assert cli.main(eval_args(tmp_path, "--limit", "1", "--no-hce", protocol="pi-clicks")) == 0
    variants = [r["variant"] for r in rows(tmp_path)]
    assert variants == ["box", "fg1", "fg2", "fg5", "bg1", "bg2", "bg5", "all1", "all2", "all5"]
    assert all(r["hce"] == "nan" for r in rows(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["datasets"]["ECSSD"]["variants"]["all5"]["metrics"]["hce"] is None
    assert "## mIoU per setting" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize(
    "extra, data, message",
    [
        ([], "X={tmp}/nowhere", "folder .*nowhere does not exist"),
        ([], "X={tmp}", "no known layout"),
        (["--checkpoint", "{tmp}/none.pt"], None, "exclude each other"),
        (["--decoder-checkpoint", "{tmp}/dec.pth"], None, "--random-weights and --checkpoint / --decoder-checkpoint exclude each other"),
        (["--limit", "0"], None, "--limit must be >= 1"),
        (["--hq-output", "sum"], None, "--hq-output applies to HQ-SAM models; mobile_sam has no HQ output"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, extra, data, message):
    (tmp_path / "photos").mkdir()
    args = eval_args(tmp_path / "out", *(e.format(tmp=tmp_path) for e in extra),
                     data=data.format(tmp=tmp_path) if data else None)
    assert cli.main(args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "per_image.csv").exists()


def test_missing_checkpoint_unknown_protocol_and_other_refusals(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FINESAM_CHECKPOINTS", raising=False)
    args = [a for a in eval_args(tmp_path / "out") if a != "--random-weights"]
    assert cli.main(args) == 2
    assert "mobile_sam.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(eval_args(tmp_path / "out", protocol="scribbles"))
    assert exit_info.value.code == 2 and "invalid choice: 'scribbles'" in capsys.readouterr().err
    # Pi-SAM models take boxes only: the point protocols say so before any work
    assert cli.main(eval_args(tmp_path / "out", model="pi_vit_b", protocol="clicks")) == 2
    assert "box prompts only" in capsys.readouterr().err
    # an output folder of another run is not silently mixed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text(json.dumps({"identity": {"protocol": "clicks"}, "datasets": {}}))
    assert cli.main(eval_args(tmp_path / "other", "--limit", "1")) == 2
    err = capsys.readouterr().err
    assert "holds results of another run" in err and "pass another --out, or --overwrite" in err  # options, not parameters
