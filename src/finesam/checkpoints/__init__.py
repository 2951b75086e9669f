"""Checkpoint files: reading, checking and writing state dicts; finding and downloading official files."""

from .download import CheckpointFile, checkpoint_dirs, find_checkpoint, sha256_of
from .files import (
    CheckpointError,
    CheckpointNotFoundError,
    check_decoder_file,
    check_state_dict,
    from_official_keys,
    merge_decoder_file,
    read_state_dict,
    to_official_keys,
    write_state_dict,
)

__all__ = [
    "CheckpointError",
    "CheckpointFile",
    "CheckpointNotFoundError",
    "check_decoder_file",
    "check_state_dict",
    "checkpoint_dirs",
    "find_checkpoint",
    "from_official_keys",
    "merge_decoder_file",
    "read_state_dict",
    "sha256_of",
    "to_official_keys",
    "write_state_dict",
]
