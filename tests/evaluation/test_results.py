"""Per-image records, the resumable store and the summaries (no model)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from finesam.data import Sample
from finesam.evaluation import ClickOutcome, MaskOutcome, NoisyBoxProtocol, ResultStore, number_of_clicks_to, score
from finesam.evaluation.report import markdown, write_plots
from finesam.evaluation.results import BIOU_THRESHOLDS, columns_for, summarize_clicks, summarize_masks
from finesam.metrics import METRIC_KEYS, MaskMetrics


def synthetic(seed: int, ignore: bool = False):
    rng = np.random.default_rng(seed)
    gt = np.zeros((40, 50), np.uint8)
    y, x = rng.integers(5, 20, 2)
    gt[y : y + 15, x : x + 20] = 255
    pred = np.roll(gt > 128, int(rng.integers(-3, 4)), axis=1)
    band = None
    if ignore:
        band = np.zeros_like(pred)
        band[y - 1 : y + 16, x - 1] = True
        gt[band] = 128
    return Sample(f"img{seed}", np.zeros((40, 50, 3), np.uint8), gt, band), pred


def test_summary_equals_mask_metrics():
    metrics = MaskMetrics()
    records = []
    for seed in range(5):
        sample, pred = synthetic(seed, ignore=seed == 2)
        metrics.update(pred, sample.gt, sample.ignore)
        records.append(score(MaskOutcome("box", 0, pred, "box=0,0,1,1"), sample, "set"))
    summary = summarize_masks([r.values for r in records], [r.curves for r in records])
    expected = metrics.compute()
    for key in METRIC_KEYS:
        assert summary["metrics"][key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    biou = np.array([r.values["biou"] for r in records])
    assert summary["biou_recall"] == {f"{t:.2f}": float(np.mean(biou > t)) for t in BIOU_THRESHOLDS}
    no_hce = score(MaskOutcome("box", 0, synthetic(0)[1], ""), synthetic(0)[0], "set", hce=False)
    assert np.isnan(no_hce.values["hce"]) and no_hce.values["iou"] == records[0].values["iou"]
    skipping = MaskMetrics(hce=False)
    skipping.update(synthetic(0)[1], synthetic(0)[0].gt)
    computed = skipping.compute()
    assert np.isnan(computed["hce"]) and computed["iou"] == records[0].values["iou"]


def test_noc_and_click_summary():
    assert number_of_clicks_to([0.5, 0.86, 0.95], 0.85) == 2
    assert number_of_clicks_to([0.5, 0.86, 0.95], 0.90) == 3
    assert number_of_clicks_to([0.5, 0.6, 0.7], 0.85) == 3  # never reached: the maximum
    sample, _ = synthetic(0)
    finals = [synthetic(seed)[1] for seed in (3, 4, 5)]  # the masks after the last click
    records = [score(ClickOutcome("clicks", 0, ious, mask=final), sample, "set")
               for ious, final in zip(([0.5, 0.86, 0.95], [0.9, 0.91, 0.92], [0.1, 0.2, 0.3]), finals)]
    summary = summarize_clicks([r.values for r in records], [r.curves for r in records], 3)
    clicks_only = {k: summary["metrics"][k] for k in ("noc85", "noc90", "nof85", "nof90")}
    assert clicks_only == {"noc85": 2.0, "noc90": pytest.approx(7 / 3), "nof85": 1, "nof90": 1}
    assert summary["miou_per_click"] == pytest.approx([0.5, 1.97 / 3, 2.17 / 3])
    # every measure at the final click, as MaskMetrics over the final masks
    metrics = MaskMetrics()
    for final in finals:
        metrics.update(final, sample.gt)
    expected = metrics.compute()
    for key in METRIC_KEYS:
        assert summary["metrics"][key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    assert set(summary["biou_recall"]) == {f"{t:.2f}" for t in BIOU_THRESHOLDS}
    with pytest.raises(ValueError, match="no mask to score"):
        score(ClickOutcome("clicks", 0, [0.5]), sample, "set")


def test_store_keeps_complete_images_only(tmp_path):
    protocol = NoisyBoxProtocol()  # two rows per image
    store = ResultStore(tmp_path, columns_for(protocol), 2, with_curves=True)
    assert store.open() == set()
    for seed in (0, 1):
        sample, pred = synthetic(seed)
        store.add(score(MaskOutcome(v, t, pred, 'box=1,2,3,4 "q"'), sample, "set") for v, t in protocol.variants())
    store.close()
    sample, pred = synthetic(2)
    with open(tmp_path / "per_image.csv", "a", encoding="utf-8") as handle:  # an interrupted image
        writer = csv.writer(handle, lineterminator="\n")
        record = score(MaskOutcome("noise0.2", 0, pred, ""), sample, "set")
        writer.writerow([repr(v) if isinstance(v, float) else v for v in (record.values[c] for c in store.columns)])
        handle.write("set,img3,noise0.2,0,40")  # and a line cut in the middle

    again = ResultStore(tmp_path, columns_for(protocol), 2, with_curves=True)
    assert again.open() == {("set", "img0"), ("set", "img1")}
    again.close()
    with open(tmp_path / "per_image.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["img0", "img0", "img1", "img1"]
    assert rows[0]["prompt_original_px"] == 'box=1,2,3,4 "q"'
    assert float(rows[0]["iou"]) == again.rows[0]["iou"]  # exact round trip

    del again.curves["set\timg1\tnoise0.4\t0"]  # curves lost with a crash before their flush
    again._write_curves()
    third = ResultStore(tmp_path, columns_for(protocol), 2, with_curves=True)
    assert third.open() == {("set", "img0")}
    third.close()


def test_markdown_and_plots(tmp_path):
    sample, pred = synthetic(0)
    record = score(MaskOutcome("box", 0, pred, ""), sample, "set", hce=False)
    entry = summarize_masks([record.values], [record.curves])
    entry["metrics"]["hce"] = None  # as after json_ready
    summary = {"run": {"protocol": "box", "model": "mobile_sam", "random_weights": True}, "description": "d",
               "datasets": {"A": {"images": 1, "variants": {"box": entry}},
                            "B": {"images": 1, "variants": {"box": entry}}},
               "skipped": [{"dataset": "A", "name": "x", "reason": "empty ground truth"}]}
    text = markdown(summary)
    assert "| data set | n | mIoU | mBIoU | mBA | maxFβ | wFβ | Sm | meanEφ | MAE | HCEγ |" in text
    assert "| **mean** |" in text and "RANDOM WEIGHTS" in text and "A/x (empty ground truth)" in text
    assert text.count(" - |") >= 3  # HCE skipped
    (path,) = write_plots(summary, tmp_path)
    assert path.name == "recall_biou.png"
    # the random-weights warning: a red banner over the two panels, and the PNG's Warning text
    warned = Image.open(path)
    assert warned.size == (1040, 422) and "RANDOM WEIGHTS" in warned.text["Warning"]
    banner = np.asarray(warned.convert("RGB"))[:22].astype(int)
    assert ((banner[..., 0] > 150) & (banner[..., 1] < 60) & (banner[..., 2] < 60)).sum() > 100  # red text
    summary["run"]["random_weights"] = False
    (plain,) = write_plots(summary, tmp_path)
    assert Image.open(plain).size == (1040, 400) and "Warning" not in Image.open(plain).text
    assert not list(tmp_path.glob(".*.part"))  # written atomically
