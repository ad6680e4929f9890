"""The ops under torch.autocast: im2win.conv2d runs in the autocast dtype as F.conv2d does,
lightning.attn / attn_decode as F.scaled_dot_product_attention does (q, k, v cast; slopes and
states stay fp32). Values against fp64 references of the rounded inputs (DESIGN.md section 4),
gradients flowing back to the fp32 leaves, and converted models training under autocast."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import im2win
import lightning
from im2win import reference as conv_ref
from lightning import reference as attn_ref
from utils import assert_close

F32, F64 = torch.float32, torch.float64
AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def device_type(device):
    return torch.device(device).type


def leaf(*shape, device, scale=1.0):
    return (torch.randn(*shape) * scale).to(device).requires_grad_()


def rounded(t, dtype):
    """The value autocast computes with: t rounded to dtype, as an fp64 CPU leaf."""
    return t.detach().to(dtype).to("cpu", F64).requires_grad_()


@pytest.mark.parametrize("op,key", [
    ("im2win::conv2d", "AutocastCPU"), ("im2win::conv2d", "AutocastCUDA"),
    ("lightning::attn", "AutocastCPU"), ("lightning::attn", "AutocastCUDA"),
    ("lightning::attn_decode", "AutocastCPU"), ("lightning::attn_decode", "AutocastCUDA"),
])
def test_autocast_kernels_registered(op, key):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_under_autocast(device, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = leaf(2, 16, 11, 9, device=device).detach().to(memory_format=fmt).requires_grad_()
    w = leaf(24, 16, 3, 3, device=device, scale=0.1)
    b = leaf(24, device=device)
    grad = torch.randn(2, 24, 6, 9, device=device)
    kwargs = dict(stride=(2, 1), padding=1)
    with torch.autocast(device_type(device), dtype=dtype):
        y = im2win.conv2d(x, w, b, **kwargs)
        expect_dtype = F.conv2d(x, w, b, **kwargs).dtype
    assert y.dtype == expect_dtype == dtype
    (y.float() * grad).sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == F32

    xr, wr, br = rounded(x, dtype), rounded(w, dtype), rounded(b, dtype)
    yr = conv_ref.conv2d(xr, wr, br, **kwargs)
    yr.backward(grad.to(dtype).to("cpu", F64))  # y.float()'s gradient reaches y in dtype
    assert_close(y, yr, dtype, "output")
    for name, got, ref in (("grad_input", x.grad, xr.grad), ("grad_weight", w.grad, wr.grad),
                           ("grad_bias", b.grad, br.grad)):
        assert_close(got, ref, dtype, name)


def test_conv2d_autocast_leaves_fp64_alone():
    x = torch.randn(1, 3, 6, 6, dtype=F64)
    w = torch.randn(4, 3, 3, 3, dtype=F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = im2win.conv2d(x, w)
    assert y.dtype == F64
    assert_close(y, conv_ref.conv2d(x, w), F64)


def test_conv2d_autocast_disabled_region(device):
    x = torch.randn(1, 8, 6, 6, device=device)
    w = torch.randn(4, 8, 3, 3, device=device)
    with torch.autocast(device_type(device), dtype=torch.bfloat16):
        with torch.autocast(device_type(device), enabled=False):
            y = im2win.conv2d(x, w)
    assert y.dtype == F32


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_attn_under_autocast(device, dtype):
    b, h, n, d, e = 2, 3, 77, 32, 48
    q, k = leaf(b, h, n, d, device=device), leaf(b, h, n, d, device=device)
    v = leaf(b, h, n, e, device=device)
    slope = lightning.build_slopes(h, device=device)
    init = (torch.randn(b, h, d, e) * 0.1).to(device).requires_grad_()
    grad_o = torch.randn(b, h, n, e, device=device)
    grad_s = torch.randn(b, h, d, e, device=device)
    with torch.autocast(device_type(device), dtype=dtype):
        o, state = lightning.attn(q, k, v, slope, scale=d ** -0.5, initial_state=init,
                                  output_final_state=True)
    assert o.dtype == dtype and state.dtype == F32
    ((o.float() * grad_o).sum() + (state * grad_s).sum()).backward()
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == init.grad.dtype == F32

    qr, kr, vr = rounded(q, dtype), rounded(k, dtype), rounded(v, dtype)
    initr = init.detach().to("cpu", F64).requires_grad_()  # the state stays fp32
    o_ref, s_ref = attn_ref.attn_naive(qr, kr, vr, slope.cpu(), d ** -0.5, initr)
    ((o_ref * grad_o.to(dtype).to("cpu", F64)).sum() + (s_ref * grad_s.cpu().double()).sum()).backward()
    assert_close(o, o_ref, dtype, "o")
    assert_close(state, s_ref, dtype, "final_state")
    for name, got, ref in (("dq", q.grad, qr.grad), ("dk", k.grad, kr.grad),
                           ("dv", v.grad, vr.grad), ("d initial_state", init.grad, initr.grad)):
        assert_close(got, ref, dtype, name)


def test_attn_decode_under_autocast(device):
    b, h, d, e = 2, 4, 16, 32
    q, k, v = (torch.randn(b, h, x, device=device) for x in (d, d, e))
    slope = lightning.build_slopes(h, device=device)
    state = torch.randn(b, h, d, e, device=device)
    expect_state = state.clone()
    expect = lightning.attn_decode(q.bfloat16(), k.bfloat16(), v.bfloat16(), expect_state, slope)
    with torch.autocast(device_type(device), dtype=torch.bfloat16):
        o = lightning.attn_decode(q, k, v, state, slope)
    assert o.dtype == torch.bfloat16 and state.dtype == F32
    torch.testing.assert_close(o, expect, rtol=0, atol=0)  # the same kernel on the same values
    torch.testing.assert_close(state, expect_state, rtol=0, atol=0)


def small_cnn(device):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).to(device).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_converted_cnn_trains_under_autocast(device, dtype):
    """A converted model takes the same SGD steps under autocast as the native one (fp16 with
    a GradScaler), within the 16-bit bars: both run their convolutions in dtype."""
    native = small_cnn(device)
    converted = im2win.nn.convert(copy.deepcopy(native))
    x = torch.randn(8, 3, 16, 16, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=device)
    losses = {}
    for name, model in (("native", native), ("converted", converted)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler(device_type(device), enabled=dtype == torch.float16)
        model.train()
        losses[name] = []
        for _ in range(3):
            with torch.autocast(device_type(device), dtype=dtype):
                loss = F.cross_entropy(model(x), y)
            losses[name].append(loss.item())
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert all(p.dtype == F32 for p in converted.parameters())
    assert losses["converted"][-1] < losses["converted"][0]
    for got, ref in zip(losses["converted"], losses["native"]):
        assert abs(got - ref) <= 0.05 * abs(ref), (losses["converted"], losses["native"])
