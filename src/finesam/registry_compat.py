"""``sam_model_registry`` with the official keys, so old scripts work by changing the import.

``sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")`` returns a :class:`Sam`.
``vit_t`` is MobileSAM (as in the MobileSAM package). HQ-SAM files are loaded with
``finesam.load("hq_vit_b", ...)``: the official HQ registry reuses the same keys.
"""

from __future__ import annotations

from functools import partial

from .checkpoints import REGISTRY, load


def _build(name: str, checkpoint: str | None = None, **kwargs):
    if checkpoint is None:
        return load(name, random_weights=True, **kwargs)
    return load(name, checkpoint, **kwargs)


sam_model_registry = {
    key: partial(_build, spec.name)
    for spec in REGISTRY.values()
    if spec.decoder == "sam"
    for key in spec.official_keys
}
