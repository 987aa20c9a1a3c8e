#!/usr/bin/env bash
# fuzz.sh: builds the libFuzzer targets of the untrusted-file parsers (GGUF,
# safetensors) with clang, ASan and UBSan, and runs each for a bounded time
# on a seed corpus of real files. ctest runs it as the `slow` test
# fuzz-parsers; by hand:
#
#   tools/fuzz.sh [BUILD_DIR] [SECONDS_PER_TARGET]
#
# Exits 77 (skipped) when clang or its libFuzzer runtime is missing, 1 when a
# target finds a crash (the reproducer is left in BUILD_DIR/crashes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-fuzz}
secs=${2:-20}
command -v clang >/dev/null || { echo "SKIPPED: clang not installed"; exit 77; }
probe=$(mktemp -d)
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n){return 0;}' > "$probe/p.c"
if ! clang -fsanitize=fuzzer "$probe/p.c" -o "$probe/p" 2>/dev/null; then
  rm -rf "$probe"; echo "SKIPPED: clang has no libFuzzer runtime"; exit 77
fi
rm -rf "$probe"

cmake -S "$root" -B "$build" -G Ninja -DMSA_CUDA=OFF -DMSA_FUZZ=ON \
      -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target fuzz-gguf fuzz-safetensors >/dev/null

assets=${MSA_ASSETS:-${MSA_DEFAULT_ASSETS:-$root/../shared/assets}}
corpus=$build/corpus
mkdir -p "$corpus/gguf" "$corpus/st" "$build/crashes"
# Seeds: the real GGUF files cut to their first 64 KiB (the header, metadata
# and tensor table, which is what the parser reads), and a small safetensors.
if [ -d "$assets" ]; then
  for f in "$assets"/gguf/*.gguf "$assets"/vocab/*.gguf; do
    [ -f "$f" ] && head -c 65536 "$f" > "$corpus/gguf/$(basename "$f")"
  done
fi
python3 - "$corpus/st/seed.safetensors" <<'PY'
import json, struct, sys
hdr = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
       "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
       "__metadata__": {"format": "pt"}}
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + bytes(range(32)))
PY

status=0
for t in fuzz-gguf:gguf fuzz-safetensors:st; do
  bin=${t%%:*}; dir=${t##*:}
  echo "== $bin for ${secs}s"
  if ! "$build/tests/$bin" -max_total_time="$secs" -artifact_prefix="$build/crashes/" \
       -print_final_stats=1 "$corpus/$dir" 2>"$build/$bin.log"; then
    tail -30 "$build/$bin.log"; status=1
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$build/$bin.log" || true
  fi
done
exit $status
