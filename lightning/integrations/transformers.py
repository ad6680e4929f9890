"""Hugging Face transformers' MiniMax linear-attention layers on lightning.attn: one line.

    model = MiniMaxForCausalLM.from_pretrained(...)
    patch_minimax(model)        # every MiniMaxLightningAttention now runs this package's ops
    ...
    unpatch_minimax(model)      # back to transformers' own forward

transformers' MiniMaxLightningAttention computes the layer with a Python loop over blocks of
config.block_size tokens when it has no state yet (prefill), and with a loop over the tokens
on its linear cache otherwise (generation). patch_minimax replaces the forward of each such
layer (an attribute on the module instance; the class is untouched) with one that computes
the same function:

    q, k, v = act(x Wqkv) (zeroed at padded positions of a 2-D attention mask), (B, N, H, D)
    o, state = lightning.attn(q, k, v, slope_rate, initial_state=cached state, scale=1)
               or, for one new token without gradients, lightning.attn_decode on a copy
    y = Wout (sigmoid(x Wgate) * RMSNorm(o))

with the layer's own weights, norm, gate, slope_rate buffer and cache. The cache keeps
transformers' format: MiniMaxCache.linear_cache[layer_idx] is the (B, H, D, D) state after
the last token (sum_j lambda^(n-1-j) k_j v_j^T), in the model's dtype, so a cache filled by
the patched model continues in the unpatched one and the other way round. The returned
tuple (output, state) is the original's. Weights, buffers and the module tree are not
changed.

Differences from the unpatched layer:
  - lightning.attn accumulates in fp32 (fp64 for an fp64 model on the CPU) and hands states
    over in fp32, where transformers computes in the model's dtype; in fp32 the two agree
    to rounding, in bf16/fp16 the patched layer keeps more precision and long greedy
    generations may part ways. The state is handed to the kernels as fp32 (an fp64 model's
    cache is rounded to fp32 between calls, a relative 6e-8) and stored back in the model's
    dtype; slope_rate is used as fp32.
  - The head dim must be a multiple of 16 in [16, 256] (MiniMax's is 128); patch_minimax
    raises ValueError for other configurations and for a layer whose instance already has
    its own forward (for example from accelerate's device-placement hooks), before patching
    anything.
  - The attention mask is used as transformers uses it in these layers: a 2-D padding mask
    zeroes q, k and v at padded positions (padding contributes nothing; right padding still
    decays the state, exactly as unpatched).

Written against transformers 5.25 (models/minimax/modeling_minimax.py); transformers is an
optional dependency, imported when patch_minimax or unpatch_minimax is called.
"""

import types

import torch
from torch import Tensor, nn

from ..ops import attn, attn_decode
from ._slopes import CACHE_KEY, derived_slope

__all__ = ["patch_minimax", "unpatch_minimax"]

_REQUIRED_ATTRIBUTES = ("qkv_proj", "output_gate", "out_proj", "norm", "act_fn", "slope_rate",
                        "head_dim", "num_attention_heads", "layer_idx")


def _attention_class():
    try:
        from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention
    except ImportError as err:
        raise ImportError("lightning.integrations.transformers needs transformers with MiniMax "
                          "(pip install 'lightning-im2win-kernels[integrations]')") from err
    return MiniMaxLightningAttention


def _slope(layer: nn.Module) -> Tensor:
    """The layer's slope_rate (H, 1, 1) as the (H,) fp32 tensor the op takes, kept on the layer
    (not on its buffer, which stays untouched) until the buffer changes."""
    return derived_slope(layer.slope_rate, lambda rate: rate.reshape(-1), layer.__dict__)


def _lightning_forward(self, hidden_states: Tensor, position_embeddings=None,
                       attention_mask=None, cache=None, **kwargs):
    """MiniMaxLightningAttention.forward on lightning.attn / lightning.attn_decode."""
    if cache is None:  # callers still using the older names, as transformers' own forward allows
        cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
    batch, tokens, _ = hidden_states.shape
    heads, head_dim = self.num_attention_heads, self.head_dim

    qkv = self.act_fn(self.qkv_proj(hidden_states))
    if attention_mask is not None:  # a 2-D padding mask: padded tokens get q = k = v = 0
        qkv = (qkv * attention_mask[:, :, None]).to(qkv.dtype)
    q, k, v = qkv.reshape(batch, tokens, heads, 3 * head_dim).split(head_dim, dim=3)  # (B, N, H, D)

    slope = _slope(self)
    state = cache.get_linear_cache(self.layer_idx) if cache is not None else None
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, state))
    if state is not None and tokens == 1 and not needs_grad:
        # One generated token: a decode step on a copy (a cache tensor is never written).
        new_state = state.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        o = attn_decode(q, k, v, new_state, slope, layout="bnhd")
    else:
        o, new_state = attn(q, k, v, slope, initial_state=None if state is None else state.float(),
                            output_final_state=True, layout="bnhd")
    new_state = new_state.to(v.dtype)

    o = self.norm(o.reshape(batch, tokens, heads * head_dim))
    o = self.out_proj(torch.sigmoid(self.output_gate(hidden_states)) * o)
    if cache is not None:
        cache.set_linear_cache(self.layer_idx, new_state)
    return o, new_state


def _is_patched(layer: nn.Module) -> bool:
    return getattr(layer.__dict__.get("forward"), "__func__", None) is _lightning_forward


def _layers(model: nn.Module, fn: str):
    cls = _attention_class()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, cls)]
    if not layers:
        raise ValueError(f"{fn}: the model has no MiniMaxLightningAttention layer")
    return layers


def patch_minimax(model: nn.Module) -> nn.Module:
    """Run every transformers MiniMaxLightningAttention layer in `model` (a MiniMaxForCausalLM,
    MiniMaxModel, or anything holding such layers) on lightning.attn for prompts and
    lightning.attn_decode for generated tokens. Checks every layer before patching any;
    patching twice is a no-op. Returns the model."""
    fn = "patch_minimax"
    layers = _layers(model, fn)
    for name, layer in layers:
        missing = [a for a in _REQUIRED_ATTRIBUTES if not hasattr(layer, a)]
        if missing:
            raise ValueError(f"{fn}: layer {name!r} lacks {missing}; this transformers version's "
                             f"MiniMaxLightningAttention is not supported")
        if layer.head_dim % 16 != 0 or not 16 <= layer.head_dim <= 256:
            raise ValueError(f"{fn}: layer {name!r} has head_dim {layer.head_dim}; lightning.attn "
                             f"needs a multiple of 16 in [16, 256]")
        if "forward" in layer.__dict__ and not _is_patched(layer):
            raise ValueError(f"{fn}: layer {name!r} already has its own forward on the instance "
                             f"(e.g. hooks); patch the model before adding them")
    for _, layer in layers:
        layer.forward = types.MethodType(_lightning_forward, layer)
    return model


def unpatch_minimax(model: nn.Module) -> nn.Module:
    """Undo patch_minimax: every MiniMaxLightningAttention layer of `model` runs transformers'
    own forward again (layers that were not patched are left alone). Returns the model."""
    for _, layer in _layers(model, "unpatch_minimax"):
        if _is_patched(layer):
            del layer.forward
            layer.__dict__.pop(CACHE_KEY, None)
    return model
