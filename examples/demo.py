#!/usr/bin/env python3
"""End-to-end demo of both operators, each beside the same model on plain PyTorch.

1. A small causal LM (lightning.nn.LightningLM) learns byte-level text from the Python
   standard library's own source files, which every machine with Python has. The same model
   with plain-PyTorch attention trains alongside from the same initialisation on the same
   batches, so the two loss curves should lie on top of each other.
2. A small ResNet on im2win.nn.Conv2d learns a synthetic image task made at run time (which
   of 6 bar orientations, a disc or a ring is in a noisy image), beside the same network on
   torch.nn.Conv2d.
3. The LM generates text with one prefill and then one decode step per token, and the demo
   checks that this equals greedy decoding by a full forward over the growing sequence. It
   then samples at temperature 0.8 with a fixed seed: greedy decoding of a model this small
   repeats its likeliest word ("the the the ..."), a sample shows what it learned.
4. A plot of loss and throughput, titled with the device and precisions it ran on, goes to
   examples/demo.png (or --out) if matplotlib is installed.

    python examples/demo.py                 # CPU: about 40 s on 2 idle cores, fp32
    python examples/demo.py --quick         # smoke test, about 20 s
    python examples/demo.py --device cuda   # larger models, bf16 autocast for the LM
"""

import argparse
import glob
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
# This checkout's packages come first (PyTorch Lightning also installs a package called
# `lightning`), then this folder for models.py.
sys.path[:0] = [os.path.dirname(HERE), HERE]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


@dataclass
class Config:
    # language model
    embed_dim: int
    num_heads: int
    head_dim: int
    num_layers: int
    seq_len: int
    batch: int
    steps: int
    lr: float
    corpus_bytes: int
    gen_tokens: int
    lm_bf16: bool
    # CNN
    widths: Tuple[int, ...]
    image_size: int
    image_batch: int
    cnn_steps: int
    cnn_lr: float


PROFILES = {
    "cpu": Config(embed_dim=128, num_heads=4, head_dim=32, num_layers=2, seq_len=128, batch=8,
                  steps=300, lr=3e-3, corpus_bytes=4 << 20, gen_tokens=120, lm_bf16=False,
                  widths=(16, 32, 64), image_size=32, image_batch=32, cnn_steps=100, cnn_lr=3e-3),
    "quick": Config(embed_dim=64, num_heads=2, head_dim=32, num_layers=2, seq_len=64, batch=4,
                    steps=60, lr=3e-3, corpus_bytes=1 << 20, gen_tokens=32, lm_bf16=False,
                    widths=(8, 16), image_size=24, image_batch=16, cnn_steps=40, cnn_lr=1e-2),
    "cuda": Config(embed_dim=512, num_heads=8, head_dim=64, num_layers=4, seq_len=512, batch=16,
                   steps=500, lr=2e-3, corpus_bytes=32 << 20, gen_tokens=256, lm_bf16=True,
                   widths=(32, 64, 128), image_size=64, image_batch=256, cnn_steps=300,
                   cnn_lr=3e-3),
}


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------

def load_corpus(max_bytes: int) -> Tuple[torch.Tensor, int]:
    """Byte tokens (vocab 256) of the standard library's .py files (the top-level modules,
    then the packages, each in sorted order; no site-packages), up to max_bytes.
    Returns (tokens int64, number of files)."""
    stdlib = os.path.dirname(os.__file__)
    top = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    nested = sorted(p for p in glob.glob(os.path.join(stdlib, "*", "**", "*.py"), recursive=True)
                    if "site-packages" not in p and "dist-packages" not in p)
    files = top + nested
    chunks, total = [], 0
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    if total < 4096:
        sys.exit(f"demo: found only {total} bytes of Python source under {stdlib}")
    data = b"".join(chunks)[:max_bytes]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), len(chunks)


def text_batch(tokens, batch, seq_len, gen):
    """batch random windows of seq_len + 1 tokens: (inputs, targets), each (batch, seq_len)."""
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch,), generator=gen)
    rows = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


NUM_SHAPES = 8  # 6 bar orientations (30 degrees apart), a disc, a ring


def image_batch(batch, size, gen, device):
    """Noisy size x size images of one bright shape each, and its class in [0, NUM_SHAPES):
    a bar at angle c * 30 degrees for c < 6, a filled disc (6) or a ring (7), at a random
    place, size, thickness and brightness, under Gaussian noise."""
    def rand(*shape):
        return torch.rand(*shape, generator=gen, device=device)

    labels = torch.randint(0, NUM_SHAPES, (batch,), generator=gen, device=device)
    coords = torch.arange(size, device=device, dtype=torch.float32)
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    cx = (size / 2 + (rand(batch) - 0.5) * 0.3 * size).view(-1, 1, 1)
    cy = (size / 2 + (rand(batch) - 0.5) * 0.3 * size).view(-1, 1, 1)
    dx, dy = xx - cx, yy - cy
    theta = (labels.float() * math.pi / 6).view(-1, 1, 1)
    half_len = ((0.25 + 0.15 * rand(batch)) * size).view(-1, 1, 1)
    half_thick = (0.6 + 0.8 * rand(batch)).view(-1, 1, 1) * size / 32
    along = dx * torch.cos(theta) + dy * torch.sin(theta)
    across = -dx * torch.sin(theta) + dy * torch.cos(theta)
    bar = (along.abs() <= half_len) & (across.abs() <= half_thick)
    radius = ((0.12 + 0.12 * rand(batch)) * size).view(-1, 1, 1)
    dist = torch.sqrt(dx * dx + dy * dy)
    disc = dist <= radius
    ring = (dist - radius - half_thick).abs() <= half_thick
    kind = labels.view(-1, 1, 1)
    shape = torch.where(kind < 6, bar, torch.where(kind == 6, disc, ring))
    brightness = (0.7 + 0.6 * rand(batch)).view(-1, 1, 1)
    noise = torch.randn(batch, size, size, generator=gen, device=device)
    images = shape.float() * brightness + 0.5 * noise
    return images.unsqueeze(1), labels


# ----------------------------------------------------------------------------------------
# Training side by side
# ----------------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fmt_rate(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


class Progress:
    """A one-line progress bar with plain carriage returns (a new line every 10% when the
    output is not a terminal, so logs stay readable)."""

    def __init__(self, title, total, width=24):
        self.title, self.total, self.width = title, total, width
        self.tty = sys.stdout.isatty()
        self.last = 0.0

    def update(self, done, text):
        now = time.perf_counter()
        final = done == self.total
        if self.tty:
            if not final and now - self.last < 0.1:
                return
            fill = int(self.width * done / self.total)
            bar = "#" * fill + "." * (self.width - fill)
            print(f"\r{self.title} [{bar}] {done:>4}/{self.total} {text}",
                  end="\n" if final else "", flush=True)
        elif final or done % max(1, self.total // 10) == 0:
            print(f"{self.title} {done:>4}/{self.total} {text}", flush=True)
        self.last = now


def lr_at(step, steps, base):
    """Linear warm-up over 5% of the steps, then cosine decay to 10%."""
    warm = max(1, steps // 20)
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_side_by_side(title, models, batches, loss_fn, steps, lr, units_per_step, unit,
                       device, autocast_dtype=None):
    """Trains each of models ({label: model}) for `steps` AdamW steps on the same batches;
    returns ({label: losses}, {label: units per second}). Time is measured per model and
    step (after 3 warm-up steps), synchronising the device around each step."""
    opts = {k: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
            for k, m in models.items()}
    losses = {k: [] for k in models}
    seconds = {k: 0.0 for k in models}
    warmup = min(3, steps - 1)
    bar = Progress(title, steps)
    for step in range(steps):
        batch = next(batches)
        for label, model in models.items():
            opt = opts[label]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, lr)
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses[label].append(loss.item())  # synchronises
            if step >= warmup:
                seconds[label] += time.perf_counter() - t0
        timed = step + 1 - warmup
        ours, ref = list(models)
        text = f"loss {losses[ours][-1]:.3f} ({ref} {losses[ref][-1]:.3f})"
        if timed > 0:
            rate = {k: fmt_rate(units_per_step * timed / seconds[k]) for k in models}
            text += f"  {rate[ours]} {unit}/s ({ref} {rate[ref]})"
        bar.update(step + 1, text)
    rates = {k: units_per_step * (steps - warmup) / seconds[k] if seconds[k] > 0 else float("nan")
             for k in models}
    return losses, rates


def smooth(xs, k=10):
    return sum(xs[-k:]) / len(xs[-k:])


def report_losses(losses, rates, unit):
    for label, ls in losses.items():
        print(f"  {label:>8}: loss {smooth(ls[:10]):.3f} -> {smooth(ls):.3f}   "
              f"{fmt_rate(rates[label])} {unit}/s")
    diffs = [abs(x - y) for x, y in zip(*losses.values())]
    print(f"  loss difference between the two per step: mean {sum(diffs) / len(diffs):.1e}, "
          f"largest {max(diffs):.1e} (rounding differences grow as training goes on)")


# ----------------------------------------------------------------------------------------
# The three parts
# ----------------------------------------------------------------------------------------

def run_lm(cfg, device, seed):
    from models import build_lm

    tokens, num_files = load_corpus(cfg.corpus_bytes)
    split = int(0.95 * tokens.numel())
    train, valid = tokens[:split], tokens[split:]
    print(f"\n== LM: {tokens.numel() / 1e6:.2f}M bytes from {num_files} standard-library files "
          f"({os.path.dirname(os.__file__)}), vocab 256")

    torch.manual_seed(seed)
    ours = build_lm(256, cfg.embed_dim, cfg.num_heads, cfg.num_layers, head_dim=cfg.head_dim,
                    device=device)
    ref = build_lm(256, cfg.embed_dim, cfg.num_heads, cfg.num_layers, head_dim=cfg.head_dim,
                   reference=True, device=device)
    ref.load_state_dict(ours.state_dict())  # same initialisation
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"   {cfg.num_layers} layers, embed {cfg.embed_dim}, {cfg.num_heads} heads x "
          f"{cfg.head_dim}, {n_params / 1e6:.2f}M parameters; batch {cfg.batch} x {cfg.seq_len} "
          f"tokens, {cfg.steps} steps" + (", bf16 autocast" if cfg.lm_bf16 else ""))

    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            x, y = text_batch(train, cfg.batch, cfg.seq_len, gen)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def loss_fn(model, batch):
        x, y = batch
        return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())

    models = {"lightning": ours, "torch": ref}
    losses, rates = train_side_by_side(
        "LM ", models, batches(), loss_fn, cfg.steps, cfg.lr, cfg.batch * cfg.seq_len, "tok",
        device, torch.bfloat16 if cfg.lm_bf16 else None)
    report_losses(losses, rates, "tok")

    vgen = torch.Generator().manual_seed(seed + 1)
    vx, vy = text_batch(valid, 4 * cfg.batch, cfg.seq_len, vgen)
    vx, vy = vx.to(device), vy.to(device)
    with torch.no_grad():
        for label, model in models.items():
            model.eval()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.lm_bf16):
                vl = F.cross_entropy(model(vx).flatten(0, 1).float(), vy.flatten()).item()
            print(f"  {label:>8}: held-out loss {vl:.3f} ({vl / math.log(2):.2f} bits/byte)")
    return ours, losses, rates


def show_text(title, tokens):
    text = bytes(tokens.tolist()).decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() or c == "\n" else "?" for c in text)
    print(f"   --- {title} ---\n   " + text.replace("\n", "\n   "))


def check_generation(model, cfg, device):
    """Greedy generation by prefill + decode against greedy argmax of a full forward over the
    growing sequence, in fp32. Returns (ok, report dict)."""
    prompt_text = b"import "
    prompt = torch.tensor(list(prompt_text), dtype=torch.long, device=device).unsqueeze(0)
    n = cfg.gen_tokens
    model.eval()
    print(f"\n== Generation: {n} tokens, greedy, fp32")
    with torch.no_grad():
        model(prompt)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        fast = model.generate(prompt, n)
        sync(device)
        t_decode = time.perf_counter() - t0

        t0 = time.perf_counter()
        seq = prompt
        gaps = []  # top-1 minus top-2 logit of the full forward at each step
        for _ in range(n):
            last = model(seq)[:, -1].float()
            top2 = last.topk(2, dim=-1).values
            gaps.append((top2[0, 0] - top2[0, 1]).item())
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
        sync(device)
        t_full = time.perf_counter() - t0

    show_text("greedy (the likeliest byte each step: a small model loops on a frequent word)",
              fast[0])
    sampled = model.generate(prompt, n, greedy=False, temperature=0.8,
                             generator=torch.Generator(device=device).manual_seed(0))
    show_text("sampled at temperature 0.8, seed 0", sampled[0])
    print(f"   prefill + decode: {fmt_rate(n / t_decode)} tok/s;   full forward per token: "
          f"{fmt_rate(n / t_full)} tok/s")
    rates = {"decode": n / t_decode, "full": n / t_full}
    differ = (fast != seq)[0].nonzero()
    if differ.numel() == 0:
        print(f"   OK: prefill + decode equals full recomputation ({n} tokens)")
        return True, rates
    first = differ[0].item() - prompt.shape[1]
    if gaps[first] < 1e-3:
        print(f"   NOTE: the two differ from new token {first}, where the full forward's top two "
              f"logits are {gaps[first]:.1e} apart (a tie within rounding): not an error")
        return True, rates
    print(f"   FAIL: prefill + decode differs from full recomputation at new token {first} "
          f"(top-2 logit gap there {gaps[first]:.3e})")
    return False, rates


def run_cnn(cfg, device, seed):
    from models import build_cnn

    print(f"\n== CNN: {NUM_SHAPES}-way shape task, {cfg.image_size}x{cfg.image_size} noisy "
          f"images made at run time")
    torch.manual_seed(seed)
    ours = build_cnn(NUM_SHAPES, 1, cfg.widths).to(device)
    ref = build_cnn(NUM_SHAPES, 1, cfg.widths, reference=True).to(device)
    ref.load_state_dict(ours.state_dict())
    n_params = sum(p.numel() for p in ours.parameters())
    convs = sum(1 for m in ours.modules() if isinstance(m, torch.nn.Conv2d))
    print(f"   ResNet widths {tuple(cfg.widths)}, {convs} convolutions, {n_params / 1e3:.0f}k "
          f"parameters; batch {cfg.image_batch}, {cfg.cnn_steps} steps, fp32")

    gen = torch.Generator(device=device).manual_seed(seed)

    def batches():
        while True:
            yield image_batch(cfg.image_batch, cfg.image_size, gen, device)

    def loss_fn(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    models = {"im2win": ours, "torch": ref}
    losses, rates = train_side_by_side("CNN", models, batches(), loss_fn, cfg.cnn_steps,
                                       cfg.cnn_lr, cfg.image_batch, "img", device)
    report_losses(losses, rates, "img")
    vgen = torch.Generator(device=device).manual_seed(seed + 1)
    vx, vy = image_batch(1024, cfg.image_size, vgen, device)
    with torch.no_grad():
        for label, model in models.items():
            model.eval()
            acc = (model(vx).argmax(-1) == vy).float().mean().item()
            print(f"  {label:>8}: held-out accuracy {100 * acc:.1f}% "
                  f"(chance {100 / NUM_SHAPES:.1f}%)")
    return losses, rates


def run_description(device, cfg):
    """Where and in which precisions the demo ran, for the plot's title."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
        note = "CUDA kernels against cuDNN / PyTorch's CUDA attention"
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
        note = ("the C++ CPU kernels against oneDNN (nn.Conv2d) and PyTorch's CPU attention; "
                "the CUDA kernels are the main target")
    lm = "bf16 autocast" if cfg.lm_bf16 else "fp32"
    return f"{where}: LM {lm}, CNN fp32 ({note})"


def plot(path, lm, cnn, gen_rates, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\n(matplotlib is not installed: skipping the plot {path})")
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    fig.suptitle(title, fontsize=10)
    for ax, (losses, _), title in ((axes[0, 0], lm, "LM training loss (bytes, nats)"),
                                   (axes[0, 1], cnn, "CNN training loss")):
        for (label, ls), style in zip(losses.items(), ("-", "--")):
            ax.plot(range(1, len(ls) + 1), ls, style, label=label, linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    bars = [(axes[1, 0], lm[1], "LM training throughput (tokens/s)"),
            (axes[1, 1], cnn[1], "CNN training throughput (images/s)")]
    for ax, rates, title in bars:
        labels = list(rates)
        ax.bar(labels, [rates[k] for k in labels], color=["tab:blue", "tab:orange"])
        for i, k in enumerate(labels):
            ax.text(i, rates[k], fmt_rate(rates[k]), ha="center", va="bottom")
        ax.set_ylim(0, 1.15 * max(rates.values()))
        ax.set_title(title)
    if gen_rates:
        axes[1, 0].set_xlabel(f"generation: prefill + decode {fmt_rate(gen_rates['decode'])} "
                              f"tok/s, full forward per token {fmt_rate(gen_rates['full'])} tok/s")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=None, help="LM training steps")
    parser.add_argument("--cnn-steps", type=int, default=None, help="CNN training steps")
    parser.add_argument("--quick", action="store_true", help="tiny settings, a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "demo.png"), help="plot file")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = PROFILES["quick" if args.quick else "cuda" if device.type == "cuda" else "cpu"]
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.cnn_steps is not None:
        cfg = replace(cfg, cnn_steps=args.cnn_steps)
    if cfg.steps < 2 or cfg.cnn_steps < 2:
        parser.error("--steps and --cnn-steps need at least 2")

    start = time.perf_counter()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({where}); torch {torch.__version__}; "
          f"profile {'quick' if args.quick else device.type}", flush=True)
    import im2win  # a checkout without a built _C compiles the operators here, once
    import lightning
    print(f"operators: {os.path.dirname(lightning.__file__)}, {os.path.dirname(im2win.__file__)} "
          f"(loaded in {time.perf_counter() - start:.1f} s)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 matmuls stay fp32 in the check
    lm_model, lm_losses, lm_rates = run_lm(cfg, device, args.seed)
    ok, gen_rates = check_generation(lm_model.float(), cfg, device)
    cnn_losses, cnn_rates = run_cnn(cfg, device, args.seed)
    plot(args.out, (lm_losses, lm_rates), (cnn_losses, cnn_rates), gen_rates,
         run_description(device, cfg))
    print(f"\ndone in {time.perf_counter() - start:.0f} s"
          + ("" if ok else " (generation check FAILED)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
