"""The one check of output paths, run before any expensive work or any file is written:
folders here, files through :func:`finesam.data.images.check_mask_path` and
:func:`~finesam.data.images.check_image_path`, which add the format checks."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidInputError


def check_writable_parent(path: Path, what: str, error: type[InvalidInputError] = InvalidInputError) -> None:
    """Refuse ``path`` when a component of its folder is a file, or when the nearest existing
    folder is not writable (missing folders are fine: they are created when writing)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise error(f"cannot write the {what} to {str(path)!r}: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"cannot write the {what} to {str(path)!r}: the folder {str(folder)!r} is not writable; "
                    "choose another output folder or change its permissions")


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """A folder that results will be written into: refused if it is a file, or if it cannot be
    created or written. Returns it as a Path (nothing is created)."""
    folder = Path(path)
    if str(path).strip() == "":
        raise InvalidInputError(f"{what} is empty: give a folder path")
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"cannot write the {what} to {str(folder)!r}: it is a file, not a folder")
    check_writable_parent(folder / "results", what)  # the folder itself, or where it will be created
    return folder
