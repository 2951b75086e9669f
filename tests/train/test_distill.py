"""``--recipe distill`` (MobileSAM-style encoder distillation): it learns on real photos, writes an
official MobileSAM file that Light HQ-SAM training continues from, is exact (same command, SIGKILL
+ --resume, 2 processes x batch 1 == 1 x batch 2), and refuses bad input in one line.

Cheap models: a 128-pixel TinyViT student (one block per stage) and a 128-pixel two-block ViT
teacher with SAM's prompt encoder and decoder (embeddings 256 x 8 x 8), so that 200 steps take
well under two minutes; the official-layout test uses the real TinyViT with a one-block ViT teacher.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
import torch

import finesam
from finesam.checkpoints.files import read_state_dict
from finesam.cli import main
from finesam.registry import REGISTRY
from finesam.train.distill import init_student_encoder
from finesam.train.engine import LAST, METRICS, TrainConfig, train
from finesam.train.final_checkpoint import FINAL

from .conftest import ECSSD, PYTHON, subprocess_env
from .test_engine import free_port

# Builds and registers the small student and teacher; run here and in the subprocesses' runner.
SMALL_MODELS = """
import finesam
from finesam.modeling.decoders.sam.mask_decoder import MaskDecoder
from finesam.modeling.encoders.image_encoder import ImageEncoderViT
from finesam.modeling.encoders.tiny_vit import TinyViT
from finesam.modeling.prompt_encoder import PromptEncoder
from finesam.modeling.sam import Sam
from finesam.registry import REGISTRY, ModelSpec

SIZE = 128

def _sam(encoder):
    prompts = PromptEncoder(image_embedding_size=(SIZE // 16, SIZE // 16), input_image_size=(SIZE, SIZE))
    return Sam(encoder, prompts, MaskDecoder()).eval()

def small_student():
    return _sam(TinyViT(img_size=SIZE, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)))

def small_teacher():
    return _sam(ImageEncoderViT(img_size=SIZE, depth=2, embed_dim=64, num_heads=2, global_attn_indexes=(1,)))

DISTILL_MODELS = {
    "distill_test_student": ModelSpec(small_student),
    "distill_test_teacher": ModelSpec(small_teacher),
    # 1024-pixel teacher for the real TinyViT (mobile_sam): SAM ViT-B shrunk to one 64-wide block
    "distill_test_teacher_1024": REGISTRY["sam_vit_b"].with_encoder(depth=1, embed_dim=64, num_heads=2, global_attn_indexes=(0,)),
}

def register_distill_models():
    for name, spec in DISTILL_MODELS.items():
        finesam.register_model(name, spec, replace_existing=True)
"""
_namespace: dict = {}
exec(SMALL_MODELS, _namespace)
DISTILL_MODELS, register_distill_models = _namespace["DISTILL_MODELS"], _namespace["register_distill_models"]

RUNNER = SMALL_MODELS + """
import sys
register_distill_models()
from finesam.cli import main
sys.exit(main(sys.argv[1:]))
"""
STUDENT, TEACHER = "distill_test_student", "distill_test_teacher"
TEACHER_SEED = 11


@pytest.fixture(scope="module")
def distill_models():
    register_distill_models()
    yield
    for name in DISTILL_MODELS:
        finesam.unregister_model(name)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, distill_models):
    """The small teacher's seeded random weights, saved in the official layout."""
    return finesam.save(finesam.load(TEACHER, random_weights=True, seed=TEACHER_SEED),
                        tmp_path_factory.mktemp("teacher") / "teacher.pth")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = tmp_path_factory.mktemp("distill_runner") / "distill_runner.py"
    path.write_text(RUNNER)
    return path


def photo_folder(root, count: int, start: int = 1):
    """A plain folder of ``count`` real ECSSD photos (no masks), named from ``start``."""
    if not ECSSD.is_dir():
        pytest.skip(f"real images not found at {ECSSD}")
    root.mkdir(parents=True)
    for number in range(start, start + count):
        (root / f"{number:04d}.jpg").symlink_to(ECSSD / "im" / f"{number:04d}.jpg")
    return root


def val_folder(root, numbers):
    """An im/ + gt/ folder of ECSSD pairs (the validation boxes come from the masks)."""
    for sub in ("im", "gt"):
        (root / sub).mkdir(parents=True)
    for number in numbers:
        (root / "im" / f"{number:04d}.jpg").symlink_to(ECSSD / "im" / f"{number:04d}.jpg")
        (root / "gt" / f"{number:04d}.png").symlink_to(ECSSD / "gt" / f"{number:04d}.png")
    return root


def seeded_student(seed: int) -> dict:
    """The small student's state before training (its encoder drawn from ``seed`` as the recipe does)."""
    model = finesam.load(STUDENT, random_weights=True, seed=seed)
    init_student_encoder(model.image_encoder, seed)
    return model.state_dict()


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS).read_text().splitlines()]


def test_distillation_learns_on_real_photos(tmp_path, teacher_file):
    """200 steps on 200 real photos (teacher features cached, the teacher run once per image) halve the
    embedding MSE on 4 unseen photos; only the encoder learns, the decoder is the teacher's."""
    photos = photo_folder(tmp_path / "photos", 200)
    val = val_folder(tmp_path / "val", (601, 602, 603, 604))
    result = train(TrainConfig(
        recipe="distill", model=STUDENT, teacher=TEACHER, teacher_checkpoint=teacher_file, data=[("photos", photos)],
        val=[("val", val)], val_every=200, out=tmp_path / "run", cache_features=tmp_path / "cache", max_steps=200,
        epochs=1, batch_size=1, lr=3e-3, workers=0, progress=False, seed=5,
    ))
    assert result.steps == 200
    assert len(list((tmp_path / "cache").glob("*/*_v0.pt"))) == 200  # one teacher embedding per image
    log = rows(tmp_path / "run")
    start, end = log[0], log[-1]
    assert start["step"] == 0 and "loss" not in start and end["step"] == 200
    assert end["val_embedding_mse"] <= 0.5 * start["val_embedding_mse"], (start, end)
    losses = [row["loss"] for row in log[1:]]
    assert sum(losses[-20:]) / 20 < 0.75 * sum(losses[:20]) / 20  # the training loss falls too
    assert 0.0 <= end["val_mask_iou"] <= 1.0 and end["val_images"] == 4
    teacher = read_state_dict(teacher_file)
    student = read_state_dict(tmp_path / "run" / FINAL)
    initial = seeded_student(5)
    for key, value in student.items():
        if key.startswith(("prompt_encoder.", "mask_decoder.")):
            assert torch.equal(value, teacher[key]), key
        elif key.startswith(("image_encoder.neck.", "image_encoder.patch_embed.seq.0.c.")):
            assert not torch.equal(value, initial[key]), key


def test_mobile_sam_export_loads_officially_and_continues_to_light_hq_sam(tmp_path, distill_models, few_images):
    """The real TinyViT, one step: final.pth is a MobileSAM file (strict in segment_anything_hq's
    baseline vit_tiny and in finesam.load("mobile_sam")); --recipe hq on hq_vit_tiny continues from it."""
    sam_hq = pytest.importorskip("segment_anything_hq")
    teacher_file = finesam.save(finesam.load("distill_test_teacher_1024", random_weights=True, seed=TEACHER_SEED),
                                tmp_path / "teacher.pth")
    photos = photo_folder(tmp_path / "photos", 2)
    out = tmp_path / "mobile"
    train(TrainConfig(recipe="distill", model="mobile_sam", teacher="distill_test_teacher_1024", teacher_checkpoint=teacher_file,
                      data=[("photos", photos)], out=out, max_steps=1, batch_size=1, workers=0, progress=False, seed=2))
    state = read_state_dict(out / FINAL)
    official = sam_hq.sam_model_registry_baseline["vit_tiny"]()
    official.load_state_dict(state, strict=True)
    distilled = finesam.load("mobile_sam", out / FINAL).official_state_dict()
    teacher = read_state_dict(teacher_file)
    assert distilled.keys() == state.keys()
    assert all(torch.equal(distilled[k], teacher[k]) for k in distilled if k.startswith(("prompt_encoder.", "mask_decoder.")))

    hq_out = tmp_path / "light_hq"
    train(TrainConfig(recipe="hq", model="hq_vit_tiny", init=out / FINAL, data=[("few", few_images)], out=hq_out,
                      max_steps=1, batch_size=1, workers=0, progress=False, seed=2))
    hq_state = read_state_dict(hq_out / FINAL)
    sam_hq.sam_model_registry["vit_tiny"]().load_state_dict(hq_state, strict=True)
    for key, value in state.items():  # the distilled encoder and the teacher's SAM decoder, unchanged
        if key.startswith(("image_encoder.", "prompt_encoder.")):
            assert torch.equal(hq_state[key], value), key
    assert any(key.startswith("mask_decoder.hf_token") for key in hq_state)


# --- exactness (command-line subprocesses) --------------------------------------------------------
def _command(runner, teacher_file, data, *args: str) -> list[str]:
    return [PYTHON, str(runner), "train", "--recipe", "distill", "--model", STUDENT, "--teacher", TEACHER,
            "--teacher-checkpoint", str(teacher_file), "--data", f"few={data}", "--workers", "0", "--quiet",
            "--seed", "4", *args]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _final(out) -> dict:
    return read_state_dict(out / FINAL)


def test_every_way_of_running_a_command_gives_its_model(tmp_path, teacher_file, few_images, runner):
    """A reference run (batch 2, four steps over two epochs, teacher features cached), then the same
    command again and SIGKILL after step 3 + --resume (both bit for bit), and torchrun 2 x batch 1
    (<= 1e-5)."""
    # lr 1e-4: Adam's first steps are ~lr * sign(gradient), so for parameters whose true gradient is
    # zero (key biases before the softmax) the rounding noise of another summation order becomes a
    # step of up to ~1% of lr (measured: 1.6e-5 at lr 1e-3, in qkv biases and the neck)
    common = ["--max-steps", "4", "--lr", "1e-4", "--save-every", "1", "--cache-features", str(tmp_path / "cache")]

    def command(out: str, *args: str) -> list[str]:
        return _command(runner, teacher_file, few_images, *common, *args, "--out", str(tmp_path / out))

    for name in ("reference", "again"):
        _run(command(name, "--batch-size", "2"))
    killed = tmp_path / "killed"
    process = subprocess.Popen(command("killed", "--batch-size", "2"), env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (killed / METRICS).exists() and len((killed / METRICS).read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(rows(killed)) == 3
    _run(command("killed", "--batch-size", "2", "--resume"))
    assert [r["step"] for r in rows(killed)] == [1, 2, 3, 4]
    reference = _final(tmp_path / "reference")
    for name in ("again", "killed"):
        other = _final(tmp_path / name)
        assert other.keys() == reference.keys() and all(torch.equal(reference[k], other[k]) for k in reference), name
        assert [r["loss"] for r in rows(tmp_path / name)] == [r["loss"] for r in rows(tmp_path / "reference")], name

    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]
    _run(torchrun + command("two", "--batch-size", "1")[1:])
    two = _final(tmp_path / "two")
    initial = seeded_student(4)
    assert max(float((reference[k] - initial[k]).abs().max()) for k in reference if k.startswith("image_encoder.neck.")) > 5e-5
    worst = max(float((reference[k].float() - two[k].float()).abs().max()) for k in reference)
    assert worst <= 1e-5, worst


# --- refusals -------------------------------------------------------------------------------------
def test_bad_input_is_refused_in_one_line_before_work(tmp_path, teacher_file, few_images, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    other_teacher = finesam.save(finesam.load("distill_test_teacher_1024", random_weights=True, seed=1), tmp_path / "t1024.pth")
    base = ["train", "--recipe", "distill", "--data", f"few={few_images}", "--quiet", "--out", str(tmp_path / "out")]
    cases = {
        "--teacher-checkpoint": ["--model", STUDENT, "--teacher", TEACHER],
        "embedding is 256x64x64": ["--model", STUDENT, "--teacher", "distill_test_teacher_1024", "--teacher-checkpoint", str(other_teacher)],
        "trains a TinyViT encoder": ["--model", TEACHER, "--teacher", TEACHER, "--teacher-checkpoint", str(teacher_file)],
        "do not fit the student": ["--model", "hq_vit_tiny", "--teacher", "distill_test_teacher_1024", "--teacher-checkpoint", str(other_teacher)],
        "is not a file": ["--model", STUDENT, "--teacher", TEACHER, "--teacher-checkpoint", str(tmp_path / "missing.pth")],
        "no images": ["--model", STUDENT, "--teacher", TEACHER, "--teacher-checkpoint", str(teacher_file), "--data", f"empty={empty}"],
        "--init-decoder does not apply": ["--model", STUDENT, "--teacher", TEACHER, "--teacher-checkpoint", str(teacher_file),
                                          "--init-decoder", str(teacher_file)],
    }
    for expected, args in cases.items():
        assert main(base + args) == 2, expected
        error = capsys.readouterr().err.strip()
        assert expected in error and "\n" not in error, (expected, error)
    assert main(["train", "--recipe", "hq", "--model", "hq_vit_tiny", "--random-weights", "--teacher-checkpoint", str(teacher_file),
                 "--data", f"few={few_images}", "--out", str(tmp_path / "out")]) == 2
    assert "goes with --recipe distill" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
