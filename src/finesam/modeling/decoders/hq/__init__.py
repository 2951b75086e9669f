"""HQ-SAM: the HQ token with the global-local fusion, and the decoder composed from SAM's."""
