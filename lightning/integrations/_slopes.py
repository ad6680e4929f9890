"""The slope tensor the op takes, derived once from a decay tensor that a model keeps (FLA's
g_gamma, MiniMax's slope_rate buffer): the op checks a slope's values once per tensor and
version (a GPU synchronisation), so later calls must pass the same slope tensor again."""

import weakref
from typing import Callable

import torch
from torch import Tensor

CACHE_KEY = "_lightning_slope"


def derived_slope(source: Tensor, derive: Callable[[Tensor], Tensor], store: dict) -> Tensor:
    """derive(source) as a contiguous fp32 tensor, kept in `store` (a __dict__) under CACHE_KEY
    and made again only when source is another tensor or has been written in place since.
    Inference tensors have no version counter: they are recognised by identity alone."""
    version = -1 if source.is_inference() else source._version
    cached = store.get(CACHE_KEY)
    if cached is None or cached[0]() is not source or cached[1] != version:
        slope = derive(source.detach()).to(torch.float32).contiguous()
        cached = (weakref.ref(source), version, slope)
        store[CACHE_KEY] = cached
    return cached[2]
