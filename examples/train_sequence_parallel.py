#!/usr/bin/env python3
"""Trains the demo's language model with every sequence split across processes: sequence
parallelism through lightning.distributed.attn, with data parallelism (DDP) on top.

    torchrun --nproc_per_node 2 examples/train_sequence_parallel.py          # 2 chunks a sequence
    torchrun --nproc_per_node 2 examples/train_sequence_parallel.py --check  # and compare
    torchrun --nproc_per_node 4 examples/train_sequence_parallel.py --dp 2   # 2 replicas x 2

gloo on CPUs, NCCL with one GPU per process. --check trains the same model on the whole
batch in one process (on rank 0) beside the parallel run, from the same initialisation on
the same batches, and compares the losses step by step; it exits with status 1 if they differ
by more than rounding.

How the pieces fit (nothing in the model changes):
- P = world / dp consecutive ranks form a sequence-parallel group; the model is built with
  that group (LightningLM(..., sequence_parallel_group=group)), so its attention layers call
  lightning.distributed.attn. Every other layer works token by token, so each rank runs the
  model on its own chunk of each sequence and gets that chunk's logits.
- DDP wraps the model over all ranks and averages the gradients over them. Each rank's loss is
  the sum of its tokens' cross-entropies times P / (tokens in its replica's batch): the mean
  over the P ranks of a replica is then that replica's mean loss, and the mean over the
  replicas the whole batch's, which is what one process training the whole batch minimises.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# This checkout's packages first (PyTorch Lightning also installs a package called
# `lightning`), then this folder for models.py and demo.py.
sys.path[:0] = [os.path.dirname(HERE), HERE]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from demo import load_corpus, lr_at, text_batch  # noqa: E402
from models import build_lm  # noqa: E402


def chunk_bounds(tokens: int, parts: int, uneven: bool):
    """[0, b_1, ..., tokens]: equal chunks, or chunks growing as 1 : 2 : ... : parts."""
    weights = list(range(1, parts + 1)) if uneven else [1] * parts
    bounds = [0]
    for i in range(1, parts):
        bounds.append(max(bounds[-1] + 1, tokens * sum(weights[:i]) // sum(weights)))
    bounds.append(tokens)
    if any(hi <= lo for lo, hi in zip(bounds, bounds[1:])):
        raise SystemExit(f"--seq-len {tokens} is too short for {parts} chunks")
    return bounds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dp", type=int, default=1,
                        help="data-parallel replicas (divides the number of processes)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (all chunks)")
    parser.add_argument("--batch", type=int, default=4, help="sequences per replica and step")
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--uneven", action="store_true", help="chunks of unequal length")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--check", action="store_true",
                        help="also train one process on the whole batch (rank 0) and compare")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--corpus-bytes", type=int, default=1 << 20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    own_group = not dist.is_initialized()  # else run in the caller's default group
    if own_group:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world % args.dp != 0:
        raise SystemExit(f"--dp {args.dp} does not divide the {world} processes")
    sp = world // args.dp
    replica = rank // sp
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 matmuls stay fp32 in the check
    else:
        device = torch.device("cpu")
    # Consecutive ranks share a sequence: groups {0..P-1}, {P..2P-1}, ... (every rank takes
    # part in creating every group).
    sp_group, _ = dist.new_subgroups(group_size=sp)
    say = print if rank == 0 else (lambda *a, **k: None)

    tokens, _ = load_corpus(args.corpus_bytes)
    torch.manual_seed(args.seed)
    dims = (256, args.embed_dim, args.num_heads, args.num_layers)
    model = build_lm(*dims, head_dim=args.head_dim, sequence_parallel_group=sp_group,
                     device=device)
    reference = None
    if args.check and rank == 0:
        reference = build_lm(*dims, head_dim=args.head_dim, device=device)
        reference.load_state_dict(model.state_dict())
    ddp = DDP(model)
    opts = [torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
            for m in (model, reference) if m is not None]

    bounds = chunk_bounds(args.seq_len, sp, args.uneven)
    lo, hi = bounds[rank % sp], bounds[rank % sp + 1]
    rows = slice(replica * args.batch, (replica + 1) * args.batch)
    replica_tokens = args.batch * args.seq_len
    say(f"{world} processes ({dist.get_backend()}, {device.type}): {args.dp} replica(s) x {sp} "
        f"chunks of each sequence at {bounds}; batch {args.dp} x {args.batch} x {args.seq_len} "
        f"tokens; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    gen = torch.Generator().manual_seed(args.seed)  # the same batches on every rank

    def step(net, opt, x, y, scale, lr):
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = net(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
        opt.zero_grad(set_to_none=True)
        (loss * scale).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return loss.detach()

    worst = 0.0
    for i in range(args.steps):
        x, y = text_batch(tokens, args.dp * args.batch, args.seq_len, gen)
        x, y = x.to(device), y.to(device)
        lr = lr_at(i, args.steps, args.lr)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        total = step(ddp, opts[0], x[rows, lo:hi], y[rows, lo:hi], sp / replica_tokens, lr)
        dist.all_reduce(total)                       # the whole batch's summed loss
        loss = total.item() / (args.dp * replica_tokens)
        rate = args.dp * replica_tokens / (time.perf_counter() - t0)
        line = f"step {i:3d}  loss {loss:.6f}  {rate:,.0f} tok/s"
        if reference is not None:
            ref = step(reference, opts[1], x, y, 1 / y.numel(), lr).item() / y.numel()
            diff = abs(loss - ref) / abs(ref)
            worst = max(worst, diff)
            line += f"  one process {ref:.6f}  (relative difference {diff:.1e})"
        say(line, flush=True)

    status = 0
    if args.check:
        tol = 2e-2 if args.bf16 else 1e-4
        verdict = int(rank == 0 and worst > tol)
        flag = torch.tensor([verdict], device=device)
        dist.all_reduce(flag)
        status = int(flag.item())
        say(f"largest relative loss difference to one process: {worst:.1e} "
            f"({'FAILED, >' if status else 'ok, <='} {tol:.0e})")
    if own_group:
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
