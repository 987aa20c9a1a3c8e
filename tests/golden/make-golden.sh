#!/usr/bin/env bash
# make-golden.sh: how the golden files in this folder were made, and how to
# make them again (only when the formats change on purpose: the point of
# these files is that they do not change, and test-golden checks that every
# later version still reads them exactly as MANIFEST says).
#
#   tests/golden/make-golden.sh BUILD_DIR [ASSETS_DIR]
#
# BUILD_DIR is a CPU build of the tree (msa-mem and tests/test-golden built);
# ASSETS_DIR holds stories260K/ (default $MSA_ASSETS, else ../shared/assets
# beside the source). What it does, all with the stories260K model on the CPU
# (f32 sessions), greedy decoding, blocks of 16 tokens and k = 4:
#
#   1. converts stories260K.bin + tok512.bin to GGUF (msa-mem convert llama2c);
#   2. session "story": the prompt "Once upon a time" and 32 generated tokens
#      (3 blocks per layer, the last one partial);
#   3. session "branch": a fork of "story" (sharing its full blocks, copy on
#      write for the partial one) extended by 12 generated tokens;
#   4. exports "story" to story.msax (the MSAMEMX1 export format);
#   5. compacts the store and checks it with fsck;
#   6. copies the store's data.mdb to store/ (lock.mdb is not kept: LMDB
#      writes it on open, and test-golden opens a copy) and story.msax here;
#   7. writes MANIFEST with test-golden --manifest (read from the working
#      store, not from store/, which must stay free of lock files).
#
# With --store2 it makes only the format 2 store instead (store2/: data.mdb
# and the one segment file; MANIFEST2): test-golden --make-store2 writes
# it from synthetic content, test-golden --manifest DIR store2 lists it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "--store2" ]; then
  build=$(cd "${2:?usage: make-golden.sh --store2 BUILD_DIR}" && pwd)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$build/tests/test-golden" --make-store2 "$work"
  mv "$work/store" "$work/store2"
  rm -rf "$here/store2"
  mkdir -p "$here/store2/segments"
  cp "$work/store2/data.mdb" "$here/store2/data.mdb"
  cp "$work"/store2/segments/*.seg "$here/store2/segments/"
  {
    echo "# MANIFEST2: what tests/golden/store2 (store format 2: LMDB and a segment"
    echo "# file) holds, as written by make-golden.sh --store2 on $(date -u +%Y-%m-%d)."
    echo "# Hashes as in MANIFEST."
    "$build/tests/test-golden" --manifest "$work" store2
  } >"$here/MANIFEST2"
  ls -l "$here/store2/data.mdb" "$here"/store2/segments/*.seg "$here/MANIFEST2"
  exit 0
fi
build=$(cd "${1:?usage: make-golden.sh BUILD_DIR [ASSETS_DIR]}" && pwd)
assets=${2:-${MSA_ASSETS:-$here/../../../shared/assets}}
msa=$build/msa-mem
manifest_tool=$build/tests/test-golden
for f in "$msa" "$manifest_tool"; do
  [ -x "$f" ] || { echo "make-golden.sh: $f missing: build $build first" >&2; exit 1; }
done
[ -f "$assets/stories260K/stories260K.bin" ] ||
  { echo "make-golden.sh: no stories260K in $assets" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MSA_MODEL=$work/stories260K.gguf MSA_STORE=$work/store MSA_DEVICE=cpu
"$msa" -q convert llama2c "$assets/stories260K/stories260K.bin" \
       "$assets/stories260K/tok512.bin" "$MSA_MODEL"
"$msa" -q new story --block-size 16 --top-k 4
"$msa" -q gen story --prompt "Once upon a time" -n 32 >/dev/null
"$msa" -q fork story branch
"$msa" -q gen branch -n 12 >/dev/null
"$msa" -q export story "$work/story.msax"
"$msa" -q compact
"$msa" -q fsck

rm -rf "$here/store"
mkdir -p "$here/store"
cp "$work/store/data.mdb" "$here/store/data.mdb"
cp "$work/story.msax" "$here/story.msax"
{
  echo "# MANIFEST: what tests/golden/store and story.msax hold, as written by"
  echo "# make-golden.sh on $(date -u +%Y-%m-%d) ($("$msa" version | head -1))."
  echo "# test-golden rebuilds these lines from the files and compares; hashes are"
  echo "# FNV-1a 64 of the tokens (little-endian int32) and of each decoded K, V"
  echo "# and index-key block ([heads][block_size][dim], rows past fill zero)."
  "$manifest_tool" --manifest "$work"
} >"$here/MANIFEST"
ls -l "$here/store/data.mdb" "$here/story.msax" "$here/MANIFEST"
