#!/usr/bin/env bash
# ncu profile of one lightning forward sweep on the GPU machine: the summary sections and
# per-SASS-instruction stall samples, for reading offline with benchmarks/sass_summary.py.
#
#   bash benchmarks/profile_lightning.sh [N] [D]     (defaults 4096 128; b=4 h=32 bf16)
#
# Writes $OUT/prof.txt (ncu --page details) and $OUT/sass.csv (--page source --csv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/prof_out}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" N="${1:-4096}" D="${2:-128}"
WORKLOAD='
import os, torch, lightning
n, d = int(os.environ["N"]), int(os.environ["D"])
q, k, v = (torch.randn(4, 32, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
slopes = lightning.build_slopes(32).cuda()
for _ in range(3):
    lightning.attn(q, k, v, slopes)
torch.cuda.synchronize()
'
# The third call is profiled (the first two absorb lazy initialisation).
ncu --clock-control none -k regex:sweep_mma --launch-skip 2 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
  --section LaunchStats --section SourceCounters --section ComputeWorkloadAnalysis \
  --section MemoryWorkloadAnalysis -o /tmp/lightning_prof -f python3 -c "$WORKLOAD"
ncu --import /tmp/lightning_prof.ncu-rep --page details > "$OUT/prof.txt"
ncu --import /tmp/lightning_prof.ncu-rep --page source --csv --print-source sass > "$OUT/sass.csv"
grep -E "Duration|Issue Slots Busy|Executed Ipc Active|Eligible Warps|Local Memory Spilling Requests " "$OUT/prof.txt"
