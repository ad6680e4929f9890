"""lightning.integrations: the FLA drop-ins against the fp64 references of lightning.reference
(and against FLA itself where FLA and a GPU are present), and patch_minimax against
transformers' own MiniMaxLightningAttention on tiny random MiniMax models (skipped without
transformers)."""

import pytest
import torch

import lightning
from lightning import reference as ref
from lightning.integrations import fla as lfla
from utils import TOLERANCE, assert_close

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16


# ---------------------------------------------------------------------------------------------
# FLA drop-ins
# ---------------------------------------------------------------------------------------------

def exact(device):
    """The most precise dtype the kernels take on the device (fp64 is CPU-only)."""
    return F64 if device == "cpu" else F32


def bthd(b, t, h, d, device, dtype, requires_grad=False):
    return torch.randn(b, t, h, d, device=device, dtype=dtype, requires_grad=requires_grad)


def reference_bthd(q, k, v, slope, scale, s0, cu_seqlens=None):
    """attn_naive (or attn_varlen) in fp64 on the CPU on (B, T, H, D) tensors; returns
    (o (B, T, H, V), state)."""
    args = [t.detach().to("cpu", F64).transpose(1, 2) for t in (q, k, v)]
    slope = None if slope is None else slope.to("cpu", F64)
    s0 = None if s0 is None else s0.detach().to("cpu", F64)
    if cu_seqlens is None:
        o, state = ref.attn_naive(*args, slope, scale, s0)
    else:
        o, state = ref.attn_varlen(*args, cu_seqlens, slope, scale, s0)
    return o.transpose(1, 2), state


def fla_lightning_slopes(h, layer_idx, num_layers):
    """-g_gamma of FLA's chunk_lightning_attn, written out: (8 / H) (1 - l / L) h."""
    return torch.tensor([8 / h * (1 - layer_idx / num_layers) * i for i in range(h)], dtype=F64)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("decay,scale,with_state,state_v_first", [
    (True, None, False, False),
    (True, 0.3, True, False),
    (False, None, True, True),
], ids=["default", "scale-state", "nodecay-vfirst"])
def test_chunk_simple_gla(device, dtype, decay, scale, with_state, state_v_first):
    if dtype != exact(device) and dtype == F64:
        pytest.skip("fp64 is CPU-only")
    b, t, h, d, e = 2, 70, 3, 32, 16
    q, k, v = bthd(b, t, h, d, device, dtype), bthd(b, t, h, d, device, dtype), bthd(b, t, h, e, device, dtype)
    g_gamma = -torch.rand(h, device=device) if decay else None
    s0 = torch.randn(b, h, d, e, device=device) if with_state else None
    s0_arg = None if s0 is None else (s0.transpose(-1, -2).contiguous() if state_v_first else s0)
    o, state = lfla.chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=scale, initial_state=s0_arg,
                                     output_final_state=True, state_v_first=state_v_first)
    ro, rstate = reference_bthd(q, k, v, None if g_gamma is None else -g_gamma.cpu(),
                                d ** -0.5 if scale is None else scale, s0)
    assert o.shape == (b, t, h, e) and o.dtype == dtype and o.is_contiguous()
    assert state.dtype == F32 and state.is_contiguous()
    assert_close(o, ro, dtype)
    assert_close(state.transpose(-1, -2) if state_v_first else state, rstate, F32, "final_state")
    _, none = lfla.chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=scale, initial_state=s0_arg,
                                    state_v_first=state_v_first)
    assert none is None


def test_chunk_simple_gla_varlen(device):
    h, d = 2, 16
    cu = torch.tensor([0, 17, 18, 60], device=device)
    q, k, v = (bthd(1, 60, h, d, device, exact(device)) for _ in range(3))
    g_gamma = -torch.rand(h, device=device)
    s0 = torch.randn(3, h, d, d, device=device)
    o, state = lfla.chunk_simple_gla(q, k, v, g_gamma=g_gamma, initial_state=s0,
                                     output_final_state=True, cu_seqlens=cu, cu_seqlens_cpu=cu.cpu())
    ro, rstate = reference_bthd(q, k, v, -g_gamma.cpu(), d ** -0.5, s0, cu.cpu())
    assert_close(o, ro, exact(device))
    assert_close(state, rstate, F32, "final_state")


@pytest.mark.parametrize("layer_idx", [0, 3])
def test_chunk_lightning_attn_slopes(device, layer_idx):
    b, t, h, d = 2, 40, 4, 16
    q, k, v = (bthd(b, t, h, d, device, exact(device)) for _ in range(3))
    o, state = lfla.chunk_lightning_attn(q, k, v, layer_idx, 4, output_final_state=True, chunk_size=64)
    ro, rstate = reference_bthd(q, k, v, fla_lightning_slopes(h, layer_idx, 4), d ** -0.5, None)
    assert_close(o, ro, exact(device))
    assert_close(state, rstate, F32, "final_state")
    o_rec, _ = lfla.fused_recurrent_lightning_attn(q, k, v, layer_idx, 4)
    assert_close(o_rec, ro, exact(device), "fused_recurrent_lightning_attn")


def test_fused_recurrent_decode(device):
    """T == 1 without gradients is a decode step on a copy of initial_state: same values as
    the reference, initial_state unchanged; a few steps continue a prefill exactly."""
    b, t, h, d = 2, 12, 3, 16
    q, k, v = (bthd(b, t, h, d, device, F32) for _ in range(3))
    g_gamma = -torch.rand(h, device=device)
    _, state = lfla.chunk_simple_gla(q[:, :8], k[:, :8], v[:, :8], g_gamma=g_gamma,
                                     output_final_state=True)
    outs = []
    for i in range(8, t):
        before = state.clone()
        o_i, new_state = lfla.fused_recurrent_simple_gla(
            q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], g_gamma=g_gamma, initial_state=state,
            output_final_state=True)
        assert torch.equal(state, before), "initial_state was written"
        outs.append(o_i)
        state = new_state
    ro, rstate = reference_bthd(q, k, v, -g_gamma.cpu(), d ** -0.5, None)
    assert_close(torch.cat(outs, dim=1), ro[:, 8:], F32)
    assert_close(state, rstate, F32, "final_state")


@pytest.mark.parametrize("varlen", [False, True])
def test_fused_recurrent_reverse(device, varlen):
    """reverse=True: o_t = scale sum_{j >= t} lambda^(j-t) (q_t . k_j) v_j, the state carried
    from the last token to the first (per packed sequence with cu_seqlens)."""
    h, d = 2, 16
    b, t = (1, 50) if varlen else (2, 50)
    cu = torch.tensor([0, 11, 50], device=device) if varlen else None
    nseq = 2
    q, k, v = (bthd(b, t, h, d, device, exact(device)) for _ in range(3))
    g_gamma = -torch.rand(h, device=device)
    s0 = torch.randn(nseq, h, d, d, device=device)
    o, state = lfla.fused_recurrent_simple_gla(q, k, v, g_gamma=g_gamma, initial_state=s0,
                                               output_final_state=True, reverse=True, cu_seqlens=cu)
    if varlen:  # each sequence reversed on its own
        rev = torch.cat([torch.arange(s, e).flip(0) for s, e in ((0, 11), (11, 50))])
        ro, rstate = reference_bthd(q[:, rev], k[:, rev], v[:, rev], -g_gamma.cpu(), d ** -0.5, s0,
                                    cu.cpu())
        ro = ro[:, rev]
    else:
        ro, rstate = reference_bthd(q.flip(1), k.flip(1), v.flip(1), -g_gamma.cpu(), d ** -0.5, s0)
        ro = ro.flip(1)
    assert_close(o, ro, exact(device))
    assert_close(state, rstate, F32, "final_state")


def test_fla_backward(device):
    """Gradients in q, k, v and a non-fp32 initial_state (returned in its dtype) against
    autograd through the fp64 reference."""
    b, t, h, d = 2, 45, 2, 16
    dtype = exact(device)
    q, k, v = (bthd(b, t, h, d, device, dtype, requires_grad=True) for _ in range(3))
    s0 = torch.randn(b, h, d, d, device=device, dtype=F64 if dtype == F64 else BF16,
                     requires_grad=True)
    g_gamma = -torch.rand(h, device=device)
    o, state = lfla.fused_recurrent_simple_gla(q, k, v, g_gamma=g_gamma, initial_state=s0,
                                               output_final_state=True)
    go, gs = torch.randn_like(o), torch.randn_like(state)
    grads = torch.autograd.grad((o, state), (q, k, v, s0), (go, gs))
    rq, rk, rv, rs0 = (x.detach().cpu().double().requires_grad_() for x in (q, k, v, s0.float()))
    ro, rstate = ref.attn_naive(*(x.transpose(1, 2) for x in (rq, rk, rv)), -g_gamma.cpu().double(),
                                d ** -0.5, rs0)
    rgrads = torch.autograd.grad((ro.transpose(1, 2), rstate), (rq, rk, rv, rs0),
                                 (go.cpu().double(), gs.cpu().double()))
    assert grads[3].dtype == s0.dtype
    for name, g, rg in zip(("dq", "dk", "dv"), grads, rgrads):
        assert_close(g, rg, dtype, name)
    assert_close(grads[3], rgrads[3], s0.dtype if s0.dtype == BF16 else F32, "d_initial_state")


def test_g_gamma_written_in_place_is_read_again(device):
    q, k, v = (bthd(1, 20, 2, 16, device, exact(device)) for _ in range(3))
    g_gamma = torch.tensor([-0.5, -0.1], device=device)
    o1, _ = lfla.chunk_simple_gla(q, k, v, g_gamma=g_gamma)
    g_gamma[0] = -2.0
    o2, _ = lfla.chunk_simple_gla(q, k, v, g_gamma=g_gamma)
    ro, _ = reference_bthd(q, k, v, -g_gamma.cpu(), 16 ** -0.5, None)
    assert not torch.equal(o1, o2)
    assert_close(o2, ro, exact(device))


def test_g_gamma_made_in_inference_mode(device):
    """Inference tensors have no version counter: their slope is kept by identity."""
    q, k, v = (bthd(1, 20, 2, 16, device, exact(device)) for _ in range(3))
    with torch.inference_mode():
        g_gamma = torch.tensor([-0.5, -0.1], device=device)
        o1, _ = lfla.chunk_simple_gla(q, k, v, g_gamma=g_gamma)
        o2, _ = lfla.chunk_simple_gla(q, k, v, g_gamma=g_gamma)
    ro, _ = reference_bthd(q, k, v, -g_gamma.cpu(), 16 ** -0.5, None)
    assert torch.equal(o1, o2)
    assert_close(o1, ro, exact(device))


def test_fla_errors(device):
    q, k, v = (bthd(1, 20, 2, 16, device, F32) for _ in range(3))
    g = torch.zeros(1, 20, 2, device=device)
    with pytest.raises(NotImplementedError, match="per-token gates g"):
        lfla.chunk_simple_gla(q, k, v, g=g)
    with pytest.raises(NotImplementedError, match="per-token gates g"):
        lfla.fused_recurrent_simple_gla(q, k, v, g)
    with pytest.raises(ValueError, match="slope must be >= 0"):
        lfla.chunk_simple_gla(q, k, v, g_gamma=torch.tensor([-0.1, 0.2], device=device))
    with pytest.raises(ValueError, match=r"g_gamma must be a 1-D tensor"):
        lfla.chunk_simple_gla(q, k, v, g_gamma=torch.zeros(1, 2, device=device))
    with pytest.raises(DeprecationWarning, match="head_first"):
        lfla.chunk_simple_gla(q, k, v, head_first=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        lfla.chunk_lightning_attn(q, k, v, 0, 2, chunk_sise=64)
    with pytest.raises(ValueError, match="0 <= layer_idx <= num_layers"):
        lfla.chunk_lightning_attn(q, k, v, 3, 2)
    with pytest.raises(ValueError, match="multiple of 16"):
        lfla.chunk_simple_gla(q[..., :8], k[..., :8], v)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [BF16, F32])
def test_against_fla(dtype):
    """The drop-ins against FLA itself at a lightning-benchmark-like shape."""
    fla_chunk = pytest.importorskip("fla.ops.simple_gla")
    fla_lightning = pytest.importorskip("fla.ops.lightning_attn")
    b, t, h, d = 2, 1000, 4, 64
    q, k, v = (bthd(b, t, h, d, "cuda", dtype) * 0.5 for _ in range(3))
    s0 = torch.randn(b, h, d, d, device="cuda")
    g_gamma = -torch.rand(h, device="cuda")
    tol = 2e-2 if dtype == BF16 else 1e-3  # FLA keeps chunk states in the input dtype, TF32 products
    for ours, theirs, kwargs in (
        (lfla.chunk_simple_gla, fla_chunk.chunk_simple_gla, {"g_gamma": g_gamma}),
        (lfla.fused_recurrent_simple_gla, fla_chunk.fused_recurrent_simple_gla, {"g_gamma": g_gamma}),
    ):
        o, st = ours(q, k, v, initial_state=s0, output_final_state=True, **kwargs)
        fo, fst = theirs(q, k, v, initial_state=s0, output_final_state=True, **kwargs)
        assert_close(o, fo, dtype, ours.__name__, tol)
        assert_close(st, fst, F32, ours.__name__ + " final_state", tol)
    o, st = lfla.chunk_lightning_attn(q, k, v, 1, 4, initial_state=s0, output_final_state=True)
    fo, fst = fla_lightning.chunk_lightning_attn(q, k, v, 1, 4, initial_state=s0, output_final_state=True)
    assert_close(o, fo, dtype, "chunk_lightning_attn", tol)
    assert_close(st, fst, F32, "chunk_lightning_attn final_state", tol)


# ---------------------------------------------------------------------------------------------
# transformers MiniMax
# ---------------------------------------------------------------------------------------------
# Tolerances, relative to the unpatched model: fp32 agrees to rounding (observed <= 2e-7).
# In fp64 the prefill agrees to rounding once the unpatched model's decay tables are rebuilt in
# fp64 (transformers computes them at construction, in fp32); a cache written by the kernels
# holds fp32 states (observed <= 6e-8), and so do the logits after it.
MODEL_TOL = {F32: 1e-6, F64: 1e-12}
CACHED_TOL = {F32: 1e-6, F64: 5e-7}
LINEAR_ONLY = ["linear_attention"] * 2
MIXED = ["full_attention", "linear_attention", "linear_attention"]


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    from lightning.integrations import transformers as integration
    return transformers, integration


def tiny_minimax(hf, layer_types, dtype=F32, head_dim=16, block_size=16):
    """A random MiniMaxForCausalLM small enough for the CPU, decay tables in `dtype`."""
    transformers, _ = hf
    config = transformers.MiniMaxConfig(
        vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=len(layer_types),
        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, num_local_experts=2,
        num_experts_per_tok=2, block_size=block_size, layer_types=layer_types,
        max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=0,
        experts_implementation="eager", attn_implementation="eager")  # eager: fp64 on the CPU
    model = transformers.MiniMaxForCausalLM(config).to(dtype).eval()
    for layer in model.modules():
        if hasattr(layer, "decay_factors"):
            layer.query_decay, layer.key_decay, layer.diagonal_decay = layer.decay_factors(layer.slope_rate)
    return model


def lightning_layers(model):
    return [m for m in model.modules() if type(m).__name__ == "MiniMaxLightningAttention"]


def prefill_and_decode(model, ids, mask=None):
    """Logits of a prefill of ids[:, :-6], four single-token steps and a two-token continuation
    on the cache, and the linear caches after each stage."""
    n = ids.shape[1] - 6
    logits, caches = [], []
    with torch.no_grad():
        out = model(ids[:, :n], attention_mask=None if mask is None else mask[:, :n], use_cache=True)
        for i in range(n, ids.shape[1] + 1):
            logits.append(out.logits)
            caches.append([c.clone() for c in out.cache.linear_cache if isinstance(c, torch.Tensor)])
            if i == ids.shape[1]:
                break
            step = slice(i, i + 1) if i < n + 4 else slice(i, i + 2)
            m = None if mask is None else mask[:, :step.stop]
            out = model(ids[:, step], attention_mask=m, cache=out.cache, use_cache=True)
            if step.stop - step.start == 2:
                logits.append(out.logits)
                caches.append([c.clone() for c in out.cache.linear_cache if isinstance(c, torch.Tensor)])
                break
    return logits, caches


@pytest.mark.parametrize("layer_types,dtype", [(LINEAR_ONLY, F64), (LINEAR_ONLY, F32), (MIXED, F32)],
                         ids=["linear-fp64", "linear-fp32", "mixed-fp32"])
def test_minimax_prefill_decode_cache(hf, layer_types, dtype):
    _, integration = hf
    model = tiny_minimax(hf, layer_types, dtype)
    ids = torch.randint(1, 97, (2, 46))
    want_logits, want_caches = prefill_and_decode(model, ids)
    integration.patch_minimax(model)
    got_logits, got_caches = prefill_and_decode(model, ids)
    for stage, (got, want, got_c, want_c) in enumerate(zip(got_logits, want_logits, got_caches, want_caches)):
        tol = MODEL_TOL[dtype] if stage == 0 else CACHED_TOL[dtype]
        assert_close(got, want, dtype, f"logits, stage {stage}", tol)
        assert len(got_c) == len(want_c) == 2
        for layer, (c, w) in enumerate(zip(got_c, want_c)):
            assert c.dtype == w.dtype == dtype and c.shape == w.shape == (2, 4, 16, 16)
            assert_close(c, w, dtype, f"linear cache of layer {layer}, stage {stage}", CACHED_TOL[dtype])


def test_minimax_padding_mask(hf):
    """Left and right padding as transformers handles it in these layers (padded tokens get
    q = k = v = 0)."""
    _, integration = hf
    model = tiny_minimax(hf, LINEAR_ONLY)
    ids = torch.randint(1, 97, (3, 40))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[0, :9] = 0    # left padding
    mask[1, 30:] = 0   # right padding
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
        integration.patch_minimax(model)
        got = model(ids, attention_mask=mask).logits
    assert_close(got, want, F32, "logits", MODEL_TOL[F32])


@pytest.mark.parametrize("layer_types", [LINEAR_ONLY, MIXED], ids=["linear", "mixed"])
def test_minimax_generate_greedy(hf, layer_types):
    _, integration = hf
    model = tiny_minimax(hf, layer_types)
    ids = torch.randint(1, 97, (2, 21))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False)
    want = model.generate(ids, **kwargs)
    integration.patch_minimax(model)
    got = model.generate(ids, **kwargs)
    assert got.shape == (2, 33)
    assert torch.equal(got, want)


def test_minimax_training_backward(hf):
    """loss.backward through the patched layers, a prompt and then a token on its cache (the
    step needs gradients, so it runs lightning.attn from the cached state): every parameter's
    gradient as unpatched."""
    _, integration = hf
    model = tiny_minimax(hf, LINEAR_ONLY, F64).train()
    ids = torch.randint(1, 97, (2, 37))

    def grads():
        model.zero_grad()
        out = model(ids[:, :-1], labels=ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], cache=out.cache, use_cache=True).logits
        loss = out.loss + step.logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want_loss, want = grads()
    integration.patch_minimax(model)
    got_loss, got = grads()
    assert got.keys() == want.keys() and any("qkv_proj" in n for n in got)
    assert_close(got_loss, want_loss, F64, "loss", CACHED_TOL[F64])
    for name in want:
        assert_close(got[name], want[name], F64, name, CACHED_TOL[F64])


def test_minimax_unpatch_and_cache_exchange(hf):
    """unpatch_minimax restores transformers' forward (bitwise the same logits), patching twice
    is a no-op, a decode step never writes the cache tensors it read, and a cache filled by
    the patched model continues in the unpatched one."""
    _, integration = hf
    model = tiny_minimax(hf, LINEAR_ONLY)
    ids = torch.randint(1, 97, (2, 30))
    with torch.no_grad():
        want = model(ids).logits
        integration.patch_minimax(model)
        integration.patch_minimax(model)
        assert all("forward" in layer.__dict__ for layer in lightning_layers(model))
        cache = model(ids[:, :28], use_cache=True).cache
        read, copies = list(cache.linear_cache), [c.clone() for c in cache.linear_cache]
        model(ids[:, 28:29], cache=cache, use_cache=True)
        assert all(torch.equal(r, c) for r, c in zip(read, copies)), "a cache tensor was written"
        integration.unpatch_minimax(model)
        assert all("forward" not in layer.__dict__ for layer in lightning_layers(model))
        assert torch.equal(model(ids).logits, want)
        step = model(ids[:, 29:], cache=cache, use_cache=True).logits
    assert_close(step[:, -1], want[:, -1], F32, "logits after a patched prefill", CACHED_TOL[F32])


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_minimax_layer_call_with_past_key_values(hf):
    """A layer called directly with the older keyword past_key_values (which transformers' own
    forward still takes) reads and fills that cache."""
    _, integration = hf
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    model = tiny_minimax(hf, LINEAR_ONLY)
    layer = lightning_layers(model)[1]
    x = torch.randn(2, 20, 64)
    results = []
    with torch.no_grad():
        for patch in (False, True):
            if patch:
                integration.patch_minimax(model)
            cache = MiniMaxCache()
            y1, _ = layer(x[:, :19], None, None, past_key_values=cache)
            y2, state = layer(x[:, 19:], None, None, past_key_values=cache)
            assert cache.get_linear_cache(1) is state
            results.append((y1, y2, state))
    for name, got, want in zip(("prompt", "step", "state"), results[1], results[0]):
        assert_close(got, want, F32, name, CACHED_TOL[F32])


def test_minimax_patch_errors(hf):
    _, integration = hf
    with pytest.raises(ValueError, match="no MiniMaxLightningAttention layer"):
        integration.patch_minimax(torch.nn.Linear(2, 2))
    model = tiny_minimax(hf, LINEAR_ONLY, head_dim=24)
    with pytest.raises(ValueError, match="head_dim 24"):
        integration.patch_minimax(model)
    model = tiny_minimax(hf, LINEAR_ONLY)
    layers = lightning_layers(model)
    layers[1].forward = layers[1].forward  # an instance-level forward, as hooks install
    with pytest.raises(ValueError, match="already has its own forward"):
        integration.patch_minimax(model)
    assert "forward" not in layers[0].__dict__, "a layer was patched before the check failed"
