"""Plain-PyTorch references of im2win: the convolution itself in fp64 (F.conv2d on the CPU),
the window tensor written from its formula, and the convolution computed from the window
tensor the way the kernels compute it, so tests can check each step separately."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import IntPair, _pair


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
           padding=0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """F.conv2d on fp64 CPU copies of the arguments (differentiable with respect to them)."""
    def fp64(t):
        return None if t is None else t.to("cpu", torch.float64)

    return F.conv2d(fp64(input), fp64(weight), fp64(bias), stride, padding, dilation, groups)


def im2win(input: Tensor, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1) -> Tensor:
    """Ihat[n, c, oh, w*FH + fh] = I[n, c, oh*s_h + fh*d_h - p_h, w - p_w], zero outside:
    for each fh, the input rows oh*s_h + fh*d_h of the padded input, interleaved along w.
    (N, C, H, W) -> (N, C, Ho, Wp*FH)."""
    fn = "im2win.reference.im2win"
    kernel_h = _pair(kernel_size, "kernel_size", fn)[0]
    stride_h = _pair(stride, "stride", fn)[0]
    pad_h, pad_w = _pair(padding, "padding", fn)
    dilation_h = _pair(dilation, "dilation", fn)[0]
    padded = F.pad(input, (pad_w, pad_w, pad_h, pad_h))
    out_h = (padded.shape[2] - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    rows = [padded[:, :, fh * dilation_h:fh * dilation_h + (out_h - 1) * stride_h + 1:stride_h]
            for fh in range(kernel_h)]  # each (N, C, Ho, Wp)
    return torch.stack(rows, dim=-1).flatten(-2)  # (N, C, Ho, Wp, FH) -> (N, C, Ho, Wp*FH)


def conv2d_from_windows(windows: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                        stride: IntPair = 1, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """The convolution as the kernels compute it: output (n, k, oh, ow) is the dot product of
    the window at (ow*s_w + fw*d_w)*FH + fh of row Ihat[n, c, oh] with the filter re-laid out
    in the same (fw, fh) order, summed over the channels c of k's group."""
    fn = "im2win.reference.conv2d_from_windows"
    stride_w = _pair(stride, "stride", fn)[1]
    dilation_w = _pair(dilation, "dilation", fn)[1]
    out_channels, group_in, kernel_h, kernel_w = weight.shape
    batch, channels, out_h, row_len = windows.shape
    padded_w = row_len // kernel_h
    out_w = (padded_w - dilation_w * (kernel_w - 1) - 1) // stride_w + 1

    def arange(n, *view):
        return torch.arange(n, device=windows.device).view(*view)

    # Where each window value sits in its row: (Wo, FW, FH).
    index = (arange(out_w, -1, 1, 1) * stride_w + arange(kernel_w, 1, -1, 1) * dilation_w) * kernel_h
    index = index + arange(kernel_h, 1, 1, -1)
    patches = windows[..., index].view(batch, groups, group_in, out_h, out_w, kernel_w, kernel_h)
    filters = weight.transpose(2, 3).reshape(groups, out_channels // groups, group_in, kernel_w, kernel_h)
    out = torch.einsum("ngchwij,gkcij->ngkhw", patches, filters).reshape(batch, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
