"""The training loop shared by every recipe: one process, or many under ``torchrun`` (DDP, gloo on
the CPU, NCCL on GPUs), resumable bit for bit from ``last.pt``.

Order of work in a step: read the batch (augmented by the data set, or cached features), encode
with the frozen encoder (skipped with cached features), per sample draw the prompt and run the
decoder, the recipe's loss, backward (DDP averages the gradients over processes), Adam step.
``--recipe distill`` swaps in the pieces of :mod:`.distill` (images without labels, a teacher,
the student's encoder and the embedding MSE) at the places marked "distillation".
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..checkpoints.download import sha256_of
from ..checkpoints.files import save_atomically
from ..devices import resolve_device
from ..distributed import DistributedContext, barrier, broadcast_from_main, init_distributed, process_device, shutdown
from ..data.folders import DatasetError
from ..errors import FinesamError, InvalidInputError
from ..loading import load
from ..modeling.sam import Sam
from ..outputs import check_output_dir, write_text_atomically
from ..registry import get_spec
from .data import Augmentation, TrainingSet, check_training_data, collate_samples
from .distill import (DistillStep, DistillValidation, build_distillation, check_distill_config, distill_images, distill_loader,
                      prepare_teacher_cache, teacher_embeddings)
from .final_checkpoint import export_final
from .feature_cache import EncodedViewCache, collate_cached
from .recipes import Recipe, get_recipe
from .step import TrainStep
from .validation import open_validation_sets, validate

LAST = "last.pt"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
RUN_INFO = "run.json"
LAST_FORMAT = "finesam-train-v2"
# Options that must match for --resume to continue the same run: everything that changes the
# arithmetic, the frozen base included (its source and the content hash of its files).
RESUME_KEYS = ("recipe", "model", "seed", "batch_size", "accumulate", "lr", "lr_drop_epoch", "epochs", "trainable", "data",
               "world_size", "cached_views", "cache_dtype", "bf16", "random_weights", "init", "init_sha256",
               "init_decoder", "init_decoder_sha256", "teacher")
# What last.pt must hold, and the types of its parts.
LAST_PARTS = {"format": str, "settings": dict, "trainable": dict, "optimizer": dict, "scheduler": dict, "position": dict}


@dataclass
class TrainConfig:
    """Everything a run needs; the command line maps one to one onto it (see ``finesam train --help``)."""

    recipe: str
    model: str
    out: Path
    data: list[tuple[str, Path]]
    init: Path | None = None
    init_decoder: Path | None = None
    random_weights: bool = False
    val: list[tuple[str, Path]] = field(default_factory=list)
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 42
    save_every: int = 0
    resume: bool = False
    cache_features: Path | None = None
    cached_views: int = 1
    cache_dtype: str = "float16"
    bf16: bool = False
    accumulate: int = 1
    lr_drop_epoch: int | None = None
    val_every: int = 0
    val_limit: int | None = None
    trainable: tuple[str, ...] = ()
    device: str = "auto"
    workers: int | None = None
    progress: bool = True
    teacher: str = "sam_vit_h"
    teacher_checkpoint: Path | None = None

    def resolved(self, recipe: Recipe, world_size: int) -> dict[str, Any]:
        """The settings that define the run (recorded in ``last.pt`` and ``run.json``, checked by
        ``--resume``). Hashes the ``--init`` files (a few seconds for ViT-H)."""
        def source(path: Path | None) -> tuple[str | None, str | None]:
            return (None, None) if path is None else (str(Path(path).resolve()), sha256_of(Path(path)))

        (init, init_sha256), (init_decoder, init_decoder_sha256) = source(self.init), source(self.init_decoder)
        return {
            "random_weights": bool(self.random_weights), "init": init, "init_sha256": init_sha256,
            "init_decoder": init_decoder, "init_decoder_sha256": init_decoder_sha256, "bf16": bool(self.bf16),
            "cache_dtype": self.cache_dtype if self.cache_features else None,
            "recipe": recipe.name, "model": self.model, "seed": self.seed,
            "batch_size": self.batch_size or recipe.batch_size, "accumulate": self.accumulate,
            "lr": self.lr if self.lr is not None else recipe.lr,
            "lr_drop_epoch": self.lr_drop_epoch or recipe.lr_drop_epochs,
            "epochs": self.epochs if self.epochs is not None else recipe.epochs,
            "trainable": list(self.trainable or recipe.trainable),
            "data": [[name, str(path)] for name, path in self.data], "world_size": world_size,
            "cached_views": self.cached_views if self.cache_features else 0,
            "teacher": [self.teacher, str(self.teacher_checkpoint)] if recipe.distills else None,
        }


@dataclass
class TrainResult:
    """What a finished run wrote and measured."""

    out: Path
    steps: int
    first_loss: float
    last_loss: float
    files: list[Path]
    validation: dict[str, float] = field(default_factory=dict)


def check_config(config: TrainConfig) -> Recipe:
    """Every option checked before a model is built or a file is written."""
    recipe = get_recipe(config.recipe)
    get_spec(config.model)
    if recipe.distills:  # distillation: teacher, student and their fit
        check_distill_config(config)
    elif config.teacher_checkpoint is not None:
        raise InvalidInputError(f"`teacher_checkpoint` goes with `recipe` distill, not `recipe` {recipe.name}",
                                parameters=("teacher_checkpoint", "recipe"))
    elif config.random_weights == (config.init is not None):
        raise InvalidInputError("pass exactly one of `init` FILE (the SAM/HQ/stage-1 weights to start from) and "
                                "`random_weights`", parameters=("init", "random_weights"))
    for name, path in (("init", config.init), ("init_decoder", config.init_decoder)):
        if path is not None and not Path(path).is_file():
            raise InvalidInputError(f"`{name}` {str(path)!r} is not a file", parameters=(name,))
    if not config.data:
        raise InvalidInputError("no training data: pass `data` NAME=PATH (repeatable)", parameters=("data",))
    for name, value in (("epochs", config.epochs), ("max_steps", config.max_steps), ("batch_size", config.batch_size),
                        ("accumulate", config.accumulate), ("lr_drop_epoch", config.lr_drop_epoch), ("cached_views", config.cached_views), ("workers", config.workers)):
        if value is not None and (not isinstance(value, int) or value < (0 if name == "workers" else 1)):
            raise InvalidInputError(f"`{name}` must be a positive integer, got {value!r}", parameters=(name,))
    for name, value in (("save_every", config.save_every), ("val_every", config.val_every)):
        if value < 0:
            raise InvalidInputError(f"`{name}` must be >= 0 (0: at the end of each epoch), got {value}", parameters=(name,))
    if config.lr is not None and not (math.isfinite(config.lr) and config.lr > 0):
        raise InvalidInputError(f"`lr` must be a positive finite number, got {config.lr}", parameters=("lr",))
    if config.val_limit is not None and (isinstance(config.val_limit, bool) or not isinstance(config.val_limit, int) or config.val_limit < 1):
        raise InvalidInputError(f"`val_limit` must be a positive integer (the first N validation images), got {config.val_limit!r}",
                                parameters=("val_limit",))
    if config.cache_dtype not in ("float16", "bfloat16"):
        raise InvalidInputError(f"`cache_dtype` must be float16 or bfloat16, got {config.cache_dtype!r}", parameters=("cache_dtype",))
    out = Path(config.out)
    check_output_dir(out)
    if config.resume and not (out / LAST).is_file():
        raise InvalidInputError(f"`resume`: {str(out / LAST)!r} does not exist; start the run without `resume`", parameters=("resume",))
    if not config.resume and (out / LAST).exists():
        raise InvalidInputError(f"{str(out)!r} already holds a run ({LAST}); pass `resume` to continue it or choose another `out`",
                                parameters=("resume", "out"))
    return recipe


def build_model(config: TrainConfig, recipe: Recipe, device: torch.device) -> Sam:
    """The model with the recipe's parts trainable (everything else frozen, ``requires_grad=False``)."""
    if config.random_weights:
        model = load(config.model, random_weights=True, seed=config.seed, device=device)
    else:  # a SAM file gives fresh decoder parts (drawn from --seed); an HQ / Pi / stage-1 file continues from its own
        model = load(config.model, config.init, decoder_checkpoint=config.init_decoder, device=device,
                     init_missing=get_spec(config.model).new_parts, seed=config.seed)
    recipe.check_model(config.model, model.capabilities, model.mask_decoder.new_parts)
    set_trainable(model, config.trainable or recipe.trainable)
    return model


def set_trainable(model: Sam, prefixes: Sequence[str]) -> list[str]:
    """Freeze every parameter except those under ``prefixes`` (finesam or official key names) that
    the model does not fix itself; returns the trainable names. Unknown prefixes are refused."""
    official_to_ours = {official: ours for official, ours in model.official_key_prefixes}
    names = [name for name, _ in model.named_parameters()]
    resolved = []
    for prefix in prefixes:
        mapped = next((ours + prefix[len(official):] for official, ours in official_to_ours.items() if prefix.startswith(official)), prefix)
        if not any(name.startswith(mapped) for name in names):
            raise InvalidInputError(
                f"`trainable` {prefix!r} matches no parameter of this model; use a state-dict prefix such as "
                f"'mask_decoder.' (the whole decoder) or an official key prefix of one HQ module", parameters=("trainable",)
            )
        resolved.append(mapped)
    fixed = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}  # fixed by design (Pi's Laplacian)
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in fixed and any(name.startswith(p) for p in resolved))
        if parameter.requires_grad:
            trainable.append(name)
    return trainable


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, epochs: int, drop_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's per-epoch schedule: StepLR (x gamma every ``drop_epoch``) or cosine over ``epochs``."""
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, drop_epoch, recipe.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


def epoch_batches(dataset_size: int, context: DistributedContext, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This rank's batches of data-set indices in ``epoch`` (shuffled by (seed, epoch); full batches only).

    Step k of every rank together covers the same samples as step k of one process with
    ``world_size`` times the batch size.
    """
    sampler = DistributedSampler(range(dataset_size), num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i : i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]


def default_workers(batch_size: int) -> int:
    """Official heuristic (1 for batch 1, 2 up to 4, 4 up to 8, else 8), bounded by the CPUs."""
    wanted = 1 if batch_size <= 1 else 2 if batch_size <= 4 else 4 if batch_size <= 8 else 8
    return min(wanted, max((os.cpu_count() or 1) - 1, 0))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per step (rank 0 writes). On resume, lines past the
    checkpoint's step are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, keep_until_step: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.rows: list[dict] = []
        if enabled and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if row.get("step", math.inf) <= keep_until_step:
                    self.rows.append(row)
        if enabled:
            write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in self.rows))
            self.handle = path.open("a")

    def append(self, row: dict) -> None:
        if self.enabled:
            self.rows.append(row)
            self.handle.write(json.dumps(row) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.enabled:
            self.handle.close()


def plot_losses(rows: list[dict], path: Path, loss_name: str = "loss (BCE + Dice)") -> Path:
    """The loss curve (per step) and, when there was validation, a panel of mIoU / mBIoU, as a PNG (written atomically)."""
    from ..evaluation.plot import Panel, Series, line_plot

    steps = [row["step"] for row in rows if "loss" in row]
    losses = [row["loss"] for row in rows if "loss" in row]
    top = max(losses, default=1.0) * 1.05 or 1.0
    panels = [Panel("training loss", [Series(loss_name, steps, losses)])]
    val = [(row["step"], row["val_miou"]) for row in rows if "val_miou" in row]
    if val:
        panels.append(Panel("validation", [Series("mIoU", *map(list, zip(*val))),
                                           Series("mBIoU", [r["step"] for r in rows if "val_mbiou" in r],
                                                  [r["val_mbiou"] for r in rows if "val_mbiou" in r])]))
    xmax = max(steps, default=1)
    return line_plot(path, panels, "step", "loss" if len(panels) == 1 else "value", (0, xmax), (0.0, max(top, 1.0) if val else top))


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Run ``config`` to the end (or to ``max_steps``); see the module docstring.

    ``on_step`` receives each step's metrics row (tests use it to stop a run).
    """
    recipe = check_config(config)
    device = resolve_device(config.device)
    context = init_distributed(device)
    try:
        device = process_device(device, context)
        # every draw comes from generators seeded by --seed; the fork keeps the caller's global
        # state untouched even if a library draws from it
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            return _train(config, recipe, device, context, on_step)
    finally:
        shutdown(context)


def _train(config: TrainConfig, recipe: Recipe, device: torch.device, context: DistributedContext,
           on_step: Callable[[dict], None] | None) -> TrainResult:
    settings = config.resolved(recipe, context.world_size)
    batch_size, epochs = settings["batch_size"], settings["epochs"]
    out = Path(config.out)
    if recipe.distills:  # distillation: images only, augmented as the predictor feeds the encoder
        dataset = distill_images(config)
    else:
        augmentation = Augmentation(scale_range=recipe.scale_range, truncate_to_uint8=recipe.truncate_to_uint8)
        dataset = TrainingSet(config.data, augmentation, seed=config.seed)
        check_training_data(dataset)  # every file's header, before the model loads
    if context.is_main:
        remove_partial_writes(out)  # an interrupted write's temporary files are never used again
    last_state = read_last(out / LAST, settings) if config.resume else None
    if len(dataset) < batch_size * context.world_size:
        raise InvalidInputError(
            f"{len(dataset)} training images cannot fill one step of {batch_size} x {context.world_size} processes; "
            "lower `batch_size` or add data", parameters=("batch_size",)
        )
    if config.val:
        open_validation_sets(config.val)
    teacher = distill_validation = None
    if recipe.distills:  # distillation: the student (decoder from the teacher) and the frozen teacher
        model, teacher = build_distillation(config, recipe, device)
        distill_validation = DistillValidation(teacher, config.val, config.val_limit, context) if config.val else None
    else:
        model = build_model(config, recipe, device)
    if context.is_main:  # the first file of the run, once every option and the model are accepted
        write_text_atomically(out / RUN_INFO, json.dumps({"settings": settings, "command": config_record(config)}, indent=1) + "\n")
    cache = None
    if config.cache_features and recipe.distills:
        cache = prepare_teacher_cache(Path(config.cache_features), teacher, dataset, config, settings, context,
                                      dtype=getattr(torch, config.cache_dtype), progress=config.progress)
        teacher = None  # every embedding it gives is cached: free its memory
    elif config.cache_features:
        cache = EncodedViewCache.prepare(Path(config.cache_features), model, dataset, config, settings, context,
                                     dtype=getattr(torch, config.cache_dtype), progress=config.progress)
    step_module = DistillStep(model) if recipe.distills else TrainStep(model, recipe, config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = make_scheduler(optimizer, recipe, epochs, settings["lr_drop_epoch"])
    runner: torch.nn.Module = step_module
    if context.enabled:
        runner = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(config.trainable),
        )
    start_epoch, start_batch, global_step = 0, 0, 0
    if last_state is not None:
        start_epoch, start_batch, global_step = restore_last(last_state, out / LAST, model, optimizer, scheduler)
    log = MetricsLog(out / METRICS, global_step, context.is_main)
    steps_per_epoch = len(epoch_batches(len(dataset), context, batch_size, config.seed, 0)) // config.accumulate
    total_steps = min(epochs * steps_per_epoch, config.max_steps or math.inf)
    if steps_per_epoch == 0:
        raise InvalidInputError(f"`accumulate` {config.accumulate} exceeds the {len(dataset)} images' batches per epoch",
                                parameters=("accumulate",))
    workers = default_workers(batch_size) if config.workers is None else config.workers
    progress = _progress(total_steps, global_step, enabled=config.progress and context.is_main)
    losses = [row["loss"] for row in log.rows if "loss" in row]
    first_loss = losses[0] if losses else None
    last_loss = losses[-1] if losses else None
    validation: dict[str, float] = {}
    if distill_validation and global_step == 0:  # distillation: where the student starts (row "step": 0, no loss)
        validation = distill_validation(model, context)
        log.append({"step": 0, "epoch": 0, **{f"val_{k}": v for k, v in validation.items()}, "time": time.time()})
    done = global_step >= total_steps
    epoch = start_epoch
    while not done and epoch < epochs:
        batches = epoch_batches(len(dataset), context, batch_size, config.seed, epoch)
        batches = batches[: steps_per_epoch * config.accumulate]
        skip = start_batch if epoch == start_epoch else 0
        if recipe.distills:
            loader = distill_loader(dataset, cache, batches[skip:], epoch, workers)
        else:
            loader = _loader(dataset, cache, batches[skip:], epoch, workers, config.seed)
        micro = skip % config.accumulate
        optimizer.zero_grad(set_to_none=True)
        for batch_number, batch in enumerate(_one_line_errors(loader), start=skip):
            sync = (micro + 1) % config.accumulate == 0
            # micro-batches before the last only accumulate: DDP skips their gradient all-reduce
            accumulate_only = runner.no_sync() if not sync and context.enabled else nullcontext()
            with accumulate_only, torch.autocast(device.type, torch.bfloat16, enabled=config.bf16):
                if recipe.distills:  # distillation: the student's embedding against the teacher's
                    result = runner(batch["image"].to(device), teacher_embeddings(teacher, batch, device))
                else:
                    features = cache.features(batch, device) if cache else step_module.encode(batch["image"].to(device))
                    result = runner(features, batch["label"].to(device), [int(i) for i in batch["index"]], epoch)
                (result["loss"] / config.accumulate).backward()
            micro += 1
            if not sync:
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            micro = 0
            global_step += 1
            row = {"step": global_step, "epoch": epoch, "loss": _mean_over_ranks(result["loss"].detach(), context),
                   **{term: _mean_over_ranks(result[term], context) for term in ("bce", "dice") if term in result},
                   "lr": optimizer.param_groups[0]["lr"], "time": time.time()}
            first_loss = row["loss"] if first_loss is None else first_loss
            last_loss = row["loss"]
            epoch_done = batch_number + 1 == len(batches)
            if config.val and ((config.val_every and global_step % config.val_every == 0) or (not config.val_every and epoch_done)
                               or global_step >= total_steps):
                validation = (distill_validation(model, context) if distill_validation
                              else validate(step_module, config.val, recipe, limit=config.val_limit, context=context))
                row.update({f"val_{k}": v for k, v in validation.items()})
            log.append(row)
            progress.update(1)
            progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", epoch=epoch)
            if on_step:
                on_step(row)
            finished = global_step >= total_steps
            if epoch_done:
                scheduler.step()
            if (config.save_every and global_step % config.save_every == 0) or epoch_done or finished:
                next_epoch, next_batch = (epoch + 1, 0) if epoch_done else (epoch, batch_number + 1)
                save_last(out / LAST, model, optimizer, scheduler, settings, next_epoch, next_batch, global_step, context)
            if finished:
                done = True
                break
        epoch += 1
    progress.close()
    log.close()
    files: list[Path] = []
    barrier(context)
    if context.is_main:
        files.append(plot_losses(log.rows, out / LOSS_PLOT, "embedding MSE" if recipe.distills else "loss (BCE + Dice)"))
        files.extend(export_final(model, out, config.model))
        files.append(out / LAST)
    files = broadcast_from_main(files, context)
    return TrainResult(out, global_step, float(first_loss or math.nan), float(last_loss or math.nan), files, validation)


def _loader(dataset: TrainingSet, cache: "EncodedViewCache | None", batches: list[list[int]], epoch: int, workers: int,
            seed: int) -> DataLoader:
    # the loader's own base seed (workers' seeds) from (seed, epoch), not from the global generator
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if cache is not None:
        return DataLoader(cache.epoch_view(epoch), batch_sampler=batches, num_workers=workers, collate_fn=collate_cached,
                          generator=generator)
    dataset.set_epoch(epoch)  # workers copy the data set, epoch included, when the loader starts
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_samples, generator=generator)


def _one_line_errors(loader: DataLoader):
    """The loader's batches; a data error raised in a worker process comes back as its own
    one-line message (the loader wraps it in the worker's traceback)."""
    try:
        yield from loader
    except FinesamError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].startswith("Caught "):  # "...Error: <the original message>"
            raise DatasetError(lines[-1].split(": ", 1)[-1]) from None
        raise


def config_record(config: TrainConfig) -> dict[str, Any]:
    """The run's options as JSON values (``run.json``)."""
    return {key: (str(value) if isinstance(value, Path) else
                  [[n, str(p)] for n, p in value] if key in ("data", "val") else list(value) if isinstance(value, tuple) else value)
            for key, value in vars(config).items()}


def remove_partial_writes(out: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``out`` (``.last.pt.*.part``
    and the like); returns them."""
    leftovers = [path for path in out.glob(".*.part") if path.is_file()
                 and path.name.startswith(tuple(f".{name}." for name in (LAST, METRICS, RUN_INFO, LOSS_PLOT)))]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _mean_over_ranks(value: torch.Tensor, context: DistributedContext) -> float:
    if context.enabled:
        value = value.detach().clone().float()
        torch.distributed.all_reduce(value)
        value /= context.world_size
    return float(value)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)


def save_last(path: Path, model: Sam, optimizer: torch.optim.Optimizer, scheduler: Any, settings: dict,
              epoch: int, batch: int, global_step: int, context: DistributedContext) -> None:
    """``last.pt``: settings (seed included), trainable weights, optimiser, scheduler and the
    sampler position (the next epoch and batch), written atomically by rank 0. No global random
    state: every draw derives from (seed, epoch, sample)."""
    if not context.is_main:
        return
    trainable = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
    save_atomically({
        "format": LAST_FORMAT,
        "settings": settings,
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "position": {"epoch": epoch, "batch": batch, "step": global_step},
    }, path)


def _damaged(path: Path, reason: str) -> InvalidInputError:
    return InvalidInputError(
        f"cannot resume from {str(path)!r}: {reason}; move it away (or choose another `out`) to start the run again",
        parameters=("out",)
    )


def read_last(path: Path, settings: dict) -> dict:
    """Read and check ``last.pt`` before the model loads: its parts, and that the run's settings
    equal the saved ones (one line naming each difference)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding objects weights_only refuses
        raise _damaged(path, f"it is not a readable finesam training checkpoint ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from None
    if not isinstance(state, dict):
        raise _damaged(path, f"it holds a {type(state).__name__}, not a finesam training checkpoint")
    if state.get("format") != LAST_FORMAT:
        raise _damaged(path, f"its format is {state.get('format')!r}, not {LAST_FORMAT!r}")
    wrong = [f"{key} (missing)" if key not in state else f"{key} (a {type(state[key]).__name__})"
             for key, kind in LAST_PARTS.items() if not isinstance(state.get(key), kind)]
    if wrong:
        raise _damaged(path, "it lacks or mangles " + ", ".join(wrong))
    position = state["position"]
    if not all(isinstance(position.get(key), int) and position[key] >= 0 for key in ("epoch", "batch", "step")):
        raise _damaged(path, f"its position {position!r} is not (epoch, batch, step) counts")
    if not all(isinstance(value, torch.Tensor) for value in state["trainable"].values()):
        raise _damaged(path, "its trainable weights are not all tensors")
    saved = state["settings"]
    changed = [key for key in RESUME_KEYS if saved.get(key) != settings.get(key)]
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {settings.get(key)!r}" for key in changed)
        raise InvalidInputError(f"`resume` with different settings ({details}); rerun with the original options "
                                f"or start a new run in another `out`", parameters=("resume", "out"))
    return state


def restore_last(state: dict, path: Path, model: Sam, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[int, int, int]:
    """Put a :func:`read_last` state into the model, optimiser and scheduler; returns (epoch,
    batch within the epoch, global step) to continue from."""
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    trainable = state["trainable"]
    if trainable.keys() != parameters.keys():
        missing, extra = sorted(parameters.keys() - trainable.keys()), sorted(trainable.keys() - parameters.keys())
        raise _damaged(path, f"its trainable weights do not match this run's (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, value in trainable.items():
        if value.shape != parameters[name].shape:
            raise _damaged(path, f"{name} has shape {tuple(value.shape)}, the model's is {tuple(parameters[name].shape)}")
    with torch.no_grad():
        for name, value in trainable.items():
            parameters[name].copy_(value)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except Exception as error:
        raise _damaged(path, f"its optimizer or scheduler state does not fit ({type(error).__name__}: {error})") from None
    for parameter in parameters.values():  # Adam's moments must have their parameter's shape
        moments = optimizer.state.get(parameter, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in moments and moments[key].shape != parameter.shape:
                raise _damaged(path, f"its optimizer state has a {key} of shape {tuple(moments[key].shape)} "
                                     f"for a parameter of shape {tuple(parameter.shape)}")
    position = state["position"]
    return position["epoch"], position["batch"], position["step"]
