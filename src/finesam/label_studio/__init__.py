"""A Label Studio ML backend for interactive segmentation (``finesam label-studio``).

- :mod:`.config`: the labeling config's Image, BrushLabels and prompt tags;
- :mod:`.images`: reading a task's image (Label Studio with its token, allowed hosts, ``--root``);
- :mod:`.backend`: predictions from the context's clicks and boxes, as brush regions;
- :mod:`.app`: the HTTP endpoints (FastAPI, the ``serve`` extra, imported only there).

No Label Studio package is needed at run time; the brush RLE is :mod:`finesam.formats.brush`.
"""
