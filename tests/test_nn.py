"""The modules of lightning.nn and im2win.nn: each against the same computation written with
plain PyTorch (same weights), state_dict compatibility with torch.nn.Conv2d, convert(),
prefill + decode against the full sequence, and one training step."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import im2win
import im2win.nn
import lightning
import lightning.nn as lnn
from lightning import reference as ref
from utils import TF32_TOLERANCE, TOLERANCE, assert_close

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16


def conv_tol(device):
    """fp32 convolutions on CUDA follow cudnn.allow_tf32 (DESIGN.md section 3)."""
    if torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32:
        return TF32_TOLERANCE
    return TOLERANCE[F32]


def test_exports():
    assert im2win.Conv2d is im2win.nn.Conv2d and im2win.convert is im2win.nn.convert
    assert lightning.nn is lnn


# ---------------------------------------------------------------------------------------------
# lightning.nn
# ---------------------------------------------------------------------------------------------

def attention_reference(module, x, state=None):
    """LightningAttention's forward written out in fp64 with plain PyTorch and
    lightning.reference.attn_naive, from the module's own weights. Returns (y, final state)."""
    p = {k: t.detach().to(F64).requires_grad_() for k, t in module.named_parameters()}
    x = x.detach().to(F64)
    b, n, _ = x.shape
    h, d = module.num_heads, module.head_dim
    qkv = F.linear(x, p["qkv_proj.weight"], p.get("qkv_proj.bias"))
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)        # each (B, H, N, D)
    q, k = F.silu(q), F.silu(k)
    s0 = None if state is None else state.detach().to(F64)
    o, final = ref.attn_naive(q, k, v, module.slope.to(F64), module.scale, s0)
    o = o.transpose(1, 2).reshape(b, n, h * d)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + module.norm.eps) * p["norm.weight"]
    g = F.linear(x, p["gate_proj.weight"], p.get("gate_proj.bias"))
    g = torch.sigmoid(g) if module.gate == "sigmoid" else F.silu(g)
    y = F.linear(o * g, p["out_proj.weight"], p.get("out_proj.bias"))
    return y, final, p


@pytest.mark.parametrize("gate,bias,head_dim,with_state", [
    ("sigmoid", False, None, False),
    ("silu", True, 48, True),
])
def test_attention_matches_reference(device, gate, bias, head_dim, with_state):
    module = lnn.LightningAttention(64, 2, layer_idx=1, num_layers=3, head_dim=head_dim, bias=bias,
                                    gate=gate, device=device)
    with torch.no_grad():  # non-trivial norm weights and biases
        for name, t in module.named_parameters():
            if not name.endswith("proj.weight"):
                t.copy_(torch.randn_like(t))
    x = torch.randn(2, 37, 64, device=device, requires_grad=True)
    hd = module.head_dim
    state = torch.randn(2, 2, hd, hd, device=device) if with_state else None

    y, final = module(x, state, output_state=True)
    y_ref, final_ref, p_ref = attention_reference(module, x, state)
    assert final.shape == (2, 2, hd, hd) and final.dtype == F32
    assert_close(y, y_ref, F32, "y")
    assert_close(final, final_ref, F32, "final state")

    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad.to(F64))
    for name, t in module.named_parameters():
        assert_close(t.grad, p_ref[name].grad, F32, f"grad {name}")


def test_attention_buffers_and_dtype(device):
    module = lnn.LightningAttention(64, 4, layer_idx=2, num_layers=4, device=device)
    expect = lightning.build_slopes(4, 2, 4)
    assert module.slope.dtype == F32 and torch.equal(module.slope.cpu(), expect)
    assert "slope" not in module.state_dict()  # a constant of the configuration
    module.to(BF16)  # the decay rates stay exact fp32
    assert module.qkv_proj.weight.dtype == BF16
    assert module.slope.dtype == F32 and torch.equal(module.slope.cpu(), expect)
    x = torch.randn(2, 20, 64, device=device)
    y = module(x.to(BF16))
    assert y.dtype == BF16
    y32 = module.float()(x)
    assert_close(y, y32, BF16, tol=3e-2)  # bf16 weights and activations against fp32
    with pytest.raises(ValueError, match="head_dim"):
        lnn.LightningAttention(40, 2)  # head dim 20


def test_attention_prefill_then_decode(device):
    module = lnn.LightningAttention(64, 2, layer_idx=0, num_layers=2, device=device)
    x = torch.randn(3, 19, 64, device=device)
    with torch.no_grad():
        y_full, s_full = module(x, output_state=True)
        y0, state = module(x[:, :7], output_state=True)
        outs = [y0]
        for i in range(7, 19):
            y1, s1 = module(x[:, i:i + 1], state, output_state=True)
            assert s1 is state  # decode updates the state in place
            outs.append(y1)
    assert_close(torch.cat(outs, 1), y_full, F32, "prefill + decode")
    assert_close(state, s_full, F32, "state")

    # With autograd recording, a one-token step runs through lightning.attn, returns a new
    # state and leaves the given one alone.
    before = state.clone()
    x1 = x[:, :1].clone().requires_grad_()
    y1, s1 = module(x1, state, output_state=True)
    assert s1 is not state and torch.equal(state, before)
    y1.sum().backward()
    assert x1.grad is not None and torch.isfinite(x1.grad).all()


def small_lm(device, **kwargs):
    return lnn.LightningLM(vocab_size=61, embed_dim=64, num_heads=2, num_layers=2, device=device,
                           **kwargs)


def test_lm_chunked_prefill(device):
    lm = small_lm(device)
    tokens = torch.randint(0, 61, (2, 30), device=device)
    with torch.no_grad():
        full = lm(tokens)
        a, states = lm(tokens[:, :11], output_states=True)
        b, states = lm(tokens[:, 11:], states, output_states=True)
    assert len(states) == 2 and states[0].shape == (2, 2, 32, 32)
    assert_close(torch.cat([a, b], 1), full, F32, "chunked logits")
    assert lm.head.weight is lm.embed.weight


def test_lm_generate_equals_full_recompute(device):
    lm = small_lm(device).eval()
    with torch.no_grad():  # larger weights than the init: confident, well separated argmaxes
        for p in lm.parameters():
            p.mul_(4.0)
    prompt = torch.randint(0, 61, (2, 6), device=device)
    out = lm.generate(prompt, 16)
    assert out.shape == (2, 22) and torch.equal(out[:, :6], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(16):
            seq = torch.cat([seq, lm(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
    assert lm.generate(prompt[0], 3).shape == (9,)
    torch.manual_seed(0)
    sampled = lm.generate(prompt, 5, greedy=False, temperature=0.8)
    assert sampled.shape == (2, 11) and int(sampled.max()) < 61


def test_lm_generate_refuses_a_sequence_parallel_model():
    lm = lnn.LightningLM(61, 64, 2, 2, head_dim=32, sequence_parallel_group=object())
    assert all(b.attn.sequence_parallel_group is not None for b in lm.blocks)
    with pytest.raises(ValueError, match="generate runs on one process"):
        lm.generate(torch.zeros(1, 3, dtype=torch.long), 2)


def test_lm_training_step_lowers_loss(device):
    lm = small_lm(device)
    tokens = torch.randint(0, 61, (4, 33), device=device)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)

    def loss_fn():
        return F.cross_entropy(lm(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())

    before = loss_fn()
    opt.zero_grad()
    before.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lm.parameters())
    opt.step()
    with torch.no_grad():
        assert loss_fn().item() < before.item()


# ---------------------------------------------------------------------------------------------
# im2win.nn
# ---------------------------------------------------------------------------------------------

def test_conv2d_is_a_drop_in(device):
    args = dict(in_channels=6, out_channels=8, kernel_size=3, stride=2, padding=1, groups=2)
    torch.manual_seed(1)
    theirs = nn.Conv2d(**args, device=device)
    torch.manual_seed(1)
    ours = im2win.nn.Conv2d(**args, device=device)
    assert isinstance(ours, nn.Conv2d)
    # the same initialisation from the same seed
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]

    other = nn.Conv2d(**args, device=device)  # round trip: theirs -> ours -> theirs
    ours.load_state_dict(other.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert torch.equal(theirs.weight, other.weight) and torch.equal(theirs.bias, other.bias)

    x = torch.randn(3, 6, 11, 13, device=device, requires_grad=True)
    y = ours(x)
    y_ref = F.conv2d(x.detach().double(), other.weight.double(), other.bias.double(), 2, 1, 1, 2)
    assert_close(y, y_ref, F32, tol=conv_tol(device))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own conv
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding,stride,dilation,kernel",  # 'same' with (2, 4): uneven halves
                         [(1, 1, 1, 3), ((2, 1), 2, 1, 3), ("same", 1, 2, 3), ("same", 1, 1, (2, 4)),
                          ("valid", 1, 1, 3)])
def test_conv2d_padding_modes(device, padding_mode, padding, stride, dilation, kernel):
    theirs = nn.Conv2d(4, 5, kernel, stride=stride, padding=padding, dilation=dilation,
                       padding_mode=padding_mode, device=device)
    ours = im2win.nn.Conv2d(4, 5, kernel, stride=stride, padding=padding, dilation=dilation,
                            padding_mode=padding_mode, device=device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 9, 10, device=device)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = ours(x_ours), theirs(x_theirs)
    tol = conv_tol(device)
    assert_close(y, y_ref, F32, "output", tol=tol)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert_close(x_ours.grad, x_theirs.grad, F32, "grad input", tol=tol)
    assert_close(ours.weight.grad, theirs.weight.grad, F32, "grad weight", tol=tol)
    assert_close(ours.bias.grad, theirs.bias.grad, F32, "grad bias", tol=tol)


class Tagged(nn.Conv2d):
    """A subclass of nn.Conv2d with its own forward: convert() must leave it alone."""

    def forward(self, x):
        return super().forward(x) * 2


def small_cnn(device):
    """A torchvision-style network by hand: stem, grouped, depthwise, dilated, strided, 1x1,
    'same' and reflect-padded convolutions with BatchNorm, a module used twice, a subclass."""
    shared = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32),
                      nn.ReLU(), nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32),
                      nn.Conv2d(32, 16, 1)),
        shared, nn.ReLU(), shared,
        nn.Conv2d(16, 16, (3, 5), padding="same", padding_mode="reflect"),
        Tagged(16, 8, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).to(device)


def test_convert_keeps_outputs(device):
    model = small_cnn(device)
    x = torch.randn(4, 3, 23, 19, device=device)
    model.train()
    model(x)  # non-trivial BatchNorm running statistics
    model.eval()
    with torch.no_grad():
        expect = model(x)
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    hook_calls = []
    convs[0].register_forward_hook(lambda *_: hook_calls.append(1))

    assert im2win.nn.convert(model) is model
    assert not any(type(m) is nn.Conv2d for m in model.modules())
    assert sum(type(m) is im2win.nn.Conv2d for m in model.modules()) == len(convs) == 6
    assert type(model[-4]) is Tagged
    assert model[4] is model[6]  # one module used twice stays one module
    assert all(params[name] is p for name, p in model.named_parameters())  # shared, not copied
    assert list(model.state_dict()) == keys
    assert not model[0].training
    with torch.no_grad():
        got = model(x)
    assert hook_calls == [1]
    assert_close(got, expect, F32, tol=conv_tol(device))

    dtype = F64 if device == "cpu" else F32  # fp64 convolutions are CPU-only
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", device=device, dtype=dtype)
    x = torch.randn(1, 2, 6, 6, device=device, dtype=dtype)
    with torch.no_grad():
        expect = conv(x)
    weight = conv.weight
    assert im2win.nn.convert(conv) is conv
    assert type(conv) is im2win.nn.Conv2d and conv.weight is weight
    assert conv.padding_mode == "circular" and conv.weight.dtype == dtype
    with torch.no_grad():
        got = conv(x)
    assert_close(got, expect, dtype, tol=None if device == "cpu" else conv_tol(device))


def test_cnn_training_step_lowers_loss(device):
    model = im2win.nn.convert(small_cnn(device))
    x = torch.randn(8, 3, 16, 16, device=device)
    y = torch.randint(0, 10, (8,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()  # BatchNorm normalises by the batch's statistics before and after the step
    before = F.cross_entropy(model(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < before.item()
