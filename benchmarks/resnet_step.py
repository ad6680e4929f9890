"""ResNet-50 training steps, im2win-converted against native (cuDNN), in one run: the
bench_im2win section `r50step`.

One step = zero_grad, forward, cross-entropy, backward, SGD (momentum 0.9) on torchvision's
resnet50 (random weights, 1000 classes) with a batch of random images. Both models start
from the same weights; ours is `im2win.convert(model)` (every nn.Conv2d on im2win.conv2d).

Modes (what a CNN is trained in):
  fp32           exact fp32: cudnn / matmul TF32 off (ours: three TF32 products a term)
  tf32           PyTorch's default for convolutions, torch.backends.cudnn.allow_tf32 = True
                 (matmul TF32 stays off, as it is by default)
  bf16_cl        torch.autocast("cuda", torch.bfloat16), channels_last model and input
  fp16_cl        torch.autocast("cuda", torch.float16) with torch.amp.GradScaler, channels_last

FLOP per step: 3 x the forward's multiply-adds x 2; resnet50 at 224 x 224 is 4.09 GMAC an
image forward (convolutions 4.09, the fc 0.002), so about 24.5 GFLOP an image and step
(RESNET50_GFLOP_PER_IMAGE below). Memory: peak allocated during a step, everything included
(weights, gradients, optimizer state, batch, activations, workspaces); one model is on the
GPU at a time.
Speedup = t_native / t_ours (> 1: ours faster).
"""

import time

import torch
import torch.nn.functional as F

import common

MODES = ("fp32", "tf32", "bf16_cl", "fp16_cl")
RESNET50_GFLOP_PER_IMAGE = 3 * 2 * 4.089  # forward + two gradients, 2 FLOP a multiply-add


def _mode_settings(mode):
    """(autocast dtype or None, channels_last, cudnn TF32 allowed, GradScaler)."""
    return {
        "fp32": (None, False, False, False),
        "tf32": (None, False, True, False),
        "bf16_cl": (torch.bfloat16, True, True, False),
        "fp16_cl": (torch.float16, True, True, True),
    }[mode]


def _make_model(impl, device, fmt, seed=0):
    """resnet50 with the same random weights for every impl and mode."""
    import torchvision

    import im2win

    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    if impl == "ours":
        model = im2win.convert(model)
    return model.to(device=device, memory_format=fmt).train()


def _peak_mib(step, device):
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / common.MIB


def _train_step(model, opt, scaler, x, y, amp_dtype, device_type):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


def _measure(row, impl, device, fmt, x, y, amp_dtype, use_scaler, steps):
    """Fills row with one impl's first loss, step time and peak memory; the model and its
    optimizer live only inside this call."""
    model = _make_model(impl, device, fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    row["first_loss"] = _train_step(model, opt, scaler, x, y, amp_dtype, device.type).item()

    def step():
        _train_step(model, opt, scaler, x, y, amp_dtype, device.type)

    row["ms"] = common.bench_ms(step, warmup=1, rep=1, min_samples=steps, device=device)
    row["peak_mib"] = _peak_mib(step, device)
    row["images_per_s"] = row["batch"] / row["ms"] * 1e3
    row["tflops"] = row["gflop"] / row["ms"]


def run(args, budget, steps=None):
    """Rows of the r50step section: one per (mode, impl)."""
    device = torch.device(args.device)
    batch, size = args.step_batch, args.step_size
    steps = steps or (3 if device.type != "cuda" else 10)
    rows = []
    for mode in args.step_modes:
        amp_dtype, channels_last, tf32, use_scaler = _mode_settings(mode)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=fmt)
        y = torch.randint(0, 1000, (batch,), generator=g).to(device)
        pair = []
        for impl in ("cudnn", "ours"):
            row = {"section": "r50step", "mode": mode, "impl": impl, "batch": batch, "size": size,
                   "steps": steps, "ms": None, "images_per_s": None, "tflops": None,
                   "peak_mib": None, "first_loss": None, "error": None,
                   "gflop": RESNET50_GFLOP_PER_IMAGE * batch * (size / 224) ** 2}
            pair.append(row)
            if budget.exhausted():
                row["error"] = "skipped: time budget"
                continue
            t0 = time.time()
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                _measure(row, impl, device, fmt, x, y, amp_dtype, use_scaler, steps)
            except Exception as exc:  # noqa: BLE001
                row["error"] = common.short_err(exc)
            common.free_memory()
            print(f"  r50step {mode:>8} {impl:>5}: {common.fmt(row['ms'])} ms "
                  f"{common.fmt(row['images_per_s'], 1)} img/s peak {common.fmt(row['peak_mib'], 0)} MiB "
                  f"loss {common.fmt(row['first_loss'])}"
                  + (f"  ERROR {row['error']}" if row["error"] else "")
                  + f"  ({time.time() - t0:.1f} s)", flush=True)
        losses = [r["first_loss"] for r in pair]
        if None not in losses:  # same weights, same batch: the first losses agree to rounding
            for r in pair:
                r["first_loss_rel_diff"] = abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12)
        rows += pair
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
    return rows


def speedups(rows):
    """t_native / t_ours per mode, where both ran."""
    by = {}
    for r in rows:
        by.setdefault(r["mode"], {})[r["impl"]] = r
    return {mode: d["cudnn"]["ms"] / d["ours"]["ms"] for mode, d in by.items()
            if d.get("cudnn", {}).get("ms") and d.get("ours", {}).get("ms")}
