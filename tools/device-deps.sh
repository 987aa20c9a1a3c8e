#!/usr/bin/env bash
# Prepares .devdeps/, the folder a GPU machine without LMDB, PCRE2, jansson
# or curl headers needs to build msa-mem: the shared sysroot script's LMDB
# and curl pieces plus PCRE2's and jansson's headers and libraries, all
# unpacked from Debian's packages. Build there with
#   cmake -B build -DCMAKE_PREFIX_PATH=$PWD/.devdeps -DCMAKE_CUDA_ARCHITECTURES=90
#   export LD_LIBRARY_PATH=$PWD/.devdeps/lib:$LD_LIBRARY_PATH
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
bash ../shared/device/sysroot.sh .devdeps
tmp=$(mktemp -d)
(cd "$tmp" && apt-get download libpcre2-dev libpcre2-8-0 libjansson-dev libjansson4 libzstd-dev >/dev/null)
mkdir -p "$tmp/x"
for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/x"; done
cp "$tmp"/x/usr/include/{pcre2.h,jansson.h,jansson_config.h,zstd.h,zdict.h,zstd_errors.h} .devdeps/include/
cp -a "$tmp"/x/usr/lib/x86_64-linux-gnu/{libpcre2-8.so*,libjansson.so*} .devdeps/lib/
rm -rf "$tmp"
du -sh .devdeps
