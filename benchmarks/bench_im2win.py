"""im2win.conv2d against cuDNN (torch.nn.functional.conv2d, cudnn.benchmark=True), in one run.

Layers: the im2win GPU paper's 12 layers (batch 128, no padding) and nine ResNet-50 layers
(batch 64, with their padding); the targets are in benchmarks/README.md section 3.
Columns ("precisions"):
  fp32      exact fp32: torch.backends.cudnn.allow_tf32 = False (and cuda.matmul) for both
  tf32      TF32 allowed (allow_tf32 = True) for both
  bf16      bf16 NCHW
  bf16_cl   bf16 channels_last (input and weight), output in channels_last
  fp32_fb   fp32 exact, one forward + one backward (input and weight gradients); the json
            also has each gradient's backward alone (ms_dgrad, ms_wgrad), to see which one
            a slow fwd+bwd comes from
  tf32_fb, bf16_cl_fb   the same in TF32 and in bf16 channels_last
TFLOP/s = 2*N*K*Ho*Wo*(C/groups)*FH*FW / time (x3 for the *_fb columns: forward, dgrad,
wgrad), transform included for ours. Memory: peak allocated during the call beyond what
existed before it, minus the output (and for *_fb the two gradients): workspaces and window
tensors only. "err" is ours' relative difference from cuDNN's output in the same precision.
Speedup = t_cudnn / t_ours (> 1: ours faster); geometric means per column.

Section r50step (resnet_step.py): whole ResNet-50 training steps, converted against native,
in fp32, TF32, bf16 autocast and fp16 autocast + GradScaler.
"""

import argparse
import math
import os
import sys
import time
import traceback
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.put_checkout_first()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import resnet_step  # noqa: E402

# name, C, H, W, K, FH(=FW), stride, padding
PAPER = [
    ("conv1", 3, 227, 227, 96, 11, 4, 0),
    ("conv2", 3, 231, 231, 96, 11, 4, 0),
    ("conv3", 3, 227, 227, 64, 7, 2, 0),
    ("conv4", 64, 224, 224, 64, 7, 2, 0),
    ("conv5", 96, 24, 24, 256, 5, 1, 0),
    ("conv6", 256, 12, 12, 512, 3, 1, 0),
    ("conv7", 3, 224, 224, 64, 3, 1, 0),
    ("conv8", 64, 112, 112, 128, 3, 1, 0),
    ("conv9", 64, 56, 56, 64, 3, 1, 0),
    ("conv10", 128, 28, 28, 128, 3, 1, 0),
    ("conv11", 256, 14, 14, 256, 3, 1, 0),
    ("conv12", 512, 7, 7, 512, 3, 1, 0),
]
PAPER_BATCH = 128
RESNET = [
    ("r50.conv1", 3, 224, 224, 64, 7, 2, 3),
    ("r50.layer1.1x1", 64, 56, 56, 64, 1, 1, 0),
    ("r50.layer1.3x3", 64, 56, 56, 64, 3, 1, 1),
    ("r50.layer1.1x1up", 64, 56, 56, 256, 1, 1, 0),
    ("r50.layer2.3x3s2", 128, 56, 56, 128, 3, 2, 1),
    ("r50.layer2.3x3", 128, 28, 28, 128, 3, 1, 1),
    ("r50.layer3.3x3", 256, 14, 14, 256, 3, 1, 1),
    ("r50.layer3.1x1", 1024, 14, 14, 256, 1, 1, 0),
    ("r50.layer4.3x3", 512, 7, 7, 512, 3, 1, 1),
]
RESNET_BATCH = 64
PRECISIONS = ("fp32", "tf32", "bf16", "bf16_cl", "fp32_fb", "tf32_fb", "bf16_cl_fb")
QUICK_LAYERS = ("conv1", "conv5", "conv8", "conv10")
QUICK_PRECISIONS = ("fp32", "bf16_cl", "fp32_fb")


def out_hw(h, w, f, s, p):
    return (h + 2 * p - f) // s + 1, (w + 2 * p - f) // s + 1


def conv_flops(n, c, h, w, k, f, s, p, groups=1):
    ho, wo = out_hw(h, w, f, s, p)
    return 2 * n * k * ho * wo * (c // groups) * f * f


def set_tf32(on):
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def load_ours():
    import im2win

    if not hasattr(im2win, "conv2d"):
        raise ImportError(f"im2win at {getattr(im2win, '__file__', '?')} has no conv2d")
    return im2win.conv2d


def backward_alone_ms(conv, x, wt, dy, s, p, args):
    """The backward of one gradient alone (input, then weight): only that operand requires
    grad, so both im2win and cuDNN are asked for that gradient only; the graph is kept and
    only the backward is timed."""
    times = []
    for want_input in (True, False):
        xi = x.detach().requires_grad_(want_input)
        wi = wt.detach().requires_grad_(not want_input)
        y = conv(xi, wi, None, s, p)
        leaf = xi if want_input else wi
        times.append(common.bench_ms(lambda: torch.autograd.grad(y, [leaf], dy, retain_graph=True),
                                     warmup=args.warmup, rep=args.rep, device=args.device))
        del xi, wi, y
    return times


def run_layer(layer, batch, group, impls, args, budget):
    name, c, h, w, k, f, s, p = layer
    ho, wo = out_hw(h, w, f, s, p)
    flops = conv_flops(batch, c, h, w, k, f, s, p)
    dev = args.device
    rows = []
    for prec in args.precisions:
        if budget.exhausted():
            rows += [{"group": group, "layer": name, "impl": i, "precision": prec, "batch": batch, "C": c, "H": h,
                      "W": w, "K": k, "F": f, "stride": s, "pad": p, "Ho": ho, "Wo": wo, "ms": None,
                      "tflops": None, "extra_mib": None, "err_vs_cudnn": None, "error": "skipped: time budget"}
                     for i in impls]
            continue
        fb = prec.endswith("_fb")
        base = prec[: -len("_fb")] if fb else prec
        set_tf32(base == "tf32")
        dtype = torch.bfloat16 if base.startswith("bf16") else torch.float32
        fmt = torch.channels_last if base == "bf16_cl" else torch.contiguous_format
        g = torch.Generator(device=dev).manual_seed(zlib.crc32(f"{name}/{prec}".encode()))
        x = torch.randn(batch, c, h, w, device=dev, dtype=dtype, generator=g).contiguous(memory_format=fmt)
        wt = (torch.randn(k, c, f, f, device=dev, dtype=dtype, generator=g) / math.sqrt(c * f * f)
              ).contiguous(memory_format=fmt)
        dy = torch.randn(batch, k, ho, wo, device=dev, dtype=dtype, generator=g) if fb else None
        out_mib = batch * k * ho * wo * x.element_size() / common.MIB
        ref = None
        for impl_name, conv in impls.items():
            row = {"group": group, "layer": name, "impl": impl_name, "precision": prec,
                   "batch": batch, "C": c, "H": h, "W": w, "K": k, "F": f, "stride": s, "pad": p,
                   "Ho": ho, "Wo": wo, "gflop": flops * (3 if fb else 1) / 1e9,
                   "ms": None, "tflops": None, "extra_mib": None, "err_vs_cudnn": None, "error": None}
            if budget.exhausted():
                row["error"] = "skipped: time budget"
                rows.append(row)
                continue
            t0 = time.time()
            try:
                if not fb:
                    with torch.no_grad():
                        y = conv(x, wt, None, s, p)
                        if impl_name == "cudnn":
                            ref = y
                        elif ref is not None:
                            row["err_vs_cudnn"] = common.rel_err(y, ref)
                            if y.is_contiguous(memory_format=torch.channels_last) != \
                                    ref.is_contiguous(memory_format=torch.channels_last):
                                row["note"] = "output memory format differs from cuDNN's"
                        del y
                        row["ms"] = common.bench_ms(lambda: conv(x, wt, None, s, p), warmup=args.warmup,
                                                    rep=args.rep, device=dev)
                        mib = common.peak_extra_mib(lambda: conv(x, wt, None, s, p), device=dev)
                        row["extra_mib"] = None if mib is None else max(mib - out_mib, 0.0)
                else:
                    xg = x.detach().requires_grad_(True)
                    wg = wt.detach().requires_grad_(True)

                    def step():
                        conv(xg, wg, None, s, p).backward(dy)

                    step()
                    if impl_name == "cudnn":
                        ref = (xg.grad.detach().clone(), wg.grad.detach().clone())
                    elif ref is not None:
                        row["err_vs_cudnn"] = max(common.rel_err(xg.grad, ref[0]),
                                                  common.rel_err(wg.grad, ref[1]))
                    row["ms"] = common.bench_ms(step, warmup=args.warmup, rep=args.rep,
                                                grad_to_none=[xg, wg], device=dev)
                    mib = common.peak_extra_mib(step, grad_to_none=[xg, wg], device=dev)
                    grads = (x.numel() + wt.numel()) * x.element_size() / common.MIB
                    row["extra_mib"] = None if mib is None else max(mib - out_mib - grads, 0.0)
                    del xg, wg
                    row["ms_dgrad"], row["ms_wgrad"] = backward_alone_ms(conv, x, wt, dy, s, p, args)
                if row["ms"]:
                    row["tflops"] = row["gflop"] / row["ms"]
            except Exception as exc:  # noqa: BLE001
                row["error"] = common.short_err(exc)
                if args.verbose:
                    traceback.print_exc()
            if impl_name != "cudnn":
                common.free_memory()
            rows.append(row)
            print(f"  {name:>17} {prec:>7} {impl_name:>5}: {common.fmt(row['ms'])} ms "
                  f"{common.fmt(row['tflops'], 1)} TFLOP/s extra {common.fmt(row['extra_mib'], 0)} MiB"
                  + (f" err {common.fmt(row['err_vs_cudnn'])}" if row.get("err_vs_cudnn") is not None else "")
                  + (f" (dgrad {common.fmt(row['ms_dgrad'])} ms, wgrad {common.fmt(row['ms_wgrad'])} ms)"
                     if row.get("ms_dgrad") is not None else "")
                  + (f"  ERROR {row['error']}" if row.get("error") else "")
                  + f"  ({time.time() - t0:.1f} s)", flush=True)
        del x, wt, dy, ref
        common.free_memory()
    set_tf32(False)
    return rows


def geomeans(rows):
    """Geometric mean of t_cudnn / t_ours per (group, precision) over layers where both ran."""
    out = {}
    by = {}
    for r in rows:
        by.setdefault((r["group"], r["precision"], r["layer"]), {})[r["impl"]] = r
    acc = {}
    for (group, prec, _), d in by.items():
        if d.get("ours", {}).get("ms") and d.get("cudnn", {}).get("ms"):
            acc.setdefault((group, prec), []).append(d["cudnn"]["ms"] / d["ours"]["ms"])
    for (group, prec), xs in acc.items():
        out.setdefault(group, {})[prec] = {"geomean_speedup": math.exp(sum(map(math.log, xs)) / len(xs)),
                                           "layers": len(xs)}
    return out


def print_summary(result):
    rows = result["rows"]
    by = {}
    for r in rows:
        by.setdefault((r["group"], r["layer"]), {}).setdefault(r["precision"], {})[r["impl"]] = r
    precs = [p for p in PRECISIONS if any(r["precision"] == p for r in rows)]
    for group in ("paper", "resnet"):
        layers = [key for key in by if key[0] == group]
        if not layers:
            continue
        print(f"\n== {group}: TFLOP/s ours / cuDNN (speedup), fwd+bwd for *_fb")
        table = []
        for key in layers:
            cells = [key[1]]
            for p in precs:
                d = by[key].get(p, {})
                o, c = d.get("ours", {}), d.get("cudnn", {})
                sp = f"{c['ms'] / o['ms']:.2f}x" if o.get("ms") and c.get("ms") else "-"
                cells.append(f"{common.fmt(o.get('tflops'), 1)}/{common.fmt(c.get('tflops'), 1)} ({sp})")
            d = by[key].get("fp32", {})
            cells.append(f"{common.fmt(d.get('ours', {}).get('extra_mib'), 0)}/"
                         f"{common.fmt(d.get('cudnn', {}).get('extra_mib'), 0)}")
            errs = [by[key][p]["ours"].get("err_vs_cudnn") for p in precs
                    if "ours" in by[key].get(p, {}) and by[key][p]["ours"].get("err_vs_cudnn") is not None]
            cells.append(common.fmt(max(errs)) if errs else "-")
            table.append(cells)
        gm = result.get("geomean", {}).get(group, {})
        table.append(["geomean"] + [f"{gm[p]['geomean_speedup']:.2f}x" if p in gm else "-" for p in precs]
                     + ["", ""])
        common.print_table(["layer"] + precs + ["fp32 MiB o/c", "max err"], table)
    step = result.get("r50step")
    if step:
        print("\n== ResNet-50 training step: ms native / ours (speedup), peak MiB native / ours")
        by = {}
        for r in step["rows"]:
            by.setdefault(r["mode"], {})[r["impl"]] = r
        common.print_table(["mode", "ms", "img/s", "peak MiB", "first loss diff"], [
            [mode, f"{common.fmt(d.get('cudnn', {}).get('ms'))} / {common.fmt(d.get('ours', {}).get('ms'))}"
                   + (f" ({step['speedup'][mode]:.2f}x)" if mode in step["speedup"] else ""),
             f"{common.fmt(d.get('cudnn', {}).get('images_per_s'), 0)} / "
             f"{common.fmt(d.get('ours', {}).get('images_per_s'), 0)}",
             f"{common.fmt(d.get('cudnn', {}).get('peak_mib'), 0)} / "
             f"{common.fmt(d.get('ours', {}).get('peak_mib'), 0)}",
             common.fmt(d.get("ours", {}).get("first_loss_rel_diff"))]
            for mode, d in by.items()])
        rows = rows + step["rows"]
    errors = sorted({(r["impl"], r["error"]) for r in rows if r.get("error")})
    if errors:
        print("\nerrors: " + "; ".join(f"{i}: {e}" for i, e in errors[:6]))
    if result.get("import_errors"):
        print("import errors: " + "; ".join(f"{k}: {v}" for k, v in result["import_errors"].items()))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"layers {','.join(QUICK_LAYERS)} and precisions {','.join(QUICK_PRECISIONS)}")
    p.add_argument("--only", default="paper,resnet,r50step",
                   help="comma-separated: 'paper', 'resnet', 'r50step' (ResNet-50 training steps) "
                        "and/or layer names (conv4, r50.layer1.3x3)")
    p.add_argument("--precisions", default=None, help=f"comma-separated out of {','.join(PRECISIONS)}")
    p.add_argument("--impls", default="cudnn,ours")
    p.add_argument("--out", default=common.RESULTS_DIR, help="folder for im2win.json (also copied to $OUT)")
    p.add_argument("--name", default="im2win")
    p.add_argument("--device", default="cuda")
    p.add_argument("--paper-batch", type=int, default=PAPER_BATCH)
    p.add_argument("--resnet-batch", type=int, default=RESNET_BATCH)
    p.add_argument("--step-batch", type=int, default=64, help="r50step: images a step")
    p.add_argument("--step-size", type=int, default=224, help="r50step: image height and width")
    p.add_argument("--step-modes", default=",".join(resnet_step.MODES),
                   help=f"r50step: comma-separated out of {','.join(resnet_step.MODES)}")
    p.add_argument("--warmup", type=float, default=None, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=None, help="do_bench repeat, ms")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="wall-clock budget: measurements past it are skipped (0 = none)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="keep this earlier run's rows of the precisions not run now; every ratio "
                        "still compares ours and cuDNN of one run")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    names = {l[0] for l in PAPER + RESNET}
    bad = [x for x in only if x not in ("paper", "resnet", "r50step") and x not in names]
    if bad:
        p.error(f"--only: unknown {bad}; use paper, resnet, r50step or layer names {sorted(names)}")
    args.r50step = "r50step" in only
    args.step_modes = [x.strip() for x in args.step_modes.split(",") if x.strip()]
    bad = [x for x in args.step_modes if x not in resnet_step.MODES]
    if bad:
        p.error(f"--step-modes: unknown {bad}; choose from {resnet_step.MODES}")
    layers = []
    for group, table, batch in (("paper", PAPER, args.paper_batch), ("resnet", RESNET, args.resnet_batch)):
        for layer in table:
            if group in only or layer[0] in only:
                if args.quick and group in only and layer[0] not in QUICK_LAYERS and layer[0] not in only:
                    continue
                layers.append((group, batch, layer))
    args.layers = layers
    if args.precisions:
        args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
        bad = [x for x in args.precisions if x not in PRECISIONS]
        if bad:
            p.error(f"--precisions: unknown {bad}; choose from {PRECISIONS}")
    else:
        args.precisions = list(QUICK_PRECISIONS if args.quick else PRECISIONS)
    args.impl_names = [x.strip() for x in args.impls.split(",") if x.strip()]
    args.warmup = args.warmup if args.warmup is not None else (10 if args.quick else 20)
    args.rep = args.rep if args.rep is not None else (40 if args.quick else 60)
    return args


def main(argv=None):
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_im2win: no CUDA device (use --device cpu only for a smoke test)")
    args.device = str(dev)
    budget = common.Budget(args.budget_s)
    torch.backends.cudnn.benchmark = True
    impls, errors = {}, {}
    if "cudnn" in args.impl_names:
        impls["cudnn"] = lambda x, w, b, s, p: F.conv2d(x, w, b, s, p)
    if "ours" in args.impl_names:
        try:
            ours = load_ours()
            impls["ours"] = lambda x, w, b, s, p: ours(x, w, b, s, p)
        except Exception as exc:  # noqa: BLE001
            errors["ours"] = common.short_err(exc)
            print(f"[bench_im2win] ours unavailable: {errors['ours']}", flush=True)
    result = {
        "bench": "im2win",
        "meta": common.metadata(dev),
        "config": {"precisions": args.precisions, "quick": args.quick, "warmup": args.warmup,
                   "step_batch": args.step_batch, "step_size": args.step_size,
                   "step_modes": args.step_modes if args.r50step else [],
                   "rep": args.rep, "paper_batch": args.paper_batch, "resnet_batch": args.resnet_batch,
                   "cudnn_benchmark": True, "impls": list(impls)},
        "import_errors": errors,
        "formulas": {
            "flop": "2*N*K*Ho*Wo*(C/groups)*FH*FW (x3 for fp32_fb)",
            "extra_mib": "peak allocated during the call minus the output (and the input and weight "
                         "gradients for fp32_fb): workspaces and window tensors",
            "speedup": "t_cudnn / t_ours",
            "r50step_flop": "3 x 2 x 4.089 GMAC an image at 224 x 224, scaled by (size / 224)^2",
        },
        "rows": [],
    }
    if args.merge:  # the geomeans below cover the merged rows too
        earlier = common.merge_earlier(result, args.merge, lambda r: r.get("precision"),
                                       args.precisions)
        if not args.r50step and earlier.get("r50step"):
            result["r50step"] = dict(earlier["r50step"], meta=earlier["r50step"].get("meta")
                                     or earlier.get("meta"))
    print(f"[bench_im2win] {result['meta'].get('gpu')} torch {torch.__version__} impls={list(impls)} "
          f"layers={len(args.layers)} precisions={args.precisions}", flush=True)
    for i, (group, batch, layer) in enumerate(args.layers):
        try:
            result["rows"] += run_layer(layer, batch, group, impls, args, budget)
        except Exception as exc:  # noqa: BLE001  (e.g. out of memory allocating the inputs)
            print(f"[bench_im2win] {layer[0]} failed: {common.short_err(exc)}", flush=True)
            result.setdefault("layer_errors", {})[layer[0]] = common.short_err(exc)
            common.free_memory()
        result["geomean"] = geomeans(result["rows"])
        result["elapsed_s"] = budget.elapsed()
        if i % 4 == 3 or i == len(args.layers) - 1:
            common.write_json(args.name, result, args.out)
    if args.r50step:
        step_rows = resnet_step.run(args, budget)
        result["r50step"] = {"rows": step_rows, "speedup": resnet_step.speedups(step_rows),
                             "meta": result["meta"]}
    path = common.write_json(args.name, result, args.out)
    print_summary(result)
    print(f"\n[bench_im2win] total {budget.elapsed():.0f} s -> {path}", flush=True)


if __name__ == "__main__":
    main()
