#!/usr/bin/env bash
# tools/gpu-run.sh: the one script the GPU machine runs for the CUDA
# attention core: build, GPU test, kernel benchmark, PyTorch comparison.
# Everything it prints also lands under $OUT (test.log, bench.log,
# bench.json, torch.log, torch.json, gpu.txt).
#
#   tools/gpu-run.sh [all|test|bench|topk|prefill]      (default all)
#
# prefill: the GPU test, then bench-msa --prefill (the 2048-row prefill and
# the 128K decode rows; every sparse-prefill and index version timed in the
# same run) to prefill.log / prefill.json.
#
# topk: the GPU test, then the top-k alone (bench-msa --topk-only: the
# automatic choice, v4, v5, v6 at 4/8/16 warps) and torch.topk on scores of the same shapes
# (topk.log, topk.json, torch-topk.log). BIN=<dir> with prebuilt
# test-kernels-cuda and bench-msa skips the build.
#
# It builds with CMake (only the targets it needs); if the tree does not
# configure (another folder mid-change), it compiles kernels/ alone with
# gcc/nvcc, which is all the test and the benchmark link against.
set -uo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
OUT=${OUT:-/tmp/msa-gpu-run}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.devdeps/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"

B=build-gpu
TEST=$B/tests/test-kernels-cuda
BENCH=$B/tools/bench-msa
t0=$(date +%s)
if [ -n "${BIN:-}" ] && [ -x "$BIN/test-kernels-cuda" ] && [ -x "$BIN/bench-msa" ]; then
  TEST=$BIN/test-kernels-cuda; BENCH=$BIN/bench-msa; echo "prebuilt binaries in $BIN"
elif cmake -B $B -G Ninja -DCMAKE_PREFIX_PATH="$PWD/.devdeps" -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/configure.log" 2>&1 &&
   cmake --build $B --target test-kernels-cuda bench-msa >"$OUT/build.log" 2>&1; then
  echo "cmake build ok ($(( $(date +%s) - t0 )) s)"
else
  echo "cmake build failed; tail of the logs:"; tail -n 15 "$OUT/configure.log" "$OUT/build.log" 2>/dev/null
  echo "building kernels/ directly"
  M=build-manual; mkdir -p $M
  FL="-O2 -I. -DMSA_HAVE_CUDA -D_GNU_SOURCE"
  objs=()
  for f in kernels/*.c; do gcc -std=gnu11 $FL -c "$f" -o "$M/$(basename "$f").o" & objs+=("$M/$(basename "$f").o"); done
  for f in kernels/*.cu; do nvcc -std=c++17 -O3 -arch=sm_90 --use_fast_math -lineinfo $FL -c "$f" -o "$M/$(basename "$f").o" & objs+=("$M/$(basename "$f").o"); done
  wait
  gcc -std=gnu11 $FL -I/usr/local/cuda/include -c tests/test-kernels-cuda.c -o $M/test.o
  nvcc -std=c++17 -O3 -arch=sm_90 $FL -c tools/bench-msa.cu -o $M/bench.o
  nvcc -o $M/test-kernels-cuda $M/test.o "${objs[@]}" -lm -lpthread
  nvcc -o $M/bench-msa $M/bench.o "${objs[@]}" -lm -lpthread
  TEST=$M/test-kernels-cuda; BENCH=$M/bench-msa
  echo "manual build done ($(( $(date +%s) - t0 )) s)"
fi

rc=0
if [ "$WHAT" = all ] || [ "$WHAT" = test ] || [ "$WHAT" = topk ] || [ "$WHAT" = prefill ]; then
  echo "== test-kernels-cuda"
  $TEST 2>&1 | tee "$OUT/test.log"; rc=${PIPESTATUS[0]}
  echo "test exit $rc"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = bench ]; then
  echo "== bench-msa"
  $BENCH --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
  echo "== bench_torch.py"
  PYTHONUNBUFFERED=1 python3 tools/bench_torch.py --ours "$OUT/bench.json" --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log"
  echo "== summary"; grep -E "^\||^device" "$OUT/bench.log"
fi
if [ "$WHAT" = prefill ]; then
  echo "== bench-msa --prefill"
  $BENCH --prefill --json "$OUT/prefill.json" 2>&1 | tee "$OUT/prefill.log"
fi
if [ "$WHAT" = topk ]; then
  echo "== bench-msa --topk-only"
  $BENCH --topk-only --json "$OUT/topk.json" 2>&1 | tee "$OUT/topk.log"
  echo "== torch.topk"
  PYTHONUNBUFFERED=1 python3 - "$OUT/topk.json" <<'PY' 2>&1 | tee "$OUT/torch-topk.log"
import json, sys
sys.path.insert(0, "tools")
import torch
import bench_torch as bt
ours = json.load(open(sys.argv[1]))
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {ours['date']}")
print("| shape | mode | B x rows | N | block scores | torch.topk us | v4 us | v5 us | v6 w4/w8/w16 us | top-k (auto) us | vs torch | vs v4 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in ours["results"]:
    n_rg, nb = r["B"] * r["rows"] * r["Hkv"], r["N"] // r["Bk"]
    nc = bt.n_copies(n_rg * nb * 4)
    sc = [torch.randn(n_rg, nb, device="cuda") for _ in range(nc)]
    t = bt.time_us(lambda i: torch.topk(sc[i], r["top_k"], dim=-1), reps=3 if r["rows"] > 1 else 20, n_inputs=nc)
    mode = "prefill" if r["rows"] > 1 else "decode"
    print(f"| {r['Hq']}/{r['Hkv']}/{r['d']} | {mode} | {r['B']}x{r['rows']} | {r['N'] // 1024}K | [{n_rg}][{nb}] | "
          f"{t:.1f} | {r['topk_v4_us']:.1f} | {r.get('topk_v5_us', 0):.1f} | "
          f"{r.get('topk_v6_w4_us', 0):.1f}/{r.get('topk_v6_w8_us', 0):.1f}/{r.get('topk_v6_w16_us', 0):.1f} | {r['topk_us']:.1f} | {t / r['topk_us']:.1f}x | {r['topk_v4_us'] / r['topk_us']:.1f}x |")
PY
fi
exit $rc
