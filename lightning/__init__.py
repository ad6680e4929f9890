"""lightning: Lightning Attention-2 (causal linear attention with per-head decay) as a
PyTorch operator, torch.ops.lightning.attn, with CPU and CUDA kernels.

(lightning_im2win_kernels: this marker tells setup.py that this `lightning` is ours.)
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C  # noqa: F401  (built ahead of time by setup.py)
except ModuleNotFoundError:  # a checkout without a build: compile the same sources just in time
    import os as _os, sys as _sys

    _sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "csrc"))
    __import__("build_config").jit_load(__name__)

from .ops import attn, attn_decode, build_slopes  # noqa: E402
from . import distributed, nn  # noqa: E402,F401

__all__ = ["attn", "attn_decode", "build_slopes", "distributed", "nn"]
