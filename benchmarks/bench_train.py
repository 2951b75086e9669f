"""Seconds per training step of the ``hq`` recipe, measured in one run:

1. the official loop's work: ``segment_anything_hq``'s model, its frozen encoder run on every
   step (no grad), its ``MaskDecoderHQ`` with the HQ parameters trainable, the same loss, backward
   and an Adam step;
2. ours without a feature cache (``finesam train`` as it runs without ``--cache-features``);
3. ours with cached features (the encoder outputs read from disk, as with ``--cache-features``).

Same augmented images (real ones from ../shared/data/ecssd), same box prompts, random weights.

With ``--recipe distill``: seconds per step of ``--recipe distill`` (MobileSAM's TinyViT student
against a SAM teacher, ``--teacher vit_b|vit_l|vit_h``, random weights), with the teacher run every
step and with its embeddings read from the feature cache, and their ratio (no official code exists).

    .venv/bin/python benchmarks/bench_train.py [--model vit_b|vit_tiny] [--batch-size 1] [--steps 3]
    .venv/bin/python benchmarks/bench_train.py --recipe distill [--teacher vit_b] [--batch-size 1] [--steps 3]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

import finesam
from finesam.distributed import SINGLE_PROCESS
from finesam.train.data import Augmentation, TrainingSet, collate_samples
from finesam.train.distill import DistillStep, collate_distill, distill_images, prepare_teacher_cache, teacher_embeddings
from finesam.train.engine import set_trainable
from finesam.train.feature_cache import EncodedViewCache, collate_cached
from finesam.train.losses import point_sampled_mask_loss
from finesam.train.recipes import get_recipe
from finesam.train.step import TrainStep

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecssd"
OURS = {"vit_b": "hq_vit_b", "vit_tiny": "hq_vit_tiny"}


def official_step_fn(model, images, labels, boxes, optimizer):
    """One step of the official HQ-SAM training loop's computation."""
    with torch.no_grad():
        x = torch.stack([model.preprocess(image) for image in images])
        embeddings, interm = model.image_encoder(x)
        sparse_dense = [model.prompt_encoder(points=None, boxes=box[None], masks=None) for box in boxes]
    bce = dice = 0.0
    for b in range(len(images)):
        logits, _ = model.mask_decoder(
            image_embeddings=embeddings[b : b + 1], image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_dense[b][0], dense_prompt_embeddings=sparse_dense[b][1],
            multimask_output=False, hq_token_only=True, interm_embeddings=[f[b : b + 1] for f in interm],
        )
        loss_bce, loss_dice = point_sampled_mask_loss(logits, labels[b : b + 1] / 255.0, 1)
        bce, dice = bce + loss_bce, dice + loss_dice
    loss = (bce + dice) / len(images)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def bench_distill(args, root: Path, tmp: Path) -> None:
    """The distill step with the teacher run every step, then with cached teacher embeddings."""
    teacher_name = f"sam_{args.teacher}"
    teacher_file = finesam.save(finesam.load(teacher_name, random_weights=True), tmp / "teacher.pth")

    class Config:  # what the distillation pieces read of a run's settings
        model, teacher, teacher_checkpoint, data, seed, cached_views = "mobile_sam", teacher_name, teacher_file, [("bench", root)], 0, 1

    images = distill_images(Config)
    teacher = finesam.load(teacher_name, teacher_file)
    student = finesam.load("mobile_sam", random_weights=True)
    set_trainable(student, get_recipe("distill").trainable)
    step = DistillStep(student)
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    batch = collate_distill([images[i] for i in range(args.batch_size)])

    def distill_step(targets_fn) -> None:
        result = step(batch["image"], targets_fn())
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()

    fresh_seconds = timed(lambda: distill_step(lambda: teacher_embeddings(teacher, batch, student.device)), args.steps)
    cache = prepare_teacher_cache(tmp / "cache", teacher, images, Config, {"data": [["bench", str(root)]]}, SINGLE_PROCESS,
                                  torch.float16, progress=False)
    view = cache.epoch_view(0)
    cached_seconds = timed(lambda: distill_step(
        lambda: teacher_embeddings(None, collate_cached([view[i] for i in range(args.batch_size)]), student.device)), args.steps)
    print()
    print(f"| distill step (mobile_sam student, {teacher_name} teacher) | s / step | vs teacher every step |")
    print("|---|---|---|")
    print(f"| teacher run every step | {fresh_seconds:.2f} | 1.00x |")
    print(f"| cached teacher embeddings (--cache-features) | {cached_seconds:.2f} | {fresh_seconds / cached_seconds:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="hq", choices=("hq", "distill"))
    parser.add_argument("--model", default="vit_b", choices=tuple(OURS))
    parser.add_argument("--teacher", default="vit_b", choices=("vit_b", "vit_l", "vit_h"), help="distill: the SAM teacher")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"AMX {'yes' if 'amx_bf16' in flags else 'no'}, AVX512-BF16 {'yes' if 'avx512_bf16' in flags else 'no'}")
    print(f"{'teacher ' + args.teacher if args.recipe == 'distill' else 'model ' + args.model}, batch {args.batch_size}, "
          f"{args.steps} timed steps after one warm-up, images from {DATA}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "im").mkdir(parents=True)
        (root / "gt").mkdir()
        for stem in ("0001", "0002", "0003", "0004")[: max(args.batch_size, 1)]:
            (root / "im" / f"{stem}.jpg").symlink_to(DATA / "im" / f"{stem}.jpg")
            (root / "gt" / f"{stem}.png").symlink_to(DATA / "gt" / f"{stem}.png")
        if args.recipe == "distill":
            bench_distill(args, root, Path(tmp))
            return
        dataset = TrainingSet([("bench", root)], Augmentation.hq(), seed=0)
        batch = collate_samples([dataset[i] for i in range(args.batch_size)])
        boxes = [torch.tensor([20.0, 20.0, 600.0, 500.0]) for _ in range(args.batch_size)]

        from segment_anything_hq import sam_model_registry

        official = sam_model_registry[args.model]().eval()
        for name, parameter in official.named_parameters():
            parameter.requires_grad_(any(part in name for part in ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")))
        official_optimizer = torch.optim.Adam([p for p in official.parameters() if p.requires_grad], lr=1e-3)
        official_seconds = timed(lambda: official_step_fn(official, list(batch["image"]), batch["label"], boxes, official_optimizer), args.steps)
        del official

        recipe = get_recipe("hq")
        model = finesam.load(OURS[args.model], random_weights=True)
        set_trainable(model, recipe.trainable)
        step = TrainStep(model, recipe, seed=0)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        indices = list(range(args.batch_size))

        def ours_step(features_fn) -> None:
            result = step(features_fn(), batch["label"], indices, 0)
            optimizer.zero_grad()
            result["loss"].backward()
            optimizer.step()

        ours_seconds = timed(lambda: ours_step(lambda: step.encode(batch["image"])), args.steps)

        class Config:  # what EncodedViewCache.prepare reads of a run's settings
            model, init, init_decoder, random_weights, seed, cached_views = OURS[args.model], None, None, True, 0, 1

        cache = EncodedViewCache.prepare(Path(tmp) / "cache", model, dataset, Config, {"data": [["bench", str(root)]]},
                                     SINGLE_PROCESS, torch.float16, progress=False)
        view = cache.epoch_view(0)

        def cached_features():
            return cache.features(collate_cached([view[i] for i in indices]), model.device)

        cached_seconds = timed(lambda: ours_step(cached_features), args.steps)

    print()
    print("| loop | s / step | vs official |")
    print("|---|---|---|")
    print(f"| official (encoder every step) | {official_seconds:.2f} | 1.00x |")
    print(f"| finesam, no cache | {ours_seconds:.2f} | {official_seconds / ours_seconds:.2f}x |")
    print(f"| finesam, cached features | {cached_seconds:.3f} | {official_seconds / cached_seconds:.1f}x |")


if __name__ == "__main__":
    main()
