"""Helpers of the Label Studio tests: the venv the Makefile installs label-studio==1.23.2 into
(`.venv-ls`, its own venv: Label Studio pins Django and friends), and running code there."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LS_VENV = REPO / ".venv-ls"
LS_PYTHON = LS_VENV / "bin" / "python"
LS_VERSION = "1.23.2"


def require_ls_venv() -> Path:
    """The Label Studio venv's python, or a skip that says how to get it."""
    if not LS_PYTHON.exists():
        pytest.skip(f"Label Studio's venv {LS_VENV} is absent: `make ls-venv` (a prerequisite of `make test`) "
                    f"installs label-studio=={LS_VERSION} into it")
    return LS_PYTHON


def run_in_ls_venv(script: str, payload: dict, timeout: float = 120) -> dict:
    """Run ``script`` with the Label Studio venv's python, the JSON ``payload`` on stdin; returns
    the JSON it prints (its last line of stdout)."""
    python = require_ls_venv()
    completed = subprocess.run([str(python), "-c", script], input=json.dumps(payload), capture_output=True,
                               text=True, timeout=timeout)
    if completed.returncode != 0:
        raise AssertionError(f"the script failed in {LS_VENV}:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
