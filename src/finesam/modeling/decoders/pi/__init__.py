"""Pi-SAM: the high-resolution head (with the Object Embedder), the Precise Interactor, and the
decoder composed from SAM's and HQ-SAM's parts."""
