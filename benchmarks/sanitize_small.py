"""Tiny calls of every CUDA op, forward and backward, every dtype: the workload that
benchmarks/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck).

Shapes are small so that a sanitizer run takes seconds per kernel, but cover the edges:
sequence tails shorter than a block, d != e, several head-dim buckets, strided (bnhd)
inputs, initial/final state, varlen, decode; conv strides, padding, dilation, groups,
depthwise, 1x1 and 11x11 filters, C < 8, channels_last, bias. Each result is compared with
an fp64 CPU reference (loose bars: this is a memory checker's workload, the tests own the
tight ones). Exit code 1 if any case raised or missed its bar.

Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so every tensor is its own cudaMalloc and an
out-of-bounds access is not hidden inside a cached block.
"""

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BARS = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 1e-2, "bf16": 3e-2}
FAILED = []
MATCH = []  # --match: run only the cases whose name holds one of these substrings


def rel(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    d = ref.norm().item()
    return (out - ref).norm().item() / (d if d > 0 else 1.0)


def case(name, bar, fn):
    if MATCH and not any(m in name for m in MATCH):
        return
    try:
        errs = fn()
        worst = max(errs.values()) if errs else 0.0
        ok = worst <= bar
        print(f"{'ok  ' if ok else 'FAIL'} {name}: " + " ".join(f"{k} {v:.2e}" for k, v in errs.items()), flush=True)
        if not ok:
            FAILED.append(name)
    except Exception as exc:  # noqa: BLE001
        print(f"ERR  {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
        traceback.print_exc(limit=3)
        FAILED.append(name)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------- lightning

def attn_ref(q, k, v, slope, scale=1.0, h0=None):
    """fp64 recurrence-free reference on (B, H, N, D); with h0 adds the decayed initial state."""
    n = q.shape[2]
    idx = torch.arange(n, dtype=torch.float64)
    diff = idx[:, None] - idx[None, :]
    mask = torch.exp(-slope[:, None, None] * diff.clamp(min=0)) * (diff >= 0)
    o = ((q @ k.transpose(-1, -2)) * mask) @ v
    dec_q = torch.exp(-slope[:, None] * (idx[None, :] + 1))  # (H, N): lambda^(i+1)
    dec_k = torch.exp(-slope[:, None] * (n - 1 - idx[None, :]))  # lambda^(n-1-j)
    final = torch.einsum("bhnd,bhne->bhde", k * dec_k[None, :, :, None], v)
    if h0 is not None:
        o = o + torch.einsum("bhnd,bhde->bhne", q * dec_q[None, :, :, None], h0)
        final = final + torch.exp(-slope * n)[None, :, None, None] * h0
    return scale * o, final


def lightning_cases(dev):
    import lightning

    # (176, 144) is the 192 bucket; the last one is long enough for a split sweep (2 chunks:
    # cuda/sweep_split.cu)
    shapes = [(2, 3, 70, 64, 64), (1, 2, 130, 128, 96), (1, 2, 33, 192, 256), (1, 1, 40, 176, 144),
              (2, 1, 1, 16, 32), (1, 1, 2100, 32, 48)]
    for dt_name, dt in DTYPES.items():
        for (b, h, n, d, e) in shapes:
            for layout in ("bhnd", "bnhd"):
                for with_state in (False, True):
                    if layout == "bnhd" and with_state:
                        continue

                    def run(b=b, h=h, n=n, d=d, e=e, dt=dt, layout=layout, with_state=with_state):
                        g = torch.Generator().manual_seed(b * 1000 + n)
                        slope = torch.linspace(0.9, 0.0, h, dtype=torch.float32)
                        q, k, v = (torch.randn(b, h, n, x, generator=g, dtype=torch.float64) / x ** 0.25
                                   for x in (d, d, e))
                        h0 = torch.randn(b, h, d, e, generator=g, dtype=torch.float64) if with_state else None
                        do = torch.randn(b, h, n, e, generator=g, dtype=torch.float64)
                        dht = torch.randn(b, h, d, e, generator=g, dtype=torch.float64) if with_state else None
                        leaves = [t.to(dt).double().requires_grad_(True) for t in (q, k, v)]
                        h0r = h0.clone().requires_grad_(True) if with_state else None
                        o_ref, f_ref = attn_ref(*leaves, slope.double(), h0=h0r)
                        loss = (o_ref * do.to(dt).double()).sum() + ((f_ref * dht).sum() if with_state else 0)
                        loss.backward()
                        xs = [t.detach().to(dt).to(dev) for t in (q, k, v)]
                        if layout == "bnhd":
                            xs = [t.transpose(1, 2).contiguous() for t in xs]
                        for t in xs:
                            t.requires_grad_(True)
                        h0d = h0.float().to(dev).requires_grad_(True) if with_state else None
                        o, fin = lightning.attn(*xs, slope.to(dev), scale=1.0, initial_state=h0d,
                                                output_final_state=with_state, layout=layout)
                        dod = do.to(dt).to(dev)
                        if layout == "bnhd":
                            dod = dod.transpose(1, 2).contiguous()
                        grads = [o, fin] if with_state else [o]
                        torch.autograd.backward(grads, [dod, dht.float().to(dev)] if with_state else [dod])
                        back = (lambda t: t.transpose(1, 2)) if layout == "bnhd" else (lambda t: t)
                        errs = {"o": rel(back(o), o_ref), "dq": rel(back(xs[0].grad), leaves[0].grad),
                                "dk": rel(back(xs[1].grad), leaves[1].grad), "dv": rel(back(xs[2].grad), leaves[2].grad)}
                        if with_state:
                            errs["final"] = rel(fin, f_ref)
                            errs["dh0"] = rel(h0d.grad, h0r.grad)
                        return errs

                    case(f"attn {dt_name} b{b} h{h} n{n} d{d} e{e} {layout}{' state' if with_state else ''}",
                         BARS[dt_name], run)

    def varlen():
        lens = [5, 64, 71]
        h, d, e = 2, 64, 64
        g = torch.Generator().manual_seed(7)
        slope = torch.tensor([0.5, 0.01])
        tot = sum(lens)
        q, k, v = (torch.randn(1, h, tot, x, generator=g, dtype=torch.float64) / x ** 0.25 for x in (d, d, e))
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
        o, fin = lightning.attn(*(t.float().to(dev) for t in (q, k, v)), slope.to(dev), cu_seqlens=cu.to(dev),
                                output_final_state=True)
        errs = {}
        for i, (a, z) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            o_ref, f_ref = attn_ref(q[:, :, a:z], k[:, :, a:z], v[:, :, a:z], slope.double())
            errs[f"o{i}"] = rel(o[:, :, a:z], o_ref)
            errs[f"final{i}"] = rel(fin[i:i + 1], f_ref)
        return errs

    case("attn varlen fp32 (5, 64, 71)", BARS["fp32"], varlen)

    for dt_name, dt in DTYPES.items():
        def decode(dt=dt):
            b, h, d, e = 3, 2, 64, 128
            g = torch.Generator().manual_seed(11)
            slope = torch.tensor([0.3, 0.0])
            q, k, v = (torch.randn(b, h, x, generator=g).to(dt) for x in (d, d, e))
            st = torch.randn(b, h, d, e, generator=g)
            lam = torch.exp(-slope.double())[None, :, None, None]
            st_ref = lam * st.double() + k.double()[..., :, None] * v.double()[..., None, :]
            o_ref = torch.einsum("bhd,bhde->bhe", q.double(), st_ref)
            std = st.to(dev)
            o = lightning.attn_decode(q.to(dev), k.to(dev), v.to(dev), std, slope.to(dev))
            return {"o": rel(o, o_ref), "state": rel(std, st_ref)}

        case(f"attn_decode {dt_name}", BARS[dt_name], decode)


# ---------------------------------------------------------------------------------- im2win

def im2win_cases(dev):
    import im2win

    # N, C, H, W, K, F, stride, padding, dilation, groups, bias
    shapes = [
        (2, 3, 23, 23, 8, 11, 4, 0, 1, 1, False),
        (2, 5, 13, 11, 7, 3, 1, 1, 1, 1, True),
        (1, 16, 9, 9, 33, 3, 2, 1, 1, 1, False),
        (2, 8, 10, 10, 8, 3, 1, 2, 2, 2, True),
        (1, 8, 7, 7, 8, 3, 1, 1, 1, 8, False),
        (2, 32, 6, 6, 20, 1, 1, 0, 1, 1, False),
        (1, 4, 5, 5, 4, 5, 1, 0, 1, 1, False),  # Ho = Wo = 1
        (2, 36, 12, 11, 136, 3, 1, 1, 1, 1, True),  # fp32 wgmma: tails of M, N and a slice
    ]
    for prec, dt, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                           ("fp16", torch.float16, False), ("bf16", torch.bfloat16, False)):
        for cl in (False, True):
            for (n, c, h, w, k, f, s, p, dil, gr, bias) in shapes:
                def run(n=n, c=c, h=h, w=w, k=k, f=f, s=s, p=p, dil=dil, gr=gr, bias=bias, dt=dt, tf32=tf32, cl=cl):
                    torch.backends.cudnn.allow_tf32 = tf32
                    torch.backends.cuda.matmul.allow_tf32 = tf32
                    g = torch.Generator().manual_seed(n * 100 + c * 10 + k)
                    x = torch.randn(n, c, h, w, generator=g).to(dt)
                    wt = (torch.randn(k, c // gr, f, f, generator=g) / (c // gr * f * f) ** 0.5).to(dt)
                    bs = torch.randn(k, generator=g).to(dt) if bias else None
                    ref_in = [t.double().requires_grad_(True) for t in (x, wt)]
                    ref_b = bs.double().requires_grad_(True) if bias else None
                    y_ref = F.conv2d(ref_in[0], ref_in[1], ref_b, s, p, dil, gr)
                    dy = torch.randn(y_ref.shape, generator=g).to(dt)
                    y_ref.backward(dy.double())
                    fmt = torch.channels_last if cl else torch.contiguous_format
                    xd = x.to(dev).contiguous(memory_format=fmt).requires_grad_(True)
                    wd = wt.to(dev).contiguous(memory_format=fmt).requires_grad_(True)
                    bd = bs.to(dev).requires_grad_(True) if bias else None
                    y = im2win.conv2d(xd, wd, bd, s, p, dil, gr)
                    y.backward(dy.to(dev).contiguous(memory_format=fmt))
                    errs = {"y": rel(y, y_ref), "dx": rel(xd.grad, ref_in[0].grad), "dw": rel(wd.grad, ref_in[1].grad)}
                    if bias:
                        errs["db"] = rel(bd.grad, ref_b.grad)
                    return errs

                case(f"conv2d {prec}{' cl' if cl else ''} N{n} C{c} {h}x{w} K{k} F{f} s{s} p{p} d{dil} g{gr}"
                     f"{' bias' if bias else ''}", BARS[prec], run)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False

    def transform():
        x = torch.randn(2, 3, 9, 8)
        args = ((3, 3), (2, 1), (1, 0), (1, 1))
        t = im2win.im2win(x.to(dev), *args)
        try:
            from im2win.reference import im2win as im2win_ref
        except ImportError:
            return {"finite": 0.0 if torch.isfinite(t).all() else float("inf")}
        return {"windows": rel(t, im2win_ref(x.double(), *args))}

    if hasattr(im2win, "im2win"):
        case("im2win transform fp32", 0.0, transform)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("lightning", "im2win"), default=None)
    ap.add_argument("--match", action="append", default=[],
                    help="run only cases whose name contains this (repeatable), e.g. n2100 for the split sweep")
    args = ap.parse_args()
    MATCH.extend(args.match)
    if not torch.cuda.is_available():
        sys.exit("sanitize_small: needs a CUDA GPU")
    dev = torch.device("cuda")
    for name, fn in (("lightning", lightning_cases), ("im2win", im2win_cases)):
        if args.only in (None, name):
            try:
                fn(dev)
            except ImportError as exc:
                print(f"ERR  {name}: cannot import: {exc}", flush=True)
                FAILED.append(name)
    print(f"\nsanitize_small: {len(FAILED)} failed" + (": " + ", ".join(FAILED[:20]) if FAILED else ""), flush=True)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
