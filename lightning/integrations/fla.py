"""FLA's lightning-attention entry points on this package's kernels: change one import line.

    from fla.ops.lightning_attn import chunk_lightning_attn
    from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
becomes
    from lightning.integrations.fla import (chunk_lightning_attn, chunk_simple_gla,
                                            fused_recurrent_simple_gla)

Names, signatures, defaults, layouts and return values are those of FLA 0.6.0 (fla-core):
q, k (B, T, H, K), v (B, T, H, V); scale=None means K^-0.5 (multiplying q k^T, so the
output); initial_state and the returned final state are (N, H, K, V) fp32, one per
sequence (N = B, or the number of packed sequences with cu_seqlens), or (N, H, V, K) with
state_v_first=True; g_gamma (H,) is a per-head log decay, lambda_h = exp(g_gamma_h), so
this package's decay rate is slope_h = -g_gamma_h; chunk_lightning_attn and
fused_recurrent_lightning_attn use FLA's decay for layer l of L,
g_gamma_h = -(8 / H) (1 - l / L) h for h = 0 .. H-1 (head 0 does not decay; these are not the
MiniMax / TransNormerLLM slopes of lightning.build_slopes). The functions are differentiable
in q, k, v and initial_state, like FLA's.

Differences from FLA:
  - Per-token gates `g` (B, T, H) are not supported (the kernels have one constant decay per
    head): passing `g` raises NotImplementedError. Use FLA for data-dependent gating.
  - g_gamma must be <= 0 (a decay, not a growth); a positive or NaN entry raises ValueError.
    No gradient flows to g_gamma (FLA returns none either). Likewise the *_lightning_attn
    functions need 0 <= layer_idx <= num_layers (FLA accepts any layer_idx).
  - Head dims K and V must be multiples of 16 in [16, 256]; dtypes fp32, fp16, bf16 (and
    fp64 on the CPU); q, k, v share one dtype. Other shapes raise ValueError.
  - Accumulation is at least fp32 everywhere, including the chunk states FLA's forward keeps
    in the input dtype, so fp16/bf16 results differ from FLA's by rounding.
  - initial_state may have any floating dtype (it is used in fp32; its gradient comes back in
    its own dtype). The final state is a new fp32 tensor, as in FLA.
  - The keyword arguments chunk_size and cu_seqlens_cpu are accepted and ignored (the kernels
    choose their own tiling and read cu_seqlens where they need it); any other unknown keyword
    raises TypeError, and head_first raises as in FLA 0.6.0. FLA's deprecated alias
    transpose_state_layout is not accepted (use state_v_first).
  - fused_recurrent_*: reverse=True runs the forward kernels on inputs flipped along T (with
    the packed sequences and their states reordered for cu_seqlens), so it costs copies of
    q, k, v. A single-token call (T == 1, no cu_seqlens, nothing that needs a gradient) is
    one lightning.attn_decode step on a copy of initial_state; every other call runs
    lightning.attn.
  - Runs on CPU as well as CUDA.
  - The op checks a decay tensor's values once per tensor and version (on a GPU the check
    synchronises): pass the same g_gamma tensor across calls rather than a new one each time.
"""

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ops import attn, attn_decode
from ._slopes import derived_slope

__all__ = ["chunk_lightning_attn", "chunk_simple_gla", "fused_recurrent_lightning_attn",
           "fused_recurrent_simple_gla"]

_IGNORED_KWARGS = ("chunk_size", "cu_seqlens_cpu")


def _check_kwargs(kwargs: dict, fn: str) -> None:
    if "head_first" in kwargs:
        # FLA 0.6.0 raises this (an exception, not a warning) for the removed argument.
        raise DeprecationWarning(f"{fn}: head_first has been removed; inputs must be in "
                                 f"(B, T, H, ...) layout")
    unknown = sorted(set(kwargs) - set(_IGNORED_KWARGS))
    if unknown:
        raise TypeError(f"{fn}: unexpected keyword argument(s) {unknown}")


@functools.lru_cache(maxsize=None)
def _lightning_slopes(num_heads: int, layer_idx: int, num_layers: int, device: torch.device) -> Tensor:
    """FLA's lightning-attention decay rates -g_gamma as one cached tensor per configuration:
    the op checks a slope tensor's values once per tensor and version, so reusing the tensor
    keeps that check (a GPU synchronisation) off later calls."""
    return (8 / num_heads * (1 - layer_idx / num_layers)) * torch.arange(
        num_heads, dtype=torch.float32, device=device)


def _slope_from_g_gamma(g_gamma: Tensor, fn: str) -> Tensor:
    """slope = -g_gamma as fp32, kept on the g_gamma tensor so a g_gamma reused across calls (a
    buffer, a parameter) gives the same slope tensor."""
    if not isinstance(g_gamma, Tensor) or g_gamma.dim() != 1:
        raise ValueError(f"{fn}: g_gamma must be a 1-D tensor (H,), got "
                         f"{tuple(g_gamma.shape) if isinstance(g_gamma, Tensor) else type(g_gamma)}")
    return derived_slope(g_gamma, torch.neg, g_gamma.__dict__)


def _slope_of_gates(g: Optional[Tensor], g_gamma: Optional[Tensor], fn: str) -> Optional[Tensor]:
    """The slopes of simple GLA's gates: from g_gamma, None without decay; per-token g refused."""
    if g is not None:
        raise NotImplementedError(
            f"{fn}: per-token gates g are not supported by lightning.attn (one constant decay "
            f"per head); pass the per-head log decay g_gamma (H,) instead, or use FLA for g")
    return _slope_from_g_gamma(g_gamma, fn) if g_gamma is not None else None


def _run(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor], scale: Optional[float],
         initial_state: Optional[Tensor], output_final_state: bool, state_v_first: bool,
         cu_seqlens: Optional[Tensor], reverse: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """The shared body: FLA's conventions -> lightning.attn / lightning.attn_decode."""
    if scale is None:
        scale = k.shape[-1] ** -0.5
    if initial_state is not None:
        if state_v_first:
            initial_state = initial_state.transpose(-1, -2)
        initial_state = initial_state.float()
    if reverse:
        # A reversed scan is the forward scan of the time-reversed inputs; packed sequences
        # then appear in the opposite order, and so do their states.
        q, k, v = q.flip(1), k.flip(1), v.flip(1)
        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens[-1] - cu_seqlens.flip(0)
            if initial_state is not None:
                initial_state = initial_state.flip(0)

    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, initial_state))
    if q.dim() == 4 and q.shape[1] == 1 and cu_seqlens is None and not needs_grad:
        b, _, h, d = q.shape
        state = (initial_state.clone(memory_format=torch.contiguous_format)
                 if initial_state is not None
                 else q.new_zeros(b, h, d, v.shape[-1], dtype=torch.float32))
        o = attn_decode(q, k, v, state, slope, scale=scale, layout="bnhd")
        final_state = state if output_final_state else None
    else:
        o, final_state = attn(q, k, v, slope, scale=scale, initial_state=initial_state,
                              output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                              layout="bnhd")

    if reverse:
        o = o.flip(1)
        if final_state is not None and cu_seqlens is not None:
            final_state = final_state.flip(0)
    if final_state is not None and state_v_first:
        final_state = final_state.transpose(-1, -2).contiguous()
    return o, final_state


def chunk_simple_gla(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor] = None,
                     g_gamma: Optional[Tensor] = None, scale: Optional[float] = None,
                     initial_state: Optional[Tensor] = None, output_final_state: bool = False,
                     state_v_first: bool = False, cu_seqlens: Optional[Tensor] = None,
                     cu_seqlens_cpu: Optional[Tensor] = None,
                     **kwargs) -> Tuple[Tensor, Optional[Tensor]]:
    """FLA's chunk_simple_gla with a per-head decay g_gamma (H,) (log decay, <= 0) or none.

    q, k: (B, T, H, K); v: (B, T, H, V); scale defaults to K^-0.5; initial_state
    (N, H, K, V), or (N, H, V, K) with state_v_first; cu_seqlens (N+1,) offsets of packed
    sequences (B == 1). Returns (o (B, T, H, V), final_state fp32 or None). Per-token `g` is
    not supported (NotImplementedError); see the module docstring for every difference.
    """
    fn = "chunk_simple_gla"
    _check_kwargs(kwargs, fn)
    slope = _slope_of_gates(g, g_gamma, fn)
    return _run(q, k, v, slope, scale, initial_state, output_final_state, state_v_first,
                cu_seqlens)


def fused_recurrent_simple_gla(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor] = None,
                               g_gamma: Optional[Tensor] = None, scale: Optional[float] = None,
                               initial_state: Optional[Tensor] = None,
                               output_final_state: bool = False, reverse: bool = False,
                               state_v_first: bool = False, cu_seqlens: Optional[Tensor] = None,
                               **kwargs) -> Tuple[Tensor, Optional[Tensor]]:
    """FLA's fused_recurrent_simple_gla (decoding and short prefills): as chunk_simple_gla,
    plus reverse=True for a scan from the last token to the first. A single token per
    sequence without gradients is one lightning.attn_decode step; initial_state is never
    written."""
    fn = "fused_recurrent_simple_gla"
    _check_kwargs(kwargs, fn)
    slope = _slope_of_gates(g, g_gamma, fn)
    return _run(q, k, v, slope, scale, initial_state, output_final_state, state_v_first,
                cu_seqlens, reverse=reverse)


def _check_layer(q: Tensor, layer_idx: int, num_layers: int, fn: str) -> None:
    if q.dim() != 4:
        raise ValueError(f"{fn}: q must be (B, T, H, K), got shape {tuple(q.shape)}")
    if not (num_layers >= 1 and 0 <= layer_idx <= num_layers):
        # FLA's decay has the factor (1 - layer_idx / num_layers): outside [0, L] it would grow.
        raise ValueError(f"{fn}: need num_layers >= 1 and 0 <= layer_idx <= num_layers, got "
                         f"layer_idx={layer_idx!r}, num_layers={num_layers!r}")


def chunk_lightning_attn(q: Tensor, k: Tensor, v: Tensor, layer_idx: int, num_layers: int,
                         scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                         output_final_state: bool = False, cu_seqlens: Optional[Tensor] = None,
                         **kwargs) -> Tuple[Tensor, Optional[Tensor]]:
    """FLA's chunk_lightning_attn: chunk_simple_gla with FLA's per-layer decay
    g_gamma_h = -(8 / H) (1 - layer_idx / num_layers) h."""
    fn = "chunk_lightning_attn"
    _check_kwargs(kwargs, fn)
    _check_layer(q, layer_idx, num_layers, fn)
    slope = _lightning_slopes(q.shape[2], layer_idx, num_layers, q.device)
    return _run(q, k, v, slope, scale, initial_state, output_final_state, False, cu_seqlens)


def fused_recurrent_lightning_attn(q: Tensor, k: Tensor, v: Tensor, layer_idx: int,
                                   num_layers: int, scale: Optional[float] = None,
                                   initial_state: Optional[Tensor] = None,
                                   output_final_state: bool = False, reverse: bool = False,
                                   cu_seqlens: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """FLA's fused_recurrent_lightning_attn: fused_recurrent_simple_gla with the per-layer
    decay of chunk_lightning_attn."""
    _check_layer(q, layer_idx, num_layers, "fused_recurrent_lightning_attn")
    slope = _lightning_slopes(q.shape[2], layer_idx, num_layers, q.device)
    return _run(q, k, v, slope, scale, initial_state, output_final_state, False, cu_seqlens,
                reverse=reverse)
