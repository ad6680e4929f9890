"""lightning.distributed.attn and the sequence-parallel LM on CPU with gloo.

P = 2 and P = 3 processes are spawned once per P (a module fixture) and run every case in
turn, each rank holding its chunk of one sequence; the tests then read what each rank found.
Outputs, final states and the gradients of q, k, v and the initial state (for the sum of all
ranks' losses) are compared with lightning.reference.attn_naive on the whole sequence in
fp64. Bad input must raise on every rank, after which the group still works. The same
processes run the sequence-parallel LM under DDP, examples/train_sequence_parallel.py --check
and benchmarks/bench_sequence_parallel.py --smoke. Every spawn has a deadline: a hang fails
the test and its processes are killed.
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Tuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils import TOLERANCE, rel_err

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
SPAWN_TIMEOUT_S = 120
# States cross ranks in fp32 (the op's state contract), so fp64 inputs meet fp32's state
# rounding: about 1e-7 relative, not fp64's 1e-10.
BAR = {F32: TOLERANCE[F32], BF16: TOLERANCE[BF16], F64: 1e-6}


@dataclass(frozen=True)
class Case:
    name: str
    lengths: Tuple[int, ...]         # tokens on each rank, in rank order
    dtype: str = "float32"
    b: int = 1
    h: int = 2
    d: int = 16
    e: int = 16
    decay: bool = True
    init: bool = False               # an initial state ...
    init_grad: bool = True           # ... that needs a gradient
    final: bool = False
    layout: str = "bhnd"
    autocast: bool = False           # fp32 leaves under CPU autocast (bf16)


CASES = {
    2: [
        Case("equal-fp32-b2", (24, 24), b=2),
        Case("unequal-fp64-init-final-d!=e", (37, 1), dtype="float64", e=32, init=True, final=True),
        Case("one-token-first-no-decay-bnhd", (1, 40), decay=False, init=True, layout="bnhd"),
        Case("bf16-final", (20, 33), dtype="bfloat16", d=32, e=32, final=True),
        Case("autocast-bf16-init-final", (17, 30), autocast=True, init=True, final=True),
    ],
    3: [
        Case("equal-fp32-init-final", (16, 16, 16), d=32, e=16, init=True, final=True),
        Case("one-token-first-fp64-no-decay-bnhd", (1, 30, 7), dtype="float64", decay=False,
             final=True, layout="bnhd"),
        Case("one-token-middle-init-without-grad", (25, 1, 18), b=2, init=True, init_grad=False,
             final=True),
        Case("bf16-init-final", (10, 20, 30), dtype="bfloat16", init=True, final=True),
    ],
}

# On CUDA with NCCL (one process a GPU, up to 2): the CUDA paths of the same code.
def cuda_cases(world: int):
    lengths = {1: (70,), 2: (30, 40)}[world]
    return [Case("cuda-bf16-init-final-bnhd", lengths, dtype="bfloat16", d=64, e=64, init=True,
                 final=True, layout="bnhd"),
            Case("cuda-fp32-final", lengths, e=32, final=True)]


# What goes wrong, on one rank or between ranks (see _run_error_case).
ERROR_CASES = ("heads", "head dim D", "head dim E", "dtype", "options", "empty chunk",
               "bad k on one rank")


# ------------------------------------------------------------------------------ in the workers

def _full_inputs(case: Case, seed: int):
    """The whole sequence's q, k, v (B, H, N, X) in fp64, slope, initial state and the loss
    weights of every rank, drawn alike on every rank."""
    g = torch.Generator().manual_seed(seed)
    n = sum(case.lengths)
    q = torch.randn(case.b, case.h, n, case.d, generator=g, dtype=F64) * 0.3
    k = torch.randn(case.b, case.h, n, case.d, generator=g, dtype=F64) * 0.3
    v = torch.randn(case.b, case.h, n, case.e, generator=g, dtype=F64)
    slope = (0.01 + 0.3 * torch.rand(case.h, generator=g)).float() if case.decay else None
    s0 = torch.randn(case.b, case.h, case.d, case.e, generator=g).float() if case.init else None
    w_out = torch.randn(case.b, case.h, n, case.e, generator=g, dtype=F64)
    w_final = torch.randn(len(case.lengths), case.b, case.h, case.d, case.e, generator=g, dtype=F64)
    return q, k, v, slope, s0, w_out, w_final


def _to_layout(t, layout):
    return t.transpose(1, 2) if layout == "bnhd" else t


def _run_case(case: Case, rank: int, seed: int, device: str = "cpu"):
    """This rank's relative errors against the fp64 reference (on the CPU), by name, and a
    digest of its final state (None without one)."""
    import hashlib

    import lightning.distributed
    from lightning.reference import attn_naive

    dtype = getattr(torch, case.dtype)
    seen = BF16 if case.autocast else dtype  # what the op computes in
    q, k, v, slope, s0, w_out, w_final = _full_inputs(case, seed)
    q, k, v = (t.to(seen).to(F64) for t in (q, k, v))  # what both sides see
    lo = sum(case.lengths[:rank])
    hi = lo + case.lengths[rank]

    # This rank: its chunk, as leaves in the case's layout and dtype.
    def leaf(t):
        t = _to_layout(t[:, :, lo:hi], case.layout).to(device=device, dtype=dtype)
        return t.contiguous().requires_grad_()

    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    s0l = None if s0 is None else s0.to(device, copy=True).requires_grad_(case.init_grad)
    slope_here = None if slope is None else slope.to(device)
    with torch.autocast("cpu", dtype=BF16, enabled=case.autocast):
        o, final = lightning.distributed.attn(ql, kl, vl, slope_here, scale=0.7,
                                              initial_state=s0l, output_final_state=case.final,
                                              layout=case.layout)
    assert o.dtype == seen and ql.grad is None
    loss = (_to_layout(o, case.layout).double() * w_out[:, :, lo:hi].to(device)).sum()
    if case.final:
        loss = loss + (final.double() * w_final[rank].to(device)).sum()
    loss.backward()

    # The reference: the whole sequence, the sum of every rank's loss.
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    s0r = None if s0 is None else s0.double().requires_grad_()
    o_ref, final_ref = attn_naive(qr, kr, vr, None if slope is None else slope.double(), 0.7, s0r)
    loss_ref = (o_ref * w_out).sum() + ((final_ref * w_final.sum(0)).sum() if case.final else 0)
    loss_ref.backward()

    errs = {"o": rel_err(_to_layout(o, case.layout), o_ref[:, :, lo:hi])}
    if case.final:
        assert final.dtype == F32 and final.shape == (case.b, case.h, case.d, case.e)
        errs["final"] = rel_err(final, final_ref)
    for name, mine, ref in (("dq", ql, qr), ("dk", kl, kr), ("dv", vl, vr)):
        errs[name] = rel_err(_to_layout(mine.grad, case.layout), ref.grad[:, :, lo:hi])
    if case.init and case.init_grad:
        errs["d_initial_state"] = rel_err(s0l.grad, s0r.grad)
    digest = (hashlib.sha256(final.detach().cpu().numpy().tobytes()).hexdigest()
              if case.final else None)
    return errs, digest


def _run_error_case(which: str, rank: int, world: int):
    """A call that is wrong on some rank; returns what this rank raised (or did not)."""
    import lightning.distributed

    b, h, n, d, e, dtype = 1, 2, 8, 16, 16, F32
    final = False
    culprit = world - 1
    if which == "heads" and rank == culprit:
        h = 4
    if which == "head dim D" and rank == 0:
        d = 32
    if which == "head dim E" and rank == culprit:
        e = 32
    if which == "dtype" and rank == culprit:
        dtype = F64
    if which == "options" and rank == 0:
        final = True
    if which == "empty chunk" and rank == culprit:
        n = 0
    q = torch.randn(b, h, n, d, dtype=dtype)
    k = torch.randn(b, h, n + (1 if which == "bad k on one rank" and rank == culprit else 0), d,
                    dtype=dtype)
    v = torch.randn(b, h, n, e, dtype=dtype)
    try:
        lightning.distributed.attn(q, k, v, output_final_state=final)
    except Exception as exc:  # noqa: BLE001  (reported to the test)
        return f"{type(exc).__name__}: {exc}"
    return None


def _run_lm(rank: int, world: int, seed: int):
    """The sequence-parallel LM under DDP (over the default group, the sequence split over a
    second group of the same ranks) against one process training the whole batch: the loss and
    every parameter's gradient after one step, relative errors."""
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from lightning.nn import LightningLM

    torch.manual_seed(seed)
    sp_group = dist.new_group(list(range(world)))
    whole = LightningLM(64, 32, 2, 2, head_dim=16).double()
    model = LightningLM(64, 32, 2, 2, head_dim=16, sequence_parallel_group=sp_group).double()
    model.load_state_dict(whole.state_dict())
    ddp = DDP(model)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 64, (2, 21), generator=g)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    bounds = [0, 7, 20] if world == 2 else [0, 1, 12, 20]  # unequal chunks
    lo, hi = bounds[rank], bounds[rank + 1]

    logits = ddp(inputs[:, lo:hi])
    # Sum over this rank's tokens / all tokens, times P: DDP's mean over the P ranks then
    # gives the gradient of the whole batch's mean loss.
    local = F.cross_entropy(logits.flatten(0, 1), targets[:, lo:hi].flatten(), reduction="sum")
    (local * world / targets.numel()).backward()
    total = local.detach().clone()
    dist.all_reduce(total)

    ref = F.cross_entropy(whole(inputs).flatten(0, 1), targets.flatten())
    ref.backward()
    errs = {"loss": rel_err(total / targets.numel(), ref)}
    grads = dict(whole.named_parameters())
    for name, p in model.named_parameters():
        errs[f"grad {name}"] = rel_err(p.grad, grads[name].grad)
    return errs


def _run_bench_smoke(out_dir: str):
    """benchmarks/bench_sequence_parallel.py --smoke in this group: its rows by section, and
    whether rank 0 wrote the json."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "benchmarks"))
    import bench_sequence_parallel

    out = os.path.join(out_dir, "bench")
    result = bench_sequence_parallel.main(["--smoke", "--out", out])
    counts = {}
    for row in result["rows"]:
        counts[row["section"]] = counts.get(row["section"], 0) + 1
    return {"rows": counts, "json": os.path.exists(os.path.join(out, "sequence_parallel.json")),
            "model": [r["model"]["label"] for r in result["rows"] if "model" in r]}


def _run_example(world: int):
    """examples/train_sequence_parallel.py --check, a few steps with unequal chunks: its exit
    status (0: every step's loss matched one process training the whole batch)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "examples"))
    import train_sequence_parallel

    return train_sequence_parallel.main(["--check", "--device", "cpu", "--steps", "3",
                                         "--seq-len", "48", "--batch", "2", "--uneven",
                                         "--corpus-bytes", "65536"])


def _worker(rank: int, world: int, init_file: str, out_dir: str, cases, seed: int,
            backend: str):
    """One rank: the cases, then (gloo) the error cases, the LM, the example and the
    benchmark, each caught and reported; results go to out_dir/rank<r>.json."""
    results = {}
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=SPAWN_TIMEOUT_S // 2))
    try:
        torch.set_num_threads(1)
        jobs = [(f"case {c['name']}", lambda c=c: _run_case(Case(**c), rank, seed, device))
                for c in cases]
        if backend == "gloo":
            jobs += [(f"error {w}", lambda w=w: _run_error_case(w, rank, world))
                     for w in ERROR_CASES]
            jobs += [("after errors", lambda: _run_case(Case(**cases[0]), rank, seed + 1)),
                     ("lm", lambda: _run_lm(rank, world, seed)),
                     ("example", lambda: _run_example(world))]
        if backend == "gloo" and world == 2:
            jobs.append(("bench smoke", lambda: _run_bench_smoke(out_dir)))
        for name, job in jobs:
            try:
                results[name] = {"ok": job()}
            except Exception as exc:  # noqa: BLE001  (reported to the test)
                results[name] = {"raised": f"{type(exc).__name__}: {exc}"}
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ in pytest

def _spawn(world: int, tmp_dir: str, seed: int, cases, backend: str = "gloo"):
    """Runs the cases (and with gloo everything else) on `world` processes; returns [results
    of rank r]. Kills the processes and fails if they do not finish by the deadline."""
    ctx = mp.get_context("spawn")
    init_file = os.path.join(tmp_dir, "init")
    procs = [ctx.Process(target=_worker, args=(r, world, init_file, tmp_dir,
                                                [asdict(c) for c in cases], seed, backend))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    assert not hung, f"ranks {hung} of {world} did not finish within {SPAWN_TIMEOUT_S} s"
    out = []
    for r, p in enumerate(procs):
        path = os.path.join(tmp_dir, f"rank{r}.json")
        assert os.path.exists(path), f"rank {r} of {world} exited ({p.exitcode}) with no results"
        with open(path) as f:
            out.append(json.load(f))
    return out


_RESULTS = {}


@pytest.fixture(scope="module", params=sorted(CASES))
def ranks(request, tmp_path_factory):
    world = request.param
    if world not in _RESULTS:
        _RESULTS[world] = _spawn(world, str(tmp_path_factory.mktemp(f"world{world}")), world,
                                 CASES[world])
    return world, _RESULTS[world]


def _ok(results, name):
    for r, res in enumerate(results):
        assert "raised" not in res[name], f"rank {r}: {res[name]['raised']}"
    return [res[name]["ok"] for res in results]


def _check_cases(cases, results):
    failures = []
    for case in cases:
        bar = BAR[BF16 if case.autocast else getattr(torch, case.dtype)]
        found = _ok(results, f"case {case.name}")
        for r, (errs, _) in enumerate(found):
            failures += [f"{case.name} rank {r} {k}: {x:.2e} > {bar:.0e}"
                         for k, x in errs.items() if not x <= bar]
            expected = {"o", "dq", "dk", "dv"} | ({"final"} if case.final else set()) | (
                {"d_initial_state"} if case.init and case.init_grad else set())
            assert set(errs) == expected, (case.name, sorted(errs))
        # the final state is the same on every rank, bit for bit
        assert len({digest for _, digest in found}) == 1, case.name
    assert not failures, "\n".join(failures)


def test_matches_whole_sequence(ranks):
    world, results = ranks
    _check_cases(CASES[world], results)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(),
                    reason="needs a CUDA GPU and NCCL")
def test_cuda_nccl_matches_whole_sequence(tmp_path):
    world = min(2, torch.cuda.device_count())
    cases = cuda_cases(world)
    _check_cases(cases, _spawn(world, str(tmp_path), 7, cases, backend="nccl"))


@pytest.mark.parametrize("which", ERROR_CASES)
def test_bad_input_raises_on_every_rank(ranks, which):
    world, results = ranks
    expected = {"heads": "disagree on H", "head dim D": "disagree on D",
                "head dim E": "disagree on E", "dtype": "disagree on dtype",
                "options": "disagree on output_final_state", "empty chunk": "N = 0"}
    for r, res in enumerate(results):
        raised = res[f"error {which}"]["ok"]
        assert raised is not None, f"rank {r} of {world} did not raise for {which}"
        assert raised.startswith("ValueError: lightning.distributed.attn:"), raised
        if which == "bad k on one rank":
            want = "k must have q's shape" if r == world - 1 else f"rank(s) [{world - 1}]"
        else:
            want = expected[which]
        assert want in raised, f"rank {r}: {raised!r} does not say {want!r}"


def test_group_works_after_errors(ranks):
    world, results = ranks
    bar = BAR[getattr(torch, CASES[world][0].dtype)]
    for errs, _ in _ok(results, "after errors"):
        assert max(errs.values()) <= bar, errs


def test_lm_under_ddp_matches_one_process(ranks):
    world, results = ranks
    for r, errs in enumerate(_ok(results, "lm")):
        worst = max(errs, key=errs.get)
        assert errs[worst] <= BAR[F64], f"rank {r}: {worst} relative error {errs[worst]:.2e}"


def test_example_matches_one_process(ranks):
    world, results = ranks
    assert _ok(results, "example") == [0] * world


@pytest.mark.parametrize("ranks", [2], indirect=True)  # it rides on the 2-rank spawn
def test_benchmark_smoke(ranks):
    _, results = ranks
    first, second = _ok(results, "bench smoke")
    assert first["rows"] == {"compute": 2, "parallel": 2} and first["json"], first
    assert all(label.startswith("model") for label in first["model"]) and first["model"]
    assert second["rows"] == {"parallel": 2}, second


def test_no_process_group_is_an_error():
    import lightning.distributed

    assert not dist.is_initialized()
    x = torch.randn(1, 2, 4, 16)
    with pytest.raises(RuntimeError, match="no initialised process group"):
        lightning.distributed.attn(x, x, x)
