"""A real Label Studio for the tests: started from the venv `.venv-ls` on a loopback port, with its
data in a folder of its own (``LABEL_STUDIO_BASE_DATA_DIR``), and stopped afterwards.

A fresh Label Studio database takes one to three minutes to create (migrations), a copy of one made
before seconds to open. ``python tests/label_studio/ls_server.py prepare --out DIR`` (run by
`make ls-venv`) makes that database once, with the test user and token; the tests copy it.
Standard library only: the Makefile runs this with any Python 3.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
LS_VENV = REPO / ".venv-ls"
DATABASE_TEMPLATE = LS_VENV / "database-template"
USER, PASSWORD, TOKEN = "tests@finesam.local", "finesam-tests-123", "finesam0test0token0for0label0studio"
READY_MARK = ".finesam-ready"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(data_dir: Path, files_root: Path | None = None) -> dict[str, str]:
    """Label Studio's settings for the tests: its data in ``data_dir``, a loopback ML backend allowed,
    no analytics, version check or error reporting (offline), local files under ``files_root``."""
    env = dict(os.environ)
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",  # else POST /api/ml to a loopback backend answers 403
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    })
    if files_root is not None:
        env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] = "true"
        env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(files_root)
    return env


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running(data_dir: Path, venv: Path = LS_VENV, files_root: Path | None = None, timeout: float = 300,
            log_path: Path | None = None) -> Iterator[str]:
    """Start Label Studio on a free loopback port with ``data_dir``; yields its URL once ``/health``
    answers; stops it (its whole process group) on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_path or data_dir.parent / f"label-studio-{port}.log"
    command = [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--port", str(port), "--internal-host",
               "127.0.0.1", "--username", USER, "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=environment(data_dir, files_root), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with code {process.returncode}; its log:\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio did not answer /health within {timeout:g} s; its log:\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session`` and the children it started (its group)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # children that outlived the server
        os.killpg(process.pid, signal.SIGKILL)


def prepare(out: Path, venv: Path = LS_VENV, timeout: float = 900) -> Path:
    """Create a Label Studio data folder with the test user and token (migrated database) at ``out``."""
    if (out / READY_MARK).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ls-database-", dir=out.parent))
    try:
        with running(work / "data", venv, timeout=timeout, log_path=work / "prepare.log"):
            pass
        (work / "data" / READY_MARK).write_text("created by tests/label_studio/ls_server.py\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(work / "data", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def copy_of_template(target: Path, venv: Path = LS_VENV, template: Path = DATABASE_TEMPLATE) -> Path:
    """A fresh data folder at ``target``: a copy of the prepared database (made now if missing)."""
    prepare(template, venv)
    shutil.copytree(template, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["prepare"])
    parser.add_argument("--venv", type=Path, default=LS_VENV)
    parser.add_argument("--out", type=Path, default=DATABASE_TEMPLATE)
    args = parser.parse_args(argv)
    start = time.monotonic()
    prepare(args.out.resolve(), args.venv.resolve())
    print(f"Label Studio database ready in {args.out} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
