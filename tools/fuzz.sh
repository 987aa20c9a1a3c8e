#!/usr/bin/env bash
# fuzz.sh: builds the libFuzzer targets of every untrusted-input parser
# (tests/fuzz.cmake: GGUF, safetensors, tokenizer.json, llama2.c files,
# export files, the store's records) with clang, coverage instrumentation,
# ASan and UBSan in the library code itself, and runs each on its seeds
# (tests/fuzz/<name>/, plus the real GGUF files of the assets cut to 64 KiB).
# ctest runs it as the `slow` test fuzz-parsers; by hand:
#
#   tools/fuzz.sh [BUILD_DIR] [SECONDS_PER_TARGET] [TARGET...]
#   tools/fuzz.sh --runs N [BUILD_DIR] [TARGET...]    # N executions each
#
# Every target's summary line gives executions, coverage (cov: edges,
# ft: features) and the corpus; its log is BUILD_DIR/<target>.log, its
# grown corpus BUILD_DIR/corpus/<name>. Exits 77 (skipped) when clang or its
# libFuzzer runtime is missing, 1 when a target crashed (the reproducer is
# in BUILD_DIR/crashes: replay it with BUILD_DIR/tests/<target> FILE, then
# keep it as tests/fuzz/<name>/crash-<what> once fixed).
# FUZZ_NICE (default 19) is the niceness of the runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs= secs=20
if [ "${1:-}" = "--runs" ]; then
  runs=$2; shift 2
  build=${1:-$root/build-fuzz}; shift $(( $# ? 1 : 0 ))
else
  build=${1:-$root/build-fuzz}; secs=${2:-20}; shift $(( $# > 2 ? 2 : $# ))
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(gguf safetensors tokenizer-json llama2c export store-records)

command -v clang >/dev/null || { echo "SKIPPED: clang not installed"; exit 77; }
probe=$(mktemp -d)
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n){return 0;}' > "$probe/p.c"
if ! clang -fsanitize=fuzzer "$probe/p.c" -o "$probe/p" 2>/dev/null; then
  rm -rf "$probe"; echo "SKIPPED: clang has no libFuzzer runtime (Debian: libclang-rt-14-dev or clang-14)"; exit 77
fi
rm -rf "$probe"

cmake -S "$root" -B "$build" -G Ninja -DMSA_CUDA=OFF -DMSA_FUZZ=ON \
      -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
nice -n "${FUZZ_NICE:-19}" cmake --build "$build" --target $(printf 'fuzz-%s ' "${targets[@]}") >/dev/null

assets=${MSA_ASSETS:-${MSA_DEFAULT_ASSETS:-$root/../shared/assets}}
mkdir -p "$build/crashes"
status=0
for name in "${targets[@]}"; do
  bin=fuzz-$name
  corpus=$build/corpus/$name
  mkdir -p "$corpus"
  cp -n "$root/tests/fuzz/$name"/* "$corpus"/ 2>/dev/null || true
  if [ "$name" = gguf ] && [ -d "$assets" ]; then
    # the real GGUF files cut to their first 64 KiB (header, metadata and
    # tensor table: what the parser reads)
    for f in "$assets"/gguf/*.gguf "$assets"/vocab/*.gguf; do
      [ -f "$f" ] && head -c 65536 "$f" > "$corpus/real-$(basename "$f")"
    done
  fi
  if [ "$name" = tokenizer-json ] && [ -f "$assets/vocab/llama3/tokenizer.json" ]; then
    cp -n "$assets/vocab/llama3/tokenizer.json" "$corpus/real-llama3.json"
  fi
  limit=(-max_total_time="$secs")
  [ -n "$runs" ] && limit=(-runs="$runs")
  echo "== $bin ${runs:+$runs runs}${runs:-for ${secs}s}"
  if ! nice -n "${FUZZ_NICE:-19}" "$build/tests/$bin" "${limit[@]}" -max_len=65536 \
       -artifact_prefix="$build/crashes/$name-" -print_final_stats=1 "$corpus" \
       >"$build/$bin.log" 2>&1; then
    tail -40 "$build/$bin.log"; status=1
  fi
  # the last status line (execs, cov, ft, corpus) and the totals
  grep -E "^#[0-9]+.*(pulse|DONE|NEW|REDUCE)" "$build/$bin.log" | tail -1 || true
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$build/$bin.log" || true
done
exit $status
