"""``finesam eval``: output files, resume = uninterrupted run, clicks on GrabCut, clear refusals."""

from __future__ import annotations

import csv
import json
import re

import pytest
from PIL import Image

from conftest import data_path
from eval_helpers import cached_image_encoder, subset
from finesam import cli
from finesam.evaluation import BoxProtocol


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


def test_box_run_writes_outputs_and_resume_gives_the_same_summary(tmp_path, monkeypatch, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(eval_args(full, "--limit", "2")) == 0
    out = capsys.readouterr()
    assert "| ECSSD | 2 |" in out.out and "RANDOM WEIGHTS" in out.err
    for name in ("per_image.csv", "curves.npz", "summary.json", "table.md", "recall_biou.png", "run.json"):
        assert (full / name).is_file(), name
    assert Image.open(full / "recall_biou.png").size == (520, 400)
    assert [r["name"] for r in rows(full)] == ["0001", "0002"]

    # an interrupted run: image 0001 done, 0002 cut in the middle of its CSV line
    assert cli.main(eval_args(part, "--limit", "1")) == 0
    with open(part / "per_image.csv", "a", encoding="utf-8") as handle:
        handle.write("ECSSD,0002,box,0,400,267,0.12")
    evaluated = []
    original_run = BoxProtocol.run
    monkeypatch.setattr(BoxProtocol, "run", lambda self, p, s: evaluated.append(s.name) or original_run(self, p, s))
    assert cli.main(eval_args(part, "--limit", "2")) == 0
    assert evaluated == ["0002"]  # 0001 came from the CSV
    full_summary = json.loads((full / "summary.json").read_text())
    part_summary = json.loads((part / "summary.json").read_text())
    assert part_summary["datasets"] == full_summary["datasets"]
    assert part_summary["timing"]["resumed_images"] == 1
    assert rows(part) == rows(full)
    assert (part / "table.md").read_text() == (full / "table.md").read_text()


def test_clicks_run_on_grabcut_with_its_ignore_band(tmp_path, capsys):
    root = subset(tmp_path, "grabcut", ["124080"])
    assert cli.main(eval_args(tmp_path / "out", "--max-clicks", "5", data=f"GrabCut={root}", protocol="clicks")) == 0
    (row,) = rows(tmp_path / "out")
    assert list(row)[6:13] == ["noc85", "noc90", "iou_1", "iou_2", "iou_3", "iou_4", "iou_5"]
    assert 1 <= int(row["noc85"]) <= 5 and len(row["prompt"].split(";")) <= 5
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["datasets"]["GrabCut"]["variants"]["clicks"]["miou_per_click"]) == 5
    assert (tmp_path / "out" / "iou_per_click.png").is_file()
    assert "NoC@85" in capsys.readouterr().out


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
        (["--decoder-checkpoint", "{tmp}/dec.pth"], None, "decoder_checkpoint is for Pi-SAM models"),
        (["--limit", "0"], None, "--limit must be >= 1"),
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
    assert "holds results of another run" in capsys.readouterr().err
