#!/usr/bin/env bash
# ncu profile of one kernel launch on the GPU machine: the summary sections and per-SASS
# instruction stall samples, for reading offline with benchmarks/sass_summary.py.
#
#   bash benchmarks/profile.sh TAG KERNEL_REGEX WORKLOAD [ARGS...]
#   e.g. bash benchmarks/profile.sh fwd sweep_mma lightning 4096 128
#        bash benchmarks/profile.sh conv10_fp32 implicit_gemm im2win conv10 fp32
#
# WORKLOAD and ARGS go to benchmarks/profile_workload.py, which calls the op 3 times; the
# third launch matching KERNEL_REGEX is profiled (with one a call, the third call's: the
# first ones absorb lazy initialisation).
# Writes $OUT/prof_TAG.txt (ncu --page details) and $OUT/sass_TAG.csv (--page source --csv).
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,12p "$0"; exit 2; }
TAG="$1" KERNEL="$2"; shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/prof_out}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
ncu --clock-control none -k "regex:$KERNEL" --launch-skip 2 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
  --section LaunchStats --section SourceCounters --section ComputeWorkloadAnalysis \
  --section MemoryWorkloadAnalysis -o "/tmp/prof_$TAG" -f python3 benchmarks/profile_workload.py "$@"
ncu --import "/tmp/prof_$TAG.ncu-rep" --page details > "$OUT/prof_$TAG.txt"
ncu --import "/tmp/prof_$TAG.ncu-rep" --page source --csv --print-source sass > "$OUT/sass_$TAG.csv"
grep -E "^  [a-z_].*\(|Duration|Issue Slots Busy|Executed Ipc Active|Eligible Warps|Achieved Occupancy|Registers Per|Local Memory Spilling Requests |Memory Throughput|Compute \(SM\) Throughput" "$OUT/prof_$TAG.txt"
