"""Python API of torch.ops.lightning: typed wrappers, fake (meta) kernels for
torch.compile, and autograd, side by side."""

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

_LAYOUTS = ("bhnd", "bnhd")


def build_slopes(num_heads: int, layer_idx: Optional[int] = None,
                 num_layers: Optional[int] = None, device=None) -> Tensor:
    """ALiBi-style decay rates s_h (lambda_h = exp(-s_h)) of OpenNLPLab / MiniMax, fp32 (H,).

    For H a power of two s_h = 2^(-8(h+1)/H); otherwise the slopes of the next lower power
    of two P followed by every other slope of 2P. With a layer index the slopes shrink
    linearly with depth: s * (1 - l/(L-1) + 1e-5).
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"build_slopes: num_heads must be a positive int, got {num_heads!r}")

    def power_of_two(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(p) + (power_of_two(2 * p)[0::2][: num_heads - p] if p != num_heads else [])
    out = torch.tensor(slopes, dtype=torch.float32, device=device)
    if layer_idx is not None:
        if num_layers is None or num_layers < 1 or not 0 <= layer_idx < num_layers:
            raise ValueError(f"build_slopes: need 0 <= layer_idx < num_layers, got "
                             f"layer_idx={layer_idx}, num_layers={num_layers}")
        depth = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
        out = out * (1 - depth + 1e-5)
    return out


def _check_layout(layout, fn):
    if layout not in _LAYOUTS:
        raise ValueError(f"{fn}: layout must be one of {_LAYOUTS}, got {layout!r}")


def attn(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor] = None, *, scale: float = 1.0,
         initial_state: Optional[Tensor] = None, output_final_state: bool = False,
         cu_seqlens: Optional[Tensor] = None, layout: str = "bhnd") -> Tuple[Tensor, Optional[Tensor]]:
    """Causal linear attention with per-head decay: o_i = scale * sum_{j<=i} lambda^(i-j) (q_i.k_j) v_j.

    Args:
        q, k: (B, H, N, D) for layout "bhnd", (B, N, H, D) for "bnhd" (FLA / FlashAttention);
            any strides with a contiguous last dimension, no copy.
        v: (B, H, N, E) or (B, N, H, E).
        slope: (H,) fp32 decay rates s_h >= 0 (lambda = exp(-s_h)), e.g. build_slopes(H);
            None for no decay. Slopes are constants: no gradient flows to them.
        scale: multiplies the output (1.0 as in TransNormerLLM / MiniMax; FLA's default is D^-0.5).
        initial_state: (S, H, D, E) fp32 state to start from (S = B, or sequences in varlen).
        output_final_state: also return the fp32 state after the last token of each sequence.
        cu_seqlens: (S+1,) int32/int64 offsets of S sequences packed along N (needs B == 1).

    Returns:
        (o, final_state): o shaped like v in the given layout; final_state (S, H, D, E) fp32,
        or None unless output_final_state. N may be 0: o is then empty and final_state the
        initial state (zeros without one).
    """
    _check_layout(layout, "lightning.attn")
    if layout == "bnhd":
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.dim() != 4:
                raise ValueError(f"lightning.attn: {name} must have 4 dimensions (B, N, H, X), "
                                 f"got shape {tuple(t.shape)}")
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    o, final_state = torch.ops.lightning.attn(q, k, v, slope, initial_state, cu_seqlens,
                                              output_final_state, float(scale))
    if layout == "bnhd":
        o = o.transpose(1, 2)
    return o, (final_state if output_final_state else None)


def attn_decode(q: Tensor, k: Tensor, v: Tensor, state: Tensor, slope: Optional[Tensor] = None,
                *, scale: float = 1.0, layout: str = "bhnd") -> Tensor:
    """Decode steps continuing from `state`, updated in place: per token, state = lambda state
    + k v^T, o = scale state^T q.

    q, k: (B, H, D) for one token per sequence, or 4-D with T >= 1 tokens ((B, H, T, D) for
    "bhnd", (B, T, H, D) for "bnhd"), e.g. the draft tokens of speculative decoding; v likewise
    with E; state: (B, H, D, E) fp32 contiguous, the convention of attn's final state, so a
    prefill's final_state continues here. Returns o shaped like v. One token runs the decode
    kernel; several run the prefill kernel from `state` and copy its final state back. For
    inference: no gradient flows into `state`.
    """
    fn = "lightning.attn_decode"
    _check_layout(layout, fn)
    if q.dim() != 4:
        return torch.ops.lightning.attn_decode(q, k, v, state, slope, float(scale))
    token_dim = 2 if layout == "bhnd" else 1
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{fn}: {name} must have 4 dimensions like q, got shape {tuple(t.shape)}")
    tokens = q.shape[token_dim]
    if k.shape[token_dim] != tokens or v.shape[token_dim] != tokens:
        raise ValueError(f"{fn}: q, k and v must hold the same number of tokens along dim "
                         f"{token_dim}, got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if tokens == 1:
        o = torch.ops.lightning.attn_decode(q.squeeze(token_dim), k.squeeze(token_dim),
                                            v.squeeze(token_dim), state, slope, float(scale))
        return o.unsqueeze(token_dim)
    heads_dim = 3 - token_dim
    want = (q.shape[0], q.shape[heads_dim], q.shape[3], v.shape[3])
    if state.dtype != torch.float32 or tuple(state.shape) != want or not state.is_contiguous():
        raise ValueError(f"{fn}: state must be a contiguous float32 tensor of shape (B, H, D, E) = "
                         f"{want}, got {state.dtype} of shape {tuple(state.shape)}"
                         + ("" if state.is_contiguous() else " (not contiguous)"))
    o, final_state = attn(q, k, v, slope, scale=scale, initial_state=state,
                          output_final_state=True, layout=layout)
    with torch.no_grad():
        state.copy_(final_state)
    return o


def _empty_like_rows(t):
    """What the C++ side allocates for an output shaped like t: t's layout when its last
    dimension is contiguous, else a contiguous tensor."""
    return torch.empty_like(t) if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.new_empty(t.shape)


@torch.library.register_fake("lightning::attn")
def _attn_fake(q, k, v, slope, initial_state, cu_seqlens, output_final_state, scale):
    num_seqs = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    state_shape = (num_seqs, q.shape[1], q.shape[3], v.shape[3]) if output_final_state else (0,)
    return _empty_like_rows(v), q.new_empty(state_shape, dtype=torch.float32)


@torch.library.register_fake("lightning::attn_backward")
def _attn_backward_fake(grad_out, grad_final_state, q, k, v, slope, initial_state, cu_seqlens,
                        scale):
    d_init = (q.new_empty(initial_state.shape, dtype=torch.float32) if initial_state is not None
              else q.new_empty((0,), dtype=torch.float32))
    return _empty_like_rows(q), _empty_like_rows(k), _empty_like_rows(v), d_init


@torch.library.register_fake("lightning::attn_decode")
def _attn_decode_fake(q, k, v, state, slope, scale):
    return v.new_empty((q.shape[0], q.shape[1], v.shape[2]))


def _attn_setup_context(ctx, inputs, output):
    q, k, v, slope, initial_state, cu_seqlens, _, scale = inputs
    ctx.save_for_backward(q, k, v, slope, initial_state, cu_seqlens)
    ctx.scale = scale


def _attn_backward(ctx, grad_out, grad_final_state):
    q, k, v, slope, initial_state, cu_seqlens = ctx.saved_tensors
    if grad_final_state is not None and grad_final_state.numel() == 0:
        grad_final_state = None  # the final state was not asked for
    dq, dk, dv, d_init = torch.ops.lightning.attn_backward(
        grad_out, grad_final_state, q, k, v, slope, initial_state, cu_seqlens, ctx.scale)
    return dq, dk, dv, None, (d_init if initial_state is not None else None), None, None, None


torch.library.register_autograd("lightning::attn", _attn_backward, setup_context=_attn_setup_context)
