"""When the inference forms apply: plain eager inference, with no forward hooks observing.

Modules keep one plain graph (what autograd, tracing and the exporters see) and call a faster
form of the same computation (in place, by bands, fused) only where :func:`eager_inference`
says so.
"""

from __future__ import annotations

import torch
from torch import nn


def has_forward_hooks(module: nn.Module) -> bool:
    """True when ``module`` or a submodule has forward (pre-)hooks, or global ones are set: a
    faster form that bypasses or splits those modules' calls would skip or repeat the hooks."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def eager_inference(*observed: nn.Module) -> bool:
    """True in plain eager inference (no gradient recorded, not tracing or compiling): where
    in-place, chunked and fused forms of the same computation apply; autograd and exporters see
    the plain graph. False also while one of ``observed`` (or a submodule of it) has forward
    hooks: a form that bypasses or splits those modules' calls would skip or repeat the hooks.
    """
    if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not any(has_forward_hooks(module) for module in observed)
