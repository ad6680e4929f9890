"""The demo's models, each in two builds that share parameters and initialisation:

- a small causal LM: lightning.nn.LightningLM, and the same model whose attention is plain
  PyTorch (the masked n x n decay matrix of DESIGN.md section 2);
- a small ResNet-style CNN (BasicBlocks with BatchNorm) on im2win.nn.Conv2d, and the same
  network on torch.nn.Conv2d.

A state_dict moves between the two builds of a model unchanged.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import im2win.nn
from lightning.nn import LightningAttention, LightningLM


# ----------------------------------------------------------------------------------------
# Language model
# ----------------------------------------------------------------------------------------

def linear_attention(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor] = None,
                     scale: float = 1.0, initial_state: Optional[Tensor] = None):
    """Plain-PyTorch causal linear attention with decay, (B, H, N, D) layout, differentiable:

        o_i = scale * (sum_{j<=i} lambda^(i-j) (q_i . k_j) v_j + lambda^(i+1) q_i S0)
        S   = lambda^N S0 + sum_j lambda^(N-1-j) k_j v_j^T

    Returns (o in v's dtype, final state fp32). Products run in v's dtype (the matmuls a
    PyTorch user would write), the decay in fp32; every exponent is -s*x with x >= 0."""
    batch, heads, n, _ = q.shape
    pos = torch.arange(n, device=q.device)
    s = (slope if slope is not None else q.new_zeros(heads)).float().view(heads, 1, 1)
    gap = (pos[:, None] - pos[None, :]).float()                      # (N, N) i - j
    decay = torch.where(gap >= 0, torch.exp(-s * gap.clamp(min=0)), 0.0)  # (H, N, N)
    scores = (q @ k.transpose(-1, -2)) * decay.to(q.dtype)
    o = scores @ v
    tail = torch.exp(-s * (n - 1 - pos).float().view(1, n, 1))       # (H, N, 1) lambda^(N-1-j)
    state = (k.float() * tail).transpose(-1, -2) @ v.float()          # (B, H, D, E)
    if initial_state is not None:
        head = torch.exp(-s * (pos + 1).float().view(1, n, 1))        # (H, N, 1) lambda^(i+1)
        o = o + ((q.float() * head) @ initial_state).to(o.dtype)
        state = state + torch.exp(-s * n) * initial_state
    return scale * o, state


class ReferenceAttention(LightningAttention):
    """LightningAttention with the attention itself in plain PyTorch (no custom op): the
    same parameters, buffers and state convention; a decode step returns a new state."""

    def attend(self, q, k, v, state, output_state):
        o, new_state = linear_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        self.slope, self.scale, state)
        return o.transpose(1, 2), (new_state if output_state else None)


def build_lm(vocab_size: int = 256, embed_dim: int = 128, num_heads: int = 4,
             num_layers: int = 2, head_dim: Optional[int] = None, reference: bool = False,
             sequence_parallel_group=None, device=None, dtype=None) -> LightningLM:
    """LightningLM; reference=True gives the same model with plain-PyTorch attention. With a
    sequence_parallel_group every forward's sequence is split over that group's ranks."""
    if reference and sequence_parallel_group is not None:
        raise ValueError("build_lm: the plain-PyTorch reference attention runs on one process; "
                         "it takes no sequence_parallel_group")
    return LightningLM(vocab_size, embed_dim, num_heads, num_layers, head_dim=head_dim,
                       attention_cls=ReferenceAttention if reference else LightningAttention,
                       sequence_parallel_group=sequence_parallel_group, device=device,
                       dtype=dtype)


# ----------------------------------------------------------------------------------------
# CNN
# ----------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus a (1x1 conv-BN when the shape
    changes) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, conv=nn.Conv2d):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small ResNet for small images: a 3x3 stem, one BasicBlock per stage (the first at
    stride 1, the others at stride 2), global average pooling and a linear classifier."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
                 conv=nn.Conv2d):
        super().__init__()
        self.stem = nn.Sequential(conv(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, prev = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(prev, w, stride=1 if i == 0 else 2, conv=conv))
            prev = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_cnn(num_classes: int, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
              reference: bool = False) -> ResNet:
    """ResNet on im2win.nn.Conv2d; reference=True gives the same network on nn.Conv2d
    (im2win.nn.convert turns the one into the other)."""
    conv = nn.Conv2d if reference else im2win.nn.Conv2d
    return ResNet(num_classes, in_channels, widths, conv=conv)
