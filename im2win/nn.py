"""im2win.nn.Conv2d, a drop-in torch.nn.Conv2d whose forward runs im2win.conv2d, and
convert(), which turns the convolutions of an existing model into it."""

import torch.nn.functional as F
from torch import Tensor, nn

from . import ops

__all__ = ["Conv2d", "convert"]


def _explicit_padding(conv: nn.Conv2d):
    """F.pad's (left, right, top, bottom) for conv's padding, as nn.Conv2d pads the input for a
    non-zero padding_mode: 'same' splits dilation * (kernel - 1) with the smaller half first."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        amounts = []
        for dilation, kernel in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = dilation * (kernel - 1)
            amounts += [total // 2, total - total // 2]
        return tuple(amounts)
    height, width = conv.padding
    return (width, width, height, height)


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d computed by im2win.conv2d.

    Same constructor, parameters, initialisation, state_dict keys and padding modes as
    nn.Conv2d (a state_dict loads either way). Non-zero padding modes pad with F.pad first
    and convolve with padding 0, exactly as nn.Conv2d does.
    """

    def forward(self, input: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, _explicit_padding(self), mode=self.padding_mode)
            padding = 0
        return ops.conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def convert(model: nn.Module) -> nn.Module:
    """Turns, in place, every torch.nn.Conv2d of model into an im2win Conv2d: the same module
    objects, so parameters (an optimiser that holds them keeps working), buffers, hooks,
    training mode and every reference to them stay as they are; only the forward changes.
    Only modules whose type is exactly nn.Conv2d are converted: subclasses (ours, or others
    with their own forward or parametrizations) are left as they are. Returns model."""
    for module in model.modules():  # each module once, however often it is used
        if type(module) is nn.Conv2d:
            module.__class__ = Conv2d
    return model
