"""Image encoders: a (B, 3, 1024, 1024) normalised image -> ImageFeatures (SAM's ViT-B/L/H, TinyViT)."""
