"""Readable pure-PyTorch references of lightning.attn (DESIGN.md section 2), for the tests.

    attn_naive               the definition, with the full n x n causal decay mask
    attn_recurrent           the recurrence S_i = lambda S_{i-1} + k_i v_i^T, one token at a time
    attn_blockwise           the tiled forward of Lightning Attention-2, line by line
    attn_blockwise_backward  the tiled backward (dQ forward in order, dK/dV in reverse with dS)
    attn_varlen              one of the above per packed sequence (cu_seqlens), one state each

Layout (B, H, N, D) for q, k and (B, H, N, E) for v; states (B, H, D, E). Everything is
computed in the dtype of q (the tests pass fp64). Every decay factor is exp(-s * x) with
x >= 0, never lambda^-r.
"""

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor


def _rates(slope: Optional[Tensor], q: Tensor) -> Tensor:
    """Decay rates s_h as (1, H, 1, 1) in q's dtype; zeros (lambda = 1) for slope=None."""
    heads = q.shape[1]
    if slope is None:
        return q.new_zeros(1, heads, 1, 1)
    return slope.to(device=q.device, dtype=q.dtype).reshape(1, heads, 1, 1)


def _state0(initial_state: Optional[Tensor], q: Tensor, e: int) -> Tensor:
    """The state before the first token, S_{-1}: initial_state or zeros, (B, H, D, E)."""
    b, h, _, d = q.shape
    if initial_state is None:
        return q.new_zeros(b, h, d, e)
    return initial_state.to(device=q.device, dtype=q.dtype)


def _decay_mask(s: Tensor, rows: int, q: Tensor) -> Tensor:
    """D[r, c] = exp(-s (r - c)) for r >= c, exactly 0 above the diagonal: (1, H, rows, rows)."""
    pos = torch.arange(rows, device=q.device, dtype=q.dtype)
    diff = pos[:, None] - pos[None, :]
    return torch.where(diff >= 0, torch.exp(-s * diff.clamp(min=0)), torch.zeros_like(diff))


def attn_naive(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor] = None,
               scale: float = 1.0, initial_state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """o_i = scale (sum_{j<=i} lambda^(i-j) (q_i . k_j) v_j + lambda^(i+1) S0^T q_i);
    final = lambda^n S0 + sum_j lambda^(n-1-j) k_j v_j^T. Returns (o, final_state)."""
    n, e = q.shape[2], v.shape[3]
    s = _rates(slope, q)
    s0 = _state0(initial_state, q, e)
    pos = torch.arange(n, device=q.device, dtype=q.dtype)[:, None]  # (N, 1)

    scores = (q @ k.transpose(-1, -2)) * _decay_mask(s, n, q)       # (B, H, N, N)
    o = scores @ v
    o = o + torch.exp(-s * (pos + 1)) * (q @ s0)                    # lambda^(i+1) q_i^T S0
    o = scale * o

    kd = torch.exp(-s * (n - 1 - pos))                              # lambda^(n-1-j), (1, H, N, 1)
    final_state = torch.exp(-s * n) * s0 + (kd * k).transpose(-1, -2) @ v
    return o, final_state


def attn_recurrent(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor] = None,
                   scale: float = 1.0, initial_state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """S_i = lambda S_{i-1} + k_i v_i^T; o_i = scale S_i^T q_i (the decode convention)."""
    b, h, n, _ = q.shape
    e = v.shape[3]
    lam = torch.exp(-_rates(slope, q))
    state = _state0(initial_state, q, e)
    outs = []
    for i in range(n):
        state = lam * state + k[:, :, i, :, None] * v[:, :, i, None, :]
        outs.append(scale * (q[:, :, i, None, :] @ state).squeeze(-2))  # (B, H, E)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(b, h, 0, e)
    return o, state


def _blocks(n: int, block: int):
    """(start, m_t) of each block along the sequence; the tail block has m_t < block rows."""
    return [(start, min(block, n - start)) for start in range(0, n, block)]


def _block_decays(s: Tensor, m: int, q: Tensor):
    """qd[r] = lambda^(r+1), kd[c] = lambda^(m-1-c) as (1, H, m, 1), D (1, H, m, m), lambda^m."""
    r = torch.arange(m, device=q.device, dtype=q.dtype)[:, None]
    qd = torch.exp(-s * (r + 1))
    kd = torch.exp(-s * (m - 1 - r))
    return qd, kd, _decay_mask(s, m, q), torch.exp(-s * m)


def attn_blockwise(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor] = None,
                   scale: float = 1.0, initial_state: Optional[Tensor] = None,
                   block: int = 64) -> Tuple[Tensor, Tensor]:
    """The tiled forward of DESIGN.md: intra-block masked attention plus the inter-block
    contribution of the state carried across blocks."""
    s = _rates(slope, q)
    state = _state0(initial_state, q, v.shape[3])
    o = torch.empty_like(v)
    for start, m in _blocks(q.shape[2], block):
        rows = slice(start, start + m)
        q_t, k_t, v_t = q[:, :, rows], k[:, :, rows], v[:, :, rows]
        qd, kd, decay, lam_m = _block_decays(s, m, q)
        # intra block, like ordinary attention
        a = (q_t @ k_t.transpose(-1, -2)) * decay
        # + inter block through the state
        o[:, :, rows] = scale * (a @ v_t + qd * (q_t @ state))
        # state update
        state = lam_m * state + (kd * k_t).transpose(-1, -2) @ v_t
    return o, state


def attn_blockwise_backward(q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor,
                            grad_final_state: Optional[Tensor] = None,
                            slope: Optional[Tensor] = None, scale: float = 1.0,
                            initial_state: Optional[Tensor] = None, block: int = 64):
    """The tiled backward of DESIGN.md. Returns (dq, dk, dv, d_initial_state); the last is
    None without an initial state."""
    s = _rates(slope, q)
    d_o = scale * grad_out  # o = scale * (...), so every product below sees scale * dO
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    blocks = _blocks(q.shape[2], block)

    # intra block
    for start, m in blocks:
        rows = slice(start, start + m)
        q_t, k_t, v_t, do_t = q[:, :, rows], k[:, :, rows], v[:, :, rows], d_o[:, :, rows]
        _, _, decay, _ = _block_decays(s, m, q)
        p = (do_t @ v_t.transpose(-1, -2)) * decay
        dq[:, :, rows] += p @ k_t
        dk[:, :, rows] += p.transpose(-1, -2) @ q_t
        dv[:, :, rows] += ((q_t @ k_t.transpose(-1, -2)) * decay).transpose(-1, -2) @ do_t

    # dQ in forward order, the state recomputed as in the forward
    state = _state0(initial_state, q, v.shape[3])
    for start, m in blocks:
        rows = slice(start, start + m)
        qd, kd, _, lam_m = _block_decays(s, m, q)
        dq[:, :, rows] += qd * (d_o[:, :, rows] @ state.transpose(-1, -2))
        state = lam_m * state + (kd * k[:, :, rows]).transpose(-1, -2) @ v[:, :, rows]

    # dK, dV in reverse order with dS, seeded with the gradient of the final state
    d_state = (torch.zeros_like(state) if grad_final_state is None
               else grad_final_state.to(device=q.device, dtype=q.dtype))
    for start, m in reversed(blocks):
        rows = slice(start, start + m)
        q_t, k_t, v_t, do_t = q[:, :, rows], k[:, :, rows], v[:, :, rows], d_o[:, :, rows]
        qd, kd, _, lam_m = _block_decays(s, m, q)
        dk[:, :, rows] += kd * (v_t @ d_state.transpose(-1, -2))
        dv[:, :, rows] += kd * (k_t @ d_state)
        d_state = lam_m * d_state + (qd * q_t).transpose(-1, -2) @ do_t

    return dq, dk, dv, (d_state if initial_state is not None else None)


def attn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor,
                slope: Optional[Tensor] = None, scale: float = 1.0,
                initial_state: Optional[Tensor] = None,
                attn_fn: Callable = attn_naive) -> Tuple[Tensor, Tensor]:
    """Sequences packed along N of a batch of one (q: (1, H, N, D)), split at cu_seqlens
    (S+1 offsets), each run by attn_fn from its own initial state (S, H, D, E). Returns the
    packed o and the S final states."""
    assert q.shape[0] == 1, "varlen packs the sequences along N of a batch of one"
    offsets = [int(x) for x in cu_seqlens.tolist()]
    outs, states = [], []
    for i in range(len(offsets) - 1):
        rows = slice(offsets[i], offsets[i + 1])
        s0 = None if initial_state is None else initial_state[i:i + 1]
        o_i, state_i = attn_fn(q[:, :, rows], k[:, :, rows], v[:, :, rows], slope, scale, s0)
        outs.append(o_i)
        states.append(state_i)
    return torch.cat(outs, dim=2), torch.cat(states, dim=0)
