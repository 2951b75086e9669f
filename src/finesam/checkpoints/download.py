"""Finding official checkpoint files in the cache, and downloading them with a checked digest."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..outputs import write_atomically
from .files import CheckpointError, CheckpointNotFoundError


@dataclass(frozen=True)
class CheckpointFile:
    """An official weights file: where it comes from and how to recognise it."""

    filename: str
    url: str
    size: int
    sha256: str  # full digest, or the published prefix where only that is known

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.sha256)


def checkpoint_dirs() -> list[Path]:
    """Where checkpoints are looked for: ``$FINESAM_CHECKPOINTS`` (if set), then ``~/.cache/finesam``."""
    dirs = []
    if os.environ.get("FINESAM_CHECKPOINTS"):
        dirs.append(Path(os.environ["FINESAM_CHECKPOINTS"]).expanduser())
    dirs.append(Path("~/.cache/finesam").expanduser())
    return dirs


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(file: CheckpointFile, target: Path) -> None:
    from tqdm import tqdm

    def fetch_checked(partial: str) -> None:  # renamed over the target only when its sha256 matches
        with urllib.request.urlopen(file.url, timeout=30) as response, open(partial, "wb") as out, tqdm(
            total=file.size, unit="B", unit_scale=True, desc=file.filename
        ) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
        digest = sha256_of(partial)
        if not file.matches(digest):
            raise CheckpointError(f"downloaded {file.filename} has sha256 {digest}, expected {file.sha256}: not kept")

    write_atomically(target, fetch_checked)


def find_checkpoint(model_name: str, file: CheckpointFile | None, download: bool = True) -> Path:
    """Local path of ``file`` (the official weights of ``model_name``), downloading it into the
    cache if allowed."""
    if file is None:
        raise CheckpointNotFoundError(
            f"{model_name} has no official weights file to look for or download: pass checkpoint=PATH "
            "(--checkpoint PATH on the command line)"
        )
    for directory in checkpoint_dirs():
        candidate = directory / file.filename
        if candidate.is_file():
            return candidate
    target = checkpoint_dirs()[-1] / file.filename
    reason = "downloading is disabled (download=False or FINESAM_OFFLINE=1)"
    if download and os.environ.get("FINESAM_OFFLINE", "") in ("", "0"):
        try:
            _download(file, target)
            return target
        except Exception as error:  # no network, HTTP error, bad digest
            reason = f"the download failed ({type(error).__name__}: {error})"
    searched = ", ".join(str(d) for d in checkpoint_dirs())
    raise CheckpointNotFoundError(
        f"no checkpoint for {model_name}: {file.filename} is not in {searched}, and {reason}.\n"
        f"Fetch {file.url} ({file.size:,} bytes, sha256 {file.sha256}...) and put it at "
        f"{target} (or in $FINESAM_CHECKPOINTS), or pass checkpoint=PATH "
        f"(--checkpoint PATH on the command line)."
    )
