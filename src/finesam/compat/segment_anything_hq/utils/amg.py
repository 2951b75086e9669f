"""``segment_anything_hq.utils.amg``: the same helpers as ``segment_anything.utils.amg``."""

from ...segment_anything.utils.amg import *  # noqa: F403
from ...segment_anything.utils.amg import __all__  # noqa: F401
