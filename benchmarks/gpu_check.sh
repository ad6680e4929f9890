#!/usr/bin/env bash
# Build, test, check and benchmark the checkout on a machine with an NVIDIA GPU, one step
# after another, each with its own log, exit code and time, and a summary at the end.
#
#   bash benchmarks/gpu_check.sh [STEP ...]        (run from anywhere; it cd's to the repo root)
#
# Steps (run in this order whatever order they are given in; default: build tests
# bench-lightning bench-im2win):
#   build            python3 setup.py build_ext --inplace (MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0
#                    unless set), then checks that `import lightning` is this checkout's
#   tests            python3 -m pytest tests -x -q -m cuda            ($PYTEST_ARGS overrides)
#   ctest            C++/CUDA unit tests without Python: CMake + ctest if CMakeLists.txt exists,
#                    else nvcc on each csrc/*/cuda/tests/*.cu with that op's kernel .cu files
#   sanitizer        compute-sanitizer memcheck + racecheck ($SANITIZER_TOOLS) on
#                    benchmarks/sanitize_small.py ($SANITIZE_ARGS) and on the ctest binaries
#   quick            not a step: makes the bench steps run with --quick
#   bench-lightning  benchmarks/bench_lightning.py --out $OUT   (+ $BENCH_LIGHTNING_ARGS)
#   bench-im2win     benchmarks/bench_im2win.py --out $OUT      (+ $BENCH_IM2WIN_ARGS)
#   bench-sp         benchmarks/bench_sequence_parallel.py --out $OUT (+ $BENCH_SP_ARGS): on one
#                    GPU the per-rank compute and the labelled all-gather model; with several
#                    GPUs under torchrun ($SP_RANKS processes when set)
#   bench-integrations  benchmarks/bench_integrations.py --out $OUT (+ $BENCH_INTEGRATIONS_ARGS)
#   report           benchmarks/report.py on $OUT: report.md, lightning.png, im2win.png
#                    (runs by itself after any bench step)
#   demo             `make demo` (the main job at its GPU size) on the build above, through a
#                    venv shim over this python whose stamps say "installed, built, installed
#                    editable", so make neither creates a venv, rebuilds nor installs;
#                    demo.log and demo.png
#   all              build tests ctest sanitizer bench-lightning bench-im2win
#
# Files in $OUT (default /tmp/gpu_out): build_test.log (build, import check, tests),
# check.log (ctest, sanitizer), bench.log, lightning.json, im2win.json,
# sequence_parallel.json, integrations.json, report.md, lightning.png, im2win.png, and for
# the demo step demo.log and demo.png. Peer wheels in
# .whl/ (fla-core, lightning-attn) are installed into /tmp/site for bench-lightning.
# Every step has a timeout ($BUILD_TIMEOUT, $TESTS_TIMEOUT, $CTEST_TIMEOUT, $SANITIZER_TIMEOUT
# per tool, $BENCH_TIMEOUT per bench, $DEMO_TIMEOUT). $GIT_COMMIT names the commit recorded in
# the results when the checkout's .git is not the code being measured. benchmarks/README.md
# has examples and the durations to expect.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"   # ours before PyTorch Lightning
export GIT_COMMIT="${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}"
PY="${PYTHON:-python3}"
T0=$(date +%s)

BUILD_LOG="$OUT/build_test.log"
CHECK_LOG="$OUT/check.log"
BENCH_LOG="$OUT/bench.log"

# ------------------------------------------------------------------------------ arguments
declare -A WANT=()
QUICK=""
if [ $# -eq 0 ]; then
  set -- build tests bench-lightning bench-im2win
fi
for a in "$@"; do
  case "$a" in
    build|tests|ctest|sanitizer|bench-lightning|bench-im2win|bench-sp|bench-integrations|report|demo) WANT[$a]=1 ;;
    quick) QUICK="--quick" ;;
    all) for s in build tests ctest sanitizer bench-lightning bench-im2win; do WANT[$s]=1; done ;;
    *) echo "gpu_check.sh: unknown step '$a' (build tests ctest sanitizer quick bench-lightning bench-im2win bench-sp bench-integrations report demo all)"; exit 2 ;;
  esac
done
want() { [ -n "${WANT[$1]:-}" ]; }

declare -A RC=() SECS=()
ORDER=()
run_step() {  # run_step NAME LOG COMMAND...  (output appended to LOG and echoed)
  local name="$1" log="$2"; shift 2
  local t cmd="$*"
  t=$(date +%s)
  echo "===== [$name] $(date -u +%H:%M:%S) ${cmd:0:200}" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  RC[$name]=$rc; SECS[$name]=$(( $(date +%s) - t )); ORDER+=("$name")
  echo "===== [$name] rc=$rc in ${SECS[$name]} s" | tee -a "$log"
  return $rc
}

# ------------------------------------------------------------------------------ machine
{
  echo "gpu_check.sh $* at $(date -u +%Y-%m-%dT%H:%M:%SZ), root $ROOT, commit ${GIT_COMMIT:-unknown}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv 2>&1 || true
  command -v nvcc >/dev/null && nvcc --version | tail -2
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" 2>&1
} | tee -a "$BUILD_LOG"

# ------------------------------------------------------------------------------ peers
install_peers() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && "$PY" -c "import fla, lightning_attn; print('peers: fla', fla.__version__, '| lightning_attn', lightning_attn.__file__)"
  else
    echo "no .whl/*.whl (carry .whl): peers fla / lightning_attn will be missing"
    return 1
  fi
}
if want bench-lightning; then
  run_step peers "$BUILD_LOG" install_peers
fi

# ------------------------------------------------------------------------------ build
check_import() {
  "$PY" - <<EOF
import os, sys
import lightning, im2win
root = os.path.realpath("$ROOT")
lf = os.path.realpath(lightning.__file__)
print("lightning:", lf)
print("im2win:   ", getattr(im2win, "__file__", None))
if not lf.startswith(root + os.sep):
    sys.exit("import lightning found a different package (PyTorch Lightning?): " + lf)
if not hasattr(lightning, "attn"):
    sys.exit("lightning has no attn")
print("ok: this checkout's lightning and im2win")
EOF
}
if want build; then
  export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
  run_step build "$BUILD_LOG" timeout "${BUILD_TIMEOUT:-420}" "$PY" setup.py build_ext --inplace
  run_step import "$BUILD_LOG" check_import
fi

# ------------------------------------------------------------------------------ tests
if want tests; then
  # shellcheck disable=SC2086
  run_step tests "$BUILD_LOG" timeout "${TESTS_TIMEOUT:-300}" "$PY" -m pytest tests ${PYTEST_ARGS:--x -q -m cuda}
fi

# ------------------------------------------------------------------------------ ctest
CTEST_BINS_FILE=/tmp/ctest_bins.txt   # the test executables, for the sanitizer step
build_ctests() {
  local arch="${CTEST_CUDA_ARCH:-90a}" rc=0 found=0 t op_dir bin p
  : > "$CTEST_BINS_FILE"
  if [ -f CMakeLists.txt ]; then
    cmake -S . -B /tmp/build-cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" || return 1
    cmake --build /tmp/build-cmake -j "${MAX_JOBS:-16}" || return 1
    ctest --test-dir /tmp/build-cmake --output-on-failure --timeout 120 || rc=1
    # only the GPU tests: compute-sanitizer fails a program that makes no CUDA call
    find /tmp/build-cmake -type f -perm -u+x -name '*cuda_test*' ! -name '*.so' ! -path '*CMakeFiles*' \
      > "$CTEST_BINS_FILE" 2>/dev/null
    return $rc
  fi
  # No CMake: per op, compile its kernel .cu files once (in parallel), then link each test.
  for op_dir in csrc/*/cuda; do                       # csrc/<op>/cuda
    ls "$op_dir"/tests/*.cu >/dev/null 2>&1 || continue
    found=1
    local objdir="/tmp/ctest/obj/$(basename "$(dirname "$op_dir")")" flags pids=() src
    mkdir -p "$objdir"; rm -f "$objdir"/*.o
    flags=(-std=c++17 -O2 -arch="sm_$arch" --expt-relaxed-constexpr -lineinfo
           -I csrc -I "$(dirname "$op_dir")" -I "$op_dir")
    for src in "$op_dir"/*.cu; do
      [ -f "$src" ] || continue
      nvcc "${flags[@]}" -c "$src" -o "$objdir/$(basename "$src" .cu).o" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { echo "ctest: a kernel file of $op_dir did not compile"; rc=1; }; done
    for t in "$op_dir"/tests/*.cu; do
      bin="/tmp/ctest/$(basename "$t" .cu)"
      # shellcheck disable=SC2046
      nvcc "${flags[@]}" "$t" $(ls "$objdir"/*.o 2>/dev/null) -o "$bin" -lcudart \
        || { echo "ctest: $t did not compile"; rc=1; continue; }
      echo "$bin" >> "$CTEST_BINS_FILE"
      echo "--- $bin"; timeout 120 "$bin" || { echo "ctest: $bin FAILED"; rc=1; }
    done
  done
  [ $found = 1 ] || echo "ctest: no CMakeLists.txt and no csrc/*/cuda/tests/*.cu: nothing to run"
  [ $rc = 0 ] && echo "ctest: all passed"
  return $rc
}
export -f build_ctests
export CTEST_BINS_FILE PY SANITIZE_ARGS="${SANITIZE_ARGS:-}"
if want ctest; then
  run_step ctest "$CHECK_LOG" timeout "${CTEST_TIMEOUT:-300}" bash -c build_ctests
fi

# ------------------------------------------------------------------------------ sanitizer
sanitize() {  # sanitize TOOL: the ctest binaries (if built) and sanitize_small.py
  local tool="$1" rc=0 extra=() b
  command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not on PATH"; return 1; }
  [ "$tool" = memcheck ] && extra=(--leak-check no)
  [ -f "$CTEST_BINS_FILE" ] || : > "$CTEST_BINS_FILE"
  while IFS= read -r b; do
    [ -n "$b" ] && [ -x "$b" ] || continue
    echo "--- $tool: $b"
    timeout 300 compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 9 --print-limit 30 "$b" || rc=1
  done < "$CTEST_BINS_FILE"
  echo "--- $tool: benchmarks/sanitize_small.py"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 9 \
    --print-limit 30 "$PY" benchmarks/sanitize_small.py ${SANITIZE_ARGS:-} || rc=1
  return $rc
}
export -f sanitize
if want sanitizer; then
  for tool in ${SANITIZER_TOOLS:-memcheck racecheck}; do
    run_step "sanitizer-$tool" "$CHECK_LOG" timeout "${SANITIZER_TIMEOUT:-300}" bash -c "sanitize $tool"
  done
fi

# ------------------------------------------------------------------------------ benchmarks
BENCHED=0
if want bench-lightning; then
  # shellcheck disable=SC2086
  run_step bench-lightning "$BENCH_LOG" timeout "${BENCH_TIMEOUT:-330}" "$PY" benchmarks/bench_lightning.py \
    --out "$OUT" $QUICK ${BENCH_LIGHTNING_ARGS:-}
  BENCHED=1
fi
if want bench-im2win; then
  # shellcheck disable=SC2086
  run_step bench-im2win "$BENCH_LOG" timeout "${BENCH_TIMEOUT:-330}" "$PY" benchmarks/bench_im2win.py \
    --out "$OUT" $QUICK ${BENCH_IM2WIN_ARGS:-}
  BENCHED=1
fi
if want bench-sp; then
  sp_cmd=("$PY")
  [ -n "${SP_RANKS:-}" ] && sp_cmd=(torchrun --nproc_per_node "$SP_RANKS")
  # shellcheck disable=SC2086
  run_step bench-sp "$BENCH_LOG" timeout "${BENCH_TIMEOUT:-450}" "${sp_cmd[@]}" \
    benchmarks/bench_sequence_parallel.py --out "$OUT" ${BENCH_SP_ARGS:-}
fi
if want bench-integrations; then
  # shellcheck disable=SC2086
  run_step bench-integrations "$BENCH_LOG" timeout "${BENCH_TIMEOUT:-550}" "$PY" \
    benchmarks/bench_integrations.py --out "$OUT" ${BENCH_INTEGRATIONS_ARGS:-}
fi
if want report || [ $BENCHED = 1 ]; then
  run_step report "$BENCH_LOG" bash -c "'$PY' benchmarks/report.py --results '$OUT' --png-dir '$OUT' > '$OUT/report.md'"
fi

# ------------------------------------------------------------------------------ demo
run_demo() {
  local shim=/tmp/demo-venv
  mkdir -p "$shim/bin"
  printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" > "$shim/bin/python"
  chmod +x "$shim/bin/python"
  # not older than the sources: make neither rebuilds nor installs into this python's
  # environment (which may hold PyTorch Lightning's own `lightning`)
  touch "$shim/.installed" "$shim/.built" "$shim/.editable"
  make demo VENV="$shim" && cp examples/demo.png "$OUT/"
}
export -f run_demo
export OUT
if want demo; then
  run_step demo "$OUT/demo.log" timeout "${DEMO_TIMEOUT:-420}" bash -c run_demo
fi

# ------------------------------------------------------------------------------ summary
echo
echo "================ summary ($(( $(date +%s) - T0 )) s) ================"
for s in "${ORDER[@]}"; do
  printf '%-20s rc=%-4s %5s s\n' "$s" "${RC[$s]}" "${SECS[$s]}"
done
if [ -n "${RC[tests]:-}" ]; then
  echo "--- tests:"; grep -E "passed|failed|error|no tests ran" "$BUILD_LOG" | tail -3
fi
if [ -n "${RC[build]:-}" ] && [ "${RC[build]}" != 0 ]; then
  echo "--- build errors:"; grep -E "error|Error" "$BUILD_LOG" | head -15
fi
if [ -f "$CHECK_LOG" ]; then
  echo "--- check:"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitize_small:|ctest:|tests passed|tests failed|FAIL" "$CHECK_LOG" | tail -20
fi
if [ -f "$OUT/report.md" ]; then
  echo "--- targets:"; grep -E "^- (met|open):" "$OUT/report.md"
fi
echo "--- files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
FAIL=0
for s in "${ORDER[@]}"; do [ "${RC[$s]}" = 0 ] || FAIL=1; done
exit $FAIL
