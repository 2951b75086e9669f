"""The files a finished run leaves, in layouts that load anywhere.

- ``final.pth``: the whole model with the official key names (:func:`finesam.save`). For an HQ
  model that is the official HQ-SAM checkpoint layout (SAM keys + HQ keys), which
  ``segment_anything_hq`` loads with ``strict=True``; for Pi-SAM it also stores ``rgb_embed``,
  which the official decoder file lacks, so ``finesam.load(name, "final.pth")`` restores the run.
- ``final_decoder.pth`` (models whose official weights come as a separate decoder file, Pi-SAM):
  ``{'model_state_dict': ...}`` with the official decoder keys, without the ``mask_decoder.`` prefix
  and without the keys the official files never hold.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints.files import save_atomically
from ..loading import save
from ..modeling.sam import Sam
from ..registry import get_spec

FINAL = "final.pth"
FINAL_DECODER = "final_decoder.pth"


def export_final(model: Sam, out: Path, model_name: str) -> list[Path]:
    """Write ``final.pth`` (and ``final_decoder.pth`` where the model's spec has a decoder file)."""
    written = [save(model, out / FINAL)]
    spec = get_spec(model_name)
    if spec.decoder_file:
        written.append(save_atomically({"model_state_dict": official_decoder_state(model, spec.kept_from_build)}, out / FINAL_DECODER))
    return written


def official_decoder_state(model: Sam, kept_from_build: tuple[str, ...] = ()) -> dict:
    """The decoder's weights as in an official decoder file: official names, no ``mask_decoder.``."""
    prefix = "mask_decoder."
    return {
        key[len(prefix):]: value.detach().cpu().contiguous()
        for key, value in model.official_state_dict().items()
        if key.startswith(prefix) and not key.startswith(kept_from_build)
    }
