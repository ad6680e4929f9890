"""im2win: im2win convolution (arXiv 2306.14316 on GPUs, 2306.14320 on CPUs) as a PyTorch
operator, torch.ops.im2win.conv2d, with CPU and CUDA kernels; a drop-in for F.conv2d.
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C  # noqa: F401  (built ahead of time by setup.py)
except ModuleNotFoundError:  # a checkout without a build: compile the same sources just in time
    import os as _os, sys as _sys

    _sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "csrc"))
    __import__("build_config").jit_load(__name__)

from .ops import conv2d, im2win  # noqa: E402
from .nn import Conv2d, convert  # noqa: E402

__all__ = ["conv2d", "im2win", "Conv2d", "convert"]
