"""SAM's mask decoder and its two-way transformer."""
