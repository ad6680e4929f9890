"""The workloads benchmarks/profile.sh runs under ncu: a few identical calls of one op, so
that ncu can skip the first (lazy initialisation) and profile a later one.

    python benchmarks/profile_workload.py lightning [N] [D]       # fwd, b=4 h=32 bf16
    python benchmarks/profile_workload.py im2win LAYER PRECISION  # fwd, a bench_im2win layer;
                                                                  # fp32 / tf32 / bf16 / bf16_cl
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import torch  # noqa: E402

CALLS = 3


def lightning_fwd(n=4096, d=128):
    import lightning
    q, k, v = (torch.randn(4, 32, int(n), int(d), device="cuda", dtype=torch.bfloat16) for _ in range(3))
    slopes = lightning.build_slopes(32).cuda()
    for _ in range(CALLS):
        lightning.attn(q, k, v, slopes)


def im2win_fwd(layer="conv10", precision="fp32"):
    import im2win
    from bench_im2win import PAPER, PAPER_BATCH, RESNET, RESNET_BATCH
    shapes = {row[0]: (row, PAPER_BATCH) for row in PAPER}
    shapes.update({row[0]: (row, RESNET_BATCH) for row in RESNET})
    if layer not in shapes:
        sys.exit(f"profile_workload: unknown layer {layer!r}; one of {sorted(shapes)}")
    (_, c, h, w, k, f, s, p), batch = shapes[layer]
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    fmt = torch.channels_last if precision.endswith("_cl") else torch.contiguous_format
    x = torch.randn(batch, c, h, w, device="cuda", dtype=dtype).to(memory_format=fmt)
    wt = torch.randn(k, c, f, f, device="cuda", dtype=dtype).to(memory_format=fmt)
    for _ in range(CALLS):
        im2win.conv2d(x, wt, stride=s, padding=p)


WORKLOADS = {"lightning": lightning_fwd, "im2win": im2win_fwd}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in WORKLOADS:
        sys.exit(__doc__)
    WORKLOADS[sys.argv[1]](*sys.argv[2:])
    torch.cuda.synchronize()
