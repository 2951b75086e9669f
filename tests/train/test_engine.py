"""The training loop: what learns and what stays frozen, exported files, DDP equivalence,
exact resume after SIGKILL, cached features."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import torch

import finesam
from finesam.checkpoints.files import read_state_dict
from finesam.errors import InvalidInputError
from finesam.train.engine import LAST, METRICS, TrainConfig, train
from finesam.train.final_checkpoint import FINAL, FINAL_DECODER

from parity import assert_outputs_close
from .conftest import PYTHON, SMALL_ENCODER, subprocess_env

RECIPE_MODELS = {"hq": "train_test_hq", "pi-stage1": "train_test_pi", "pi-stage2": "train_test_pi"}
TRAINED_PART = {"hq": ("mask_decoder.hq.",), "pi-stage1": ("mask_decoder.hq.", "mask_decoder.high_res."),
                "pi-stage2": ("mask_decoder.interactor.",)}


def config(tmp_path, data, recipe="hq", model=None, **overrides) -> TrainConfig:
    settings = dict(recipe=recipe, model=model or RECIPE_MODELS[recipe], out=tmp_path / "run", data=[("few", data)],
                    random_weights=True, max_steps=2, batch_size=1, workers=0, progress=False, seed=7)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def hq_run(tmp_path_factory, small_models, few_images):
    """Two steps of the hq recipe on the small HQ model."""
    root = tmp_path_factory.mktemp("hq_run")
    result = train(config(root, few_images, "hq"))
    return result, root / "run"


@pytest.fixture(scope="module")
def pi_runs(tmp_path_factory, small_models, few_images):
    """One step of pi-stage1, then one step of pi-stage2 started from stage 1's final.pth."""
    root = tmp_path_factory.mktemp("pi_runs")
    train(config(root, few_images, "pi-stage1", max_steps=1, out=root / "stage1"))
    train(config(root, few_images, "pi-stage2", max_steps=1, out=root / "stage2", random_weights=False,
                 init=root / "stage1" / FINAL))
    return root / "stage1", root / "stage2"


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers under the module names training uses (``state_dict()`` speaks the
    official key names of the composed decoders)."""
    return {name: tensor.detach() for name, tensor in (*model.named_parameters(), *model.named_buffers())}


def changed_keys(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {key for key in before if not torch.equal(before[key], after[key])}


def assert_only_part_changed(changed: set[str], parts: tuple[str, ...]) -> None:
    frozen_changed = {key for key in changed if not key.startswith(parts)}
    assert not frozen_changed, f"frozen tensors changed: {sorted(frozen_changed)[:5]}"
    for part in parts:
        assert any(key.startswith(part) for key in changed), f"nothing in {part} learned"


def test_hq_recipe_trains_only_the_hq_parameters(hq_run):
    result, out = hq_run
    assert result.steps == 2 and np.isfinite(result.last_loss)
    before = tensors(finesam.load("train_test_hq", random_weights=True, seed=7))
    after = tensors(finesam.load("train_test_hq", out / FINAL))
    assert_only_part_changed(changed_keys(before, after), TRAINED_PART["hq"])
    rows = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert all({"step", "epoch", "loss", "lr"} <= row.keys() for row in rows)
    assert (out / "loss.png").stat().st_size > 0


def test_pi_stages_train_only_their_parameters(pi_runs):
    stage1, stage2 = pi_runs
    initial = tensors(finesam.load("train_test_pi", random_weights=True, seed=7))
    after1 = tensors(finesam.load("train_test_pi", stage1 / FINAL))
    after2 = tensors(finesam.load("train_test_pi", stage2 / FINAL))
    assert_only_part_changed(changed_keys(initial, after1), TRAINED_PART["pi-stage1"])
    # stage 2 keeps all of stage 1 (rgb_embed included) and moves the interactor only; after one
    # step that is its zero-initialised output convolution (the rest is behind it)
    assert_only_part_changed(changed_keys(after1, after2), ("mask_decoder.interactor.out_cov.",))
    for stage in (stage1, stage2):
        decoder = torch.load(stage / FINAL_DECODER, weights_only=True)["model_state_dict"]
        assert len(decoder) == 270 and not any(key.startswith(("mask_decoder.", "rgb_embed")) for key in decoder)


def test_hq_export_loads_strictly_in_segment_anything_hq(hq_run, real_image):
    sam_hq = pytest.importorskip("segment_anything_hq")
    from segment_anything_hq.build_sam import _build_sam

    _, out = hq_run
    state = read_state_dict(out / FINAL)
    official = _build_sam(SMALL_ENCODER["embed_dim"], SMALL_ENCODER["depth"], SMALL_ENCODER["num_heads"],
                          list(SMALL_ENCODER["global_attn_indexes"]))
    official.load_state_dict(state, strict=True)
    official.eval()
    ours = finesam.SamPredictor(finesam.load("train_test_hq", out / FINAL))
    reference = sam_hq.SamPredictor(official)
    ours.set_image(real_image)
    reference.set_image(real_image)
    height, width = real_image.shape[:2]
    box = np.array([0.2 * width, 0.25 * height, 0.75 * width, 0.8 * height])
    for hq_token_only in (False, True):
        assert_outputs_close(
            f"hq_token_only={hq_token_only}",
            ours.predict(box=box, multimask_output=False, return_logits=True, hq_token_only=hq_token_only),
            reference.predict(box=box, multimask_output=False, return_logits=True, hq_token_only=hq_token_only),
        )


def test_bad_options_are_refused_before_work(tmp_path, small_models, few_images):
    with pytest.raises(InvalidInputError, match="exactly one of init"):
        train(config(tmp_path, few_images, random_weights=False))
    with pytest.raises(InvalidInputError, match="does not have"):
        train(config(tmp_path, few_images, "pi-stage1", model="train_test_hq"))
    with pytest.raises(InvalidInputError, match="matches no parameter"):
        train(config(tmp_path, few_images, trainable=("mask_decoder.nonexistent",)))
    with pytest.raises(InvalidInputError, match="resume"):
        train(config(tmp_path, few_images, resume=True))
    assert not (tmp_path / "run").exists()


def test_wider_trainable_set(tmp_path, small_models, few_images):
    """--trainable mask_decoder. (domain fine-tuning): SAM's decoder learns too, the encoder stays."""
    train(config(tmp_path, few_images, trainable=("mask_decoder.",), max_steps=1))
    before = tensors(finesam.load("train_test_hq", random_weights=True, seed=7))
    after = tensors(finesam.load("train_test_hq", tmp_path / "run" / FINAL))
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert any(key.startswith("mask_decoder.sam.transformer.") for key in changed)
    assert not any(key.startswith(("image_encoder.", "prompt_encoder.")) for key in changed)


def _cli(runner_script, *args: str, start: tuple[str, ...] = ("--random-weights",)) -> list[str]:
    return [PYTHON, str(runner_script), "train", "--recipe", "hq", "--model", "train_test_hq", *start,
            "--workers", "0", "--quiet", "--seed", "3", *args]


@pytest.fixture(params=["random-weights", "init"])
def start(request) -> tuple[str, ...]:
    """How a run starts: a seeded random base, or a real SAM file whose HQ parts are drawn from --seed."""
    if request.param == "init":
        return ("--init", str(request.getfixturevalue("official_sam_file")))
    return ("--random-weights",)


def _trainable(path) -> dict:
    return torch.load(path, weights_only=True)["trainable"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_command(command: list[str]) -> None:
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _kill_after_steps(command: list[str], out, steps: int) -> int:
    """Start ``command``, SIGKILL it once ``steps`` steps are logged; the number of steps it logged."""
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        log = out / METRICS
        if log.exists() and len(log.read_text().splitlines()) >= steps:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len((out / METRICS).read_text().splitlines())


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / METRICS).read_text().splitlines()]


def test_every_way_of_running_a_command_gives_its_model(tmp_path, small_models, few_images, runner_script, start):
    """One reference run (batch 2, four steps over two epochs, a checkpoint per step), then the same
    command run the other ways a user runs it: again (bit for bit, with ``--init`` whose HQ parts are
    drawn from --seed), SIGKILL after step 3 + ``--resume`` (bit for bit), ``torchrun`` 2 x batch 1 and
    ``--accumulate 2`` x batch 1 (<= 1e-5: another summation order)."""
    steps = 4
    common = ["--data", f"few={few_images}", "--max-steps", str(steps), "--save-every", "1", "--cache-features", str(tmp_path / "cache")]

    def command(out: str, *args: str) -> list[str]:
        return _cli(runner_script, *common, *args, "--out", str(tmp_path / out), start=start)

    _run_command(command("reference", "--batch-size", "2"))
    reference = _trainable(tmp_path / "reference" / LAST)
    initial = tensors(finesam.load("train_test_hq", random_weights=True, seed=3))
    assert max(float((reference[k] - initial[k]).abs().max()) for k in reference) > 1e-4  # the steps did move the weights

    exact = ["killed"]
    if start != ("--random-weights",):  # the real use: a SAM file whose new parts come from --seed
        _run_command(command("again", "--batch-size", "2"))
        exact.append("again")
        first, second = read_state_dict(tmp_path / "reference" / FINAL), read_state_dict(tmp_path / "again" / FINAL)
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert _kill_after_steps(command("killed", "--batch-size", "2"), tmp_path / "killed", 3) == 3  # in epoch 2 of 2
    _run_command(command("killed", "--batch-size", "2", "--resume"))
    assert [json.loads(line)["step"] for line in (tmp_path / "killed" / METRICS).read_text().splitlines()] == [1, 2, 3, 4]
    for name in exact:
        weights = _trainable(tmp_path / name / LAST)
        assert all(torch.equal(reference[key], weights[key]) for key in reference), name
        assert _losses(tmp_path / name) == _losses(tmp_path / "reference"), name

    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()), str(runner_script)]
    _run_command(torchrun + command("two", "--batch-size", "1")[2:])
    close = ["two"]
    if start == ("--random-weights",):  # accumulation does not depend on how the run starts
        _run_command(command("accumulated", "--batch-size", "1", "--accumulate", "2"))
        close.append("accumulated")
    for name in close:
        weights = _trainable(tmp_path / name / LAST)
        assert weights.keys() == reference.keys()
        worst = max(float((reference[k] - weights[k]).abs().max()) for k in reference)
        assert worst <= 1e-5, (name, worst)


def test_cached_features_match_the_encoder(tmp_path, hq_run, few_images):
    """The first step on cached (float16) features gives nearly the loss of the same step on fresh ones."""
    fresh, _ = hq_run
    cached = train(config(tmp_path, few_images, max_steps=1, cache_features=tmp_path / "cache"))
    assert abs(fresh.first_loss - cached.first_loss) < 1e-2 * fresh.first_loss
    manifest = next((tmp_path / "cache").glob("*/manifest.json"))
    errors = json.loads(manifest.read_text())["storage_error"]
    assert 0 < errors["embedding"] < 1e-2 and errors["label"] < 1e-3


def test_resume_refuses_another_frozen_base_or_arithmetic(tmp_path, small_models, few_images, official_sam_file):
    """--resume checks the init source (path and content hash) and every option that changes the numbers."""
    import shutil
    import warnings

    init = tmp_path / "sam.pth"
    shutil.copy(official_sam_file, init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the HQ keys the SAM file lacks
        train(config(tmp_path, few_images, random_weights=False, init=init, max_steps=1))
    resume = dict(resume=True, max_steps=2)
    for overrides, named in ((dict(random_weights=True), "random_weights: False -> True"), (dict(init=init, bf16=True), "bf16: False -> True"),
                             (dict(init=init, seed=8), "seed: 7 -> 8")):
        settings = {**dict(random_weights=False, init=init), **overrides}
        if settings.get("random_weights"):
            settings["init"] = None
        with pytest.raises(InvalidInputError, match="resume with different settings") as error:
            train(config(tmp_path, few_images, **settings, **resume))
        assert named in str(error.value) and "\n" not in str(error.value)
    state = torch.load(official_sam_file, weights_only=True)
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"] + 1
    torch.save(state, init)  # same path, other content
    with pytest.raises(InvalidInputError, match=r"init_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        train(config(tmp_path, few_images, random_weights=False, init=init, **resume))


def test_damaged_last_pt_is_refused_in_one_line(tmp_path, hq_run, few_images):
    import shutil

    _, out = hq_run
    good = torch.load(out / LAST, weights_only=True)
    cases = {
        "truncated": lambda path: path.write_bytes((out / LAST).read_bytes()[:1000]),
        "hand-made": lambda path: torch.save({"format": good["format"], "settings": good["settings"]}, path),
        "a list": lambda path: torch.save([1, 2], path),
        "wrong shape": lambda path: torch.save({**good, "trainable": {k: v[..., :1] if v.ndim else v for k, v in good["trainable"].items()}}, path),
    }
    for name, damage in cases.items():
        run = tmp_path / name
        shutil.copytree(out, run)
        damage(run / LAST)
        (run / f".{LAST}.abc.part").write_bytes(b"half")
        with pytest.raises(InvalidInputError) as error:
            train(config(tmp_path, few_images, out=run, resume=True, max_steps=3))
        message = str(error.value)
        assert str(run / LAST) in message and "move it away" in message and "\n" not in message, (name, message)
        assert not list(run.glob("*.part"))  # leftovers of an interrupted write are removed on start
