"""Sequence parallelism for lightning.attn: one long sequence split along N across the ranks of
a torch.distributed process group (NCCL on GPUs, gloo on CPUs), exact against one process
holding the whole sequence, forward and backward.

Rank r of the P ranks holds tokens [s_r, e_r), L_r = e_r - s_r of them. Per head, with
a = lambda = exp(-s) and the op's convention (S_i is the state after token i, S_{-1} the
initial state S_0; DESIGN.md, "Sequence parallelism"):

    M_r   = sum_t a^(L_r - 1 - t) k_t v_t^T           state of chunk r alone, from zero
    X_r   = a^(s_r) S_0 + sum_{j<r} a^(s_r - e_j) M_j   state entering chunk r (= S_{s_r - 1})
    o_r   = lightning.attn(q_r, k_r, v_r, initial_state=X_r)
    final = X_P  (s_P = N)                          the same on every rank

and backward, with dO_r the rank's output gradient and dX_P = dF the sum over the ranks of
their final-state gradients (t is the position inside the chunk):

    dX_r  = scale sum_t a^(t + 1) q_t dO_t^T          gradient of X_r
    dM_j  = sum_{j<r<=P} a^(s_r - e_j) dX_r          seeds the op's backward of rank j's pass
                                                     as its final-state gradient
    dS_0  = sum_{0<=r<=P} a^(s_r) dX_r

Communication per call: one all-gather of the M_j forward and one of the (dX_r, dF_r)
backward, P x B x H x D x E fp32 (twice that backward with a final state) however long the
sequence, and a small all-gather of each rank's shapes first, so that a mismatch raises the
same error on every rank instead of hanging.
"""

import itertools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from .ops import _check_layout

__all__ = ["attn"]

_OP = "lightning.distributed.attn"

# all_gather_single is the newer name of all_gather_into_tensor.
_all_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

# What every rank sends about its call before any state moves: one float64 row (exact for
# these integers). All fields from "B" on must be equal on every rank.
_FIELDS = ("status", "N", "B", "H", "D", "E", "dtype", "device type", "slope given",
           "slope values", "initial_state given", "output_final_state", "gradient needed",
           "initial_state gradient needed", "scale")
_OK, _EMPTY, _INVALID = 0, 1, 2            # status
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_SIDE_STREAMS = {}                         # CUDA device -> stream that reads metadata back
# bmm with an fp32 output for 16-bit inputs (aten::bmm.dtype), where this torch has it.
_BMM_HAS_OUT_DTYPE = "dtype" in torch.ops.aten.bmm.overloads()


# ------------------------------------------------------------------------------ the math

def _matmul_fp32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b over the last two dims of (B, H, X, L) and (B, H, L, Y), accumulated and returned
    in fp32, never rounded to 16 bits: for 16-bit inputs cuBLAS's fp32 output on CUDA (tensor
    cores), the fp32 product of the same values elsewhere; fp64 inputs multiply in fp64. fp32
    inputs on CUDA follow torch.backends.cuda.matmul.allow_tf32 (off by default)."""
    if a.dtype in (torch.float16, torch.bfloat16):
        if a.is_cuda and _BMM_HAS_OUT_DTYPE:
            out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]),
                            out_dtype=torch.float32)
            return out.view(*a.shape[:-1], b.shape[-1])
        return a.float() @ b.float()
    return (a @ b).float()


def _decay(slope: Tensor, powers: Tensor) -> Tensor:
    """lambda^x = exp(-s x) for the x >= 0 in powers (J,), per head: (J, H), in powers'
    dtype (fp64 for fp64 inputs, else fp32 as in the op)."""
    return torch.exp(-slope.to(powers.dtype) * powers.unsqueeze(-1))


def _positions(n: int, like: Tensor) -> Tensor:
    """0, 1, ..., n-1 on like's device, fp64 for fp64 inputs, else fp32."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.arange(n, device=like.device, dtype=dtype)


def _decayed_outer(a: Tensor, b: Tensor, slope: Optional[Tensor], powers: Tensor) -> Tensor:
    """sum_t lambda^(powers_t) a_t b_t^T over the rows t of a (B, H, L, X) and b (B, H, L, Y):
    (B, H, X, Y) fp32, one batched GEMM. M_r is (k, v, L-1-t); dX_r / scale is (q, dO, t+1).
    The weighted rows are rounded once to a's dtype (for the tensor-core GEMM, as the CUDA
    kernel's state update rounds its decayed keys), on every device alike, so that the CPU
    tests see CUDA's numerics."""
    if slope is not None:
        weights = _decay(slope, powers).t().unsqueeze(-1)                # (H, L, 1)
        a = torch.mul(a, weights, out=torch.empty_like(a))  # fp32 product, one rounding
    return _matmul_fp32(a.transpose(-1, -2), b)


def _decayed_sum(terms: Sequence[Tuple[Tensor, int]], slope: Optional[Tensor]) -> Optional[Tensor]:
    """sum of lambda^x S over the (S, x) in terms, S (B, H, D, E) fp32 and x >= 0 a host
    integer; None when there are no terms (a zero state)."""
    if not terms:
        return None
    states = torch.stack([s for s, _ in terms])                          # (J, B, H, D, E)
    if slope is None:
        return states.sum(0)
    powers = torch.tensor([x for _, x in terms], dtype=torch.float32)
    weights = _decay(slope, powers.to(states.device, non_blocking=True))  # (J, H)
    return torch.einsum("jh,jbhde->bhde", weights, states)


def _state_entering(start: int, ends: Sequence[int], states: Tensor,
                    initial_state: Optional[Tensor], slope: Optional[Tensor]) -> Optional[Tensor]:
    """X = lambda^start S_0 + sum_j lambda^(start - e_j) M_j over the chunks j that end at
    ends[j] <= start: the state entering token `start` (None: zero)."""
    terms = [(states[j], start - end) for j, end in enumerate(ends)]
    if initial_state is not None:
        terms.append((initial_state, start))
    return _decayed_sum(terms, slope)


def _all_gather(t: Tensor, group, world: int, async_op: bool = False):
    """Every rank's t stacked in rank order, (P, *t.shape), in one collective (concatenated
    along a new leading dim, the form both NCCL and gloo take). With async_op, returns
    (work, output) and the output is ready after work.wait()."""
    out = t.new_empty((world,) + t.shape)
    work = _all_gather_into(out, t.unsqueeze(0), group=group, async_op=async_op)
    return (work, out) if async_op else out


# ------------------------------------------------------------------------------ agreement

def _group_info(group):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{_OP}: torch.distributed has no initialised process group; call "
                           f"torch.distributed.init_process_group first")
    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"{_OP}: this process (global rank {dist.get_rank()}) is not a member "
                         f"of `group`")
    return group, rank, dist.get_world_size(group)


def _describe(t) -> str:
    return (f"shape {tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, Tensor)
            else type(t).__name__)


def _check_local(q, k, v, slope, initial_state, scale, layout):
    """The checks that must pass on this rank before anything moves between ranks. The op
    checks the rest (head dims, slope values), which depend only on what the ranks agree on,
    so it then fails on every rank alike. Returns (error or None, q, k, v in bhnd)."""
    try:
        _check_layout(layout, _OP)
    except ValueError as e:
        return str(e), q, k, v
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            return f"{_OP}: {name} must be a 4-dimensional tensor, got {_describe(t)}", q, k, v
    if layout == "bnhd":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if q.dtype not in _DTYPES:
        return f"{_OP}: q must be float32, float16, bfloat16 or float64, got {q.dtype}", q, k, v
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype or t.device != q.device:
            return (f"{_OP}: {name} must have q's dtype and device ({q.dtype}, {q.device}), "
                    f"got {t.dtype}, {t.device}"), q, k, v
    b, h, _, d = q.shape
    e = v.shape[3]
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        return (f"{_OP}: k must have q's shape and v q's (B, H, N); got q {tuple(q.shape)}, "
                f"k {tuple(k.shape)}, v {tuple(v.shape)} (as B, H, N, X)"), q, k, v
    if slope is not None and not (isinstance(slope, Tensor) and slope.shape == (h,)
                                  and slope.dtype == torch.float32 and slope.device == q.device):
        return (f"{_OP}: slope must be a float32 tensor of shape ({h},) on {q.device}, got "
                f"{_describe(slope)}"), q, k, v
    if initial_state is not None and not (
            isinstance(initial_state, Tensor) and initial_state.shape == (b, h, d, e)
            and initial_state.dtype == torch.float32 and initial_state.device == q.device):
        return (f"{_OP}: initial_state must be a float32 tensor of shape (B, H, D, E) = "
                f"{(b, h, d, e)} on {q.device}, got {_describe(initial_state)}"), q, k, v
    if not isinstance(scale, (int, float)):
        return f"{_OP}: scale must be a float, got {type(scale).__name__}", q, k, v
    return None, q, k, v


def _metadata_device(group, q):
    """Where the metadata row lives: CUDA for a group with NCCL (q's device when q is a CUDA
    tensor), else the CPU; never from q alone, so that a rank with bad input still joins the
    same collective as the others."""
    if "nccl" in str(dist.get_backend(group)):
        if isinstance(q, Tensor) and q.is_cuda:
            return q.device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _send_metadata(error, q, k, v, slope, initial_state, output_final_state, scale, group,
                   world):
    """Starts the all-gather of this rank's row of _FIELDS; returns (work, table (P, fields)).
    The slope values enter as a weighted sum, computed where they are."""
    device = _metadata_device(group, q)
    if error is not None:
        row = torch.full((len(_FIELDS),), -1.0, dtype=torch.float64)
        row[0] = _INVALID
        row = row.to(device)
    else:
        b, h, n, d = q.shape
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, initial_state))
        init_grad = needs_grad and initial_state is not None and initial_state.requires_grad
        row = torch.tensor(
            [_OK if n > 0 else _EMPTY, n, b, h, d, v.shape[3], _DTYPES.index(q.dtype),
             {"cpu": 0, "cuda": 1}.get(q.device.type, 2), slope is not None, 0.0,
             initial_state is not None, bool(output_final_state), needs_grad, init_grad,
             float(scale)], dtype=torch.float64).to(device, non_blocking=True)
        if slope is not None:
            index = torch.arange(1, h + 1, device=slope.device, dtype=torch.float64)
            row[_FIELDS.index("slope values")] = (slope.double() * index).sum().to(device)
    return _all_gather(row, group, world, async_op=True)


def _wait_to_host(work, table: Tensor) -> Tensor:
    """Waits for an async collective and returns its output on the host. On CUDA the wait and
    the copy run on a side stream, so the host waits for the collective alone, not for the
    kernels queued on the current stream since it was launched."""
    if table.device.type != "cuda":
        work.wait()
        return table
    if table.device not in _SIDE_STREAMS:
        _SIDE_STREAMS[table.device] = torch.cuda.Stream(table.device)
    with torch.cuda.stream(_SIDE_STREAMS[table.device]):
        work.wait()
        return table.cpu()  # synchronises with the side stream only


def _agree(metadata, local_error: Optional[str]) -> List[int]:
    """Waits for the metadata and raises the same error on every rank if any rank's input is
    bad or the ranks disagree (the rank at fault raises its own message); returns the ranks'
    chunk lengths."""
    rows = _wait_to_host(*metadata).tolist()
    if local_error is not None:
        raise ValueError(local_error)
    status = [int(r[0]) for r in rows]
    bad = [i for i, s in enumerate(status) if s == _INVALID]
    if bad:
        raise ValueError(f"{_OP}: rank(s) {bad} of the group rejected their inputs (the error "
                         f"is raised there)")
    empty = [i for i, s in enumerate(status) if s == _EMPTY]
    if empty:
        raise ValueError(f"{_OP}: every rank needs a chunk of at least one token, but rank(s) "
                         f"{empty} of the group passed N = 0")
    for i in range(_FIELDS.index("B"), len(_FIELDS)):
        values = [r[i] for r in rows]
        if any(x != values[0] for x in values):
            if _FIELDS[i] == "dtype":
                values = [str(_DTYPES[int(x)]) for x in values]
            elif _FIELDS[i] not in ("slope values", "scale"):
                values = [int(x) for x in values]
            raise ValueError(f"{_OP}: the ranks of the group disagree on {_FIELDS[i]}: {values} "
                             f"(by rank); every rank must pass the same B, H, D, E, dtype, "
                             f"device type, slope, scale and options, each with its own chunk")
    return [int(r[1]) for r in rows]


# ------------------------------------------------------------------------------ autograd

class _SequenceParallelAttn(torch.autograd.Function):
    """lightning.attn over a sequence split across a process group; q, k, v (B, H, L, X)."""

    @staticmethod
    def forward(ctx, q, k, v, initial_state, slope, scale, output_final_state, group, rank,
                world, metadata):
        b, h, n, d = q.shape
        e = v.shape[3]
        # 1. While the metadata travels, the state of this chunk alone, M_r (no one needs the
        #    last rank's without a final state); then the check that the ranks agree.
        own = None
        if output_final_state or rank < world - 1:
            own = _decayed_outer(k, v, slope, (n - 1) - _positions(n, k))
        lengths = _agree(metadata, None)
        if own is None:
            own = q.new_zeros((b, h, d, e), dtype=torch.float32)

        # 2. All-gather of the M_j; the state entering this chunk and the final state.
        states = _all_gather(own, group, world)                           # (P, B, H, D, E)
        ends = list(itertools.accumulate(lengths))
        starts = [end - length for end, length in zip(ends, lengths)]
        incoming = _state_entering(starts[rank], ends[:rank], states, initial_state, slope)
        final = (_state_entering(ends[-1], ends, states, initial_state, slope)
                 if output_final_state else q.new_empty((0,), dtype=torch.float32))

        # 3. This rank's own pass, from the state entering its chunk.
        o, _ = torch.ops.lightning.attn(q, k, v, slope, incoming, None, False, scale)

        ctx.save_for_backward(q, k, v, slope, incoming)
        ctx.scale, ctx.group, ctx.rank = scale, group, rank
        ctx.starts, ctx.ends, ctx.output_final_state = starts, ends, output_final_state
        if not output_final_state:
            ctx.mark_non_differentiable(final)
        return o, final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_final):
        q, k, v, slope, incoming = ctx.saved_tensors
        rank, starts, ends = ctx.rank, ctx.starts, ctx.ends
        world, n = len(ends), q.shape[2]
        want_init = ctx.needs_input_grad[3]  # the same on every rank (agreed in the forward)
        # fp32 states and GEMMs as in the forward, whatever autocast the backward runs under
        with torch.autocast(q.device.type, enabled=False):
            # 1. dX_r, the gradient of the state entering this chunk (rank 0's only reaches
            #    the initial state), and this rank's final-state gradient dF_r: all-gathered.
            if rank > 0 or want_init:
                d_incoming = ctx.scale * _decayed_outer(q, grad_out, slope, 1 + _positions(n, q))
            else:
                d_incoming = q.new_zeros(q.shape[:2] + (q.shape[3], v.shape[3]),
                                         dtype=torch.float32)
            sent = [d_incoming]
            if ctx.output_final_state:
                sent.append(grad_final.float() if grad_final is not None
                            else torch.zeros_like(d_incoming))
            grads = _all_gather(torch.stack(sent), ctx.group, world)     # (P, G, B, H, D, E)

            # 2. The gradients reaching the state at `origin` from the dX_r of the ranks from
            #    `first` on and from every dF_r: dM_r at this chunk's end, dS_0 at the start.
            def reaching(origin: int, first: int):
                terms = [(grads[j, 0], starts[j] - origin) for j in range(first, world)]
                if ctx.output_final_state:
                    terms += [(grads[j, 1], ends[-1] - origin) for j in range(world)]
                return _decayed_sum(terms, slope)

            d_own = reaching(ends[rank], rank + 1)
            d_init = reaching(0, 0) if want_init else None

            # 3. The op's backward of this rank's pass, with dM_r as its final-state gradient.
            dq, dk, dv, _ = torch.ops.lightning.attn_backward(
                grad_out, d_own, q, k, v, slope, incoming, None, ctx.scale)
        return dq, dk, dv, d_init, None, None, None, None, None, None, None


# ------------------------------------------------------------------------------ entry point

def attn(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor] = None, *, group=None,
         scale: float = 1.0, initial_state: Optional[Tensor] = None,
         output_final_state: bool = False, layout: str = "bhnd") -> Tuple[Tensor, Optional[Tensor]]:
    """lightning.attn over one sequence split along N across the ranks of a process group.

    Every rank of `group` (None: the default group) calls this with its own contiguous chunk
    of the sequence, in the group's rank order; chunks may differ in length (each >= 1
    token). Arguments as lightning.attn's, per rank: q, k (B, H, L_r, D) and v (B, H, L_r, E)
    for layout "bhnd", (B, L_r, H, X) for "bnhd"; B, H, D, E, dtype, slope, scale and the
    options must be the same on every rank.

    initial_state: (B, H, D, E) fp32, the state before the first token of the whole
        sequence: the same tensor on every rank.
    output_final_state: also return the fp32 state after the last token of the whole
        sequence, the same on every rank (a decode can continue from it on any rank).

    Returns (o, final_state): o for this rank's own tokens, shaped like v; final_state or None.

    Gradients follow the convention of sequence parallelism: every rank calls backward on its
    own loss, and then each rank's q, k, v gradients are those of the sum of all the ranks'
    losses for its tokens. initial_state's gradient is that of the whole sum on every rank:
    complete already, not to be summed over the group again. When one rank runs the
    backward, all must.

    Each call first all-gathers one small row of metadata, so that mismatched shapes,
    dtypes or options and empty chunks raise the same ValueError on every rank rather than
    hang; reading it back waits for that collective alone. Under autocast, q, k and v are
    cast to the autocast dtype (as for scaled_dot_product_attention); states stay fp32.
    """
    group, rank, world = _group_info(group)
    error, q, k, v = _check_local(q, k, v, slope, initial_state, scale, layout)
    if error is None and q.dtype != torch.float64 and torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    metadata = _send_metadata(error, q, k, v, slope, initial_state, output_final_state, scale,
                              group, world)
    if error is not None or q.shape[2] == 0:
        _agree(metadata, error)  # raises on every rank
    with torch.autocast(q.device.type, enabled=False):
        o, final = _SequenceParallelAttn.apply(q, k, v, initial_state, slope, float(scale),
                                               bool(output_final_state), group, rank, world,
                                               metadata)
    if layout == "bnhd":
        o = o.transpose(1, 2)
    return o, (final if output_final_state else None)
