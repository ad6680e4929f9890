"""Bad input to lightning.attn / attn_backward / attn_decode: a RuntimeError or ValueError
whose message names the argument, and every input left as it was (DESIGN.md section 4)."""

import pytest
import torch

import lightning

F32 = torch.float32


def cuda_only(test):
    """Marks a test that needs a GPU (device mixes): marked `cuda`, skipped without one."""
    test = pytest.mark.cuda(test)
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test)


B, H, N, D, E = 2, 4, 33, 32, 16


def expect_error(exc, pattern, fn, *tensors):
    """fn() raises exactly `exc` with a message matching `pattern`, and changes no tensor."""
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    before = [t.clone() for t in tensors]
    with pytest.raises(exc, match=pattern) as info:
        fn()
    assert type(info.value) is exc, f"raised {type(info.value).__name__}, expected {exc.__name__}"
    for t, b in zip(tensors, before):
        torch.testing.assert_close(t, b, rtol=0, atol=0, equal_nan=True)


def inputs(device, b=B, h=H, n=N, d=D, e=E, dtype=F32):
    q = torch.randn(b, h, n, d, dtype=dtype, device=device)
    k = torch.randn(b, h, n, d, dtype=dtype, device=device)
    v = torch.randn(b, h, n, e, dtype=dtype, device=device)
    return q, k, v


def test_wrong_rank(device):
    q, k, v = inputs(device)
    expect_error(ValueError, r"q must have 4 dimensions", lambda: lightning.attn(q[0], k, v), q, k, v)
    expect_error(ValueError, r"k must have 4 dimensions", lambda: lightning.attn(q, k[None], v), q, k, v)
    expect_error(ValueError, r"v must have 4 dimensions", lambda: lightning.attn(q, k, v[0]), q, k, v)
    expect_error(ValueError, r"q must have 4 dimensions",
                 lambda: lightning.attn(q[0], k[0], v[0], layout="bnhd"), q, k, v)


def test_k_shape_mismatch(device):
    q, k, v = inputs(device)
    expect_error(ValueError, r"k must have the shape of q", lambda: lightning.attn(q, k[:, :, :-1], v),
                 q, k, v)
    expect_error(ValueError, r"k must have the shape of q",
                 lambda: lightning.attn(q, torch.randn(B, H, N, D + 16, device=device), v), q, k, v)


@pytest.mark.parametrize("dim", [0, 1, 2], ids=["B", "H", "N"])
def test_v_shape_mismatch(device, dim):
    q, k, v = inputs(device)
    bad = v.narrow(dim, 0, v.shape[dim] - 1)
    expect_error(ValueError, r"v must be \(B, H, N, E\)", lambda: lightning.attn(q, k, bad), q, k, v)


def test_dtype_mix(device):
    q, k, v = inputs(device)
    expect_error(RuntimeError, r"k has dtype", lambda: lightning.attn(q, k.half(), v), q, k, v)
    expect_error(RuntimeError, r"v has dtype", lambda: lightning.attn(q, k, v.bfloat16()), q, k, v)


def test_unsupported_dtype(device):
    q, k, v = inputs(device)
    expect_error(RuntimeError, r"q must be float32",
                 lambda: lightning.attn(q.int(), k.int(), v.int()), q, k, v)


@pytest.mark.parametrize("dim", [8, 24, 272])
def test_unsupported_head_dim_d(device, dim):
    q, k, v = inputs(device, d=dim)
    expect_error(ValueError, r"head dim D of q and k must be a multiple of 16",
                 lambda: lightning.attn(q, k, v), q, k, v)


@pytest.mark.parametrize("dim", [8, 24, 272])
def test_unsupported_head_dim_e(device, dim):
    q, k, v = inputs(device, e=dim)
    expect_error(ValueError, r"head dim E of v must be a multiple of 16",
                 lambda: lightning.attn(q, k, v), q, k, v)


@pytest.mark.parametrize("value", [-0.1, float("nan")], ids=["negative", "nan"])
def test_bad_slope_value(device, value):
    q, k, v = inputs(device)
    slope = lightning.build_slopes(H, device=device)
    slope[1] = value
    expect_error(ValueError, r"slope must be >= 0", lambda: lightning.attn(q, k, v, slope), q, k, v, slope)


def test_slope_written_after_a_good_call(device):
    """A slope's values are checked once per tensor and version (the check synchronises with
    the GPU): writes after a call that passed, in place or through a view, are checked again,
    and so is the decode step."""
    q, k, v = inputs(device)
    slope = lightning.build_slopes(H, device=device)
    lightning.attn(q, k, v, slope)
    lightning.attn(q, k, v, slope)  # remembered
    with torch.no_grad():
        slope[1] = -0.5
    expect_error(ValueError, r"slope must be >= 0", lambda: lightning.attn(q, k, v, slope), q, k, v, slope)
    slope[1] = 0.5
    lightning.attn(q, k, v, slope)
    slope.view(H)[2] = float("nan")
    expect_error(ValueError, r"slope must be >= 0", lambda: lightning.attn(q, k, v, slope), q, k, v, slope)
    state = torch.zeros(B, H, D, E, device=device)
    expect_error(ValueError, r"slope must be >= 0",
                 lambda: lightning.attn_decode(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, slope),
                 q, k, v, slope, state)


@pytest.mark.parametrize("shape", [(H + 1,), (1, H), ()], ids=["H+1", "1xH", "scalar"])
def test_slope_wrong_shape(device, shape):
    q, k, v = inputs(device)
    slope = torch.full(shape, 0.1, device=device)
    expect_error(ValueError, r"slope must have shape \(H,\)", lambda: lightning.attn(q, k, v, slope),
                 q, k, v, slope)


def test_slope_wrong_dtype(device):
    q, k, v = inputs(device)
    slope = lightning.build_slopes(H, device=device).double()
    expect_error(RuntimeError, r"slope must be Float", lambda: lightning.attn(q, k, v, slope),
                 q, k, v, slope)


@pytest.mark.parametrize("shape", [(B, H, E, D), (1, H, D, E), (B, H, D, E + 16), (H, D, E)])
def test_initial_state_wrong_shape(device, shape):
    q, k, v = inputs(device)
    s0 = torch.randn(shape, device=device)
    expect_error(ValueError, r"initial_state must have shape",
                 lambda: lightning.attn(q, k, v, initial_state=s0), q, k, v, s0)


def test_initial_state_wrong_dtype(device):
    q, k, v = inputs(device, dtype=torch.bfloat16)
    s0 = torch.randn(B, H, D, E, device=device, dtype=torch.bfloat16)
    expect_error(RuntimeError, r"initial_state must be Float",
                 lambda: lightning.attn(q, k, v, initial_state=s0), q, k, v, s0)


@pytest.mark.parametrize("offsets,pattern", [
    ([0, 20, 10, N], r"cu_seqlens must be non-decreasing"),
    ([1, 20, N], r"cu_seqlens must start at 0 and end at N"),
    ([0, 20, N - 1], r"cu_seqlens must start at 0 and end at N"),
    ([0, 20, N + 1], r"cu_seqlens must start at 0 and end at N"),
    ([0], r"cu_seqlens must be 1-D with at least 2 entries"),
], ids=["decreasing", "start", "end-short", "end-long", "one-entry"])
def test_cu_seqlens_bad_values(device, offsets, pattern):
    q, k, v = inputs(device, b=1)
    cu = torch.tensor(offsets, dtype=torch.int32, device=device)
    expect_error(ValueError, pattern, lambda: lightning.attn(q, k, v, cu_seqlens=cu), q, k, v, cu)


def test_cu_seqlens_batch_not_one(device):
    q, k, v = inputs(device, b=2)
    cu = torch.tensor([0, 10, N], device=device)
    expect_error(ValueError, r"cu_seqlens needs batch size 1", lambda: lightning.attn(q, k, v, cu_seqlens=cu),
                 q, k, v, cu)


def test_cu_seqlens_wrong_dtype(device):
    q, k, v = inputs(device, b=1)
    cu = torch.tensor([0.0, 10.0, N], device=device)
    expect_error(ValueError, r"cu_seqlens must be int32 or int64",
                 lambda: lightning.attn(q, k, v, cu_seqlens=cu), q, k, v, cu)


def test_cu_seqlens_state_per_sequence(device):
    # Varlen has one state per packed sequence: (S, H, D, E), not (B, H, D, E).
    q, k, v = inputs(device, b=1)
    cu = torch.tensor([0, 10, 20, N], device=device)
    s0 = torch.randn(1, H, D, E, device=device)
    expect_error(ValueError, r"initial_state must have shape \(3, ",
                 lambda: lightning.attn(q, k, v, initial_state=s0, cu_seqlens=cu), q, k, v, cu, s0)


@pytest.mark.parametrize("layout", ["bnh", "BHND", "nhd", ""])
def test_bad_layout(device, layout):
    q, k, v = inputs(device)
    expect_error(ValueError, r"layout must be one of", lambda: lightning.attn(q, k, v, layout=layout),
                 q, k, v)
    state = torch.zeros(B, H, D, E, device=device)
    expect_error(ValueError, r"layout must be one of",
                 lambda: lightning.attn_decode(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, layout=layout),
                 q, k, v, state)


def test_backward_bad_grads(device):
    q, k, v = inputs(device)
    s0 = torch.randn(B, H, D, E, device=device)
    g = torch.randn(B, H, N, E + 16, device=device)
    op = torch.ops.lightning.attn_backward
    expect_error(ValueError, r"grad_out must have the shape of v",
                 lambda: op(g, None, q, k, v, None, s0, None, 1.0), g, q, k, v, s0)
    g = torch.randn(B, H, N, E, device=device)
    gs = torch.randn(B, H, E, D, device=device)
    expect_error(ValueError, r"grad_final_state must have shape",
                 lambda: op(g, gs, q, k, v, None, s0, None, 1.0), g, gs, q, k, v, s0)
    expect_error(RuntimeError, r"grad_out has dtype",
                 lambda: op(g.half(), None, q, k, v, None, s0, None, 1.0), g, q, k, v, s0)


def decode_inputs(device, dtype=F32):
    q = torch.randn(B, H, D, dtype=dtype, device=device)
    k = torch.randn(B, H, D, dtype=dtype, device=device)
    v = torch.randn(B, H, E, dtype=dtype, device=device)
    return q, k, v


@pytest.mark.parametrize("shape", [(B, H, E, D), (B, H + 1, D, E), (1, H, D, E), (B, H, D)])
def test_decode_state_wrong_shape(device, shape):
    q, k, v = decode_inputs(device)
    state = torch.randn(shape, device=device)
    expect_error(ValueError, r"state must have shape",
                 lambda: lightning.attn_decode(q, k, v, state), q, k, v, state)


def test_decode_state_wrong_dtype(device):
    q, k, v = decode_inputs(device)
    state = torch.randn(B, H, D, E, device=device, dtype=torch.bfloat16)
    expect_error(RuntimeError, r"state must be Float", lambda: lightning.attn_decode(q, k, v, state),
                 q, k, v, state)


def test_decode_state_not_contiguous(device):
    q, k, v = decode_inputs(device)
    state = torch.randn(B, H, E, D, device=device).transpose(-1, -2)
    expect_error(ValueError, r"state must be contiguous", lambda: lightning.attn_decode(q, k, v, state),
                 q, k, v, state)


def test_decode_state_misaligned(device):
    q, k, v = decode_inputs(device)
    state = torch.randn(B * H * D * E + 1, device=device)[1:].view(B, H, D, E)  # 4 bytes in
    expect_error(ValueError, r"state must start on a 16-byte boundary",
                 lambda: lightning.attn_decode(q, k, v, state), q, k, v, state)


def test_decode_bad_tokens(device):
    q, k, v = decode_inputs(device)
    state = torch.randn(B, H, D, E, device=device)
    expect_error(ValueError, r"q must have 3 dimensions",
                 lambda: torch.ops.lightning.attn_decode(q[0], k, v, state, None, 1.0), q, k, v, state)
    two = torch.randn(B, H, 2, D, device=device)
    expect_error(ValueError, r"the same number of tokens",
                 lambda: lightning.attn_decode(two, two, torch.randn(B, H, 3, E, device=device), state),
                 two, state)
    expect_error(ValueError, r"state must be a contiguous float32 tensor",
                 lambda: lightning.attn_decode(two, two, torch.randn(B, H, 2, E, device=device),
                                               state.transpose(-1, -2)),
                 two, state)
    expect_error(ValueError, r"k must have the shape of q",
                 lambda: lightning.attn_decode(q, k[:, :-1], v, state), q, k, v, state)
    expect_error(ValueError, r"head dim D of q and k",
                 lambda: lightning.attn_decode(q[..., :8], k[..., :8], v, state), q, k, v, state)
    expect_error(ValueError, r"slope must be >= 0",
                 lambda: lightning.attn_decode(q, k, v, state, torch.full((H,), -1.0, device=device)),
                 q, k, v, state)


def test_build_slopes_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        lightning.build_slopes(0)
    with pytest.raises(ValueError, match="layer_idx"):
        lightning.build_slopes(8, layer_idx=4, num_layers=4)
    with pytest.raises(ValueError, match="layer_idx"):
        lightning.build_slopes(8, layer_idx=1)


@cuda_only
@pytest.mark.parametrize("name", ["k", "v", "slope", "initial_state", "cu_seqlens"])
def test_device_mix(name):
    q, k, v = inputs("cuda", b=1)
    args = {"k": k, "v": v, "slope": lightning.build_slopes(H, device="cuda"),
            "initial_state": torch.randn(1, H, D, E, device="cuda"),
            "cu_seqlens": torch.tensor([0, N], device="cuda")}
    args[name] = args[name].cpu()
    expect_error(RuntimeError, rf"{name} is on cpu",
                 lambda: lightning.attn(q, args["k"], args["v"], args["slope"],
                                        initial_state=args["initial_state"], cu_seqlens=args["cu_seqlens"]),
                 q, *args.values())


@cuda_only
@pytest.mark.parametrize("name", ["k", "v", "state", "slope"])
def test_decode_device_mix(name):
    q, k, v = decode_inputs("cuda")
    args = {"k": k, "v": v, "state": torch.randn(B, H, D, E, device="cuda"),
            "slope": lightning.build_slopes(H, device="cuda")}
    args[name] = args[name].cpu()
    expect_error(RuntimeError, rf"{name} is on cpu",
                 lambda: lightning.attn_decode(q, args["k"], args["v"], args["state"], args["slope"]),
                 q, *args.values())


@cuda_only
def test_fp64_on_cuda():
    q, k, v = inputs("cuda", dtype=torch.float64)
    expect_error(RuntimeError, r"q must be float32", lambda: lightning.attn(q, k, v), q, k, v)
