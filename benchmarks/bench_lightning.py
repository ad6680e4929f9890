"""lightning.attn against its peers, in one run (DESIGN.md section 5, benchmarks/README.md).

Peers (each optional: a missing or failing one gives null entries, never a crash):
  fla         fla.ops.simple_gla.chunk_simple_gla(q, k, v, g_gamma=-slope, scale=1.0)
              (fla-core 0.6.0; (B, N, H, D) layout only, g_gamma = natural-log decay per head,
              shape (H,); decode: fused_recurrent_simple_gla with an fp32 initial_state)
  opennlplab  lightning_attn.ops.lightning_attn_func(q, k, v, s=slope.view(H, 1, 1))
              (lightning-attn 0.0.5, Lightning Attention-2's own Triton kernels; (B, H, N, D);
              it upcasts tiles to fp32 (TF32 dots) and splits d > 128 into 64-wide slices)
  sdpa        F.scaled_dot_product_attention(q, k, v, is_causal=True) under
              sdpa_kernel(SDPBackend.FLASH_ATTENTION): softmax attention, a speed yardstick only
Ours: lightning.attn(q, k, v, slope, scale=1.0) in (B, H, N, D), and "ours_bnhd" on the
(B, N, H, D) layout through layout="bnhd" (strided, no copy).

Sections (--only, comma-separated): accuracy, fwd, decode, dims, constant.

Formulas (per batch element and head, n tokens, block Bk = 64, elements of `es` bytes):
  forward FLOP     n * (2*Bk*(d+e) + 4*d*e)    intra Q K^T and A V over full blocks,
                                                inter Q S and the state update K^T V
  backward FLOP    n * (2*Bk*(3d+2e) + 10*d*e)  intra A, dO V^T, P K, P^T Q, A^T dO;
                                                inter dO S^T, K^T V, V dS^T, K dS, Q^T dO
  forward bytes    es * n * (2d + 2e)           read q, k, v; write o
  fwd+bwd bytes    es * n * (6d + 5e)           forward, then read q, k, v, dO and write
                                                dq, dk, dv
  decode bytes     2 * 4 * d * e                the fp32 state read and written once
HBM floor = bytes / (device-to-device copy bandwidth measured in the same run).
Speedups are t_peer / t_ours (> 1: ours faster).
"""

import argparse
import math
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.put_checkout_first()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

BLOCK = 64
# Run order: the headline first; accuracy last, since FLA autotunes its fp32 kernels there
# for minutes, which would otherwise use up --budget-s before the headline sections run.
SECTIONS = ("fwd", "decode", "constant", "dims", "accuracy")


# ---------------------------------------------------------------------------------- formulas

def fwd_flops(b, h, n, d, e, block=BLOCK):
    return b * h * n * (2 * block * (d + e) + 4 * d * e)


def bwd_flops(b, h, n, d, e, block=BLOCK):
    return b * h * n * (2 * block * (3 * d + 2 * e) + 10 * d * e)


def fwd_bytes(b, h, n, d, e, es=2):
    return es * b * h * n * (2 * d + 2 * e)


def fwdbwd_bytes(b, h, n, d, e, es=2):
    return es * b * h * n * (6 * d + 5 * e)


def decode_bytes(b, h, d, e):
    return 2 * 4 * b * h * d * e


# ---------------------------------------------------------------------------------- implementations

class Impl:
    """One implementation: its native layout and how to call it. `fn(q, k, v, slope)` gets
    tensors already in its layout ("bhnd" or "bnhd") and returns o in that layout."""

    def __init__(self, name, label, layout, fn, ctx=None, prep=None):
        self.name, self.label, self.layout, self.fn, self.ctx = name, label, layout, fn, ctx
        self.prep = prep if prep is not None else (lambda s: s)  # slope -> the argument it takes

    def context(self):
        import contextlib

        return self.ctx() if self.ctx is not None else contextlib.nullcontext()


def load_impls(want):
    """Implementations by name; those that fail to import are reported and left out."""
    impls, errors = {}, {}

    if "ours" in want or "ours_bnhd" in want:
        try:
            import lightning

            if not hasattr(lightning, "attn"):
                raise ImportError(f"`lightning` at {lightning.__file__} is not this project's "
                                  f"(PyTorch Lightning?): put the checkout first on PYTHONPATH")
            impls["ours"] = Impl("ours", "ours", "bhnd",
                                 lambda q, k, v, s: lightning.attn(q, k, v, s, scale=1.0)[0])
            impls["ours_bnhd"] = Impl("ours_bnhd", "ours (bnhd)", "bnhd",
                                      lambda q, k, v, s: lightning.attn(q, k, v, s, scale=1.0,
                                                                        layout="bnhd")[0])
        except Exception as exc:  # noqa: BLE001
            errors["ours"] = errors["ours_bnhd"] = common.short_err(exc)

    if "fla" in want:
        try:
            from fla.ops.simple_gla import chunk_simple_gla

            impls["fla"] = Impl("fla", "FLA chunk_simple_gla", "bnhd",
                                lambda q, k, v, g: chunk_simple_gla(q, k, v, g_gamma=g, scale=1.0)[0],
                                prep=lambda s: (-s).contiguous())  # natural-log decay per head
        except Exception as exc:  # noqa: BLE001
            errors["fla"] = common.short_err(exc)

    if "opennlplab" in want:
        try:
            from lightning_attn.ops import lightning_attn_func

            impls["opennlplab"] = Impl("opennlplab", "OpenNLPLab lightning_attn2", "bhnd",
                                       lambda q, k, v, s: lightning_attn_func(q, k, v, s),
                                       prep=lambda s: s.reshape(-1, 1, 1).contiguous())  # (H, 1, 1)
        except Exception as exc:  # noqa: BLE001
            errors["opennlplab"] = common.short_err(exc)

    if "sdpa" in want:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            impls["sdpa"] = Impl("sdpa", "SDPA flash (causal softmax)", "bhnd",
                                 lambda q, k, v, s: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                 ctx=lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION))
        except Exception as exc:  # noqa: BLE001
            errors["sdpa"] = common.short_err(exc)

    impls = {k: v for k, v in impls.items() if k in want}
    errors = {k: v for k, v in errors.items() if k in want}
    return impls, errors


def to_layout(t, layout):
    """(B, H, N, X) -> a new leaf in the layout, contiguous (a copy for bnhd; for bhnd a
    detached alias, so requires_grad_ on it leaves the caller's tensor alone)."""
    t = t.detach()
    return t.contiguous() if layout == "bhnd" else t.transpose(1, 2).contiguous()


def to_bhnd(t, layout):
    return t if layout == "bhnd" else t.transpose(1, 2)


# ---------------------------------------------------------------------------------- one case

def measure(impl, q, k, v, do, slope, args, budget, *, want_mem=True, want_bwd=True, ref_o=None):
    """fwd ms (no grad), fwd+bwd ms, peak extra MiB during fwd+bwd, and o's difference from
    ref_o (ours). q, k, v, do are (B, H, N, X) tensors; each impl gets its own layout copy."""
    row = {"fwd_ms": None, "fwdbwd_ms": None, "mem_mib": None, "mem_extra_mib": None,
           "diff_vs_ours": None, "error": None}
    if budget.exhausted():
        row["error"] = "skipped: time budget"
        return row, None
    out_o = None
    try:
        qi, ki, vi, doi = (to_layout(t, impl.layout) for t in (q, k, v, do))
        slope = impl.prep(slope)
        with impl.context():
            with torch.no_grad():
                o = impl.fn(qi, ki, vi, slope)
                out_o = to_bhnd(o, impl.layout)
                if ref_o is not None:
                    row["diff_vs_ours"] = common.rel_err(out_o, ref_o)
                row["fwd_ms"] = common.bench_ms(lambda: impl.fn(qi, ki, vi, slope),
                                                warmup=args.warmup, rep=args.rep, device=args.device)
            if want_bwd and not budget.exhausted():
                for t in (qi, ki, vi):
                    t.requires_grad_(True)

                def step():
                    impl.fn(qi, ki, vi, slope).backward(doi)

                row["fwdbwd_ms"] = common.bench_ms(step, warmup=args.warmup, rep=args.rep,
                                                   grad_to_none=[qi, ki, vi], device=args.device)
                if want_mem:
                    mib = common.peak_extra_mib(step, grad_to_none=[qi, ki, vi], device=args.device)
                    row["mem_mib"] = mib
                    # beyond o and the three gradients, which any implementation must allocate
                    io = (vi.numel() + qi.numel() + ki.numel() + vi.numel()) * vi.element_size() / common.MIB
                    row["mem_extra_mib"] = None if mib is None else mib - io
    except Exception as exc:  # noqa: BLE001
        row["error"] = common.short_err(exc)
        if args.verbose:
            traceback.print_exc()
    finally:
        qi = ki = vi = doi = None  # noqa: F841
        common.free_memory()
    return row, out_o


def make_qkvdo(b, h, n, d, e, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, h, n, d, device=device, dtype=dtype, generator=g)
    k = torch.randn(b, h, n, d, device=device, dtype=dtype, generator=g)
    v = torch.randn(b, h, n, e, device=device, dtype=dtype, generator=g)
    do = torch.randn(b, h, n, e, device=device, dtype=dtype, generator=g)
    return q, k, v, do


def run_shape(impls, b, h, n, d, e, args, budget, *, ceil_gbps, section, skip=()):
    """All impls on one shape; ours first so the others can be compared with its output."""
    rows = []
    dtype = torch.bfloat16
    slope = slopes_for(h, args.device)
    q, k, v, do = make_qkvdo(b, h, n, d, e, dtype, args.device)
    ref_o = None
    order = sorted(impls, key=lambda name: name != "ours")
    for name in order:
        impl = impls[name]
        base = {"section": section, "impl": name, "b": b, "h": h, "n": n, "d": d, "e": e,
                "dtype": "bf16"}
        if name in skip:
            rows.append({**base, "error": "skipped (too slow at this size)"})
            continue
        t0 = time.time()
        row, o = measure(impl, q, k, v, do, slope, args, budget, want_mem=args.mem,
                         ref_o=None if name in ("ours", "sdpa") else ref_o)
        if name == "ours" and o is not None:
            ref_o = o
        del o
        row.update(base)
        add_derived(row, ceil_gbps)
        rows.append(row)
        print(f"  [{section}] {name:>10} b={b} n={n} d={d}: fwd {common.fmt(row.get('fwd_ms'))} ms, "
              f"fwd+bwd {common.fmt(row.get('fwdbwd_ms'))} ms, mem {common.fmt(row.get('mem_mib'), 0)} MiB"
              + (f"  ERROR {row['error']}" if row.get("error") else "")
              + f"  ({time.time() - t0:.1f} s)", flush=True)
    del q, k, v, do, ref_o
    common.free_memory()
    return rows


_SLOPES = {}


def slopes_for(h, device):
    if (h, device) not in _SLOPES:
        try:
            from lightning import build_slopes

            s = build_slopes(h)
        except Exception:  # noqa: BLE001  (same formula, so peers still run without ours)
            p = 2 ** int(math.floor(math.log2(h)))
            pw = lambda m: [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]  # noqa: E731
            s = torch.tensor(pw(p) + (pw(2 * p)[0::2][: h - p] if p != h else []), dtype=torch.float32)
        _SLOPES[(h, device)] = s.to(device=device, dtype=torch.float32).contiguous()
    return _SLOPES[(h, device)]


def add_derived(row, ceil_gbps):
    b, h, n, d, e = (row[x] for x in ("b", "h", "n", "d", "e"))
    row["fwd_gflop"] = fwd_flops(b, h, n, d, e) / 1e9
    row["fwdbwd_gflop"] = (fwd_flops(b, h, n, d, e) + bwd_flops(b, h, n, d, e)) / 1e9
    row["fwd_gb"] = fwd_bytes(b, h, n, d, e) / 1e9
    row["fwdbwd_gb"] = fwdbwd_bytes(b, h, n, d, e) / 1e9
    if ceil_gbps:
        row["floor_fwd_ms"] = row["fwd_gb"] / ceil_gbps * 1e3
        row["floor_fwdbwd_ms"] = row["fwdbwd_gb"] / ceil_gbps * 1e3
        if row.get("fwd_ms"):
            row["pct_floor_fwd"] = 100 * row["floor_fwd_ms"] / row["fwd_ms"]
        if row.get("fwdbwd_ms"):
            row["pct_floor_fwdbwd"] = 100 * row["floor_fwdbwd_ms"] / row["fwdbwd_ms"]
    if row.get("fwd_ms"):
        row["fwd_tflops"] = row["fwd_gflop"] / row["fwd_ms"]
    if row.get("fwdbwd_ms"):
        row["fwdbwd_tflops"] = row["fwdbwd_gflop"] / row["fwdbwd_ms"]
    if row.get("fwd_ms"):
        row["ns_per_token_fwd"] = row["fwd_ms"] * 1e6 / (b * n)
    if row.get("fwdbwd_ms"):
        row["ns_per_token_fwdbwd"] = row["fwdbwd_ms"] * 1e6 / (b * n)


# ---------------------------------------------------------------------------------- sections

def section_fwd(impls, args, budget, ceil):
    rows = []
    for n in args.ns:
        skip = ()
        # SDPA's causal softmax is quadratic: 57 ms fwd / 221 ms fwd+bwd at n = 32768; keep
        # it up to --sdpa-max-n (default 32768: ~2 s of time with the slow-case timer).
        if n > args.sdpa_max_n:
            skip = ("sdpa",)
        rows += run_shape(impls, args.b, args.h, n, args.d, args.d, args, budget, ceil_gbps=ceil,
                          section="fwd", skip=skip)
    return rows


def section_dims(impls, args, budget, ceil):
    rows = []
    for d in args.dims:
        for n in args.dims_ns:
            rows += run_shape(impls, args.b, args.h, n, d, d, args, budget, ceil_gbps=ceil,
                              section="dims")
    return rows


def section_constant(impls, args, budget, ceil):
    """b * n fixed at args.tokens: time per token should not move with n."""
    rows = []
    sub = {k: v for k, v in impls.items() if k in args.constant_impls}
    for n in args.constant_ns:
        b = args.tokens // n
        if b < 1:
            continue
        rows += run_shape(sub, b, args.h, n, args.d, args.d, args, budget, ceil_gbps=ceil,
                          section="constant")
    return rows


def section_decode(impls, args, budget, ceil):
    """One token per sequence with an fp32 state cache (B, H, D, E)."""
    b, h, d, e = args.decode_b, args.h, args.d, args.d
    dev = args.device
    slope = slopes_for(h, dev)
    g = torch.Generator(device=dev).manual_seed(1)
    q, k, v = (torch.randn(b, h, x, device=dev, dtype=torch.bfloat16, generator=g) for x in (d, d, e))
    state0 = torch.randn(b, h, d, e, device=dev, dtype=torch.float32, generator=g)
    nbytes = decode_bytes(b, h, d, e)
    rows, ref_o = [], None

    def finish(row):
        if row.get("us"):
            row["state_gbps"] = nbytes / (row["us"] * 1e-6) / 1e9
            if ceil:
                row["pct_copy_bw"] = 100 * row["state_gbps"] / ceil
                row["floor_us"] = nbytes / (ceil * 1e9) * 1e6
        rows.append(row)
        print(f"  [decode] {row['impl']:>10} b={b}: {common.fmt(row.get('us'), 1)} us, "
              f"{common.fmt(row.get('state_gbps'), 0)} GB/s"
              + (f"  ERROR {row['error']}" if row.get("error") else ""), flush=True)

    base = {"section": "decode", "b": b, "h": h, "d": d, "e": e, "dtype": "bf16", "state_mb": nbytes / 2e6}
    if "ours" in impls:
        row = {**base, "impl": "ours", "us": None, "error": None}
        try:
            import lightning

            st = state0.clone()
            ref_o = lightning.attn_decode(q, k, v, st, slope, scale=1.0)
            st = state0.clone()
            row["us"] = 1e3 * common.bench_ms(lambda: lightning.attn_decode(q, k, v, st, slope, scale=1.0),
                                              warmup=args.warmup, rep=args.rep, device=args.device)
        except Exception as exc:  # noqa: BLE001
            row["error"] = common.short_err(exc)
        finish(row)
    if "fla" in impls:
        row = {**base, "impl": "fla", "us": None, "error": None, "diff_vs_ours": None}
        try:
            from fla.ops.simple_gla import fused_recurrent_simple_gla

            q4, k4, v4 = (t.unsqueeze(1) for t in (q, k, v))  # (B, 1, H, X)
            g_gamma = -slope

            def step():
                return fused_recurrent_simple_gla(q4, k4, v4, g_gamma=g_gamma, scale=1.0,
                                                  initial_state=state0, output_final_state=True)

            o, _ = step()
            if ref_o is not None:
                row["diff_vs_ours"] = common.rel_err(o.squeeze(1), ref_o)
            row["us"] = 1e3 * common.bench_ms(step, warmup=args.warmup, rep=args.rep, device=args.device)
        except Exception as exc:  # noqa: BLE001
            row["error"] = common.short_err(exc)
        finish(row)
    del q, k, v, state0
    common.free_memory()
    return rows


def reference_fp64(q, k, v, slope, scale=1.0):
    """o_i = scale * sum_{j<=i} exp(-s (i-j)) (q_i . k_j) v_j with the full n x n mask, fp64."""
    n = q.shape[2]
    idx = torch.arange(n, dtype=torch.float64)
    diff = idx[:, None] - idx[None, :]
    mask = torch.exp(-slope.double()[:, None, None] * diff.clamp(min=0)) * (diff >= 0)  # (H, N, N)
    return scale * ((q @ k.transpose(-1, -2)) * mask) @ v


def section_accuracy(impls, args, budget, ceil):
    """Relative RMS error ||x - ref|| / ||ref|| of o, dq, dk, dv against fp64 on the CPU,
    from the same (rounded) inputs."""
    b, h, n, d, e = 1, 4, args.acc_n, args.d, args.d
    dev = args.device
    slope = slopes_for(h, dev)
    g = torch.Generator().manual_seed(2)
    q64, k64, v64, do64 = (torch.randn(b, h, n, x, dtype=torch.float64, generator=g) for x in (d, d, e, e))
    rows = []
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    plan = [("ours", "bf16"), ("ours", "fp16"), ("ours", "fp32"), ("fla", "bf16"), ("fla", "fp32"),
            ("opennlplab", "bf16"), ("opennlplab", "fp32")]
    refs = {}
    for name, dt in plan:
        if name not in impls:
            continue
        impl = impls[name]
        row = {"section": "accuracy", "impl": name, "dtype": dt, "b": b, "h": h, "n": n, "d": d, "e": e,
               "o": None, "dq": None, "dk": None, "dv": None, "max": None, "error": None}
        try:
            dtype = dtypes[dt]
            xs = [t.to(dtype) for t in (q64, k64, v64, do64)]  # rounded once
            if dt not in refs:
                leaves = [t.double().requires_grad_(True) for t in xs[:3]]
                o_ref = reference_fp64(*leaves, slope.cpu())
                o_ref.backward(xs[3].double())
                refs[dt] = [o_ref.detach()] + [t.grad for t in leaves]
            qi, ki, vi, doi = (to_layout(t.to(dev), impl.layout) for t in xs)
            for t in (qi, ki, vi):
                t.requires_grad_(True)
            o = impl.fn(qi, ki, vi, impl.prep(slope))
            o.backward(doi)
            got = [to_bhnd(t, impl.layout) for t in (o, qi.grad, ki.grad, vi.grad)]
            for key, x, r in zip(("o", "dq", "dk", "dv"), got, refs[dt]):
                row[key] = common.rel_err(x, r)
            row["max"] = max(row[key] for key in ("o", "dq", "dk", "dv"))
        except Exception as exc:  # noqa: BLE001
            row["error"] = common.short_err(exc)
            if args.verbose:
                traceback.print_exc()
        rows.append(row)
        print(f"  [accuracy] {name:>10} {dt}: o {common.fmt(row['o'])} dq {common.fmt(row['dq'])} "
              f"dk {common.fmt(row['dk'])} dv {common.fmt(row['dv'])}"
              + (f"  ERROR {row['error']}" if row.get("error") else ""), flush=True)
    return rows


# ---------------------------------------------------------------------------------- summary

def print_summary(result):
    rows = result["rows"]

    def get(section, impl, **kw):
        for r in rows:
            if r["section"] == section and r["impl"] == impl and all(r.get(k) == v for k, v in kw.items()):
                return r
        return {}

    def speed(peer, ours, key):
        if peer.get(key) and ours.get(key):
            return f"{peer[key] / ours[key]:.2f}x"
        return "-"

    names = [x for x in ("ours", "ours_bnhd", "fla", "opennlplab", "sdpa") if x in result["impls"]]
    for section, keyset in (("fwd", "n"), ("dims", "dn")):
        sel = [r for r in rows if r["section"] == section and r["impl"] == "ours"]
        if not sel:
            continue
        print(f"\n== {section}: b={sel[0]['b']} h={sel[0]['h']} bf16, ms fwd / fwd+bwd; speedup = peer / ours")
        header = (["d", "n"] if section == "dims" else ["n"]) + names + \
            [f"x{p} fwd" for p in names if p not in ("ours", "ours_bnhd")] + \
            [f"x{p} f+b" for p in names if p not in ("ours", "ours_bnhd")] + ["%floor fwd", "%floor f+b"]
        table = []
        for r in sel:
            key = {"n": r["n"], "d": r["d"]}
            cells = ([r["d"], r["n"]] if section == "dims" else [r["n"]])
            for p in names:
                x = get(section, p, **key)
                cells.append(f"{common.fmt(x.get('fwd_ms'))}/{common.fmt(x.get('fwdbwd_ms'))}")
            for p in names:
                if p not in ("ours", "ours_bnhd"):
                    cells.append(speed(get(section, p, **key), r, "fwd_ms"))
            for p in names:
                if p not in ("ours", "ours_bnhd"):
                    cells.append(speed(get(section, p, **key), r, "fwdbwd_ms"))
            cells += [common.fmt(r.get("pct_floor_fwd"), 1), common.fmt(r.get("pct_floor_fwdbwd"), 1)]
            table.append(cells)
        common.print_table(header, table)
        if section == "fwd":
            print("peak MiB during fwd+bwd: " + "; ".join(
                f"n={r['n']}: " + ", ".join(f"{p} {common.fmt(get('fwd', p, n=r['n']).get('mem_mib'), 0)}"
                                             for p in names) for r in sel))

    sel = [r for r in rows if r["section"] == "constant"]
    if sel:
        print("\n== constant speed (b*n fixed): ns per token fwd / fwd+bwd")
        impls = sorted({r["impl"] for r in sel}, key=names.index)
        shapes = sorted({(r["b"], r["n"]) for r in sel}, key=lambda x: x[1])
        table = []
        for b, n in shapes:
            cells = [f"{b}x{n}"]
            for p in impls:
                x = get("constant", p, b=b, n=n)
                cells.append(f"{common.fmt(x.get('ns_per_token_fwd'), 2)}/{common.fmt(x.get('ns_per_token_fwdbwd'), 2)}")
            table.append(cells)
        common.print_table(["b x n"] + impls, table)

    sel = [r for r in rows if r["section"] == "decode"]
    if sel:
        print("\n== decode (one token, fp32 state)")
        common.print_table(["impl", "us", "state GB/s", "% copy bw", "diff vs ours", "error"],
                           [[r["impl"], common.fmt(r.get("us"), 1), common.fmt(r.get("state_gbps"), 0),
                             common.fmt(r.get("pct_copy_bw"), 1), common.fmt(r.get("diff_vs_ours")),
                             r.get("error") or ""] for r in sel])

    sel = [r for r in rows if r["section"] == "accuracy"]
    if sel:
        print(f"\n== accuracy vs fp64 (b1 h4 n{sel[0]['n']} d=e={sel[0]['d']}), relative RMS")
        common.print_table(["impl", "dtype", "o", "dq", "dk", "dv", "error"],
                           [[r["impl"], r["dtype"], common.fmt(r["o"]), common.fmt(r["dq"]),
                             common.fmt(r["dk"]), common.fmt(r["dv"]), r.get("error") or ""] for r in sel])
    if result.get("import_errors"):
        print("\nimport errors: " + "; ".join(f"{k}: {v}" for k, v in result["import_errors"].items()))


# ---------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes and shorter timing, for a first run")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections out of {','.join(SECTIONS)}")
    p.add_argument("--impls", default="ours,ours_bnhd,fla,opennlplab,sdpa",
                   help="comma-separated implementations (ours, ours_bnhd, fla, opennlplab, sdpa)")
    p.add_argument("--out", default=common.RESULTS_DIR, help="folder for lightning.json (also copied to $OUT)")
    p.add_argument("--name", default="lightning", help="json file name without .json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--b", type=int, default=4)
    p.add_argument("--h", type=int, default=32)
    p.add_argument("--d", type=int, default=128, help="d = e of the main sweep")
    p.add_argument("--ns", default=None, help="comma-separated n of the main sweep")
    p.add_argument("--sdpa-max-n", type=int, default=32768)
    p.add_argument("--dims", default=None, help="comma-separated d = e of the head-dim section (64,192)")
    p.add_argument("--dims-ns", default=None, help="comma-separated n of the head-dim section")
    p.add_argument("--tokens", type=int, default=262144, help="b * n of the constant-speed section")
    p.add_argument("--constant-ns", default=None, help="comma-separated n of the constant-speed section")
    p.add_argument("--decode-b", type=int, default=64)
    p.add_argument("--acc-n", type=int, default=1024, help="n of the accuracy section (b1 h4)")
    p.add_argument("--warmup", type=float, default=None, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=None, help="do_bench repeat, ms")
    p.add_argument("--no-mem", dest="mem", action="store_false", help="skip the peak-memory call")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="wall-clock budget: measurements past it are skipped (0 = none)")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="keep this earlier run's rows of the sections not run now (a long benchmark run in "
                        "parts); every ratio still compares rows of one run")
    args = p.parse_args(argv)

    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown section(s) {bad}; choose from {SECTIONS}")
    args.impl_names = [s.strip() for s in args.impls.split(",") if s.strip()]
    q = args.quick
    args.warmup = args.warmup if args.warmup is not None else (10 if q else 25)
    args.rep = args.rep if args.rep is not None else (40 if q else 100)
    args.ns = ([int(x) for x in args.ns.split(",")] if args.ns else
               ([4096, 32768] if q else [1024, 2048, 4096, 8192, 16384, 32768]))
    ints = lambda text, default: [int(x) for x in text.split(",")] if text else default  # noqa: E731
    args.dims = ints(args.dims, [64, 192])
    args.dims_ns = ints(args.dims_ns, [4096] if q else [4096, 16384])
    args.constant_ns = ints(args.constant_ns, [4096, 262144] if q else [4096, 16384, 65536, 262144])
    args.constant_impls = ("ours", "fla")
    return args


def merge_earlier(result, args):
    """Take the rows of the sections this run skips from the json of an earlier run."""
    earlier = common.merge_earlier(result, args.merge, lambda r: r.get("section"), args.sections)
    for name, info in earlier.get("impls", {}).items():  # labels of peers seen only there
        result["impls"].setdefault(name, info)
    result["sections_done"] += [s for s in earlier.get("sections_done", []) if s not in args.sections]


def main(argv=None):
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_lightning: no CUDA device (use --device cpu only for a smoke test)")
    args.device = str(dev)
    budget = common.Budget(args.budget_s)
    impls, errors = load_impls(args.impl_names)
    for name, err in errors.items():
        print(f"[bench_lightning] {name} unavailable: {err}", flush=True)

    result = {
        "bench": "lightning",
        "meta": common.metadata(dev),
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list, tuple, bool))},
        "impls": {name: {"label": im.label, "layout": im.layout} for name, im in impls.items()},
        "import_errors": errors,
        "formulas": {
            "fwd_flop": "b*h*n*(2*64*(d+e) + 4*d*e)",
            "bwd_flop": "b*h*n*(2*64*(3d+2e) + 10*d*e)",
            "fwd_bytes": "2*b*h*n*(2d+2e)  (bf16: read q,k,v, write o)",
            "fwdbwd_bytes": "2*b*h*n*(6d+5e)  (+ read q,k,v,do, write dq,dk,dv)",
            "decode_bytes": "2*4*b*h*d*e  (fp32 state read + write)",
            "speedup": "t_peer / t_ours",
            "mem_mib": "peak allocated during one fwd+bwd beyond the inputs and dO (o and grads included)",
            "mem_extra_mib": "mem_mib minus o, dq, dk, dv",
        },
        "ceilings": {},
        "rows": [],
        "sections_done": [],
    }
    if args.merge:
        merge_earlier(result, args)
    print(f"[bench_lightning] {result['meta'].get('gpu')} torch {torch.__version__} "
          f"impls={list(impls)} sections={args.sections} quick={args.quick}", flush=True)
    ceil = None
    try:
        ceil = common.copy_bandwidth_gbps(dev)
    except Exception as exc:  # noqa: BLE001
        print(f"[bench_lightning] copy bandwidth failed: {common.short_err(exc)}")
    result["ceilings"]["copy_gbps"] = ceil
    print(f"[bench_lightning] device-to-device copy: {common.fmt(ceil, 0)} GB/s", flush=True)

    runners = {"accuracy": section_accuracy, "fwd": section_fwd, "decode": section_decode,
               "dims": section_dims, "constant": section_constant}
    for section in SECTIONS:
        if section in args.sections:
            common.run_section("bench_lightning", section,
                               lambda: runners[section](impls, args, budget, ceil),
                               result, budget, args.name, args.out)
    print_summary(result)
    print(f"\n[bench_lightning] total {budget.elapsed():.0f} s", flush=True)


if __name__ == "__main__":
    main()
