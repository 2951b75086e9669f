"""GELU in place where autograd does not need its input: in eager inference the activation
overwrites the fresh map it is given (one map less to allocate; a transformer MLP's hidden map
is 4x the tokens'). Same kernel, same values as the plain ``F.gelu``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .inference import eager_inference


def activate_in_place(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for an exact GELU; for code already on an eager-inference path
    (autograd needs x)."""
    if type(act) is nn.GELU and act.approximate == "none":
        return torch.ops.aten.gelu_(x)
    return act(x)


def activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``; in eager inference in place for an exact GELU (:func:`activate_in_place`)."""
    return activate_in_place(act, x) if eager_inference() else act(x)


def gelu_(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x)`` (exact); in eager inference in place."""
    return torch.ops.aten.gelu_(x) if eager_inference() else F.gelu(x)
