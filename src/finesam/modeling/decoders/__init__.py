"""Mask decoders, by paper: ``sam/`` (SAM's decoder and two-way transformer, the part every
decoder composes), ``hq/`` (HQ-SAM: the HQ token and fusion), ``pi/`` (Pi-SAM: high-res head,
Object Embedder, Precise Interactor)."""
