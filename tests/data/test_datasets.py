"""Data set readers: every layout, stem matching, pairing reports, errors, the shared real data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import data_path
from finesam.data import DatasetError, open_dataset, parse_spec, read_mask, split_from_name


def image(path: Path, size=(6, 4)) -> Path:
    """A small RGB file (any PIL format from the extension); size is (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def mask(path: Path, size=(6, 4), values=(0, 255)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0]), values[0], np.uint8)
    pixels[1:3, 2:5] = values[-1]
    Image.fromarray(pixels).save(path)
    return path


def pairs(root: Path, image_dir: str, gt_dir: str, stems=("a", "b"), gt_ext=".png") -> Path:
    for stem in stems:
        image(root / image_dir / f"{stem}.jpg")
        mask(root / gt_dir / f"{stem}{gt_ext}")
    return root


def flat(folder: Path, stems=("a", "b")) -> Path:
    for stem in stems:
        image(folder / f"{stem}.jpg")
        mask(folder / f"{stem}.png")
    return folder


LAYOUT_CASES = {
    "im-gt": lambda r: pairs(r, "im", "gt"),
    "thinobject5k": lambda r: pairs(r, "images_test", "masks_test"),
    "thinobject5k-nested": lambda r: pairs(r, "ThinObject5K/images_test", "ThinObject5K/masks_test"),
    "coift": lambda r: pairs(r, "images", "masks"),
    "hrsod": lambda r: pairs(r, "images", "masks_max255"),
    "hrsod-release": lambda r: pairs(r, "HRSOD_release/HRSOD_test", "HRSOD_release/HRSOD_test_mask"),
    "uhrsd": lambda r: pairs(r, "UHRSD_TE_2K/image", "UHRSD_TE_2K/mask"),
    "big": lambda r: pairs(r, "test/img", "test/gt"),
    "grabcut": lambda r: pairs(r, "data_GT", "boundary_GT", gt_ext=".bmp"),
    "cascade-psp": lambda r: flat(r),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_each_layout_is_detected_from_the_folder(case, tmp_path):
    root = LAYOUT_CASES[case](tmp_path / "root")
    dataset = open_dataset(f"mine={root}")  # an unknown name: detected from the structure
    assert dataset.layout == case.split("-nested")[0].replace("-release", "")
    assert dataset.names == ["a", "b"] and not dataset.report
    name, img, gt, ignore = dataset[1]
    assert name == "b" and img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert gt.shape == (4, 6) and gt.dtype == np.uint8 and set(np.unique(gt)) == {0, 255}
    assert (ignore is None) == (case != "grabcut")


def test_big_suffixed_files_and_fss_class_folders(tmp_path):
    big = tmp_path / "BIG" / "val"
    for stem in ("p1", "p2"):
        image(big / f"{stem}_im.jpg")
        mask(big / f"{stem}_gt.png")
        mask(big / f"{stem}_seg.png")  # the coarse input masks of CascadePSP are not ground truth
    dataset = open_dataset(f"BIG-val={tmp_path / 'BIG'}")
    assert dataset.layout == "big" and dataset.names == ["p1", "p2"] and dataset.pairs[0].gt.name == "p1_gt.png"

    fss = tmp_path / "fss_all"
    flat(fss / "cat", ("1", "2"))
    flat(fss / "dog", ("1",))
    dataset = open_dataset(f"FSS={fss}")
    assert dataset.layout == "fss" and dataset.names == ["cat/1", "cat/2", "dog/1"]
    assert dataset[2].name == "dog/1"
    assert open_dataset(f"FSS={flat(tmp_path / 'fss_flat')}").layout == "cascade-psp"  # HQ-SAM's flattened copy


def test_name_picks_layout_and_split(tmp_path):
    root = pairs(tmp_path / "thin", "images_test", "masks_test", stems=("t1",))
    pairs(root, "images_train", "masks_train", stems=("r1", "r2"))
    assert open_dataset(f"ThinObject5K-TE={root}").names == ["t1"]
    assert open_dataset(f"ThinObject5K-TR={root}").names == ["r1", "r2"]
    assert open_dataset(f"thin={root}").names == ["t1"]  # no split in the name: test first

    uhrsd = pairs(tmp_path / "uhrsd", "UHRSD_TE_2K/image", "UHRSD_TE_2K/mask", stems=("te",))
    pairs(uhrsd, "UHRSD_TR_2K/image", "UHRSD_TR_2K/mask", stems=("tr",))
    assert open_dataset(f"UHRSD-TR={uhrsd}").names == ["tr"]
    assert open_dataset(f"UHRSD_TE_2K={uhrsd}").names == ["te"]


def test_dis5k_root_and_subset_name(tmp_path):
    dis = tmp_path / "DIS5K"
    pairs(dis / "DIS-VD", "im", "gt", stems=("v",))
    pairs(dis / "DIS-TE1", "im", "gt", stems=("t",))
    vd = open_dataset(f"DIS-VD={dis}")
    assert vd.layout == "im-gt" and vd.names == ["v"] and vd.root == dis / "DIS-VD"
    assert open_dataset(f"DIS5K-TE1={dis}").names == ["t"]


def test_ecssd_in_both_cascade_psp_forms(tmp_path):
    assert open_dataset(f"ECSSD={flat(tmp_path / 'ecssd')}").layout == "cascade-psp"
    assert open_dataset(f"DUTS-TE={pairs(tmp_path / 'DUTS-TE', 'im', 'gt')}").layout == "im-gt"


def test_mixed_extensions_and_stem_case(tmp_path):
    root = tmp_path / "mixed"
    image(root / "im" / "a.JPG")
    image(root / "im" / "b.bmp")
    image(root / "im" / "Cat.png")
    mask(root / "gt" / "a.png")
    mask(root / "gt" / "b.bmp")
    mask(root / "gt" / "cat.png")
    dataset = open_dataset(f"x={root}")
    assert dataset.names == ["Cat", "a", "b"] and not dataset.report
    assert {p.image.suffix for p in dataset.pairs} == {".JPG", ".bmp", ".png"}


def test_missing_pairs_are_reported_with_names(tmp_path):
    root = pairs(tmp_path / "set", "im", "gt", stems=("ok",))
    for k in range(7):
        image(root / "im" / f"lonely{k}.jpg")
    mask(root / "gt" / "orphan.png")
    with pytest.warns(UserWarning) as caught:
        dataset = open_dataset(f"set={root}")
    message = str(caught[0].message)
    assert dataset.names == ["ok"]
    assert "7 image(s) without ground truth (lonely0, lonely1, lonely2, lonely3, lonely4, ...)" in message
    assert "1 ground-truth mask(s) without image (orphan)" in message and "1 complete pairs" in message
    assert dataset.report.images_without_gt[:2] == ["lonely0", "lonely1"]
    with pytest.raises(DatasetError, match="without ground truth"):
        open_dataset(f"set={root}", on_missing="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_dataset(f"set={root}", on_missing="ignore")


def test_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(f"x={tmp_path / 'nowhere'}")
    (tmp_path / "odd" / "photos").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"(?s)no known layout \(sub-folders photos.*im/ \+ gt/"):
        open_dataset(f"x={tmp_path / 'odd'}")
    only_images = tmp_path / "nopairs"
    image(only_images / "im" / "a.jpg")
    (only_images / "gt").mkdir()
    with pytest.raises(DatasetError, match="no image/mask pair: 1 image"):
        open_dataset(f"x={only_images}")
    dup = pairs(tmp_path / "dup", "im", "gt", stems=("a",))
    image(dup / "im" / "a.png")
    with pytest.raises(DatasetError, match="share the stem 'a'"):
        open_dataset(f"x={dup}")
    with pytest.raises(DatasetError, match="unknown layout 'nope'"):
        open_dataset(f"x={dup}", layout="nope")


def test_mask_reading_conventions(tmp_path):
    mask(tmp_path / "01.png", values=(0, 1))
    assert set(np.unique(read_mask(tmp_path / "01.png"))) == {0, 255}  # a 0/1 mask would read as empty
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert (read_mask(tmp_path / "rgb.png") == 255).all()  # channel 0, as HQ-SAM's loader
    Image.fromarray(np.full((4, 6), 255, np.uint8)).convert("1").save(tmp_path / "bits.png")
    assert (read_mask(tmp_path / "bits.png") == 255).all()
    root = tmp_path / "sizes"
    image(root / "im" / "a.jpg", size=(6, 4))
    mask(root / "gt" / "a.png", size=(5, 4))
    with pytest.raises(DatasetError, match="mask a.png is 5x4 but image a.jpg is 6x4"):
        open_dataset(f"x={root}")[0]


def test_spec_and_split_parsing(tmp_path):
    assert parse_spec(f"DIS-VD={tmp_path}") == ("DIS-VD", tmp_path)
    assert parse_spec(str(tmp_path / "ecssd")) == ("ecssd", tmp_path / "ecssd")
    cases = {"DIS-VD": "val", "DIS-TE3": "test", "ThinObject5K-TR": "train", "HRSOD_test": "test",
             "UHRSD_TR_2K": "train", "BIG_val": "val", "ecssd": None, "COIFT": None}
    assert {name: split_from_name(name) for name in cases} == cases


def test_shared_real_data():
    ecssd = open_dataset(f"ECSSD={data_path('ecssd')}")
    assert len(ecssd) == 800 and ecssd.names[0] == "0001" and not ecssd.report and ecssd[0].ignore is None

    grabcut = open_dataset(str(data_path("grabcut")))  # named after its folder: GrabCut, with the ignore band
    assert grabcut.layout == "grabcut" and len(grabcut) == 50 and not grabcut.report
    assert {p.image.suffix for p in grabcut.pairs} >= {".jpg", ".bmp"}
    sample = grabcut[grabcut.names.index("124080")]
    assert sample.ignore.sum() == 2503 and (sample.gt[sample.ignore] == 128).all()

    dis = open_dataset(f"DIS={data_path('dis5k_samples')}")
    assert len(dis) == 3 and dis.names[0].startswith("1#Accessories#1#Bag")
