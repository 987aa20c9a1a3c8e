#!/usr/bin/env bash
# tools/gpu-model.sh: the one script the GPU machine runs for the model on
# CUDA: build, the gpu test (test-model-cuda), the model benchmark
# (bench-model) and the transformers baseline (bench_model_torch.py), with
# logs under $OUT (gpu.txt, build.log, test.log, bench.log, bench.json,
# torch.log, torch.json).
#
#   tools/gpu-model.sh [all|test|bench|torch]      (default all)
#
# Assets: $MSA_ASSETS, else .devassets/ (git-ignored; copy stories260K/ from
# ../shared/assets there, since the GPU machine has no ../shared). Binaries:
# built with CMake into build-gpu/ (deps from .devdeps/), unless
# MSA_PREBUILT names a folder holding test-model-cuda and bench-model built
# elsewhere for sm_90 whose libraries all resolve here.
set -uo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
OUT=${OUT:-/tmp/model-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.devdeps/lib:${LD_LIBRARY_PATH:-}
[ -z "${MSA_ASSETS:-}" ] && [ -d .devassets/stories260K ] && export MSA_ASSETS=$PWD/.devassets
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
date -u +"date: %Y-%m-%d %H:%M UTC" | tee -a "$OUT/gpu.txt"

BIN=${MSA_PREBUILT:-}
if [ -n "$BIN" ] && [ -x "$BIN/bench-model" ] && [ -x "$BIN/test-model-cuda" ] &&
   ! ldd "$BIN/bench-model" "$BIN/test-model-cuda" | grep -q "not found"; then
  echo "using prebuilt binaries in $BIN"
else
  t0=$(date +%s)
  B=build-gpu
  if cmake -B $B -G Ninja -DCMAKE_PREFIX_PATH="$PWD/.devdeps" -DCMAKE_CUDA_ARCHITECTURES=90 \
       >"$OUT/configure.log" 2>&1 &&
     cmake --build $B --target test-model-cuda bench-model >"$OUT/build.log" 2>&1; then
    echo "build ok ($(( $(date +%s) - t0 )) s)"
  else
    echo "build failed:"; tail -n 30 "$OUT/configure.log" "$OUT/build.log"; exit 1
  fi
  BIN=$B/tests
fi

rc=0
if [ "$WHAT" = all ] || [ "$WHAT" = test ]; then
  echo "== test-model-cuda"
  timeout 400 "$BIN/test-model-cuda" 2>&1 | tee "$OUT/test.log"; rc=${PIPESTATUS[0]}
  echo "test exit $rc"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = bench ]; then
  echo "== bench-model"
  timeout 400 "$BIN/bench-model" --profile --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = torch ]; then
  echo "== bench_model_torch.py"
  PYTHONUNBUFFERED=1 timeout 400 python3 tools/bench_model_torch.py --ours "$OUT/bench.json" \
    --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log"
fi
echo "== summary"
grep -E "^test-model-cuda:|^SKIPPED" "$OUT/test.log" 2>/dev/null
grep -E "^\||^weight floor|^target|^HBM|^device" "$OUT/bench.log" "$OUT/torch.log" 2>/dev/null
exit $rc
