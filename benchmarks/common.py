"""Shared helpers of the benchmarks: timing, peak memory, metadata and JSON output.

Timing follows DESIGN.md section 5: CUDA events, median, through ``triton.testing.do_bench``
(warm-up and repeat given in milliseconds, the L2 cache flushed before every timed call).
Calls slower than a tenth of the repeat budget get a short path of the same kind (events,
median of a few calls) so a 200 ms case does not cost 2 s; without Triton the same
algorithm runs on ``torch.cuda.Event``; on a CPU the wall clock is used (smoke tests only).
"""

import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
MIB = 2.0 ** 20

try:
    import triton.testing as _triton_testing
except Exception:  # noqa: BLE001  (no triton, or a triton that fails to import)
    _triton_testing = None


def put_checkout_first():
    """Make `import lightning` / `import im2win` find this checkout, not PyTorch Lightning."""
    if sys.path[:1] != [ROOT]:
        sys.path.insert(0, ROOT)


# ---------------------------------------------------------------------------------- timing

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_grads(grad_to_none):
    for t in grad_to_none or ():
        t.grad = None


class _L2Flush:
    """A 256 MB buffer zeroed before each timed call (what do_bench does)."""

    def __init__(self, device):
        self.buf = torch.empty(256 * 2 ** 20 // 4, dtype=torch.int32, device=device)

    def __call__(self):
        self.buf.zero_()


def _event_times(fn, n, grad_to_none, flush):
    start = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        _reset_grads(grad_to_none)
        if flush is not None:
            flush()
        start[i].record()
        fn()
        end[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(start, end)]


def bench_ms(fn, *, warmup=25, rep=100, grad_to_none=None, device="cuda", min_samples=3):
    """Median time of fn() in milliseconds.

    One call first (compilation, autotuning, allocator warm-up) and one timed call to
    estimate the cost. Fast cases go to triton.testing.do_bench(warmup, rep, median);
    slow ones (estimate > rep / 10) are timed directly with CUDA events, median of
    max(min_samples, rep / estimate) calls, which is what do_bench would do without its
    5-call estimate.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return _bench_wall_ms(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none)
    fn()
    torch.cuda.synchronize()
    _reset_grads(grad_to_none)
    est = statistics.median(_event_times(fn, 1, grad_to_none, None))
    if est * 10 > rep:
        n = max(min_samples, int(rep / max(est, 1e-6)))
        flush = _L2Flush(device) if est < 50 else None  # a 256 MB zero is noise past 50 ms
        return statistics.median(_event_times(fn, n, grad_to_none, flush))
    if _triton_testing is not None:
        return float(_triton_testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                                              return_mode="median"))
    # Fallback: do_bench's algorithm on torch.cuda.Event.
    n_warmup = max(1, int(warmup / max(est, 1e-6)))
    n_repeat = max(1, int(rep / max(est, 1e-6)))
    for _ in range(n_warmup):
        fn()
    return statistics.median(_event_times(fn, n_repeat, grad_to_none, _L2Flush(device)))


def _bench_wall_ms(fn, *, warmup, rep, grad_to_none):
    fn()
    t0 = time.perf_counter()
    fn()
    est = max((time.perf_counter() - t0) * 1e3, 1e-3)
    times = []
    for _ in range(max(1, min(int(rep / est), 50))):
        _reset_grads(grad_to_none)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def timing_method():
    return ("triton.testing.do_bench median (slow cases: CUDA events median of >= 3 calls)"
            if _triton_testing is not None else "CUDA events median (do_bench algorithm; triton missing)")


# ---------------------------------------------------------------------------------- memory

def peak_extra_mib(fn, *, grad_to_none=None, device="cuda"):
    """Peak memory allocated during one call of fn beyond what was allocated before it, MiB.

    Anything fn creates counts (outputs, gradients, workspaces, saved tensors); the caller
    subtracts outputs and gradients if it wants the rest. None on a CPU.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    _reset_grads(grad_to_none)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    _reset_grads(grad_to_none)
    return (peak - base) / MIB


def free_memory():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------- ceilings

def copy_bandwidth_gbps(device="cuda", nbytes=2 ** 30):
    """Device-to-device copy, bytes read + written over time (GB/s): the memory ceiling."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), warmup=10, rep=50, device=device)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------------- metadata

def _git(*args):
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except Exception:  # noqa: BLE001
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def metadata(device="cuda"):
    """What produced the numbers: GPU, software versions, date, commit (None when the tree
    is a copy without .git; GIT_COMMIT in the environment overrides)."""
    device = torch.device(device)
    meta = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _dist_version("triton"),
        "fla_core": _dist_version("fla-core"),
        "lightning_attn": _dist_version("lightning-attn"),
        "commit": os.environ.get("GIT_COMMIT") or _git("rev-parse", "HEAD"),
        "dirty": None,
        "timing": timing_method(),
        "device": str(device),
        "gpu": None,
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
    if meta["commit"] is not None and os.path.isdir(os.path.join(ROOT, ".git")):
        meta["dirty"] = bool(status)
    if device.type == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(device)
        meta["gpu"] = p.name
        meta["sm_count"] = p.multi_processor_count
        meta["gpu_memory_gib"] = round(p.total_memory / 2 ** 30, 1)
        meta["capability"] = f"{p.major}.{p.minor}"
    return meta


# ---------------------------------------------------------------------------------- output

def _clean(x):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def short_err(exc):
    """First line of the message, plus up to three lines that say 'error' (build logs)."""
    lines = [x.strip() for x in f"{type(exc).__name__}: {exc}".strip().splitlines() if x.strip()]
    if not lines:
        return type(exc).__name__
    errs = [x for x in lines[1:] if "error:" in x.lower() and not x.startswith("[")][:3]
    return " | ".join([lines[0][:200]] + [x[:200] for x in errs])


def write_json(name, data, out_dir=None):
    """Write <out_dir>/<name>.json (default benchmarks/results) and copy it to $OUT when that
    is set and is another folder. Returns the path written."""
    out_dir = os.path.abspath(out_dir or RESULTS_DIR)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(data), f, indent=1)
    os.replace(tmp, path)
    env_out = os.environ.get("OUT")
    if env_out and os.path.isdir(env_out) and os.path.realpath(env_out) != os.path.realpath(out_dir):
        shutil.copy(path, os.path.join(env_out, f"{name}.json"))
    return path


def run_section(bench, section, rows_of, result, budget, name, out_dir):
    """One section of a benchmark: its rows (rows_of()) appended to result["rows"], a failure
    recorded in result["section_errors"] rather than ending the run, and the json written
    after it, so that partial results survive a later crash or timeout."""
    t0 = time.time()
    print(f"[{bench}] section {section} (elapsed {budget.elapsed():.0f} s)", flush=True)
    try:
        result["rows"] += rows_of()
    except Exception as exc:  # noqa: BLE001
        print(f"[{bench}] section {section} failed: {short_err(exc)}")
        traceback.print_exc()
        result.setdefault("section_errors", {})[section] = short_err(exc)
    result["sections_done"].append(section)
    result["elapsed_s"] = budget.elapsed()
    path = write_json(name, result, out_dir)
    print(f"[{bench}] section {section} done in {time.time() - t0:.0f} s -> {path}", flush=True)


def merge_earlier(result, path, label, redone):
    """Adds to result["rows"] the rows of an earlier run's json (path) whose label(row) is not
    in `redone` (what this run measures itself), and sets result["merged"]: one entry per
    earlier run that rows still come from, with their labels, for report.py to name. Returns
    the earlier json."""
    with open(path) as fh:
        earlier = json.load(fh)
    kept = [r for r in earlier.get("rows", []) if label(r) not in redone]
    result["rows"] += kept
    kept_labels = {label(r) for r in kept}
    # runs the earlier json had merged itself, each pruned to the labels still taken from it
    older = [dict(m, sections=sorted(kept_labels & set(m.get("sections", []))))
             for m in earlier.get("merged", [])]
    older = [m for m in older if m["sections"]]
    own = kept_labels - {s for m in older for s in m["sections"]}
    result["merged"] = older + ([{"file": os.path.basename(path), "meta": earlier.get("meta"),
                                  "sections": sorted(own)}] if own else [])
    print(f"[{result.get('bench', 'bench')}] kept {len(kept)} rows of {sorted(kept_labels)} from {path}", flush=True)
    return earlier


def rel_err(out, ref):
    """||out - ref|| / ||ref||, computed in fp64 on the CPU for small tensors and fp32 on the
    device for large ones; inf if out has a NaN or inf."""
    out, ref = out.detach(), ref.detach()
    if out.numel() <= 2 ** 24:
        out, ref = out.double().cpu(), ref.double().cpu()
    else:
        out, ref = out.float(), ref.to(out.device).float()
    if not torch.isfinite(out).all():
        return float("inf")
    den = ref.norm().item()
    return (out - ref).norm().item() / (den if den > 0 else 1.0)


def fmt(x, digits=3, none="-"):
    if x is None:
        return none
    if isinstance(x, float):
        if not math.isfinite(x):
            return "inf"
        if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e6):
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


def print_table(header, rows, file=None):
    """A plain aligned text table."""
    cells = [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(header)]
    line = "  ".join(str(h).rjust(w) for h, w in zip(header, widths))
    print(line, file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)), file=file)


class Budget:
    """A wall-clock budget: past it, remaining measurements are skipped (recorded as such)
    so the run still ends inside the device machine's 10-minute command limit."""

    def __init__(self, seconds):
        self.t0 = time.time()
        self.seconds = seconds

    def elapsed(self):
        return time.time() - self.t0

    def exhausted(self):
        return self.seconds is not None and self.seconds > 0 and self.elapsed() > self.seconds
