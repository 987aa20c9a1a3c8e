#!/usr/bin/env bash
# gpu-validate.sh: the whole test suite on a GPU machine, GPU tests included,
# plus a command-line run of a session on CUDA. Run from the project root on
# the device, with the build dependencies in .devdeps/ and the test assets in
# .devassets/ (tools/device-deps.sh, and a copy of ../shared/assets):
#
#   OUT=/some/dir tools/gpu-validate.sh
#
# Logs: $OUT/build.log, $OUT/ctest.log, $OUT/cli.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/msa-validate}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.devdeps/lib:${LD_LIBRARY_PATH:-}
export MSA_ASSETS=$PWD/.devassets
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

cmake -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=$PWD/.devdeps \
      -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/build.log" 2>&1 &&
  cmake --build build-gpu -j 16 >>"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }

ctest --test-dir build-gpu -LE slow -j 4 --output-on-failure >"$out/ctest.log" 2>&1
rc=$?
grep -E "tests passed|Passed|Failed|Skipped|\*\*\*" "$out/ctest.log" | tail -40

# a session on CUDA from the command line: fill, exit, resume, explain
{
  set -x
  m=build-gpu/msa-mem; export MSA_STORE=/tmp/msa-gpu-store MSA_MODEL=/tmp/s260k.gguf
  rm -rf "$MSA_STORE"
  $m convert llama2c .devassets/stories260K/stories260K.bin .devassets/stories260K/tok512.bin "$MSA_MODEL" --force
  $m --device cuda new story --block-size 16 --top-k 4
  $m --device cuda gen story --prompt "Once upon a time" -n 200
  $m --device cuda gen story -n 100
  $m --device cuda ask story "Who was in the park?" -n 24 --explain
  $m info story
  $m gen story -n 4   # a bf16 session on the CPU engine: refused with a clear message
} >"$out/cli.log" 2>&1
tail -25 "$out/cli.log"
exit $rc
