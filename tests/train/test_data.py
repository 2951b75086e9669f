"""TrainingSet / Augmentation: LSJ geometry and padding, seeding by (seed, epoch, index), layouts, collation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from finesam.errors import InvalidInputError
from finesam.train.data import Augmentation, TrainingSet, collate_samples, sample_rng

ECSSD = Path(__file__).resolve().parents[3] / "shared" / "data" / "ecssd"


def write_pair(image_dir: Path, gt_dir: Path, stem: str, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image_dir / f"{stem}.png")
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 5 : width // 2] = 255
    Image.fromarray(mask).save(gt_dir / f"{stem}.png")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """An im/ + gt/ folder with 3 small non-square pairs."""
    root = tmp_path_factory.mktemp("small_set")
    for index, (height, width) in enumerate([(32, 64), (60, 45), (50, 50)]):
        write_pair(root / "im", root / "gt", f"s{index}", height, width, index)
    return root


def fixed(scale: float, flip: float = 0.0, **kwargs) -> Augmentation:
    return Augmentation(flip_probability=flip, scale_range=(scale, scale), **kwargs)


def test_lsj_resizes_the_long_side_and_pads_bottom_right(small_set):
    dataset = TrainingSet([("mine", small_set)], fixed(0.5, truncate_to_uint8=False), seed=0)
    sample = dataset[0]  # s0: 32 x 64 (h x w)
    assert sample["name"] == "mine/s0" and sample["index"] == 0 and sample["epoch"] == 0
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 1024, 1024)
    assert sample["label"].dtype == torch.float32 and sample["label"].shape == (1, 1024, 1024)
    assert sample["content_size"].tolist() == [256, 512]  # long side round(0.5 * 1024), aspect kept
    image, label = sample["image"], sample["label"]
    assert (image[:, 256:] == 128).all() and (image[:, :, 512:] == 128).all()
    assert (label[:, 256:] == 0).all() and (label[:, :, 512:] == 0).all()
    # the content is the official bilinear resize (F.interpolate, align_corners=False)
    def official(path: Path) -> np.ndarray:
        values = torch.from_numpy(np.asarray(Image.open(path)).astype(np.float32))
        values = values.permute(2, 0, 1) if values.ndim == 3 else values[None]
        return torch.nn.functional.interpolate(values[None], (256, 512), mode="bilinear", align_corners=False)[0].numpy()

    np.testing.assert_allclose(image[:, :256, :512].numpy(), official(small_set / "im" / "s0.png"), atol=0.05)
    soft = label[0, :256, :512].numpy()
    np.testing.assert_allclose(soft, official(small_set / "gt" / "s0.png")[0], atol=0.05)
    assert ((soft > 0) & (soft < 255)).any(), "the label stays soft (bilinear), not binarised"


@pytest.mark.parametrize("source, scale", [((30, 64), 1.0), ((300, 200), 0.9), ((700, 1000), 0.1), ((64, 64), 0.5)])
def test_resize_matches_the_official_bilinear_interpolation(source, scale):
    """Upscales, downscales, an exact 2x downscale: as F.interpolate(bilinear, align_corners=False)."""
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(3, *source, generator=generator) * 255).floor()
    label = (torch.rand(1, *source, generator=generator) > 0.5).float() * 255
    out_image, out_label, (height, width) = fixed(scale, truncate_to_uint8=False)(image, label, np.random.default_rng(0))
    assert max(height, width) == round(scale * 1024)
    for result, values in ((out_image, image), (out_label, label)):
        expected = torch.nn.functional.interpolate(values[None], (height, width), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(result[:, :height, :width], expected, atol=0.05, rtol=0)  # OpenCV float weights: < 1e-4 of the range


def test_large_scales_are_cropped_to_1024_and_flip_mirrors(small_set):
    dataset = TrainingSet([("mine", small_set)], fixed(2.0), seed=0)
    assert dataset[1]["content_size"].tolist() == [1024, 1024]  # 2048 x 1536 cropped
    plain = TrainingSet([("mine", small_set)], fixed(0.5, truncate_to_uint8=False), seed=0)[2]
    flipped = TrainingSet([("mine", small_set)], fixed(0.5, flip=1.0, truncate_to_uint8=False), seed=0)[2]
    assert plain["content_size"].tolist() == [512, 512]
    torch.testing.assert_close(flipped["image"][:, :512, :512], plain["image"][:, :512, :512].flip(-1), atol=1e-3, rtol=0)
    torch.testing.assert_close(flipped["label"][:, :512, :512], plain["label"][:, :512, :512].flip(-1), atol=1e-3, rtol=0)
    assert not torch.allclose(flipped["image"], plain["image"])


def test_hq_truncates_the_image_to_integers_and_pi_keeps_floats(small_set):
    hq = TrainingSet([("mine", small_set)], Augmentation.hq(), seed=3)[1]["image"]
    pi = TrainingSet([("mine", small_set)], Augmentation.pi(), seed=3)[1]["image"]
    assert torch.equal(hq, hq.floor()) and 0 <= hq.min() and hq.max() <= 255
    assert not torch.equal(pi, pi.floor())
    assert Augmentation.pi().scale_range == (0.8, 1.6) and Augmentation.hq().scale_range == (0.1, 2.0)


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("image", "label", "content_size")) and a["name"] == b["name"]


def test_samples_depend_only_on_seed_epoch_and_index(small_set):
    augment = Augmentation(scale_range=(0.2, 0.6))  # small scales keep the test fast
    first = TrainingSet([("mine", small_set)], augment, seed=7)
    forward = [first[i] for i in range(3)]
    second = TrainingSet([("mine", small_set)], augment, seed=7)
    backward = [second[i] for i in reversed(range(3))][::-1]
    assert all(same(a, b) for a, b in zip(forward, backward))
    first.set_epoch(1)
    later = first[0]
    assert later["epoch"] == 1 and not same(later, forward[0])
    first.set_epoch(0)
    assert same(first[0], forward[0])
    other_seed = TrainingSet([("mine", small_set)], augment, seed=8)[0]
    assert not same(other_seed, forward[0])
    # data-loader workers draw the same samples
    loader = DataLoader(second, batch_size=3, num_workers=2, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert torch.equal(batch["image"], torch.stack([s["image"] for s in forward]))


def test_random_streams_are_separate():
    draws = {purpose: sample_rng(1, 2, 3, purpose).random() for purpose in ("augment", "prompt", "clicks", "loss")}
    assert len(set(draws.values())) == 4
    assert sample_rng(1, 2, 3, "prompt").random() == draws["prompt"]
    with pytest.raises(InvalidInputError, match="seed must be a non-negative integer"):
        sample_rng(-1, 0, 0)


def test_crops_keep_some_foreground(tmp_path):
    write_pair(tmp_path / "im", tmp_path / "gt", "corner", 100, 100, 0)  # object in rows 25..49, cols 20..49
    dataset = TrainingSet([("mine", tmp_path)], fixed(2.0), seed=0)  # 2048 px: crops of 1024 often miss it
    for epoch in range(6):
        dataset.set_epoch(epoch)
        assert (dataset[0]["label"] > 128).any()


def test_prompts_and_collation(small_set):
    dataset = TrainingSet([("mine", small_set)], Augmentation.hq(), seed=0, prompt_kinds=("box",))
    batch = collate_samples([dataset[0], dataset[2]])
    assert batch["image"].shape == (2, 3, 1024, 1024) and batch["label"].shape == (2, 1, 1024, 1024)
    assert batch["content_size"].shape == (2, 2) and batch["index"].tolist() == [0, 2]
    assert batch["epoch"].dtype == torch.int64 and batch["name"] == ["mine/s0", "mine/s2"]
    for prompt, size in zip(batch["prompt"], batch["content_size"]):
        x0, y0, x1, y1 = prompt["boxes"][0].tolist()
        assert prompt["kind"] == "box" and 0 <= x0 <= x1 < size[1] and 0 <= y0 <= y1 < size[0]
    with pytest.raises(InvalidInputError, match="empty list"):
        collate_samples([])


def test_named_training_layouts_pick_the_training_split(tmp_path):
    root = tmp_path / "ThinObject5K"
    write_pair(root / "images_train", root / "masks_train", "a", 20, 30, 0)
    write_pair(root / "images_train", root / "masks_train", "b", 20, 30, 1)
    write_pair(root / "images_test", root / "masks_test", "c", 20, 30, 2)
    flat = tmp_path / "DUTS-TR"
    write_pair(flat, flat, "d", 20, 30, 3)  # image and mask in one folder (cascade_psp)
    Image.open(flat / "d.png").convert("RGB").save(flat / "d.jpg")
    write_pair(tmp_path / "x" / "im", tmp_path / "x" / "gt", "e", 20, 30, 4)
    dataset = TrainingSet([("ThinObject5K-TR", root), ("DUTS-TR", flat), ("custom", tmp_path / "x")], fixed(0.1), seed=0)
    assert len(dataset) == 4
    assert [dataset[i]["name"] for i in range(4)] == ["ThinObject5K-TR/a", "ThinObject5K-TR/b", "DUTS-TR/d", "custom/e"]
    assert TrainingSet([("ThinObject5K", root)], fixed(0.1), seed=0)[0]["name"] == "ThinObject5K/a"  # train by default


def test_real_ecssd_images():
    if not ECSSD.is_dir():
        pytest.skip(f"real images not found at {ECSSD}")
    dataset = TrainingSet([("ECSSD", ECSSD)], Augmentation.pi(), seed=0, prompt_kinds=("box",))
    assert len(dataset) == 800
    sample = dataset[0]
    height, width = sample["content_size"].tolist()
    assert 0.8 * 1024 - 1 <= max(height, width) <= 1024
    assert (sample["label"] > 128).sum() > 1000 and sample["prompt"]["boxes"].shape == (1, 4)


def test_bad_arguments_are_refused(small_set, tmp_path):
    with pytest.raises(InvalidInputError, match="at least one source"):
        TrainingSet([], Augmentation.hq(), seed=0)
    with pytest.raises(InvalidInputError, match="scale_range"):
        Augmentation(scale_range=(2.0, 1.0))
    with pytest.raises(InvalidInputError, match="flip_probability"):
        Augmentation(flip_probability=1.5)
    with pytest.raises(InvalidInputError, match="unique"):
        TrainingSet([("a", small_set), ("a", small_set)], Augmentation.hq(), seed=0)
    with pytest.raises(InvalidInputError, match="does not exist"):
        TrainingSet([("a", tmp_path / "missing")], Augmentation.hq(), seed=0)
    with pytest.raises(InvalidInputError, match="prompt_kinds"):
        TrainingSet([("a", small_set)], Augmentation.hq(), seed=0, prompt_kinds=("scribble",))
    with pytest.raises(IndexError):
        TrainingSet([("a", small_set)], Augmentation.hq(), seed=0)[3]
    empty = tmp_path / "empty"
    write_pair(empty / "im", empty / "gt", "blank", 20, 20, 0)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(empty / "gt" / "blank.png")
    with pytest.raises(InvalidInputError, match="blank.*no foreground"):
        TrainingSet([("e", empty)], Augmentation.hq(), seed=0, prompt_kinds=("box",))[0]
