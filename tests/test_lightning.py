"""lightning.attn and lightning.attn_decode against the fp64 references of lightning/reference.py,
over the grid of DESIGN.md section 4. Bad input is tested in test_lightning_errors.py."""

import math

import pytest
import torch

import lightning
from lightning import reference as ref
from utils import TOLERANCE, assert_close

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def poison_cuda_cache(device):
    """Outputs are fresh allocations, so they cannot be poisoned directly. On CUDA, fill the
    caching allocator with NaN bytes (0xFF is NaN in fp64, fp32, fp16 and bf16) and free it:
    the op's outputs are then carved out of NaN memory and an element it forgets to write
    fails the comparison. The CPU allocator does not cache, so there is nothing to do there."""
    if torch.device(device).type != "cuda":
        return
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    large = torch.full((1 << 30,), 255, dtype=torch.uint8, device=device)  # large pool, split on demand
    small = [torch.full((1 << 19,), 255, dtype=torch.uint8, device=device)  # fills 2 MiB small-pool
             for _ in range(64)]                                           # segments, 512 KiB each
    del large, small


def randn(*shape, dtype=F32, device="cpu"):
    """Fresh normal values drawn in fp32 on the CPU (reproducible on every device), then cast."""
    return torch.randn(*shape, dtype=F32).to(device=device, dtype=dtype)


def make_slope(kind, heads, device):
    """Decay rates: 'none' (no decay), 'alibi' (build_slopes), 'fast' (s from 0.9 up to 30, where
    lambda^-r would overflow), 'zero' (a slope tensor of zeros, lambda = 1 on the decay path)."""
    if kind == "none":
        return None
    if kind == "alibi":
        return lightning.build_slopes(heads, device=device)
    if kind == "fast":
        rates = [0.9, 2.5, 0.3, 30.0]
        return torch.tensor([rates[h % len(rates)] for h in range(heads)], device=device)
    if kind == "zero":
        return torch.zeros(heads, device=device)
    raise ValueError(kind)


def state_tol(dtype):
    """States are fp32 by contract, so an fp64 run's states carry fp32 rounding."""
    return TOLERANCE[F32] if dtype == F64 else TOLERANCE[dtype]


def run_lightning(q, k, v, slope, scale, s0, grad_out, grad_state, **kwargs):
    """lightning.attn forward, then backward with the given output gradients (grad_state None:
    the final state is not asked for). Returns (o, final_state, grads of q, k, v[, s0])."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    if s0 is not None:
        leaves.append(s0.detach().clone().requires_grad_())
    want_state = grad_state is not None
    poison_cuda_cache(q.device)
    o, final_state = lightning.attn(*leaves[:3], slope, scale=scale,
                                    initial_state=leaves[3] if s0 is not None else None,
                                    output_final_state=want_state, **kwargs)
    assert o.dtype == v.dtype and o.shape == v.shape and o.device == v.device
    if want_state:
        assert final_state.dtype == F32
    else:
        assert final_state is None
    outputs, grads_out = [o], [grad_out]
    if want_state:
        outputs.append(final_state)
        grads_out.append(grad_state)
    poison_cuda_cache(q.device)
    grads = torch.autograd.grad(outputs, leaves, grads_out)
    for g, leaf in zip(grads, leaves):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
    return o.detach(), (final_state.detach() if want_state else None), grads


def run_reference(q, k, v, slope, scale, s0, grad_out, grad_state, cu_seqlens=None,
                  layout="bhnd", attn_fn=ref.attn_naive):
    """The same forward and backward through attn_fn in fp64 on the CPU (autograd), from the
    values the op was given (after any cast to a half type)."""
    leaves = [t.detach().to("cpu", F64).requires_grad_() for t in (q, k, v)]
    if s0 is not None:
        leaves.append(s0.detach().to("cpu", F64).requires_grad_())
    qq, kk, vv = leaves[:3]
    if layout == "bnhd":
        qq, kk, vv = (t.transpose(1, 2) for t in (qq, kk, vv))
    slope64 = None if slope is None else slope.detach().to("cpu", F64)
    state0 = leaves[3] if s0 is not None else None
    if cu_seqlens is None:
        o, final_state = attn_fn(qq, kk, vv, slope64, scale, state0)
    else:
        o, final_state = ref.attn_varlen(qq, kk, vv, cu_seqlens.cpu(), slope64, scale, state0,
                                         attn_fn=attn_fn)
    if layout == "bnhd":
        o = o.transpose(1, 2)
    loss = (o * grad_out.detach().to("cpu", F64)).sum()
    if grad_state is not None:
        loss = loss + (final_state * grad_state.detach().to("cpu", F64)).sum()
    grads = torch.autograd.grad(loss, leaves)
    return o.detach(), final_state.detach(), grads


def assert_matches(got, want, dtype):
    o, final_state, grads = got
    ref_o, ref_state, ref_grads = want
    assert_close(o, ref_o, dtype, "o")
    if final_state is not None:
        assert_close(final_state, ref_state, dtype, "final_state", tol=state_tol(dtype))
    for name, g, ref_g in zip(("dq", "dk", "dv", "d_initial_state"), grads, ref_grads):
        tol = state_tol(dtype) if name == "d_initial_state" else None
        assert_close(g, ref_g, dtype, name, tol=tol)


def check_attn(device, B, H, N, D, E, dtype=F32, slope_kind="alibi", scale=1.0,
               initial_state=True, output_final_state=True, layout="bhnd"):
    """Fresh inputs of one configuration; lightning.attn forward and all gradients against
    the naive fp64 reference."""
    def seq_shape(x):
        return (B, H, N, x) if layout == "bhnd" else (B, N, H, x)

    q, k = randn(*seq_shape(D), dtype=dtype, device=device), randn(*seq_shape(D), dtype=dtype, device=device)
    v = randn(*seq_shape(E), dtype=dtype, device=device)
    s0 = randn(B, H, D, E, device=device) if initial_state else None
    grad_out = randn(*seq_shape(E), dtype=dtype, device=device)
    grad_state = randn(B, H, D, E, device=device) if output_final_state else None
    slope = make_slope(slope_kind, H, device)
    got = run_lightning(q, k, v, slope, scale, s0, grad_out, grad_state, layout=layout)
    want = run_reference(q, k, v, slope, scale, s0, grad_out, grad_state, layout=layout)
    assert_matches(got, want, dtype)


# ---------------------------------------------------------------------------------------------
# The reference against itself: naive formula, recurrence and tiled algorithm agree
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 5, 64, 65, 130, 200])
@pytest.mark.parametrize("slope_kind", ["fast", "none", "alibi"])
def test_reference_forms_agree(n, slope_kind):
    B, H, D, E = 2, 3, 16, 32
    q, k, v = randn(B, H, n, D, dtype=F64), randn(B, H, n, D, dtype=F64), randn(B, H, n, E, dtype=F64)
    s0 = randn(B, H, D, E, dtype=F64)
    slope = make_slope(slope_kind, H, "cpu")
    o, state = ref.attn_naive(q, k, v, slope, 0.3, s0)
    for form in (ref.attn_recurrent, ref.attn_blockwise):
        o2, state2 = form(q, k, v, slope, 0.3, s0)
        assert_close(o2, o, F64, f"{form.__name__} o")
        assert_close(state2, state, F64, f"{form.__name__} state")
    o3, state3 = ref.attn_blockwise(q, k, v, slope, 0.3, s0, block=16)
    assert_close(o3, o, F64, "blockwise(16) o")
    assert_close(state3, state, F64, "blockwise(16) state")

    # The tiled backward against autograd through the naive formula.
    grad_out, grad_state = randn(B, H, n, E, dtype=F64), randn(B, H, D, E, dtype=F64)
    _, _, want = run_reference(q, k, v, slope, 0.3, s0, grad_out, grad_state)
    got = ref.attn_blockwise_backward(q, k, v, grad_out, grad_state, slope, 0.3, s0)
    for name, g, w in zip(("dq", "dk", "dv", "d_initial_state"), got, want):
        assert_close(g, w, F64, name)


def test_reference_definition_by_hand():
    # One head, two tokens, D = E = 1: o_0 = s (q0 k0 v0 + l q0 S0), o_1 = s (q1 k1 v1 +
    # l q1 k0 v0 + l^2 q1 S0), final = l^2 S0 + l k0 v0 + k1 v1.
    lam, scale = 0.5, 3.0
    slope = torch.tensor([math.log(1 / lam)], dtype=F64)
    q = torch.tensor([2.0, 5.0], dtype=F64).view(1, 1, 2, 1)
    k = torch.tensor([3.0, 7.0], dtype=F64).view(1, 1, 2, 1)
    v = torch.tensor([11.0, 13.0], dtype=F64).view(1, 1, 2, 1)
    s0 = torch.tensor([17.0], dtype=F64).view(1, 1, 1, 1)
    o, state = ref.attn_naive(q, k, v, slope, scale, s0)
    o0 = scale * (2 * 3 * 11 + lam * 2 * 17)
    o1 = scale * (5 * 7 * 13 + lam * 5 * 3 * 11 + lam ** 2 * 5 * 17)
    final = lam ** 2 * 17 + lam * 3 * 11 + 7 * 13
    torch.testing.assert_close(o.flatten(), torch.tensor([o0, o1], dtype=F64))
    torch.testing.assert_close(state.flatten(), torch.tensor([final], dtype=F64))


# ---------------------------------------------------------------------------------------------
# lightning.attn: forward, final state and every gradient against the fp64 reference
# ---------------------------------------------------------------------------------------------

# Every head-dim class for D and E, mostly with D != E, at a length with a tail block.
DIM_PAIRS = [(16, 32), (32, 16), (64, 96), (96, 64), (128, 192), (192, 128), (256, 16),
             (16, 256), (256, 256), (128, 128), (48, 80), (240, 112), (176, 144)]


@pytest.mark.parametrize("d,e", DIM_PAIRS, ids=[f"d{d}-e{e}" for d, e in DIM_PAIRS])
def test_head_dims(device, d, e):
    check_attn(device, B=2, H=2, N=130, D=d, E=e, slope_kind="alibi", scale=d ** -0.5)


@pytest.mark.parametrize("n", [1, 17, 64, 65, 513, 913, 1213])
@pytest.mark.parametrize("slope_kind", ["fast", "alibi", "none", "zero"])
def test_lengths_and_slopes(device, n, slope_kind):
    check_attn(device, B=2, H=4, N=n, D=64, E=96, slope_kind=slope_kind)


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("output_final_state", [False, True])
@pytest.mark.parametrize("slope_kind", ["fast", "alibi"])
def test_state_options(device, initial_state, output_final_state, slope_kind):
    check_attn(device, B=2, H=2, N=200, D=32, E=64, slope_kind=slope_kind, scale=0.37,
               initial_state=initial_state, output_final_state=output_final_state)


@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16])
@pytest.mark.parametrize("n", [17, 913])
def test_dtypes(device, dtype, n):
    if dtype == F64 and device == "cuda":
        pytest.skip("fp64 is CPU only")
    check_attn(device, B=2, H=4, N=n, D=64, E=128, dtype=dtype, slope_kind="alibi", scale=0.5)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_layout_bnhd(device, dtype):
    check_attn(device, B=2, H=3, N=150, D=64, E=32, dtype=dtype, layout="bnhd",
               slope_kind="fast", scale=0.8)


def test_packed_qkv_view(device):
    # q, k, v as slices of one packed (B, N, H, 2D + E) projection: strided views, no copy.
    B, N, H, D, E = 2, 140, 3, 32, 48
    qkv = randn(B, N, H, 2 * D + E, device=device)
    s0, slope = randn(B, H, D, E, device=device), make_slope("alibi", H, device)
    grad_out, grad_state = randn(B, N, H, E, device=device), randn(B, H, D, E, device=device)

    def split(t):
        return t[..., :D], t[..., D:2 * D], t[..., 2 * D:]

    leaf = qkv.clone().requires_grad_()
    s0_leaf = s0.clone().requires_grad_()
    poison_cuda_cache(device)
    o, state = lightning.attn(*split(leaf), slope, scale=0.6, initial_state=s0_leaf,
                              output_final_state=True, layout="bnhd")
    poison_cuda_cache(device)
    dqkv, ds0 = torch.autograd.grad((o, state), (leaf, s0_leaf), (grad_out, grad_state))

    leaf64 = qkv.to("cpu", F64).requires_grad_()
    s064 = s0.to("cpu", F64).requires_grad_()
    q, k, v = (t.transpose(1, 2) for t in split(leaf64))
    ref_o, ref_state = ref.attn_naive(q, k, v, slope.cpu(), 0.6, s064)
    ref_o = ref_o.transpose(1, 2)
    loss = (ref_o * grad_out.cpu().double()).sum() + (ref_state * grad_state.cpu().double()).sum()
    ref_dqkv, ref_ds0 = torch.autograd.grad(loss, (leaf64, s064))
    assert_close(o, ref_o, F32, "o")
    assert_close(state, ref_state, F32, "final_state")
    for name, sl in (("dq", slice(0, D)), ("dk", slice(D, 2 * D)), ("dv", slice(2 * D, None))):
        assert_close(dqkv[..., sl], ref_dqkv[..., sl], F32, name)
    assert_close(ds0, ref_ds0, F32, "d_initial_state")


def test_non_unit_last_stride(device):
    # Not the fast path (the last dim is strided), but a user still gets the right answer.
    B, H, N, D, E = 1, 2, 90, 32, 16
    q = randn(B, H, D, N, device=device).transpose(-1, -2)
    k = randn(B, H, D, N, device=device).transpose(-1, -2)
    v = randn(B, H, E, N, device=device).transpose(-1, -2)
    slope = make_slope("fast", H, device)
    grad_out = randn(B, H, E, N, device=device).transpose(-1, -2)
    got = run_lightning(q, k, v, slope, 1.0, None, grad_out, None)
    want = run_reference(q, k, v, slope, 1.0, None, grad_out, None)
    assert_matches(got, want, F32)


def test_matches_blockwise_algorithm(device):
    # The kernel against the tiled algorithm it implements (forward and backward), and the
    # naive formula, from the same inputs.
    B, H, N, D, E = 2, 3, 333, 48, 80
    q, k, v = (randn(B, H, N, X, device=device) for X in (D, D, E))
    s0, slope = randn(B, H, D, E, device=device), make_slope("fast", H, device)
    grad_out, grad_state = randn(B, H, N, E, device=device), randn(B, H, D, E, device=device)
    got = run_lightning(q, k, v, slope, 0.7, s0, grad_out, grad_state)

    as64 = [t.to("cpu", F64) for t in (q, k, v, s0, grad_out, grad_state)]
    q64, k64, v64, s064, go64, gs64 = as64
    o, state = ref.attn_blockwise(q64, k64, v64, slope.cpu(), 0.7, s064)
    grads = ref.attn_blockwise_backward(q64, k64, v64, go64, gs64, slope.cpu(), 0.7, s064)
    assert_matches(got, (o, state, grads), F32)
    assert_matches(got, run_reference(q, k, v, slope, 0.7, s0, grad_out, grad_state), F32)


@pytest.mark.parametrize("slope_kind", ["alibi", "none"])
@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_sequence_split(device, dtype, slope_kind):
    # Two (batch, head) items leave most of a GPU idle, so the CUDA sweeps run split: chunks of
    # whole blocks (here 49 blocks in 3 chunks, cuda/sweep_split.cu) whose start states come
    # from a prefix over the chunks. The answer must be the unsplit one.
    check_attn(device, 1, 2, 3109, 64, 64, dtype=dtype, slope_kind=slope_kind)


@pytest.mark.slow
def test_long_sequence_fp32_state(device):
    # n >= 65536, not a multiple of the block; one head without decay (slope 0: the state
    # only grows) and one with slow decay. The reference is the tiled algorithm in fp64 (the
    # n x n mask would not fit), itself checked against the naive formula above.
    B, H, N, D, E = 1, 2, 65536 + 37, 16, 16
    q, k, v = (randn(B, H, N, X, device=device) for X in (D, D, E))
    s0 = randn(B, H, D, E, device=device)
    slope = torch.tensor([0.0, 1e-3], device=device)
    grad_out, grad_state = randn(B, H, N, E, device=device), randn(B, H, D, E, device=device)
    got = run_lightning(q, k, v, slope, 0.25, s0, grad_out, grad_state)

    q64, k64, v64, s064, go64, gs64 = (t.to("cpu", F64) for t in (q, k, v, s0, grad_out, grad_state))
    o, state = ref.attn_blockwise(q64, k64, v64, slope.cpu(), 0.25, s064)
    grads = ref.attn_blockwise_backward(q64, k64, v64, go64, gs64, slope.cpu(), 0.25, s064)
    assert_matches(got, (o, state, grads), F32)


# ---------------------------------------------------------------------------------------------
# Varlen: sequences packed along N, one state each
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("lengths", [[17, 0, 130, 64, 1, 200], [513], [0, 70, 0]],
                         ids=["mixed-with-empty", "one", "empty-ends"])
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
def test_varlen(device, index_dtype, lengths, layout):
    H, D, E, scale = 3, 32, 64, 0.5
    N, S = sum(lengths), len(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=index_dtype, device=device)
    seq_shape = (lambda x: (1, H, N, x)) if layout == "bhnd" else (lambda x: (1, N, H, x))
    q, k, v = (randn(*seq_shape(X), device=device) for X in (D, D, E))
    s0, slope = randn(S, H, D, E, device=device), make_slope("fast", H, device)
    grad_out, grad_state = randn(*seq_shape(E), device=device), randn(S, H, D, E, device=device)

    got = run_lightning(q, k, v, slope, scale, s0, grad_out, grad_state, cu_seqlens=cu, layout=layout)
    want = run_reference(q, k, v, slope, scale, s0, grad_out, grad_state, cu_seqlens=cu, layout=layout)
    assert_matches(got, want, F32)

    # Against separate calls, one per sequence (an empty one keeps its initial state).
    o, final_state, _ = got
    seq_dim = 2 if layout == "bhnd" else 1
    offsets = cu.tolist()
    for i in range(S):
        if offsets[i] == offsets[i + 1]:
            assert torch.equal(final_state[i], s0[i]), f"sequence {i} is empty: its state must be kept"
            continue
        rows = slice(offsets[i], offsets[i + 1])
        o_i, state_i = lightning.attn(q.narrow(seq_dim, offsets[i], rows.stop - rows.start),
                                      k.narrow(seq_dim, offsets[i], rows.stop - rows.start),
                                      v.narrow(seq_dim, offsets[i], rows.stop - rows.start),
                                      slope, scale=scale, initial_state=s0[i:i + 1],
                                      output_final_state=True, layout=layout)
        assert_close(o.narrow(seq_dim, offsets[i], rows.stop - rows.start), o_i, F32, f"o of sequence {i}")
        assert_close(final_state[i:i + 1], state_i, F32, f"final state of sequence {i}")


def test_varlen_without_initial_state(device):
    H, D, E, lengths = 2, 16, 16, [40, 0, 90]
    N = sum(lengths)
    cu = torch.tensor([0, 40, 40, 130], device=device)
    q, k, v = (randn(1, H, N, X, device=device) for X in (D, D, E))
    grad_out, grad_state = randn(1, H, N, E, device=device), randn(3, H, D, E, device=device)
    got = run_lightning(q, k, v, None, 1.0, None, grad_out, grad_state, cu_seqlens=cu)
    want = run_reference(q, k, v, None, 1.0, None, grad_out, grad_state, cu_seqlens=cu)
    assert_matches(got, want, F32)
    assert torch.equal(got[1][1], torch.zeros(H, D, E, device=device)), "an empty sequence's state is 0"


@pytest.mark.parametrize("with_state", [True, False], ids=["initial-state", "zero-state"])
@pytest.mark.parametrize("varlen", [False, True], ids=["batch", "varlen"])
def test_empty_sequence(device, with_state, varlen):
    # N = 0, as F.scaled_dot_product_attention takes it: an empty output, the initial state (or
    # zeros) as the final state; backward carries grad_final_state to the initial state and
    # gives empty gradients of q, k, v.
    H, D, E = 3, 32, 16
    B, S = (1, 3) if varlen else (2, 2)
    cu = torch.zeros(S + 1, dtype=torch.int32, device=device) if varlen else None
    q, k = (randn(B, H, 0, D, device=device).requires_grad_() for _ in range(2))
    v = randn(B, H, 0, E, device=device).requires_grad_()
    s0 = randn(S, H, D, E, device=device).requires_grad_() if with_state else None
    o, final_state = lightning.attn(q, k, v, make_slope("fast", H, device), initial_state=s0,
                                    output_final_state=True, cu_seqlens=cu)
    assert o.shape == (B, H, 0, E) and o.dtype == v.dtype
    assert torch.equal(final_state, s0 if with_state else torch.zeros(S, H, D, E, device=device))
    assert lightning.attn(q, k, v, cu_seqlens=cu)[1] is None

    grad_state = randn(S, H, D, E, device=device)
    leaves = [q, k, v] + ([s0] if with_state else [])
    grads = torch.autograd.grad((o * 0).sum() + (final_state * grad_state).sum(), leaves)
    for leaf, grad in zip(leaves[:3], grads):
        assert grad.shape == leaf.shape
    if with_state:
        assert torch.equal(grads[3], grad_state)


# ---------------------------------------------------------------------------------------------
# Decode: a prefill's final state continues token by token
# ---------------------------------------------------------------------------------------------

DECODE_CASES = [  # (dtype, form, prefill, slope kind)
    (F32, "bhd", 70, "alibi"), (F32, "bhd", 0, "fast"), (F32, "bhd", 130, "none"),
    (F32, "bhnd", 70, "fast"), (F32, "bnhd", 70, "alibi"), (F64, "bhd", 17, "fast"),
    (BF16, "bhd", 70, "alibi"), (F16, "bnhd", 17, "fast"), (BF16, "bhnd", 0, "none"),
]


@pytest.mark.parametrize("dtype,form,prefill,slope_kind", DECODE_CASES)
def test_decode_continues_prefill(device, dtype, form, prefill, slope_kind):
    if dtype == F64 and device == "cuda":
        pytest.skip("fp64 is CPU only")
    B, H, D, E, steps, scale = 2, 4, 64, 32, 9, 0.7
    N = prefill + steps
    q, k = randn(B, H, N, D, dtype=dtype, device=device), randn(B, H, N, D, dtype=dtype, device=device)
    v = randn(B, H, N, E, dtype=dtype, device=device)
    s0, slope = randn(B, H, D, E, device=device), make_slope(slope_kind, H, device)
    inputs_before = [t.clone() for t in (q, k, v)]

    o_full, state_full = lightning.attn(q, k, v, slope, scale=scale, initial_state=s0,
                                        output_final_state=True)
    if prefill:
        _, state = lightning.attn(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill], slope,
                                  scale=scale, initial_state=s0, output_final_state=True)
    else:
        state = s0.clone()
    state_ptr = state.data_ptr()

    def token(t, i):  # token i of a (B, H, N, X) tensor in the form under test
        if form == "bhd":
            return t[:, :, i]
        if form == "bhnd":
            return t[:, :, i:i + 1]
        return t[:, :, i:i + 1].transpose(1, 2)  # (B, 1, H, X)

    outs = []
    for i in range(prefill, N):
        poison_cuda_cache(device)
        o_i = lightning.attn_decode(token(q, i), token(k, i), token(v, i), state, slope, scale=scale,
                                    layout="bnhd" if form == "bnhd" else "bhnd")
        assert o_i.dtype == dtype and o_i.shape == token(v, i).shape
        outs.append(o_i.reshape(B, H, E))
    o_dec = torch.stack(outs, dim=2)
    assert state.data_ptr() == state_ptr, "attn_decode must update the state in place"
    for before, after in zip(inputs_before, (q, k, v)):
        assert torch.equal(before, after)

    ref_o, ref_state = ref.attn_naive(*(t.to("cpu", F64) for t in (q, k, v)),
                                      None if slope is None else slope.cpu(), scale, s0.cpu())
    # The state carried between decode calls is fp32, so an fp64 decode is fp32-accurate.
    assert_close(o_dec, ref_o[:, :, prefill:], dtype, "decode o", tol=state_tol(dtype))
    assert_close(state, ref_state, dtype, "decode state", tol=state_tol(dtype))
    assert_close(o_full, ref_o, dtype, "full o")
    assert_close(state_full, ref_state, dtype, "full final_state", tol=state_tol(dtype))
    if dtype in (F32, F64):  # unrounded outputs: decode equals the one full call
        assert_close(o_dec, o_full[:, :, prefill:], F32, "decode o vs one call")
        assert_close(state, state_full, F32, "decode state vs one call")


@pytest.mark.parametrize("dtype,layout", [(F32, "bhnd"), (BF16, "bnhd"), (F16, "bhnd")])
def test_decode_several_tokens_a_call(device, dtype, layout):
    """Speculative decoding's draft: T tokens a call continue the state as T one-token calls
    do, in place, and match the fp64 reference."""
    B, H, D, E, scale = 2, 3, 32, 48, 0.5
    prefill, drafts = 40, (4, 1, 7)
    N = prefill + sum(drafts)
    q, k = randn(B, H, N, D, dtype=dtype, device=device), randn(B, H, N, D, dtype=dtype, device=device)
    v = randn(B, H, N, E, dtype=dtype, device=device)
    slope = make_slope("alibi", H, device)
    _, state = lightning.attn(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill], slope,
                              scale=scale, output_final_state=True)
    state_ptr = state.data_ptr()

    def as_layout(t):
        return t if layout == "bhnd" else t.transpose(1, 2)

    outs, start = [], prefill
    for t in drafts:
        poison_cuda_cache(device)
        part = [as_layout(x[:, :, start:start + t]) for x in (q, k, v)]
        o = lightning.attn_decode(*part, state, slope, scale=scale, layout=layout)
        assert o.dtype == dtype and o.shape == part[2].shape
        outs.append(o if layout == "bhnd" else o.transpose(1, 2))
        start += t
    assert state.data_ptr() == state_ptr, "attn_decode must update the state in place"
    ref_o, ref_state = ref.attn_naive(*(x.to("cpu", F64) for x in (q, k, v)), slope.cpu(), scale)
    assert_close(torch.cat(outs, dim=2), ref_o[:, :, prefill:], dtype, "decode o", tol=state_tol(dtype))
    assert_close(state, ref_state, dtype, "decode state", tol=state_tol(dtype))


# ---------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [5, 70])
def test_gradcheck(n):
    # fp64 on the CPU, across a 64-token block boundary, with decay, an initial state and the
    # final state asked for (its gradient then arrives as zeros). States are fp32 by contract,
    # too coarse for finite differences, so the state paths (d_initial_state, and gradients
    # seeded by grad_final_state) are checked against the fp64 reference instead.
    B, H, D, E = 1, 2, 16, 16
    q, k, v = (randn(B, H, n, X, dtype=F64).requires_grad_() for X in (D, D, E))
    s0, slope = randn(B, H, D, E), torch.tensor([0.9, 0.05])

    def fn(q, k, v):
        o, _ = lightning.attn(q, k, v, slope, scale=0.8, initial_state=s0, output_final_state=True)
        return o

    # Full Jacobians at n = 5; random projections of them (fast mode) across the block boundary.
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=n > 64)

    grad_out, grad_state = randn(B, H, n, E, dtype=F64), randn(B, H, D, E)
    got = run_lightning(q, k, v, slope, 0.8, s0, grad_out, grad_state)
    want = run_reference(q, k, v, slope, 0.8, s0, grad_out, grad_state)
    assert_matches(got, want, F64)


def test_gradcheck_varlen():
    H, D, E = 2, 16, 16
    cu = torch.tensor([0, 3, 3, 9], dtype=torch.int32)
    q, k, v = (randn(1, H, 9, X, dtype=F64).requires_grad_() for X in (D, D, E))
    s0, slope = randn(3, H, D, E), torch.tensor([0.9, 0.05])

    def fn(q, k, v):
        o, _ = lightning.attn(q, k, v, slope, initial_state=s0, output_final_state=True, cu_seqlens=cu)
        return o

    assert torch.autograd.gradcheck(fn, (q, k, v))


def _opcheck_inputs(device, case):
    B, H, N, D, E = (1, 2, 70, 32, 16) if case == "varlen" else (2, 2, 70, 32, 16)
    S = 2 if case == "varlen" else B
    q, k, v = (randn(B, H, N, X, device=device).requires_grad_() for X in (D, D, E))
    slope = None if case == "plain" else make_slope("fast", H, device)
    s0 = None if case == "plain" else randn(S, H, D, E, device=device).requires_grad_()
    cu = torch.tensor([0, 30, 70], device=device) if case == "varlen" else None
    return q, k, v, slope, s0, cu


@pytest.mark.parametrize("case", ["plain", "state", "varlen"])
def test_opcheck_attn(device, case):
    q, k, v, slope, s0, cu = _opcheck_inputs(device, case)
    final = case != "plain"
    torch.library.opcheck(torch.ops.lightning.attn.default, (q, k, v, slope, s0, cu, final, 0.5))


@pytest.mark.parametrize("case", ["plain", "state", "varlen"])
def test_opcheck_attn_backward(device, case):
    q, k, v, slope, s0, cu = _opcheck_inputs(device, case)
    q, k, v = q.detach(), k.detach(), v.detach()
    s0 = None if s0 is None else s0.detach()
    grad_out = randn(*v.shape, device=device)
    grad_state = None if s0 is None else randn(*s0.shape, device=device)
    torch.library.opcheck(torch.ops.lightning.attn_backward.default,
                          (grad_out, grad_state, q, k, v, slope, s0, cu, 0.5))


@pytest.mark.parametrize("with_slope", [False, True])
def test_opcheck_attn_decode(device, with_slope):
    B, H, D, E = 2, 4, 32, 64
    q, k, v = randn(B, H, D, device=device), randn(B, H, D, device=device), randn(B, H, E, device=device)
    state = randn(B, H, D, E, device=device)
    slope = make_slope("alibi", H, device) if with_slope else None
    torch.library.opcheck(torch.ops.lightning.attn_decode.default, (q, k, v, state, slope, 0.5))


def test_compile_fullgraph(device):
    B, H, N, D, E = 2, 2, 100, 32, 16

    def step(q, k, v, slope, s0):
        o, state = lightning.attn(q, k, v, slope, scale=0.5, initial_state=s0, output_final_state=True)
        return torch.tanh(o), state * 2

    compiled = torch.compile(step, fullgraph=True)
    q, k, v = (randn(B, H, N, X, device=device) for X in (D, D, E))
    s0, slope = randn(B, H, D, E, device=device), make_slope("alibi", H, device)
    grad_o, grad_state = randn(B, H, N, E, device=device), randn(B, H, D, E, device=device)

    results = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, s0)]
        o, state = fn(leaves[0], leaves[1], leaves[2], slope, leaves[3])
        grads = torch.autograd.grad((o, state), leaves, (grad_o, grad_state))
        results.append((o.detach(), state.detach(), grads))
    (o, state, grads), (o_c, state_c, grads_c) = results
    assert_close(o_c, o, F32, "compiled o")
    assert_close(state_c, state, F32, "compiled state")
    for name, g_c, g in zip(("dq", "dk", "dv", "d_initial_state"), grads_c, grads):
        assert_close(g_c, g, F32, f"compiled {name}")


def test_compile_decode(device):
    B, H, D, E = 2, 4, 32, 16

    def step(q, k, v, state, slope):
        return lightning.attn_decode(q, k, v, state, slope, scale=0.5) * 2

    compiled = torch.compile(step, fullgraph=True)
    q, k, v = randn(B, H, D, device=device), randn(B, H, D, device=device), randn(B, H, E, device=device)
    state, slope = randn(B, H, D, E, device=device), make_slope("alibi", H, device)
    state_c = state.clone()
    o = step(q, k, v, state, slope)
    o_c = compiled(q, k, v, state_c, slope)
    assert_close(o_c, o, F32, "compiled decode o")
    assert_close(state_c, state, F32, "compiled decode state (updated in place)")


# ---------------------------------------------------------------------------------------------
# build_slopes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads,exponents", [
    (1, [-8.0]),
    (2, [-4.0, -8.0]),
    (3, [-4.0, -8.0, -2.0]),                       # P = 2, then slopes(4)[0::2][:1]
    (8, [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0]),
    (12, [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -0.5, -1.5, -2.5, -3.5]),
])
def test_build_slopes_values(heads, exponents):
    slopes = lightning.build_slopes(heads)
    assert slopes.dtype == F32 and slopes.shape == (heads,)
    torch.testing.assert_close(slopes, torch.tensor([2.0 ** x for x in exponents]), rtol=0, atol=0)


@pytest.mark.parametrize("heads", [4, 6, 32, 40, 64, 96])
def test_build_slopes_formula(heads):
    def power_of_two(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    p = 1
    while p * 2 <= heads:
        p *= 2
    want = power_of_two(p) + power_of_two(2 * p)[0::2][:heads - p]
    torch.testing.assert_close(lightning.build_slopes(heads), torch.tensor(want, dtype=F32))

    layers = 24
    for layer in (0, 5, 23):
        scaled = lightning.build_slopes(heads, layer_idx=layer, num_layers=layers)
        factor = 1 - layer / (layers - 1) + 1e-5
        torch.testing.assert_close(scaled, torch.tensor([s * factor for s in want], dtype=F32))
    assert (lightning.build_slopes(heads, layer_idx=23, num_layers=24) > 0).all()


def test_build_slopes_device(device):
    slopes = lightning.build_slopes(8, device=device)
    assert slopes.device.type == torch.device(device).type
