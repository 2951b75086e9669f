"""``finesam eval`` under ``torchrun`` (2 processes, gloo, CPU) writes the same files as one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import torch

from conftest import data_path
from eval_helpers import subset
from finesam import cli

TORCHRUN_TIMEOUT_S = 300  # a hang fails the test instead of blocking the suite


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ecssd_with_a_corrupt_image(tmp_path):
    """4 ECSSD pairs and one unreadable image (skipped, and listed, by whichever rank gets it)."""
    root = subset(tmp_path, "ecssd", ["0001", "0002", "0003", "0004"])
    (root / "im" / "0003x.jpg").write_bytes(b"not a jpeg")
    (root / "gt" / "0003x.png").symlink_to(data_path("ecssd", "gt", "0003.png"))
    return root


def _outputs(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_process_torchrun_run_equals_one_process(tmp_path, capsys):
    root = _ecssd_with_a_corrupt_image(tmp_path)
    arguments = ["eval", "--model", "mobile_sam", "--random-weights", "--data", f"ECSSD={root}", "--protocol", "box",
                 "--device", "cpu", "--no-hce", "--quiet", "--save-masks"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FINESAM_OFFLINE": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    log = {name: open(tmp_path / f"torchrun.{name}", "w+", encoding="utf-8") for name in ("out", "err")}
    sharded = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), "-m", "finesam", *arguments, "--out", str(tmp_path / "two")],
        env=env, stdout=log["out"], stderr=log["err"], start_new_session=True,
    )
    try:
        # the one-process run meanwhile, in this process (the CPU cores are shared out either way)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): the same float results
        try:
            assert cli.main([*arguments, "--out", str(tmp_path / "one")]) == 0
        finally:
            torch.set_num_threads(threads)
        sharded.wait(timeout=TORCHRUN_TIMEOUT_S)
    finally:
        if sharded.poll() is None:  # a hang: stop torchrun and its workers (their own session)
            os.killpg(sharded.pid, signal.SIGKILL)
            sharded.wait()
        for handle in log.values():
            handle.close()
    stdout, stderr = ((tmp_path / f"torchrun.{name}").read_text() for name in ("out", "err"))
    capsys.readouterr()
    assert sharded.returncode == 0, stderr[-3000:]
    assert stdout.count("| ECSSD | 4 |") == 1 and "2 processes" in stdout  # rank 0 alone reports

    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert sorted(one) == sorted(two)
    assert not [name for name in two if "/." in f"/{name}"]  # atomic writes leave no temporary file
    assert {"per_image.csv", "curves.npz", "table.md", "recall_biou.png", "masks/ECSSD/box/0004.png"} <= set(one)
    summaries = [json.loads(files.pop("summary.json")) for files in (one, two)]
    assert [s.pop("timing")["processes"] for s in summaries] == [1, 2]
    assert summaries[0] == summaries[1]
    assert [s["name"] for s in summaries[0]["skipped"]] == ["0003x"]
    with np.load(tmp_path / "one" / "curves.npz") as a, np.load(tmp_path / "two" / "curves.npz") as b:
        assert a["keys"].tolist() == b["keys"].tolist() and np.array_equal(a["curves"], b["curves"])
    one.pop("curves.npz"), two.pop("curves.npz")
    # per_image.csv (same rows, same order), table.md, the plot and every mask: byte for byte
    assert one == two
    rows = one["per_image.csv"].decode().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["0001", "0002", "0003", "0004"]
