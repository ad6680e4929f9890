"""The ops inside CUDA graphs: forward and backward captured once and replayed on new inputs
must give what eager calls give. A host synchronisation or a host-side decision that reads
device memory inside an op call breaks the capture."""

import pytest
import torch

import im2win
import lightning
from utils import assert_close

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def assert_replay_matches_eager(step, leaves, inputs, names, dtype):
    """Warms step (forward + backward, returns the output) up on a side stream (as
    torch.cuda.graphs asks), captures it with the leaves' gradients cleared (so they are
    allocated in the graph's pool and overwritten, not accumulated, on every replay), refills
    every input in place, replays, and compares output and gradients with an eager step."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    with torch.no_grad():
        for t in inputs:
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    got = [out.clone()] + [t.grad.clone() for t in leaves]

    for t in leaves:
        t.grad = None
    expect = [step()] + [t.grad for t in leaves]
    for name, a, e in zip(names, got, expect):
        assert_close(a, e, dtype, name, tol=1e-6 if dtype == F32 else None)


@pytest.mark.parametrize("dtype,channels_last", [(F32, False), (F32, True), (BF16, True),
                                                 (F16, False)])
def test_conv2d_forward_backward_replay(dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 32, 15, 13, device="cuda", dtype=dtype).to(memory_format=fmt)
    x.requires_grad_()
    w = (torch.randn(48, 32, 3, 3, device="cuda", dtype=dtype) * 0.1).requires_grad_()
    b = torch.randn(48, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.randn(4, 48, 15, 13, device="cuda", dtype=dtype)

    def step():
        y = im2win.conv2d(x, w, b, padding=1)
        y.backward(g)
        return y

    assert_replay_matches_eager(step, (x, w, b), (x, w, b, g),
                                ("y", "grad_input", "grad_weight", "grad_bias"), dtype)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_attn_forward_backward_replay(dtype):
    bsz, h, n, d = 2, 4, 300, 64
    q, k, v = (torch.randn(bsz, h, n, d, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    slope = lightning.build_slopes(h, device="cuda")
    g = torch.randn(bsz, h, n, d, device="cuda", dtype=dtype)

    def step():
        o, _ = lightning.attn(q, k, v, slope, scale=d ** -0.5)
        o.backward(g)
        return o

    assert_replay_matches_eager(step, (q, k, v), (q, k, v, g), ("o", "dq", "dk", "dv"), dtype)
