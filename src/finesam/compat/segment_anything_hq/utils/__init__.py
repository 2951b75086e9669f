"""``segment_anything_hq.utils``: ``transforms``, ``amg`` and ``onnx``."""
