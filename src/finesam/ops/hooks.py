"""Whether a module's calls are observed by forward hooks."""

from __future__ import annotations

from torch import nn


def has_forward_hooks(module: nn.Module) -> bool:
    """True when ``module`` or a submodule has forward (pre-)hooks, or global ones are set: a
    faster form that bypasses or splits those modules' calls would skip or repeat the hooks."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
