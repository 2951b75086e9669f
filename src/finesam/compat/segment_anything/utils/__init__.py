"""``segment_anything.utils``: ``transforms``, ``amg`` and ``onnx``."""
