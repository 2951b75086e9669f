"""Shared fixtures: real images from ../shared/data and official-format random checkpoints."""

from __future__ import annotations

import collections
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# The official packages (test oracles only) emit import-time noise.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning, module="timm")
os.environ.setdefault("FINESAM_OFFLINE", "1")  # never try to download in tests
# Under pytest-xdist (`make test` runs two workers) each worker gets its share of the cores.
torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def avx2_only_tool():
    """tools/avx2_only.py as a module (it runs commands with AVX-512, VNNI and AMX hidden from
    CPUID, so that onnxruntime runs its AVX2 kernels); skips the test where it cannot run or
    where this CPU's own kernels are the AVX2 ones already."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("avx2_only", REPO / "tools" / "avx2_only.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    reason = tool.emulation_unavailable()
    if reason:
        pytest.skip(reason)
    if "avx512f" not in tool.cpu_flags():
        pytest.skip("this CPU has no AVX-512: its own kernels are the AVX2 ones")
    return tool


def data_path(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data {path} is not available")
    return path


@pytest.fixture(scope="session")
def real_image() -> np.ndarray:
    """A real, non-square RGB photograph (ECSSD 0001, 400x300)."""
    image = np.asarray(Image.open(data_path("ecssd", "im", "0001.jpg")).convert("RGB"))
    assert image.shape[0] != image.shape[1]
    return image


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Perturb every float parameter and buffer with seeded noise, so that zero-initialised
    tensors (relative positions, position embeddings, biases) matter in a comparison."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator) * scale
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif "positional_encoding_gaussian_matrix" in name or name.endswith(("pixel_mean", "pixel_std")):
                continue
            else:
                tensor.add_(noise.to(tensor.dtype))
    return module


#: Relative to the largest magnitude: the eager-inference forms change rounding only (batch norm
#: folded into convolution weights, products split by rows).
INFERENCE_RELATIVE_TOL = 5e-5


def assert_close_to_plain(eager: torch.Tensor, plain: torch.Tensor) -> None:
    """An eager-inference form's result within :data:`INFERENCE_RELATIVE_TOL` of the plain graph's."""
    plain = plain.detach()
    assert eager.shape == plain.shape
    scale = plain.abs().max().item()
    assert scale > 0
    assert (eager - plain).abs().max().item() <= INFERENCE_RELATIVE_TOL * scale


def save_state(model: torch.nn.Module, path: Path) -> Path:
    """Save as the official files are: a flat state dict (persistent entries only)."""
    torch.save(model.state_dict(), path)
    return path


# --- the fuzz suite (tests/fuzz/) ----------------------------------------------------------------
FUZZ_CASES: collections.Counter = collections.Counter()


@pytest.fixture
def count_case():
    """``count_case(category)``: record one generated fuzz case (totals printed at the end)."""
    return lambda category: FUZZ_CASES.update([category])


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand its counts to the controller
        session.config.workeroutput["fuzz_cases"] = dict(FUZZ_CASES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FUZZ_CASES.update(getattr(node, "workeroutput", {}).get("fuzz_cases", {}))


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:  # "prompts, accepted" is a part of "prompts": not added to the total
        total = sum(count for name, count in FUZZ_CASES.items() if "," not in name)
        counts = "; ".join(f"{name} {count}" for name, count in sorted(FUZZ_CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {total} ({counts})")
