"""im2win.conv2d and im2win.im2win against fp64 references (DESIGN.md section 4)."""

import contextlib
from dataclasses import dataclass, field

import pytest
import torch

import im2win
from im2win import reference
from utils import TF32_TOLERANCE, TOLERANCE, assert_close, poison_


@dataclass
class Case:
    id: str
    input: tuple  # (N, C, H, W)
    weight: tuple  # (K, C / groups, FH, FW)
    kwargs: dict = field(default_factory=dict)  # stride, padding, dilation, groups
    bias: bool = True
    channels_last: bool = False


# Every feature of the DESIGN.md grid at least once: stride 1..4, 'same' (odd total padding
# too) and 'valid', dilation, groups and depthwise, C < 8, K not a multiple of a tile, Ho = 1,
# batch 1, channels_last (input and weight), 1x1 and 11x11 filters, with and without bias.
CASES = [
    Case("3x3_pad1", (2, 5, 9, 11), (7, 5, 3, 3), dict(padding=1)),
    Case("stride2_k67", (2, 3, 10, 9), (67, 3, 3, 3), dict(stride=2), bias=False),
    Case("stride3_5x5_cl", (1, 4, 16, 14), (6, 4, 5, 5), dict(stride=3, padding=2),
         channels_last=True),
    Case("stride4_11x11", (2, 3, 27, 25), (5, 3, 11, 11), dict(stride=4, padding=2)),
    Case("same_even_kernel", (2, 4, 7, 10), (6, 4, 4, 2), dict(padding="same")),
    Case("same_dilated_cl", (1, 3, 9, 8), (4, 3, 3, 3), dict(padding="same", dilation=(2, 3)),
         bias=False, channels_last=True),
    Case("valid_1x1", (2, 9, 6, 5), (10, 9, 1, 1), dict(padding="valid")),
    Case("1x1_stride2", (1, 6, 7, 8), (3, 6, 1, 1), dict(stride=2), bias=False),
    Case("groups_rect_cl", (2, 6, 10, 9), (4, 3, 3, 2),
         dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2), channels_last=True),
    Case("depthwise", (2, 8, 9, 9), (8, 1, 3, 3), dict(padding=1, groups=8)),
    Case("depthwise_x2_cl", (1, 4, 8, 7), (8, 1, 5, 3), dict(stride=2, padding=(2, 1), groups=4),
         bias=False, channels_last=True),
    Case("ho_1", (3, 5, 4, 12), (7, 5, 4, 3), dict(stride=(1, 2))),
    Case("batch1_dilated", (1, 7, 12, 12), (9, 7, 3, 3), dict(dilation=2, padding=1, stride=(2, 1))),
    # channels_last with C a multiple of 8: the CUDA tensor-core path for fp16/bf16
    Case("cl_c16_k70", (2, 16, 11, 9), (70, 16, 3, 3), dict(padding=1), channels_last=True),
    Case("cl_c40_k130_s2_dil", (1, 40, 13, 10), (130, 40, 3, 2),
         dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2)), bias=False, channels_last=True),
    # fp32 with C a multiple of 4: the CUDA wgmma path (NCHW through a channels-last copy), a
    # channel tail in the last 32-channel slice, K and the positions past one 128 tile
    Case("nchw_c36_k136", (3, 36, 13, 12), (136, 36, 3, 3), dict(padding=1, stride=(1, 2))),
    Case("cl_c12_k24_5x5_dil", (2, 12, 14, 15), (24, 12, 5, 3), dict(padding=2, dilation=(1, 2)),
         bias=False, channels_last=True),
]

# (dtype, whether fp32 may use TF32 as cuDNN may)
PRECISIONS = {
    "fp64": (torch.float64, False),
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}


def skip_unsupported(precision, device):
    dtype, tf32 = PRECISIONS[precision]
    if dtype == torch.float64 and device != "cpu":
        pytest.skip("float64 is CPU only")
    if tf32 and device == "cpu":
        pytest.skip("TF32 only exists on CUDA")


@contextlib.contextmanager
def allow_tf32(allowed):
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def poison_cuda_allocator(device):
    """The ops allocate their outputs themselves: fill blocks the caching allocator will hand
    out again with NaN, so that an output element a kernel never writes shows up."""
    if device == "cuda":
        blocks = [poison_(torch.empty(n, device=device)) for n in (2**18, 2**18, 2**22)]
        del blocks


def make_inputs(case, dtype, device):
    x = torch.randn(case.input, dtype=dtype, device=device)
    w = torch.randn(case.weight, dtype=dtype, device=device)
    if case.channels_last:  # as model.to(memory_format=torch.channels_last) leaves them
        x = x.to(memory_format=torch.channels_last)
        w = w.to(memory_format=torch.channels_last)
    b = torch.randn(case.weight[0], dtype=dtype, device=device) if case.bias else None
    return x, w, b


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def fp64_leaves(*tensors):
    return [None if t is None else t.detach().to("cpu", torch.float64).requires_grad_()
            for t in tensors]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_conv2d_matches_fp64_reference(case, precision, device):
    skip_unsupported(precision, device)
    dtype, tf32 = PRECISIONS[precision]
    x, w, b = leaves(*make_inputs(case, dtype, device))
    with allow_tf32(tf32):
        poison_cuda_allocator(device)
        out = im2win.conv2d(x, w, b, **case.kwargs)
        grad_out = torch.randn_like(out)
        poison_cuda_allocator(device)
        out.backward(grad_out)

    x64, w64, b64 = fp64_leaves(x, w, b)
    ref = reference.conv2d(x64, w64, b64, **case.kwargs)
    ref.backward(grad_out.to("cpu", torch.float64))
    tol = TF32_TOLERANCE if tf32 else TOLERANCE[dtype]
    assert_close(out, ref, dtype, "output", tol)
    assert_close(x.grad, x64.grad, dtype, "grad_input", tol)
    assert_close(w.grad, w64.grad, dtype, "grad_weight", tol)
    if b is not None:
        assert_close(b.grad, b64.grad, dtype, "grad_bias", tol)
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    assert out.dtype == dtype and out.is_contiguous(memory_format=layout)
    assert x.grad.is_contiguous(memory_format=layout)


def test_conv2d_unbatched_input(device):
    x = torch.randn(3, 8, 9, device=device)
    w = torch.randn(4, 3, 3, 2, device=device)
    with allow_tf32(False):
        out = im2win.conv2d(x, w, stride=(2, 1), padding=1)
    ref = reference.conv2d(x[None], w, stride=(2, 1), padding=1)[0]
    assert_close(out, ref, torch.float32)


def test_conv2d_expanded_grad_output(device):
    """out.sum().backward() hands the op a grad_output whose strides are all 0."""
    x, w, b = leaves(*make_inputs(CASES[0], torch.float32, device))
    with allow_tf32(False):
        im2win.conv2d(x, w, b, **CASES[0].kwargs).sum().backward()
    x64, w64, b64 = fp64_leaves(x, w, b)
    reference.conv2d(x64, w64, b64, **CASES[0].kwargs).sum().backward()
    for name, got, want in (("grad_input", x.grad, x64.grad), ("grad_weight", w.grad, w64.grad),
                            ("grad_bias", b.grad, b64.grad)):
        assert_close(got, want, torch.float32, name)


def test_conv2d_empty_batch(device):
    x, w, b = leaves(torch.randn(0, 3, 6, 6, device=device), torch.randn(4, 3, 3, 3, device=device),
                     torch.randn(4, device=device))
    out = im2win.conv2d(x, w, b, stride=2)
    assert out.shape == (0, 4, 2, 2)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_conv2d_batch_larger_than_one_window_slice():
    """The CPU path builds the window tensor for a slice of the batch at a time (64 MiB);
    here each image's window tensor (2 x 585 x 600 x 16 floats, 45 MB) is a slice of its own,
    and grad_weight sums 1.4 million terms over four slices."""
    x, w, b = leaves(torch.randn(4, 2, 600, 600), torch.randn(3, 2, 16, 1), torch.randn(3))
    out = im2win.conv2d(x, w, b)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    x64, w64, b64 = fp64_leaves(x, w, b)
    ref = reference.conv2d(x64, w64, b64)
    ref.backward(grad_out.double())
    assert_close(out, ref, torch.float32, "output")
    assert_close(w.grad, w64.grad, torch.float32, "grad_weight")
    assert_close(x.grad, x64.grad, torch.float32, "grad_input")


@pytest.mark.parametrize("kwargs", [dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
                                    dict(padding="same")], ids=["strided_grouped", "same"])
def test_gradcheck_fp64(kwargs):
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // kwargs.get("groups", 1), 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: im2win.conv2d(x, w, b, **kwargs), (x, w, b))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_opcheck(device, channels_last):
    x = torch.randn(2, 4, 7, 6, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(6, 2, 3, 3, device=device)
    b = torch.randn(6, device=device)
    conv = ([2, 1], [1, 0], [1, 2], 2)
    grad_out = torch.randn_like(torch.ops.im2win.conv2d(x, w, b, *conv))
    with allow_tf32(False):
        torch.library.opcheck(torch.ops.im2win.conv2d.default,
                              (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), *conv))
        for mask in ([True, True, True], [False, True, False]):
            torch.library.opcheck(torch.ops.im2win.conv2d_backward.default,
                                  (grad_out, x.detach(), w.detach(), *conv, mask))
        torch.library.opcheck(torch.ops.im2win.im2win.default,
                              (x.detach(), [3, 2], [2, 1], [1, 1], [2, 1]))


def test_compile_fullgraph_cpu():
    def conv(x, w, b):
        return im2win.conv2d(x, w, b, padding="same", dilation=(1, 2)).relu()

    x, w, b = leaves(torch.randn(2, 3, 8, 7), torch.randn(5, 3, 2, 3), torch.randn(5))
    out = torch.compile(conv, fullgraph=True)(x, w, b)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    x64, w64, b64 = fp64_leaves(x, w, b)
    ref = reference.conv2d(x64, w64, b64, padding="same", dilation=(1, 2)).relu()
    ref.backward(grad_out.double())
    assert_close(out, ref, torch.float32, "output")
    for name, got, want in (("grad_input", x.grad, x64.grad), ("grad_weight", w.grad, w64.grad),
                            ("grad_bias", b.grad, b64.grad)):
        assert_close(got, want, torch.float32, name)


TRANSFORMS = [  # input shape, kernel_size, stride, padding, dilation
    ((2, 3, 7, 6), (3, 3), 1, 0, 1),
    ((1, 2, 9, 5), (3, 2), (2, 1), (1, 2), (2, 1)),
    ((2, 5, 11, 4), (11, 1), 4, (3, 0), 1),
    ((3, 4, 5), 1, 2, 1, 1),  # unbatched
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape, kernel_size, stride, padding, dilation", TRANSFORMS)
def test_im2win_transform_matches_formula(shape, kernel_size, stride, padding, dilation, dtype,
                                          device):
    if dtype == torch.float64 and device != "cpu":
        pytest.skip("float64 is CPU only")
    x = torch.randn(shape, dtype=dtype, device=device)
    poison_cuda_allocator(device)
    got = im2win.im2win(x, kernel_size, stride, padding, dilation)
    batched = x if x.dim() == 4 else x[None]
    want = reference.im2win(batched, kernel_size, stride, padding, dilation)
    assert torch.equal(got, want if x.dim() == 4 else want[0])  # a pure copy: bit-exact


@pytest.mark.parametrize("case", [c for c in CASES if not isinstance(c.kwargs.get("padding"), str)],
                         ids=lambda c: c.id)
def test_reference_windows_give_the_convolution(case):
    """The window-tensor formulation the kernels follow (reference.conv2d_from_windows over
    the window tensor of the op) is the convolution itself."""
    x, w, b = make_inputs(case, torch.float64, "cpu")
    kw = case.kwargs
    kernel = case.weight[2:]
    windows = im2win.im2win(x, kernel, kw.get("stride", 1), kw.get("padding", 0),
                            kw.get("dilation", 1))
    got = reference.conv2d_from_windows(windows, w, b, kw.get("stride", 1), kw.get("dilation", 1),
                                        kw.get("groups", 1))
    assert_close(got, reference.conv2d(x, w, b, **kw), torch.float64)


# Bad arguments: (id, call on (x, w, b), exception, word the message must contain).
def _backward(x, w, grad_out):
    return torch.ops.im2win.conv2d_backward(grad_out, x, w, [1, 1], [0, 0], [1, 1], 1,
                                            [True, True, True])


BAD_CALLS = [
    ("input_rank", lambda x, w, b: im2win.conv2d(x[0, 0], w, b), ValueError, "input"),
    ("input_rank_op", lambda x, w, b: torch.ops.im2win.conv2d(x[0], w, b, [1, 1], [0, 0], [1, 1], 1),
     ValueError, "input"),
    ("weight_rank", lambda x, w, b: im2win.conv2d(x, w[0], b), ValueError, "weight"),
    ("channels", lambda x, w, b: im2win.conv2d(x, w[:, :3], b), ValueError, "weight"),
    ("groups_not_dividing", lambda x, w, b: im2win.conv2d(x, w[:5, :2], b[:5], groups=2),
     ValueError, "groups"),
    ("groups_zero", lambda x, w, b: im2win.conv2d(x, w, b, groups=0), ValueError, "groups"),
    ("stride_zero", lambda x, w, b: im2win.conv2d(x, w, b, stride=0), ValueError, "stride"),
    ("stride_three", lambda x, w, b: im2win.conv2d(x, w, b, stride=(1, 2, 3)), ValueError, "stride"),
    ("padding_negative", lambda x, w, b: im2win.conv2d(x, w, b, padding=(0, -1)), ValueError,
     "padding"),
    ("padding_string", lambda x, w, b: im2win.conv2d(x, w, b, padding="full"), ValueError, "padding"),
    ("same_strided", lambda x, w, b: im2win.conv2d(x, w, b, padding="same", stride=2), ValueError,
     "padding"),
    ("dilation_zero", lambda x, w, b: im2win.conv2d(x, w, b, dilation=(0, 1)), ValueError,
     "dilation"),
    ("kernel_too_large", lambda x, w, b: im2win.conv2d(x[:, :, :2], w, b), ValueError, "kernel"),
    ("bias_shape", lambda x, w, b: im2win.conv2d(x, w, b[:5]), ValueError, "bias"),
    ("weight_dtype", lambda x, w, b: im2win.conv2d(x, w.double(), b), RuntimeError, "weight"),
    ("bias_dtype", lambda x, w, b: im2win.conv2d(x, w, b.half()), RuntimeError, "bias"),
    ("int_input", lambda x, w, b: im2win.conv2d(x.int(), w.int()), RuntimeError, "input"),
    ("grad_output_shape", lambda x, w, b: _backward(x, w, torch.randn(2, 6, 5, 6)), ValueError,
     "grad_output"),
    ("grad_output_dtype", lambda x, w, b: _backward(x, w, torch.randn(2, 6, 6, 6).double()),
     RuntimeError, "grad_output"),
    ("im2win_kernel_size", lambda x, w, b: im2win.im2win(x, (0, 3)), ValueError, "kernel_size"),
    ("im2win_input_rank", lambda x, w, b: im2win.im2win(x[0, 0], 3), ValueError, "input"),
]


@pytest.mark.parametrize("call, error, word", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_and_change_nothing(call, error, word):
    x, w, b = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6)
    saved = [t.clone() for t in (x, w, b)]
    with pytest.raises(error, match=word):
        call(x, w, b)
    for before, after in zip(saved, (x, w, b)):
        assert torch.equal(before, after)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("moved", ["weight", "bias"])
def test_device_mix_raises(moved):
    args = {"input": torch.randn(2, 4, 8, 8, device="cuda"),
            "weight": torch.randn(6, 4, 3, 3, device="cuda"),
            "bias": torch.randn(6, device="cuda")}
    args[moved] = args[moved].cpu()
    saved = {k: v.clone() for k, v in args.items()}
    with pytest.raises(RuntimeError, match=moved):
        im2win.conv2d(**args)
    for name, before in saved.items():
        assert torch.equal(before, args[name])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_float64_on_cuda_raises():
    x = torch.randn(2, 4, 8, 8, device="cuda", dtype=torch.float64)
    w = torch.randn(6, 4, 3, 3, device="cuda", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="input"):
        im2win.conv2d(x, w)
