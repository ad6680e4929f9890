"""im2win.nn.Conv2d, a drop-in torch.nn.Conv2d whose forward runs im2win.conv2d, and
convert(), which swaps the convolutions of an existing model."""

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from . import ops

__all__ = ["Conv2d", "convert"]

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_backward_pre_hooks", "_backward_hooks")


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d computed by im2win.conv2d.

    Same constructor, parameters, initialisation, state_dict keys and padding modes as
    nn.Conv2d (a state_dict loads either way). Non-zero padding modes pad with F.pad first
    and convolve with padding 0, exactly as nn.Conv2d does.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = _pair(0)
        return ops.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "Conv2d":
        """An im2win Conv2d sharing conv's parameters (the same Parameter objects, so an
        optimiser that holds them keeps working), hooks and training mode."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta",
                  dtype=conv.weight.dtype)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        for name in _HOOK_DICTS:
            if hasattr(conv, name):
                getattr(new, name).update(getattr(conv, name))
        new._is_full_backward_hook = conv._is_full_backward_hook
        return new


def convert(model: nn.Module) -> nn.Module:
    """Replaces, in place, every torch.nn.Conv2d of model by an im2win Conv2d that shares its
    parameters (weights, bias, device, dtype) and keeps stride, padding, padding_mode,
    dilation and groups. Only modules whose type is exactly nn.Conv2d are swapped: subclasses
    (ours, or others with their own forward or parametrizations) are left as they are. A
    module used at several places stays one module. Returns model (a new module if model
    itself is an nn.Conv2d)."""
    swapped = {}

    def swap(module):
        if type(module) is not nn.Conv2d:
            return module
        if id(module) not in swapped:
            swapped[id(module)] = Conv2d.from_conv(module)
        return swapped[id(module)]

    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):  # named_children() skips repeats
            new = swap(child)
            if new is not child:
                setattr(parent, name, new)
    return swap(model)
