"""Sequence parallelism (lightning.distributed.attn) against one GPU: tokens/s forward and
forward+backward for one long sequence split over P ranks.

    torchrun --nproc_per_node P benchmarks/bench_sequence_parallel.py   # P GPUs, NCCL
    python benchmarks/bench_sequence_parallel.py                        # one GPU
    torchrun --nproc_per_node 2 benchmarks/bench_sequence_parallel.py --smoke   # CPU, gloo, tiny

Default shape b=1 h=32 d=e=128 bf16, ALiBi slopes, N = 128k, 256k, 512k, 1M.

Sections (rows of benchmarks/results/sequence_parallel.json):
  compute   rank 0 alone, for each N and each P of --ranks: the op on one GPU holding N/P
            tokens; the op on the whole N where it fits; and one rank's whole share of the
            distributed algorithm at N/P tokens, measured on a process group of one with an
            initial state (needing its gradient) and a final state, so that it does what a
            middle rank does: the state pass M_r, the op from the incoming state, the pass for
            dX_r and the op's backward seeded with dM_r. From these, a MODEL of P GPUs:
              t_P = t_rank + t_allgather,  t_allgather = (P - 1) * (latency + S / busbw)
            per collective (ring all-gather of S bytes a rank), latency and NVLink bus
            bandwidth assumed (--latency-us, --busbw-gbps), not measured; labelled "model".
  parallel  only when launched on P >= 2 processes: the real distributed call on every rank
            (N/P tokens each, no initial or final state), time = the slowest rank; and the
            same collectives alone (metadata row, states, state gradients): the time spent
            in communication.
Speedups are t_one_gpu(N) / t_P(N); the op on the whole N is measured in the compute section.

Work per rank (L = N/P tokens; es bytes an element, 2 for bf16; block 64):
  op forward          FLOP b*h*L*(2*64*(d+e) + 4*d*e)      bytes es*b*h*L*(2d + 2e)
  op backward         FLOP b*h*L*(2*64*(3d+2e) + 10*d*e)   bytes es*b*h*L*(4d + 3e)
  state pass M_r      FLOP 2*b*h*L*d*e                     bytes es*b*h*L*(3d + e)
                      (read k, write and read the decayed k, read v)
  dX_r pass           FLOP 2*b*h*L*d*e                     bytes es*b*h*L*(3d + e)
                      (read q, write and read the decayed q, read dO)
  communication, all-gathers of S bytes a rank:
    forward   metadata (15 x 8 B) and states M_j (S = b*h*d*e*4)
    backward  state gradients dX_r, and dF_r with a final state (S = G*b*h*d*e*4, G = 1 or 2)
"""

import argparse
import datetime
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.put_checkout_first()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import bench_lightning  # noqa: E402  (the op's FLOP and byte formulas)

META_BYTES = 15 * 8  # the metadata row of lightning.distributed


# ---------------------------------------------------------------------------------- formulas

def rank_flops(b, h, n, d, e, backward):
    """FLOP of one rank's share of n tokens: the op plus the state pass (and the dX pass)."""
    extra = 2 * b * h * n * d * e
    fwd = bench_lightning.fwd_flops(b, h, n, d, e) + extra
    return fwd + (bench_lightning.bwd_flops(b, h, n, d, e) + extra if backward else 0)


def rank_bytes(b, h, n, d, e, es, backward):
    """Bytes one rank's share of n tokens moves: the op plus the extra passes."""
    extra = es * b * h * n * (3 * d + e)
    fwd = bench_lightning.fwd_bytes(b, h, n, d, e, es) + extra
    if not backward:
        return fwd
    return bench_lightning.fwdbwd_bytes(b, h, n, d, e, es) + 2 * extra


def allgather_model_ms(ranks, nbytes, latency_us, busbw_gbps):
    """Ring all-gather of nbytes a rank over `ranks` GPUs: (P-1) steps of latency + transfer."""
    if ranks < 2:
        return 0.0
    return (ranks - 1) * (latency_us * 1e-3 + nbytes / (busbw_gbps * 1e9) * 1e3)


def comm_model_ms(ranks, b, h, d, e, backward, state_grads, latency_us, busbw_gbps):
    state = b * h * d * e * 4
    t = (allgather_model_ms(ranks, META_BYTES, latency_us, busbw_gbps)
         + allgather_model_ms(ranks, state, latency_us, busbw_gbps))
    if backward:
        t += allgather_model_ms(ranks, state_grads * state, latency_us, busbw_gbps)
    return t


# ---------------------------------------------------------------------------------- inputs

def make_inputs(args, n, device, requires_grad=True):
    dtype = getattr(torch, args.dtype)
    shape = (args.b, args.h, n)
    q = (0.1 * torch.randn(*shape, args.d, device=device)).to(dtype).requires_grad_(requires_grad)
    k = (0.1 * torch.randn(*shape, args.d, device=device)).to(dtype).requires_grad_(requires_grad)
    v = torch.randn(*shape, args.e, device=device).to(dtype).requires_grad_(requires_grad)
    grad_out = torch.randn(*shape, args.e, device=device).to(dtype)
    return q, k, v, grad_out


def op_calls(args, n, device, slope):
    """(forward, forward+backward, tensors to clear) of the op on one device with n tokens."""
    import lightning

    q, k, v, grad_out = make_inputs(args, n, device)

    def fwd():
        with torch.no_grad():
            return lightning.attn(q, k, v, slope)[0]

    def fwdbwd():
        lightning.attn(q, k, v, slope)[0].backward(grad_out)

    return fwd, fwdbwd, [q, k, v]


def rank_calls(args, n, device, slope, group):
    """The same for one rank's share of the distributed algorithm (see the module docstring)."""
    import lightning.distributed

    q, k, v, grad_out = make_inputs(args, n, device)
    init = torch.randn(args.b, args.h, args.d, args.e, device=device).requires_grad_()
    grad_final = torch.randn_like(init)

    def call(grad):
        with torch.set_grad_enabled(grad):
            return lightning.distributed.attn(q, k, v, slope, group=group, initial_state=init,
                                              output_final_state=True)

    def fwdbwd():
        o, final = call(True)
        torch.autograd.backward([o, final], [grad_out, grad_final])

    return (lambda: call(False)), fwdbwd, [q, k, v, init]


# ---------------------------------------------------------------------------------- sections

def section_compute(args, device, slope, solo, budget):
    """Rank 0 alone: the op at N/P and N, one rank's share at N/P, and the model of P GPUs."""
    rows = []
    timing = {"warmup": args.warmup, "rep": args.rep, "device": device}
    # ("op" or "rank", tokens) -> {"fwd": ms, "fwdbwd": ms, "peak_mib": MiB}, or an error
    measured = {}

    def measure(key, make):
        if key in measured:
            return measured[key]
        if budget.exhausted():
            measured[key] = {"error": "skipped: --budget-s spent"}
            return measured[key]
        try:
            fwd, fwdbwd, leaves = make()
            out = {"fwd": common.bench_ms(fwd, **timing),
                   "fwdbwd": common.bench_ms(fwdbwd, grad_to_none=leaves, **timing),
                   "peak_mib": common.peak_extra_mib(fwdbwd, grad_to_none=leaves, device=device)}
        except torch.cuda.OutOfMemoryError as exc:
            out = {"error": "out of memory: " + common.short_err(exc)}
        except Exception as exc:  # noqa: BLE001  (recorded, the run goes on)
            out = {"error": common.short_err(exc)}
            if args.verbose:
                traceback.print_exc()
        common.free_memory()
        measured[key] = out
        return out

    for n in args.ns:
        whole = measure(("op", n), lambda: op_calls(args, n, device, slope))
        for ranks in args.ranks:
            if n % ranks:
                continue
            share = n // ranks
            op_share = measure(("op", share), lambda: op_calls(args, share, device, slope))
            mine = measure(("rank", share), lambda: rank_calls(args, share, device, slope, solo))
            es = torch.finfo(getattr(torch, args.dtype)).bits // 8
            row = {"section": "compute", "n": n, "ranks": ranks, "tokens_per_rank": share,
                   "op_share": op_share, "rank_share": mine, "op_whole": whole,
                   "rank_gb": {kind: rank_bytes(args.b, args.h, share, args.d, args.e, es,
                                                kind == "fwdbwd") / 1e9
                               for kind in ("fwd", "fwdbwd")},
                   "rank_fwdbwd_tflops": None}
            if "error" not in mine:
                comm = {kind: comm_model_ms(ranks, args.b, args.h, args.d, args.e, kind == "fwdbwd",
                                            2, args.latency_us, args.busbw_gbps)
                        for kind in ("fwd", "fwdbwd")}
                model = {kind: mine[kind] + comm[kind] for kind in comm}
                row["model"] = {
                    "label": "model: measured one-rank compute + modelled all-gathers",
                    "comm_ms": comm, "step_ms": model,
                    "tok_s": {kind: n / (model[kind] * 1e-3) for kind in model},
                    "comm_pct": {kind: 100 * comm[kind] / model[kind] for kind in model},
                    "speedup_vs_whole": ({kind: whole[kind] / model[kind] for kind in model}
                                         if "error" not in whole else None),
                }
                row["rank_fwdbwd_tflops"] = (rank_flops(args.b, args.h, share, args.d, args.e, True)
                                             / (mine["fwdbwd"] * 1e-3) / 1e12)
            rows.append(row)
            print_compute_row(row)
    return rows


def timed_on_all(fn, iters, warmup, device, group):
    """Milliseconds a call on the slowest rank: every rank runs fn a fixed number of times
    (collectives must match), between barriers."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    dist.barrier(group)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    ms = torch.tensor([(time.perf_counter() - t0) * 1e3 / iters], dtype=torch.float64,
                      device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(ms, op=dist.ReduceOp.MAX, group=group)
    return float(ms.item())


def section_parallel(args, device, slope, compute_rows, budget):
    """Every rank: the distributed call on N/P tokens each, and its collectives alone."""
    import lightning.distributed
    from lightning.distributed import _all_gather

    rank, world = dist.get_rank(), dist.get_world_size()
    whole = {r["n"]: r["op_whole"] for r in compute_rows}
    rows = []
    for n in args.ns:
        stop = torch.tensor([float(budget.exhausted())], device=device)
        dist.broadcast(stop, 0)  # rank 0's budget decides for every rank
        if n % world or stop.item():
            continue
        share = n // world
        q, k, v, grad_out = make_inputs(args, share, device)

        def fwd():
            with torch.no_grad():
                return lightning.distributed.attn(q, k, v, slope)[0]

        def fwdbwd():
            lightning.distributed.attn(q, k, v, slope)[0].backward(grad_out)
            q.grad = k.grad = v.grad = None

        meta = torch.zeros(15, dtype=torch.float64, device=device)
        state = torch.zeros(args.b, args.h, args.d, args.e, device=device)
        grads = state.unsqueeze(0)

        def comm_fwd():
            _all_gather(meta, None, world)
            _all_gather(state, None, world)

        def comm_fwdbwd():
            comm_fwd()
            _all_gather(grads, None, world)

        t = {name: timed_on_all(fn, args.iters, 2, device, None)
             for name, fn in (("fwd", fwd), ("fwdbwd", fwdbwd), ("comm_fwd", comm_fwd),
                              ("comm_fwdbwd", comm_fwdbwd))}
        row = {"section": "parallel", "n": n, "ranks": world, "tokens_per_rank": share,
               "ms": {"fwd": t["fwd"], "fwdbwd": t["fwdbwd"]},
               "comm_ms": {"fwd": t["comm_fwd"], "fwdbwd": t["comm_fwdbwd"]}}
        row["tok_s"] = {kind: n / (row["ms"][kind] * 1e-3) for kind in row["ms"]}
        row["comm_pct"] = {kind: 100 * row["comm_ms"][kind] / row["ms"][kind] for kind in row["ms"]}
        ref = whole.get(n)
        row["speedup_vs_whole"] = ({kind: ref[kind] / row["ms"][kind] for kind in row["ms"]}
                                   if ref and "error" not in ref else None)
        rows.append(row)
        if rank == 0:
            print_parallel_row(row)
        del q, k, v, grad_out
        common.free_memory()
    return rows


# ---------------------------------------------------------------------------------- printing

def _ms(m, kind):
    return "-" if m is None or "error" in m else f"{m[kind]:.3f}"


def print_compute_row(row):
    model = row.get("model")
    speed = model and model["speedup_vs_whole"]
    print(f"[compute] N={row['n']:>8} P={row['ranks']}  op(N/P) {_ms(row['op_share'], 'fwd')} / "
          f"{_ms(row['op_share'], 'fwdbwd')} ms  rank share {_ms(row['rank_share'], 'fwd')} / "
          f"{_ms(row['rank_share'], 'fwdbwd')} ms  op(N) {_ms(row['op_whole'], 'fwd')} / "
          f"{_ms(row['op_whole'], 'fwdbwd')} ms  model: comm "
          + (f"{model['comm_pct']['fwdbwd']:.1f}%, speedup fwd+bwd "
             f"{common.fmt(speed and speed['fwdbwd'], 2)}" if model else "-"), flush=True)


def print_parallel_row(row):
    speed = row["speedup_vs_whole"]
    print(f"[parallel] N={row['n']:>8} P={row['ranks']}  fwd {row['ms']['fwd']:.3f} ms  "
          f"fwd+bwd {row['ms']['fwdbwd']:.3f} ms  {row['tok_s']['fwdbwd'] / 1e6:.2f} Mtok/s  "
          f"comm {row['comm_pct']['fwdbwd']:.1f}%  speedup fwd+bwd "
          f"{common.fmt(speed and speed['fwdbwd'], 2)}", flush=True)


# ---------------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="CPU with gloo at tiny sizes: checks the script end to end")
    p.add_argument("--ns", default="131072,262144,524288,1048576", help="comma-separated N")
    p.add_argument("--ranks", default="2,4,8", help="P of the compute section's model")
    p.add_argument("--b", type=int, default=1)
    p.add_argument("--h", type=int, default=32)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--e", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--iters", type=int, default=10, help="timed calls a size, parallel section")
    p.add_argument("--warmup", type=float, default=25, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=100, help="do_bench repeat, ms")
    p.add_argument("--latency-us", type=float, default=20.0,
                   help="model: latency of one ring step of an NCCL all-gather")
    p.add_argument("--busbw-gbps", type=float, default=360.0,
                   help="model: NCCL all-gather bus bandwidth over NVLink, GB/s")
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--out", default=common.RESULTS_DIR,
                   help="folder for the json (also copied to $OUT)")
    p.add_argument("--name", default="sequence_parallel", help="json file name without .json")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.ns, args.ranks, args.h, args.d, args.e = "256,512", "2", 2, 32, 32
        args.dtype, args.iters, args.warmup, args.rep = "float32", 2, 1, 5
    args.ns = [int(x) for x in args.ns.split(",")]
    args.ranks = [int(x) for x in args.ranks.split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        sys.exit("bench_sequence_parallel: no CUDA device (--smoke runs on the CPU)")
    if not dist.is_initialized():
        # The other ranks wait while rank 0 runs the compute section: a generous timeout.
        backend, timeout = ("nccl" if cuda else "gloo"), datetime.timedelta(minutes=30)
        if "RANK" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:  # one process: a group of one
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    import lightning

    budget = common.Budget(args.budget_s)
    slope = lightning.build_slopes(args.h, device=device)
    solo, _ = dist.new_subgroups(group_size=1)  # every rank's own group of one
    result = {
        "bench": "sequence_parallel",
        "meta": dict(common.metadata(device), world=world, backend=dist.get_backend()),
        "config": {k: v for k, v in vars(args).items()
                   if isinstance(v, (int, float, str, list, bool))},
        "formulas": {
            "rank_fwd_flop": "b*h*L*(2*64*(d+e) + 4*d*e) + 2*b*h*L*d*e  (op + state pass)",
            "rank_bwd_flop": "b*h*L*(2*64*(3d+2e) + 10*d*e) + 2*b*h*L*d*e  (op + dX pass)",
            "rank_fwd_bytes": "es*b*h*L*(2d+2e) + es*b*h*L*(3d+e)",
            "rank_fwdbwd_bytes": "es*b*h*L*(6d+5e) + 2*es*b*h*L*(3d+e)",
            "comm_bytes_per_rank": "fwd: 120 + b*h*d*e*4; bwd: G*b*h*d*e*4 "
                                   "(G = 2 with a final state)",
            "model_allgather_ms": "(P-1) * (latency + bytes_per_rank / busbw)",
            "speedup": "t_op(whole N on one GPU) / t(N over P ranks)",
        },
        "model": {"latency_us": args.latency_us, "busbw_gbps": args.busbw_gbps,
                  "label": "MODEL, not measured: compute measured on one GPU at N/P tokens, "
                           "all-gathers modelled as a ring with the latency and NVLink bus "
                           "bandwidth above"},
        "rows": [],
    }
    if rank == 0:
        print(f"[bench_sequence_parallel] {world} process(es), {dist.get_backend()}, "
              f"{result['meta'].get('gpu') or 'CPU'}; b={args.b} h={args.h} d={args.d} "
              f"e={args.e} {args.dtype}, N={args.ns}", flush=True)
        result["rows"] += section_compute(args, device, slope, solo, budget)
    if world > 1:
        dist.barrier()
        result["rows"] += section_parallel(args, device, slope, result["rows"], budget)
    if rank == 0:
        result["elapsed_s"] = budget.elapsed()
        path = common.write_json(args.name, result, args.out)
        print(f"[bench_sequence_parallel] {path} ({budget.elapsed():.0f} s)", flush=True)
    return result


if __name__ == "__main__":
    main()
    dist.destroy_process_group()
