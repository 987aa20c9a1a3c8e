#!/usr/bin/env bash
# seed-sweep.sh: runs each randomized test program over many seeds and names
# every seed that fails, so that a bug that shows for 1 seed in 100 is found
# here and not by a CI run at random.
#
#   tools/seed-sweep.sh [--build DIR] [--gpu] [--jobs N] [--scale F] [TEST[:RUNS] ...]
#
# Without TESTs it sweeps the CPU programs (with --gpu, the CUDA ones) at the
# run counts below: 1000 for the kernel test, fewer for heavier programs.
# --scale multiplies every count (0.1 for a quick look). Seeds are BASE+1,
# BASE+2, ...; BASE is $MSA_TEST_SEED or drawn from the clock, and printed, so
# a sweep replays exactly. A failing run's output is kept under the log folder
# ($MSA_SWEEP_LOGS, default DIR/seed-sweep) and its seed printed with the
# command that replays it. Exit 0 only if no run failed; a program that skips
# (exit 77: no GPU, no assets) counts as skipped; if every run skipped, the
# sweep exits 77 too.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
gpu=0
jobs=$(nproc 2>/dev/null || echo 2)
scale=1
tests=()
while (($#)); do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --gpu) gpu=1; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --scale) scale=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "seed-sweep.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) tests+=("$1"); shift ;;
  esac
done

# name:runs, name being the program under DIR/tests (args after a comma).
cpu_default=(test-kernels:1000 test-sampling:300 test-sha256:200 test-tokenizer:200
             test-gguf:200 test-hf:100 test-model:100 test-pager:100 test-store:30
             test-store-concurrency:30 test-session:20 test-store-crash:5 test-calibrate:3)
gpu_default=(test-kernels-cuda:200 test-pager,--gpu:30 test-model-cuda:10 test-session-cuda:5)
if ((${#tests[@]} == 0)); then
  if ((gpu)); then tests=("${gpu_default[@]}"); else tests=("${cpu_default[@]}"); fi
fi

base=${MSA_TEST_SEED:-$(( ($(date +%s) << 20) ^ $$ ))}
logs=${MSA_SWEEP_LOGS:-$build/seed-sweep}
rm -rf "$logs"
mkdir -p "$logs"
echo "seed sweep: base seed $base (MSA_TEST_SEED=$base replays this sweep), $jobs jobs, logs in $logs"

# One run: prints "pass", "skip" or "fail" and keeps the log of a failure.
run_one() {
  local prog=$1 seed=$2 name=$3
  local bin=${prog%%,*} args=()
  [[ $prog == *,* ]] && IFS=, read -r -a args <<<"${prog#*,}"
  local log="$logs/$name.$seed.log" rc=0
  MSA_TEST_SEED=$seed "$build/tests/$bin" "${args[@]}" >"$log" 2>&1 || rc=$?
  case $rc in
    0) echo pass; rm -f "$log" ;;
    77) echo skip; rm -f "$log" ;;
    *) echo "fail $seed $rc" ;;
  esac
}
export -f run_one
# The environment ctest gives these programs (tests/CMakeLists.txt).
build=$(cd "$build" && pwd)
logs=$(cd "$logs" && pwd)
export build logs MSA_BUILD_DIR=$build MSA_SOURCE_DIR=$PWD
[ -d ../shared/assets ] && export MSA_DEFAULT_ASSETS=${MSA_DEFAULT_ASSETS:-$(cd ../shared/assets && pwd)}

total_pass=0 total_fail=0 total_skip=0
for t in "${tests[@]}"; do
  prog=${t%%:*}
  runs=${t#*:}
  [[ $t == *:* ]] || runs=100
  runs=$(awk -v n="$runs" -v s="$scale" 'BEGIN { r = int(n * s + 0.5); print r < 1 ? 1 : r }')
  bin=${prog%%,*}
  name=${prog//,/}
  if [ ! -x "$build/tests/$bin" ]; then
    echo "seed-sweep.sh: $build/tests/$bin is not built" >&2
    exit 2
  fi
  t0=$(date +%s)
  results=$(for ((i = 1; i <= runs; i++)); do echo $((base + i)); done |
            xargs -P "$jobs" -I{} bash -c 'run_one "$0" "$1" "$2"' "$prog" {} "$name")
  pass=$(grep -c '^pass' <<<"$results" || true)
  skip=$(grep -c '^skip' <<<"$results" || true)
  fail=$(grep -c '^fail' <<<"$results" || true)
  printf '%-28s %5d runs  %5d passed  %3d failed  %5d skipped  %4ds\n' \
         "${prog//,/ }" "$runs" "$pass" "$fail" "$skip" $(( $(date +%s) - t0 ))
  while read -r _ seed rc; do
    echo "  FAILED: seed $seed (exit $rc): MSA_TEST_SEED=$seed $build/tests/${prog//,/ }; log $logs/$name.$seed.log"
  done < <(grep '^fail' <<<"$results" | sort -k2 -n || true)
  total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail)) total_skip=$((total_skip + skip))
done
echo "seed sweep: $total_pass passed, $total_fail failed, $total_skip skipped"
((total_fail == 0)) || exit 1
if ((total_pass == 0)); then # everything skipped (no GPU): ctest reports a skip
  echo "SKIPPED: every run skipped (no GPU or no assets; run one program by hand to see its reason)"
  exit 77
fi
