"""Pipelines over many inputs, on top of prediction: :mod:`finesam.pipeline.folder` segments
images into an output folder (``finesam segment ... --out DIR``)."""
