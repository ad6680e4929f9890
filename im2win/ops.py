"""Python API of torch.ops.im2win: F.conv2d-compatible wrappers, fake (meta) kernels for
torch.compile, and autograd, side by side."""

import operator
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
# at::Tensor::suggest_memory_format as torch's own meta functions compute it: torch has no
# public form of it, and the fake kernels below must pick the format the binding picks.
from torch._prims_common import suggest_memory_format

IntPair = Union[int, Sequence[int]]


def _pair(value, name: str, fn: str) -> Tuple[int, int]:
    """An int or a sequence of one or two ints as (height, width), like F.conv2d takes them."""
    try:
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        values = tuple(operator.index(v) for v in values)
    except TypeError:
        values = ()
    if len(values) not in (1, 2):
        raise ValueError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    return (values[0], values[0]) if len(values) == 1 else values


def _batched(input: Tensor, fn: str) -> Tuple[Tensor, bool]:
    """(N, C, H, W) view of input and whether it was an unbatched (C, H, W) tensor."""
    if input.dim() not in (3, 4):
        raise ValueError(f"{fn}: input must have 3 (C, H, W) or 4 (N, C, H, W) dimensions, got "
                         f"shape {tuple(input.shape)}")
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


def _same_padding(input: Tensor, weight: Tensor, stride, dilation, fn: str):
    """F.conv2d's padding='same': the total padding dilation * (kernel - 1) is split evenly
    and an odd remainder goes to the bottom / right, which is padded here explicitly so the
    kernels only ever see symmetric padding."""
    if stride != (1, 1):
        raise ValueError(f"{fn}: padding='same' needs stride 1 (as in F.conv2d), got stride {stride}")
    if min(dilation) < 1:
        raise ValueError(f"{fn}: dilation must be >= 1, got {dilation}")
    if weight.dim() != 4:
        raise ValueError(f"{fn}: weight must have 4 dimensions, got shape {tuple(weight.shape)}")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    if total[0] % 2 or total[1] % 2:
        input = F.pad(input, (0, total[1] % 2, 0, total[0] % 2))
    return input, (total[0] // 2, total[1] // 2)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
           padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """2-D convolution through the im2win window tensor, with F.conv2d's exact semantics.

    Args:
        input: (N, C, H, W) or unbatched (C, H, W); contiguous or channels_last (the output
            follows the input's memory format). float32, float16, bfloat16 (float64 on CPU).
        weight: (K, C / groups, FH, FW), same dtype and device.
        bias: (K,) or None.
        stride, dilation: int or (height, width), >= 1.
        padding: int or (height, width) zero padding on both sides, or 'valid' (none) or
            'same' (output size = input size; needs stride 1).
        groups: input and output channels split into this many groups (groups = C is depthwise).

    For float32 on CUDA the kernels may use TF32 tensor cores exactly when
    torch.backends.cudnn.allow_tf32 allows cuDNN to; otherwise the result is exact fp32
    (three TF32 products per term). On Hopper GPUs (built for sm_90a) the float32 forward
    and the stride-1 input gradient of one group run on warpgroup tensor cores (wgmma),
    through a channels-last copy of an NCHW input (of grad_output) and of the weight:
    temporary memory of about the input's size. The same kernel's float16 and bfloat16 forms
    are opt-in for now (environment variable IM2WIN_WGMMA_16BIT=1, read once per process);
    they need no copy for channels_last tensors whose C is a multiple of 8.
    """
    fn = "im2win.conv2d"
    input, unbatched = _batched(input, fn)
    stride, dilation = _pair(stride, "stride", fn), _pair(dilation, "dilation", fn)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        input, padding = _same_padding(input, weight, stride, dilation, fn)
    elif isinstance(padding, str):
        raise ValueError(f"{fn}: padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
    else:
        padding = _pair(padding, "padding", fn)
    out = torch.ops.im2win.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def im2win(input: Tensor, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1) -> Tensor:
    """The im2win window tensor of DESIGN.md section 3, Ihat[n, c, oh, w*FH + fh] =
    I[n, c, oh*s_h + fh*d_h - p_h, w - p_w] (zero in the padding), shaped (N, C, Ho, Wp*FH)
    with Wp = W + 2 p_w; (C, Ho, Wp*FH) for an unbatched input. The width parameters of
    kernel_size, stride and dilation do not change the tensor (every column is kept), but
    the kernel must fit into the padded input along both axes."""
    fn = "im2win.im2win"
    input, unbatched = _batched(input, fn)
    out = torch.ops.im2win.im2win(input, _pair(kernel_size, "kernel_size", fn),
                                  _pair(stride, "stride", fn), _pair(padding, "padding", fn),
                                  _pair(dilation, "dilation", fn))
    return out.squeeze(0) if unbatched else out


def _out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _empty_like_format(shape, like: Tensor) -> Tensor:
    """What the binding allocates: like's dtype and device, in like's memory format."""
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=suggest_memory_format(like))


@torch.library.register_fake("im2win::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    out_hw = [_out_size(input.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i])
              for i in range(2)]
    return _empty_like_format((input.shape[0], weight.shape[0], *out_hw), input)


@torch.library.register_fake("im2win::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    grad_input = _empty_like_format(input.shape, input) if output_mask[0] else input.new_empty((0,))
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else input.new_empty((0,))
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else input.new_empty((0,))
    return grad_input, grad_weight, grad_bias


@torch.library.register_fake("im2win::im2win")
def _im2win_fake(input, kernel_size, stride, padding, dilation):
    out_h = _out_size(input.shape[2], kernel_size[0], stride[0], padding[0], dilation[0])
    padded_w = input.shape[3] + 2 * padding[1]
    return input.new_empty((input.shape[0], input.shape[1], out_h, padded_w * kernel_size[0]))


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, _, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:3])
    grads = torch.ops.im2win.conv2d_backward(grad_output, input, weight, *ctx.conv_args, mask)
    return tuple(g if wanted else None for g, wanted in zip(grads, mask)) + (None,) * 4


torch.library.register_autograd("im2win::conv2d", _conv2d_backward, setup_context=_conv2d_setup_context)
