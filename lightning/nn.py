"""Modules built on lightning.attn: a TransNormerLLM-style attention layer, its block and a
small causal language model that prefills a prompt in one call and then decodes token by
token through lightning.attn_decode.

Shapes: x is (B, N, C) (batch, tokens, embedding); a recurrent state is (B, H, D, D) fp32,
the state after the last token seen (DESIGN.md section 2), one per attention layer.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed
from .ops import attn, attn_decode, build_slopes

__all__ = ["RMSNorm", "GLU", "LightningAttention", "LightningBlock", "LightningLM"]


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dimension, computed in fp32 and
    returned in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.dim = dim
        self.eps = eps
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: Tensor) -> Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        y = y.to(x.dtype)
        return y * self.weight if self.weight is not None else y

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class GLU(nn.Module):
    """Gated feed-forward: down(act(gate(x)) * up(x)), SwiGLU with act="silu"; the gate and up
    projections are one matrix (one GEMM)."""

    def __init__(self, embed_dim: int, hidden_dim: Optional[int] = None, bias: bool = False,
                 act: str = "silu", device=None, dtype=None):
        super().__init__()
        if hidden_dim is None:  # 8/3 C keeps the parameter count of a 4C two-matrix MLP
            hidden_dim = 16 * ((8 * embed_dim // 3 + 15) // 16)
        if act not in ("silu", "gelu", "none"):
            raise ValueError(f"GLU: act must be 'silu', 'gelu' or 'none', got {act!r}")
        self.hidden_dim = hidden_dim
        self.act = act
        factory = {"device": device, "dtype": dtype}
        self.gate_up_proj = nn.Linear(embed_dim, 2 * hidden_dim, bias=bias, **factory)
        self.down_proj = nn.Linear(hidden_dim, embed_dim, bias=bias, **factory)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        if self.act == "silu":
            gate = F.silu(gate)
        elif self.act == "gelu":
            gate = F.gelu(gate)
        return self.down_proj(gate * up)


class LightningAttention(nn.Module):
    """TransNormerLLM / MiniMax-style linear attention layer over lightning.attn.

        q, k, v = silu(x Wq), silu(x Wk), x Wv            # (B, N, H, D) views, no copy
        o       = lightning.attn(q, k, v, slopes)          # causal, per-head decay, no softmax
        y       = (RMSNorm(o) * gate(x Wg)) Wo             # gate: sigmoid or silu

    The decay rates are the ALiBi-style slopes of build_slopes(num_heads, layer_idx,
    num_layers), a non-persistent fp32 buffer (it stays fp32 under model.to(dtype)).

    forward(x, state=None, output_state=False):
      - a prompt (any N, optional initial `state`) runs in one call of lightning.attn; with
        output_state=True the state after its last token comes back as a new tensor;
      - a call with N == 1 and a `state` is a decode step through lightning.attn_decode, which
        updates `state` in place (and returns it when output_state=True). When autograd needs
        gradients through that step, it runs through lightning.attn instead and returns a new
        state, leaving `state` as it was.
    Returns y, or (y, state) when output_state is True.

    Sequence parallelism: with a process group in `sequence_parallel_group` (a constructor
    argument, or set the attribute later), every rank of the group passes its own chunk of
    the sequence (in the group's rank order) and the attention runs through
    lightning.distributed.attn; `state` is then the state before the whole sequence and the
    returned one the state after it, the same on every rank. Decode steps stay local: each
    rank continues that state by itself. Everything else in the layer works token by token.
    """

    def __init__(self, embed_dim: int, num_heads: int, layer_idx: int = 0, num_layers: int = 1,
                 head_dim: Optional[int] = None, bias: bool = False, gate: str = "sigmoid",
                 norm_eps: float = 1e-6, scale: float = 1.0, sequence_parallel_group=None,
                 device=None, dtype=None):
        super().__init__()
        if head_dim is None:
            if embed_dim % num_heads != 0:
                raise ValueError(f"LightningAttention: embed_dim={embed_dim} is not a multiple of "
                                 f"num_heads={num_heads}; pass head_dim")
            head_dim = embed_dim // num_heads
        if head_dim % 16 != 0 or not 16 <= head_dim <= 256:
            raise ValueError(f"LightningAttention: head_dim must be a multiple of 16 in [16, 256], "
                             f"got {head_dim}")
        if gate not in ("sigmoid", "silu"):
            raise ValueError(f"LightningAttention: gate must be 'sigmoid' or 'silu', got {gate!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.layer_idx = layer_idx
        self.num_layers = num_layers
        self.gate = gate
        self.scale = scale
        self.sequence_parallel_group = sequence_parallel_group
        inner = num_heads * head_dim
        factory = {"device": device, "dtype": dtype}
        self.qkv_proj = nn.Linear(embed_dim, 3 * inner, bias=bias, **factory)
        self.gate_proj = nn.Linear(embed_dim, inner, bias=bias, **factory)
        self.norm = RMSNorm(inner, eps=norm_eps, **factory)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **factory)
        self.register_buffer("slope", self._slopes(device), persistent=False)

    def _slopes(self, device=None) -> Tensor:
        return build_slopes(self.num_heads, self.layer_idx, self.num_layers, device=device)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() cast floating buffers too; the decay rates are fp32 by the
        # op's contract, so rebuild them exactly (a round trip through bf16 would change them).
        super()._apply(fn, recurse)
        if self.slope.dtype != torch.float32:
            self.slope = self._slopes(self.slope.device)
        return self

    def attend(self, q: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor],
               output_state: bool):
        """The attention itself on (B, N, H, D) tensors; returns (o, state or None)."""
        needs_grad = torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad
            or (state is not None and state.requires_grad))
        if state is not None and q.shape[1] == 1 and not needs_grad:
            o = attn_decode(q, k, v, state, self.slope, scale=self.scale, layout="bnhd")
            return o, state
        if self.sequence_parallel_group is not None:
            return distributed.attn(q, k, v, self.slope, group=self.sequence_parallel_group,
                                    scale=self.scale, initial_state=state,
                                    output_final_state=output_state, layout="bnhd")
        return attn(q, k, v, self.slope, scale=self.scale, initial_state=state,
                    output_final_state=output_state, layout="bnhd")

    def forward(self, x: Tensor, state: Optional[Tensor] = None, output_state: bool = False):
        batch, tokens, _ = x.shape
        qkv = self.qkv_proj(x).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(2)                                     # (B, N, H, D) views
        q, k = F.silu(q), F.silu(k)
        o, new_state = self.attend(q, k, v, state, output_state)
        o = self.norm(o.reshape(batch, tokens, -1))
        g = self.gate_proj(x)
        g = torch.sigmoid(g) if self.gate == "sigmoid" else F.silu(g)
        y = self.out_proj(o * g)
        return (y, new_state) if output_state else y

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"head_dim={self.head_dim}, layer_idx={self.layer_idx}, "
                f"num_layers={self.num_layers}, gate={self.gate!r}")


class LightningBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + glu(norm(x)).
    forward(x, state=None, output_state=False) as LightningAttention's."""

    def __init__(self, embed_dim: int, num_heads: int, layer_idx: int = 0, num_layers: int = 1,
                 head_dim: Optional[int] = None, hidden_dim: Optional[int] = None,
                 bias: bool = False, norm_eps: float = 1e-6, attention_cls=LightningAttention,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.attn_norm = RMSNorm(embed_dim, eps=norm_eps, **factory)
        self.attn = attention_cls(embed_dim, num_heads, layer_idx=layer_idx, num_layers=num_layers,
                                  head_dim=head_dim, bias=bias, norm_eps=norm_eps, **factory)
        self.mlp_norm = RMSNorm(embed_dim, eps=norm_eps, **factory)
        self.mlp = GLU(embed_dim, hidden_dim, bias=bias, **factory)

    def forward(self, x: Tensor, state: Optional[Tensor] = None, output_state: bool = False):
        h = self.attn(self.attn_norm(x), state, output_state)
        if output_state:
            h, state = h
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return (x, state) if output_state else x


class LightningLM(nn.Module):
    """Small causal language model: token embedding, num_layers LightningBlocks, final RMSNorm,
    output head tied to the embedding (tie_weights=True). No positional embedding: the
    per-head decay orders the tokens.

    forward(tokens (B, N) int64, states=None, output_states=False) -> logits (B, N, V), or
    (logits, states) with one fp32 state per layer. generate() prefills the prompt in one
    forward and decodes each new token in O(1) per layer.

    sequence_parallel_group: a process group over which every forward's sequence is split
    (see LightningAttention): each rank passes its own chunk of the tokens and gets its
    chunk's logits. Each rank's parameter gradients are then its tokens' part, to be summed
    over the group: DDP over all ranks does that when each rank's loss is its tokens' summed
    loss times P / (tokens per replica), as examples/train_sequence_parallel.py shows.
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_heads: int, num_layers: int,
                 head_dim: Optional[int] = None, hidden_dim: Optional[int] = None,
                 bias: bool = False, norm_eps: float = 1e-6, tie_weights: bool = True,
                 attention_cls=LightningAttention, sequence_parallel_group=None, device=None,
                 dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.embed = nn.Embedding(vocab_size, embed_dim, **factory)
        self.blocks = nn.ModuleList(
            LightningBlock(embed_dim, num_heads, layer_idx=i, num_layers=num_layers,
                           head_dim=head_dim, hidden_dim=hidden_dim, bias=bias, norm_eps=norm_eps,
                           attention_cls=attention_cls, **factory)
            for i in range(num_layers))
        self.norm = RMSNorm(embed_dim, eps=norm_eps, **factory)
        self.head = nn.Linear(embed_dim, vocab_size, bias=False, **factory)
        self.reset_parameters()
        if tie_weights:
            self.head.weight = self.embed.weight
        if sequence_parallel_group is not None:
            for block in self.blocks:
                block.attn.sequence_parallel_group = sequence_parallel_group

    @torch.no_grad()
    def reset_parameters(self):
        """GPT-2 style: N(0, 0.02) weights, zero biases, residual output projections scaled
        by 1/sqrt(2 num_layers)."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                std = 0.02
                if name.endswith("out_proj.weight") or name.endswith("down_proj.weight"):
                    std /= (2 * self.num_layers) ** 0.5
                p.normal_(0.0, std)

    def forward(self, tokens: Tensor, states: Optional[List[Tensor]] = None,
                output_states: bool = False):
        x = self.embed(tokens)
        new_states = []
        for i, block in enumerate(self.blocks):
            state = None if states is None else states[i]
            if output_states:
                x, state = block(x, state, output_state=True)
                new_states.append(state)
            else:
                x = block(x, state)
        logits = self.head(self.norm(x))
        return (logits, new_states) if output_states else logits

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, greedy: bool = True,
                 temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """Continues prompt ((B, N) or (N,) int64, N >= 1) by max_new_tokens tokens: one
        prefill call over the prompt, then one decode step per token. Greedy (argmax) by
        default, else sampling at `temperature`. Returns prompt and continuation, (B, N + T)."""
        if any(getattr(block.attn, "sequence_parallel_group", None) is not None
               for block in self.blocks):
            raise ValueError("LightningLM.generate runs on one process: with a "
                             "sequence_parallel_group each rank would see only its chunk's "
                             "logits; generate with a model that has none")
        squeeze = prompt.dim() == 1
        tokens = prompt.unsqueeze(0) if squeeze else prompt
        if tokens.shape[1] < 1:
            raise ValueError("LightningLM.generate: the prompt needs at least one token")
        out = [tokens]
        if max_new_tokens > 0:
            logits, states = self(tokens, output_states=True)
            for step in range(max_new_tokens):
                last = logits[:, -1].float()
                if greedy:
                    nxt = last.argmax(-1, keepdim=True)
                else:
                    probs = torch.softmax(last / temperature, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)
                out.append(nxt)
                if step + 1 < max_new_tokens:
                    logits, states = self(nxt, states, output_states=True)
        seq = torch.cat(out, dim=1)
        return seq.squeeze(0) if squeeze else seq
