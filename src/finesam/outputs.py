"""Safe output, in one place: the checks of output paths, run before any expensive work or any
file is written, and the atomic writers every output goes through.

Checks: :func:`check_output_dir` (a folder results go into), :func:`check_output_file` (a file
whose format comes from its suffix; :func:`finesam.data.images.check_mask_path` and
:func:`~finesam.data.images.check_image_path` use it), :func:`check_writable_parent` (both).

Writers: :func:`write_atomically` (a temporary file in the target folder, renamed over the
target with ``os.replace``, removed if anything fails: a crash leaves the old file or none, never
a half-written one), and on top of it :func:`write_text_atomically`,
:func:`write_bytes_atomically` and :func:`save_image_atomically` (PIL images).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import InvalidInputError, describe_error

if TYPE_CHECKING:
    from PIL import Image

#: Suffixes of lossy image formats: a mask written in one would not stay 0/255.
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")
#: The temporary files of :func:`write_atomically` end so (a crash may leave one: see train's cleanup).
TEMPORARY_SUFFIX = ".part"
_TEMPORARY_NAME_CHARACTERS = 80  # of the target's name: the temporary name stays under the file-name limit


# --- checks -----------------------------------------------------------------------------------------
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


def check_output_file(path, formats: dict[str, str], what: str, example: str,
                      error: type[InvalidInputError] = InvalidInputError) -> tuple[Path, str]:
    """A file whose format comes from its (lower-case) suffix, one of ``formats`` (suffix -> PIL
    format name): refused (``error``) when it is not a path, is a folder, has no, an unknown or a
    lossy suffix (:data:`LOSSY_SUFFIXES`, when not among ``formats``), or cannot be written
    (:func:`check_writable_parent`). Returns the path and its format; nothing is written."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise error(f"the {what} path must be a file name like {example!r}, got {path!r}")
    path = Path(path)
    allowed = ", ".join(sorted(set(formats)))
    if path.is_dir():
        raise error(f"cannot write the {what} to {str(path)!r}: it is a folder; "
                    f"give a file name such as {str(path / example)!r}")
    suffix = path.suffix.lower()
    if suffix not in formats:
        if suffix in LOSSY_SUFFIXES:
            raise error(
                f"cannot write the {what} to {str(path)!r}: {suffix} is a lossy format, which changes pixel values "
                f"around edges so a 0/255 mask would not stay 0/255; use a lossless one: {allowed}"
            )
        found = f"the unknown extension {path.suffix!r}" if suffix else "no extension"
        raise error(f"cannot write the {what} to {str(path)!r}: it has {found}; the format comes from "
                    f"the extension, one of {allowed} (e.g. {example!r})")
    check_writable_parent(path, what, error)
    return path, formats[suffix]


# --- atomic writers ---------------------------------------------------------------------------------
def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, write: Callable[[str], object]) -> Path:
    """Run ``write(temporary_path)`` in ``path``'s folder (created if missing), then rename the
    result over ``path``: a crash leaves the old file or none, never a half-written one. The
    temporary file is removed if anything fails; the written file gets the usual mode (umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name[:_TEMPORARY_NAME_CHARACTERS]}.",
                                         suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically (:func:`write_atomically`)."""
    return write_atomically(Path(path), lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_bytes_atomically(path: str | os.PathLike, content: bytes) -> Path:
    """Write ``content`` atomically (:func:`write_atomically`)."""
    return write_atomically(Path(path), lambda temporary: Path(temporary).write_bytes(content))


def save_image_atomically(image: Image.Image, path: Path, fmt: str, what: str,
                          error: type[InvalidInputError] = InvalidInputError, **params) -> None:
    """``image.save(format=fmt, **params)`` through :func:`write_atomically`, synced to disk
    before the rename; an ``OSError`` (full disk, permissions) is raised as ``error`` naming the
    ``what`` and the path."""

    def save_synced(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            image.save(handle, format=fmt, **params)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        write_atomically(Path(path), save_synced)
    except OSError as failure:
        raise error(f"cannot write the {what} to {str(path)!r}: {describe_error(failure)}") from failure
