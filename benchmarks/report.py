"""Benchmark json -> markdown tables (stdout, or README.md between markers) and png plots.

    python benchmarks/report.py                       # tables of benchmarks/results/*.json to stdout
    python benchmarks/report.py --readme              # also replace the README.md sections between
                                                      # <!-- bench:lightning:start --> ... :end -->
                                                      # <!-- bench:im2win:start --> ... :end -->
                                                      # <!-- bench:targets:start --> ... :end -->
    python benchmarks/report.py --results DIR --png-dir DIR --no-png

Speedups are t_peer / t_ours (> 1: ours faster). The targets section says, for each target of
benchmarks/README.md that the runs measure, whether it is met or still open.
"""

import argparse
import glob
import json
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")

LABELS = {"ours": "ours", "ours_bnhd": "ours (bnhd)", "fla": "FLA chunk_simple_gla",
          "opennlplab": "OpenNLPLab", "sdpa": "SDPA flash"}
SHORT = {"ours": "ours", "ours_bnhd": "ours bnhd", "fla": "FLA", "opennlplab": "OpenNLPLab", "sdpa": "SDPA"}
PEERS = ("fla", "opennlplab", "sdpa")
PREC_LABELS = {"fp32": "fp32 (TF32 off)", "tf32": "tf32", "bf16": "bf16", "bf16_cl": "bf16 channels_last",
               "fp32_fb": "fp32 fwd+bwd", "tf32_fb": "tf32 fwd+bwd", "bf16_cl_fb": "bf16 channels_last fwd+bwd"}
STEP_LABELS = {"fp32": "fp32 (TF32 off)", "tf32": "TF32 (PyTorch's default)",
               "bf16_cl": "bf16 autocast, channels_last", "fp16_cl": "fp16 autocast + GradScaler, channels_last"}


# ---------------------------------------------------------------------------------- helpers

def f(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def ratio(peer, ours):
    if peer and ours:
        return peer / ours
    return None


def rx(x):
    return "-" if x is None else f"{x:.2f}x"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def meta_line(meta, extra=""):
    bits = [meta.get("gpu") or meta.get("device"), f"torch {meta.get('torch')}"]
    for key, name in (("triton", "Triton"), ("cudnn", "cuDNN"), ("fla_core", "fla-core"),
                      ("lightning_attn", "lightning-attn")):
        if meta.get(key):
            bits.append(f"{name} {meta[key]}")
    bits.append(meta.get("date_utc", "?"))
    if meta.get("commit"):
        bits.append(f"commit {meta['commit'][:10]}" + (" (dirty)" if meta.get("dirty") else ""))
    return "_" + ", ".join(str(b) for b in bits if b) + (f"; {extra}" if extra else "") + "_"


def merged_lines(res):
    """Where the sections (lightning) or precisions (im2win) of earlier runs (--merge) come
    from, a line each."""
    lines = []
    for m in res.get("merged", []):
        run = meta_line(m.get("meta") or {}, m.get("note", ""))  # "_..._"
        lines.append(f"_{', '.join(m.get('sections', []))} from an earlier run: {run[1:]}")
    return lines


def check(ok, text):
    """A target's line: met, open, or (ok None) a figure without a target."""
    return f"- {text}" if ok is None else f"- {'met' if ok else 'open'}: {text}"


# ---------------------------------------------------------------------------------- lightning

def row_picker(rows):
    """pick(section, impl, **fields): the first lightning row that matches, else {}."""
    def pick(section, impl, **kw):
        for r in rows:
            if r.get("section") == section and r.get("impl") == impl and all(r.get(k) == v for k, v in kw.items()):
                return r
        return {}
    return pick


def lightning_markdown(res):
    rows = res.get("rows", [])
    impls = [x for x in ("ours", "ours_bnhd", "fla", "opennlplab", "sdpa")
             if x in res.get("impls", {}) or any(r["impl"] == x for r in rows)]
    peers = [p for p in PEERS if p in impls]
    pick = row_picker(rows)

    ceil = res.get("ceilings", {}).get("copy_gbps")
    md = [meta_line(res.get("meta", {}), f"copy bandwidth {f(ceil, 0)} GB/s" if ceil else "")]
    md += merged_lines(res)
    md.append("")
    md.append("Speedup = peer time / our time (> 1: ours faster). % floor = HBM floor (fwd: read q, k, v, "
              "write o; fwd+bwd: also read q, k, v, dO, write dq, dk, dv) over the measured time.")

    fwd = sorted((r for r in rows if r.get("section") == "fwd" and r["impl"] == "ours"), key=lambda r: r["n"])
    if fwd:
        b, h, d = fwd[0]["b"], fwd[0]["h"], fwd[0]["d"]
        for key, title, floor in (("fwd_ms", "Forward", "pct_floor_fwd"),
                                  ("fwdbwd_ms", "Forward + backward", "pct_floor_fwdbwd")):
            md += ["", f"**{title}**, b={b} h={h} d=e={d} bf16, ms", ""]
            header = ["n"] + [SHORT[i] for i in impls] + [f"x {SHORT[p]}" for p in peers] + ["ours % floor"]
            body = []
            for r in fwd:
                cells = [r["n"]] + [f(pick("fwd", i, n=r["n"]).get(key)) for i in impls]
                cells += [rx(ratio(pick("fwd", p, n=r["n"]).get(key), r.get(key))) for p in peers]
                cells.append(f(r.get(floor), 1))
                body.append(cells)
            md.append(table(header, body))
        md += ["", "**Peak memory during forward + backward**, MiB beyond q, k, v, dO (o and gradients "
               "included); last column: ours beyond o and gradients", ""]
        header = ["n"] + [SHORT[i] for i in impls] + ["ours extra"]
        md.append(table(header, [[r["n"]] + [f(pick("fwd", i, n=r["n"]).get("mem_mib"), 0) for i in impls]
                                 + [f(r.get("mem_extra_mib"), 0)] for r in fwd]))

    dims = sorted((r for r in rows if r.get("section") == "dims" and r["impl"] == "ours"),
                  key=lambda r: (r["d"], r["n"]))
    if dims:
        md += ["", f"**Other head dims**, b={dims[0]['b']} h={dims[0]['h']} bf16, ms forward / forward+backward", ""]
        header = ["d=e", "n"] + [SHORT[i] for i in impls] + [f"x {SHORT[p]} fwd / f+b" for p in peers]
        body = []
        for r in dims:
            kw = {"n": r["n"], "d": r["d"]}
            cells = [r["d"], r["n"]]
            cells += [f"{f(pick('dims', i, **kw).get('fwd_ms'))} / {f(pick('dims', i, **kw).get('fwdbwd_ms'))}"
                      for i in impls]
            cells += [f"{rx(ratio(pick('dims', p, **kw).get('fwd_ms'), r.get('fwd_ms')))} / "
                      f"{rx(ratio(pick('dims', p, **kw).get('fwdbwd_ms'), r.get('fwdbwd_ms')))}" for p in peers]
            body.append(cells)
        md.append(table(header, body))

    const = [r for r in rows if r.get("section") == "constant"]
    if const:
        cimpls = [i for i in impls if any(r["impl"] == i for r in const)]
        shapes = sorted({(r["b"], r["n"]) for r in const}, key=lambda x: x[1])
        md += ["", f"**Constant speed**, b*n = {shapes[0][0] * shapes[0][1]} tokens, h={const[0]['h']} "
               f"d=e={const[0]['d']} bf16: ms forward / forward+backward (ns per token)", ""]
        header = ["b x n"] + [SHORT[i] for i in cimpls]
        if "fla" in cimpls and "ours" in cimpls:
            header.append("x FLA fwd / f+b")
        body = []
        for b, n in shapes:
            cells = [f"{b} x {n}"]
            for i in cimpls:
                x = pick("constant", i, b=b, n=n)
                cells.append(f"{f(x.get('fwd_ms'))} / {f(x.get('fwdbwd_ms'))} "
                             f"({f(x.get('ns_per_token_fwd'), 2)} / {f(x.get('ns_per_token_fwdbwd'), 2)})")
            if "fla" in cimpls and "ours" in cimpls:
                o, p = pick("constant", "ours", b=b, n=n), pick("constant", "fla", b=b, n=n)
                cells.append(f"{rx(ratio(p.get('fwd_ms'), o.get('fwd_ms')))} / "
                             f"{rx(ratio(p.get('fwdbwd_ms'), o.get('fwdbwd_ms')))}")
            body.append(cells)
        md.append(table(header, body))

    dec = [r for r in rows if r.get("section") == "decode"]
    if dec:
        r0 = dec[0]
        md += ["", f"**Decode**, one token per sequence, fp32 state, b={r0['b']} h={r0['h']} d=e={r0['d']} "
               f"(state read + write {f(2 * r0.get('state_mb', 0) / 1e3, 3)} GB)", ""]
        md.append(table(["impl", "us", "state GB/s", "% of copy bandwidth"],
                        [[LABELS.get(r["impl"], r["impl"]), f(r.get("us"), 1), f(r.get("state_gbps"), 0),
                          f(r.get("pct_copy_bw"), 1)] for r in dec]))

    acc = [r for r in rows if r.get("section") == "accuracy"]
    if acc:
        a0 = acc[0]
        md += ["", f"**Accuracy** against fp64 on the CPU (same rounded inputs), b={a0['b']} h={a0['h']} "
               f"n={a0['n']} d=e={a0['d']}: ||x - ref|| / ||ref||", ""]
        md.append(table(["impl", "dtype", "o", "dq", "dk", "dv"],
                        [[LABELS.get(r["impl"], r["impl"]), r["dtype"]]
                         + [f(r.get(k)) if not r.get("error") else "error" for k in ("o", "dq", "dk", "dv")]
                         for r in acc]))

    md += r50step_markdown(res.get("r50step"))
    errs = sorted({(r["impl"], r["error"]) for r in rows if r.get("error")})
    if errs or res.get("import_errors"):
        md += ["", "Not measured: " + "; ".join([f"{k}: {v}" for k, v in res.get("import_errors", {}).items()]
                                                 + [f"{i}: {e}" for i, e in errs[:8]])]
    return "\n".join(md)


def lightning_targets(res):
    rows = res.get("rows", [])
    pick = row_picker(rows)
    out = []

    def speedups(section, peer, key, cond):
        xs = []
        for r in rows:
            if r.get("section") == section and r["impl"] == "ours" and cond(r):
                kw = {k: r[k] for k in ("n", "d", "b")}
                s = ratio(pick(section, peer, **kw).get(key), r.get(key))
                if s is not None:
                    xs.append((s, r))
        return xs

    for key, name in (("fwd_ms", "forward"), ("fwdbwd_ms", "forward+backward")):
        xs = speedups("fwd", "fla", key, lambda r: r["n"] >= 4096)
        if xs:
            s, r = min(xs, key=lambda t: t[0])
            out.append(check(s >= 2.0, f"{name} >= 2.0x FLA at n >= 4096: worst {s:.2f}x (n={r['n']})"))
    r = pick("fwd", "ours", n=32768)
    for key, name, goal in (("pct_floor_fwd", "forward", 60), ("pct_floor_fwdbwd", "forward+backward", 45)):
        if r.get(key) is not None:
            out.append(check(r[key] >= goal, f"{name} >= {goal}% of the HBM floor at n=32768: {r[key]:.1f}%"))
    xs = speedups("fwd", "sdpa", "fwdbwd_ms", lambda r: r["n"] >= 2048)
    if xs:
        s, r = min(xs, key=lambda t: t[0])
        out.append(check(s > 1.0, f"forward+backward faster than SDPA-flash from n=2048: worst {s:.2f}x (n={r['n']})"))
    const = [r for r in rows if r.get("section") == "constant" and r["impl"] == "ours"]
    if const:
        lo = min(const, key=lambda r: r["n"])
        hi = max(const, key=lambda r: r["n"])
        for key in ("ns_per_token_fwd", "ns_per_token_fwdbwd"):
            if lo.get(key) and hi.get(key) and lo is not hi:
                dev = hi[key] / lo[key] - 1
                out.append(check(dev <= 0.10, f"constant speed ({key.split('_')[-1]}): per token at "
                                              f"{hi['b']}x{hi['n']} {100 * dev:+.1f}% vs {lo['b']}x{lo['n']}"))
    for key, name in (("fwd_ms", "forward"), ("fwdbwd_ms", "forward+backward")):
        xs = speedups("dims", "fla", key, lambda r: True)
        if xs:
            s, r = min(xs, key=lambda t: t[0])
            out.append(check(s >= 2.0, f"d=e in 64/192: {name} >= 2.0x FLA: worst {s:.2f}x (d={r['d']} n={r['n']})"))
    o = pick("decode", "ours")
    if o.get("pct_copy_bw") is not None:
        out.append(check(o["pct_copy_bw"] >= 90, f"decode >= 90% of copy bandwidth: {o['pct_copy_bw']:.1f}% "
                                                 f"({o['us']:.1f} us)"))
    for dt, tol in (("bf16", 2e-3), ("fp16", 5e-4), ("fp32", 1e-5)):
        r = pick("accuracy", "ours", dtype=dt)
        vals = [r.get(k) for k in ("o", "dq", "dk", "dv") if r.get(k) is not None]
        if vals:
            out.append(check(max(vals) <= tol, f"accuracy {dt} <= {tol:g}: worst {max(vals):.2e}"))
    big = max((r for r in rows if r.get("section") == "fwd" and r["impl"] == "ours" and r.get("mem_extra_mib") is not None),
              key=lambda r: r["n"], default=None)
    if big:
        state_mib = big["b"] * big["h"] * big["d"] * big["e"] * 4 / 2 ** 20
        out.append(check(None, f"memory beyond o and gradients at n={big['n']}: {big['mem_extra_mib']:.0f} MiB "
                               f"(one fp32 state set is {state_mib:.0f} MiB)"))
    return out or ["- no data"]


# ---------------------------------------------------------------------------------- im2win

def by_layer(rows):
    """{(group, layer): {precision: {impl: row}}}"""
    by = {}
    for r in rows:
        by.setdefault((r["group"], r["layer"]), {}).setdefault(r["precision"], {})[r["impl"]] = r
    return by


def im2win_markdown(res):
    rows = res.get("rows", [])
    precs = [p for p in PREC_LABELS if any(r["precision"] == p for r in rows)]
    by = by_layer(rows)
    md = [meta_line(res.get("meta", {}), "cudnn.benchmark=True")] + merged_lines(res) + [""]
    md.append("TFLOP/s ours / cuDNN (speedup = cuDNN time / our time) with 2*N*K*Ho*Wo*C*FH*FW per "
              "forward (x3 for fwd+bwd), our window transform included. MiB: peak extra memory of the "
              "fp32 forward beyond the output, ours / cuDNN.")
    gm = res.get("geomean", {})
    for group, title in (("paper", "im2win paper layers"), ("resnet", "ResNet-50 layers")):
        keys = [k for k in by if k[0] == group]
        if not keys:
            continue
        any_row = next(iter(next(iter(by[keys[0]].values())).values()))
        md += ["", f"**{title}**, batch {any_row['batch']}", ""]
        header = ["layer", "C x H x W", "K", "F", "s, p"] + [PREC_LABELS[p] for p in precs] + ["MiB", "max err"]
        body = []
        for key in keys:
            anyr = next(iter(next(iter(by[key].values())).values()))
            cells = [key[1], f"{anyr['C']}x{anyr['H']}x{anyr['W']}", anyr["K"], f"{anyr['F']}x{anyr['F']}",
                     f"{anyr['stride']}, {anyr['pad']}"]
            for p in precs:
                d = by[key].get(p, {})
                o, c = d.get("ours", {}), d.get("cudnn", {})
                cells.append(f"{f(o.get('tflops'), 1)} / {f(c.get('tflops'), 1)} ({rx(ratio(c.get('ms'), o.get('ms')))})")
            d = by[key].get("fp32", {})
            cells.append(f"{f(d.get('ours', {}).get('extra_mib'), 0)} / {f(d.get('cudnn', {}).get('extra_mib'), 0)}")
            errs = [by[key][p]["ours"]["err_vs_cudnn"] for p in precs
                    if by[key].get(p, {}).get("ours", {}).get("err_vs_cudnn") is not None]
            cells.append(f(max(errs)) if errs else "-")
            body.append(cells)
        g = gm.get(group, {})
        body.append(["**geomean**", "", "", "", ""] +
                    [f"**{rx(g[p]['geomean_speedup'])}**" if p in g else "-" for p in precs] + ["", ""])
        md.append(table(header, body))
    md += r50step_markdown(res.get("r50step"))
    errs = sorted({(r["impl"], r["error"]) for r in rows if r.get("error")})
    if errs or res.get("import_errors"):
        md += ["", "Not measured: " + "; ".join([f"{k}: {v}" for k, v in res.get("import_errors", {}).items()]
                                                 + [f"{i}: {e}" for i, e in errs[:8]])]
    return "\n".join(md)


def r50step_markdown(step):
    """The ResNet-50 training-step table of bench_im2win's r50step section, if it ran."""
    if not step or not step.get("rows"):
        return []
    by = {}
    for r in step["rows"]:
        by.setdefault(r["mode"], {})[r["impl"]] = r
    anyr = step["rows"][0]
    md = ["", f"**ResNet-50 training step** (torchvision resnet50, batch {anyr['batch']}, "
              f"{anyr['size']} x {anyr['size']}, SGD), native (cuDNN) against im2win.convert from the same "
              f"weights: ms a step, images/s, peak memory MiB" +
          (f"; {meta_line(step['meta'])[1:-1]}" if step.get("meta") else ""), ""]
    body = []
    for mode, d in by.items():
        c, o = d.get("cudnn", {}), d.get("ours", {})
        body.append([STEP_LABELS.get(mode, mode), f(c.get("ms")), f(o.get("ms")),
                     rx(ratio(c.get("ms"), o.get("ms"))), f"{f(c.get('images_per_s'), 0)} / {f(o.get('images_per_s'), 0)}",
                     f"{f(c.get('peak_mib'), 0)} / {f(o.get('peak_mib'), 0)}", f(o.get("first_loss_rel_diff"))])
    md.append(table(["mode", "native ms", "ours ms", "speedup", "images/s native / ours",
                     "peak MiB native / ours", "first-loss rel. diff"], body))
    return md


def im2win_targets(res):
    by = by_layer(res.get("rows", []))
    out = []
    g = res.get("geomean", {}).get("paper", {})
    for p, goal in (("fp32", 1.5), ("tf32", 1.0), ("bf16_cl", 1.0), ("fp32_fb", 1.0), ("bf16", 0.8)):
        if p in g:
            out.append(check(g[p]["geomean_speedup"] >= goal,
                             f"{PREC_LABELS[p]} >= {goal:.1f}x cuDNN: {g[p]['geomean_speedup']:.2f}x "
                             f"over {g[p]['layers']} layers"))
    speedup = (res.get("r50step") or {}).get("speedup", {})
    for mode, goal in (("bf16_cl", 1.0), ("tf32", 1.0), ("fp32", 1.2)):
        if mode in speedup:
            out.append(check(speedup[mode] >= goal, f"ResNet-50 training step, {STEP_LABELS[mode]} >= "
                                                    f"{goal:.1f}x cuDNN: {speedup[mode]:.2f}x"))
    if "bf16_cl_fb" in g:
        out.append(check(g["bf16_cl_fb"]["geomean_speedup"] >= 1.0,
                         f"{PREC_LABELS['bf16_cl_fb']} >= 1.0x cuDNN: {g['bf16_cl_fb']['geomean_speedup']:.2f}x"))
    worse, total = [], 0
    for (group, layer), d in by.items():
        for p, impls in d.items():
            o, c = impls.get("ours", {}).get("extra_mib"), impls.get("cudnn", {}).get("extra_mib")
            if o is not None and c is not None:
                total += 1
                if o > c + 1.0:  # 1 MiB of slack for allocator rounding
                    worse.append(f"{layer}/{p} {o:.0f}>{c:.0f}")
    if total:
        out.append(check(not worse, f"peak extra memory <= cuDNN's on every layer and precision: "
                                    f"{total - len(worse)}/{total}" + (f" (worse: {', '.join(worse[:6])})" if worse else "")))
    return out or ["- no data"]


# ---------------------------------------------------------------------------------- targets

def targets_markdown(found):
    """The targets of benchmarks/README.md that the runs above measure: met, or still open."""
    md = ["Each line: a target of benchmarks/README.md, whether the runs above meet it (met) or "
          "not yet (open), and the figure that decides it."]
    if "lightning" in found:
        md += ["", "**lightning.attn** (b=4 h=32 d=e=128 bf16 unless named)", ""] + lightning_targets(found["lightning"][1])
    if "im2win" in found:
        md += ["", "**im2win.conv2d** (geometric mean over the paper's 12 layers)", ""] + im2win_targets(found["im2win"][1])
    return "\n".join(md)


# ---------------------------------------------------------------------------------- plots

def lightning_png(res, path, plt):
    rows = res.get("rows", [])
    impls = [x for x in ("ours", "ours_bnhd", "fla", "opennlplab", "sdpa") if any(r["impl"] == x for r in rows)]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for ax, key, title in ((axes[0][0], "fwd_ms", "forward"), (axes[0][1], "fwdbwd_ms", "forward + backward"),
                           (axes[1][0], "mem_mib", "peak memory during fwd+bwd (MiB)")):
        for i in impls:
            pts = sorted((r["n"], r[key]) for r in rows if r.get("section") == "fwd" and r["impl"] == i and r.get(key))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=LABELS[i])
        if key != "mem_mib":
            fl = sorted((r["n"], r.get("floor_" + key)) for r in rows
                        if r.get("section") == "fwd" and r["impl"] == "ours" and r.get("floor_" + key))
            if fl:
                ax.plot(*zip(*fl), linestyle="--", color="gray", label="HBM floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_ylabel("ms" if key != "mem_mib" else "MiB")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[1][1]
    const = [r for r in rows if r.get("section") == "constant"]
    if const:
        shapes = sorted({(r["b"], r["n"]) for r in const}, key=lambda x: x[1])
        cimpls = [i for i in impls if any(r["impl"] == i for r in const)]
        width = 0.8 / max(1, 2 * len(cimpls))
        for j, i in enumerate(cimpls):
            for kk, (key, hatch) in enumerate((("ns_per_token_fwd", ""), ("ns_per_token_fwdbwd", "//"))):
                ys = [next((r.get(key) or 0 for r in const if r["impl"] == i and (r["b"], r["n"]) == s), 0)
                      for s in shapes]
                xs = [t + (2 * j + kk) * width for t in range(len(shapes))]
                ax.bar(xs, ys, width, label=f"{LABELS[i]} {'fwd+bwd' if kk else 'fwd'}", hatch=hatch)
        ax.set_xticks([t + 0.4 - width / 2 for t in range(len(shapes))])
        ax.set_xticklabels([f"{b}x{n}" for b, n in shapes])
        ax.set_ylabel("ns per token")
        ax.set_title("constant speed (b*n fixed)")
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    meta = res.get("meta", {})
    fig.suptitle(f"lightning.attn, b=4 h=32 d=e=128 bf16 — {meta.get('gpu')} ({meta.get('date_utc', '')[:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def im2win_png(res, path, plt):
    rows = res.get("rows", [])
    precs = [p for p in PREC_LABELS if any(r["precision"] == p for r in rows)]
    layers = []
    for r in rows:
        if r["layer"] not in layers:
            layers.append(r["layer"])
    if not precs or not layers:
        return False
    fig, axes = plt.subplots(len(precs), 1, figsize=(max(10, 0.7 * len(layers)), 2.6 * len(precs)), squeeze=False)
    for ax, p in zip(axes[:, 0], precs):
        o = [next((r.get("tflops") or 0 for r in rows if r["layer"] == L and r["precision"] == p and r["impl"] == "ours"), 0)
             for L in layers]
        c = [next((r.get("tflops") or 0 for r in rows if r["layer"] == L and r["precision"] == p and r["impl"] == "cudnn"), 0)
             for L in layers]
        xs = range(len(layers))
        ax.bar([x - 0.2 for x in xs], o, 0.4, label="ours (im2win)")
        ax.bar([x + 0.2 for x in xs], c, 0.4, label="cuDNN")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("TFLOP/s")
        ax.set_title(PREC_LABELS[p], fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    meta = res.get("meta", {})
    fig.suptitle(f"im2win.conv2d vs cuDNN — {meta.get('gpu')} ({meta.get('date_utc', '')[:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------- main

def update_readme(path, name, text):
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    if not os.path.exists(path):
        print(f"[report] {path} does not exist: not written", file=sys.stderr)
        return False
    with open(path, encoding="utf-8") as fh:
        doc = fh.read()
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pat.search(doc):
        print(f"[report] {path} has no {start} ... {end} markers: section '{name}' not written", file=sys.stderr)
        return False
    doc = pat.sub(lambda _: f"{start}\n{text}\n{end}", doc, count=1)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)
    print(f"[report] {path}: section '{name}' updated", file=sys.stderr)
    return True


def load_results(folder):
    found = {}
    for p in sorted(glob.glob(os.path.join(folder, "*.json"))):
        try:
            with open(p) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            print(f"[report] skipping {p}: {exc}", file=sys.stderr)
            continue
        if isinstance(data, dict) and data.get("bench") in ("lightning", "im2win"):
            found.setdefault(data["bench"], (p, data))  # first by name order: lightning.json before others
            if os.path.basename(p) == f"{data['bench']}.json":
                found[data["bench"]] = (p, data)
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=RESULTS_DIR, help="folder of the json files")
    ap.add_argument("--readme", nargs="?", const=os.path.join(ROOT, "README.md"), default=None,
                    help="write the tables into this README between the bench markers (default README.md)")
    ap.add_argument("--png-dir", default=None, help="where lightning.png / im2win.png go (default: --results)")
    ap.add_argument("--no-png", action="store_true")
    args = ap.parse_args(argv)

    found = load_results(args.results)
    if not found:
        print(f"[report] no lightning/im2win json in {args.results}", file=sys.stderr)
        return 1
    sections = {}
    if "lightning" in found:
        sections["lightning"] = lightning_markdown(found["lightning"][1])
    if "im2win" in found:
        sections["im2win"] = im2win_markdown(found["im2win"][1])
    sections["targets"] = targets_markdown(found)
    for name, text in sections.items():
        source = ", ".join(os.path.basename(found[k][0]) for k in ("lightning", "im2win") if k in found) \
            if name == "targets" else os.path.basename(found[name][0])
        print(f"### {name} ({source})\n\n{text}\n")
        if args.readme:
            update_readme(args.readme, name, text)

    if not args.no_png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception as exc:  # noqa: BLE001
            print(f"[report] matplotlib is missing ({exc}): no png written", file=sys.stderr)
            return 0
        png_dir = args.png_dir or args.results
        os.makedirs(png_dir, exist_ok=True)
        for name, fn in (("lightning", lightning_png), ("im2win", im2win_png)):
            if name in found:
                path = os.path.join(png_dir, f"{name}.png")
                try:
                    if fn(found[name][1], path, plt) is not False:
                        print(f"[report] wrote {path}", file=sys.stderr)
                except Exception as exc:  # noqa: BLE001
                    print(f"[report] {name}.png failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
