#!/usr/bin/env bash
# test_install.sh: the installed library, used the way a C programmer uses
# one. Installs a build tree into a temporary prefix (`cmake --install BUILD
# --prefix TMP`), checks the layout (libmsa.so with its SOVERSION links,
# libmsa.a, include/msa/msa.h, bin/msa-mem, lib/pkgconfig/msa.pc,
# lib/cmake/msa), then builds examples/embed.c against that prefix alone,
# four ways: pkg-config with the shared library, pkg-config --static with
# libmsa.a (which checks Requires.private/Libs.private), and a tiny CMake
# project with find_package(msa) linking msa::msa and msa::msa_static. Each
# program runs on the real stories260K model (converted by the installed
# msa-mem) and must print the same greedy text; where the assets are absent
# they only run against a missing model and must fail with a clear message,
# and the test says so.
#
#   test_install.sh BUILD_DIR SOURCE_DIR CMAKE C_COMPILER GENERATOR
#
# Run by ctest (tests/install.cmake), label unit. The assets come from
# MSA_ASSETS or MSA_DEFAULT_ASSETS (../shared/assets).
set -eu

build=$1 src=$2 cmake=$3 cc=$4 gen=$5
tmp=$(mktemp -d "${TMPDIR:-/tmp}/msa-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
say() { echo "-- $*"; }

prefix=$tmp/prefix
"$cmake" --install "$build" --prefix "$prefix" > "$tmp/install.log" ||
    { cat "$tmp/install.log"; fail "cmake --install"; }

# ---- layout ------------------------------------------------------------------
pc=$(find "$prefix" -name msa.pc -path '*/pkgconfig/*')
[ -n "$pc" ] || fail "no lib*/pkgconfig/msa.pc under $prefix"
libdir=$(cd "$(dirname "$pc")/.." && pwd)
for f in "$libdir/libmsa.a" "$prefix/include/msa/msa.h" "$prefix/bin/msa-mem" \
         "$libdir/cmake/msa/msaConfig.cmake" "$libdir/cmake/msa/msaConfigVersion.cmake"; do
    [ -f "$f" ] || fail "missing $f"
done
real=$(ls "$libdir"/libmsa.so.*.*.* 2>/dev/null | head -n1)
[ -n "$real" ] || fail "no libmsa.so.MAJOR.MINOR.PATCH in $libdir"
[ "$(readlink "$libdir/libmsa.so.0")" = "$(basename "$real")" ] || fail "libmsa.so.0 is not a link to $(basename "$real")"
[ "$(readlink "$libdir/libmsa.so")" = libmsa.so.0 ] || fail "libmsa.so is not a link to libmsa.so.0"
if command -v readelf > /dev/null; then
    readelf -d "$real" | grep -q 'SONAME.*\[libmsa\.so\.0\]' || fail "SONAME of $real is not libmsa.so.0"
fi
[ "$(ls "$prefix/include")" = msa ] && [ "$(ls "$prefix/include/msa")" = msa.h ] ||
    fail "include/ holds more than msa/msa.h: $(find "$prefix/include" -type f)"
say "layout: $(cd "$prefix" && find . -type f -o -type l | sort | tr '\n' ' ')"

# The installed command finds the installed library (through its RPATH
# $ORIGIN/../lib), not the build tree's.
if command -v ldd > /dev/null; then
    got=$(ldd "$prefix/bin/msa-mem" | sed -n 's/.*libmsa\.so\.0 => \([^ ]*\).*/\1/p')
    [ "$(cd "$(dirname "$got")" 2>/dev/null && pwd)" = "$libdir" ] ||
        fail "installed msa-mem loads libmsa.so.0 from '$got', not $libdir"
fi
"$prefix/bin/msa-mem" version > "$tmp/version.txt" || fail "installed msa-mem does not start"
say "installed: $(cat "$tmp/version.txt")"

# ---- the model ---------------------------------------------------------------
assets=
for d in "${MSA_ASSETS:-}" "${MSA_DEFAULT_ASSETS:-}" "$src/../shared/assets"; do
    if [ -n "$d" ] && [ -f "$d/stories260K/stories260K.bin" ]; then assets=$d; break; fi
done
model=$tmp/stories260K.gguf
if [ -n "$assets" ]; then
    "$prefix/bin/msa-mem" -q convert llama2c "$assets/stories260K/stories260K.bin" \
        "$assets/stories260K/tok512.bin" "$model" > /dev/null || fail "installed msa-mem convert"
fi

# Runs one build of embed: twice on a fresh store with the model (the second
# run resumes the session), or once on a missing model.
first_text=
check_embed() {
    local exe=$1 how=$2
    if [ -z "$assets" ]; then
        if "$exe" "$tmp/no-such-model.gguf" "$tmp/store-none" > "$tmp/out.txt" 2> "$tmp/err.txt"; then
            fail "$how: embed succeeded on a missing model"
        fi
        grep -q "embed: opening the engine: not found" "$tmp/err.txt" ||
            fail "$how: unclear error on a missing model: $(cat "$tmp/err.txt")"
        say "$how: starts and reports: $(head -c 200 "$tmp/err.txt")"
        return
    fi
    local store=$tmp/store-$(basename "$exe")
    "$exe" "$model" "$store" > "$tmp/run1.txt" || fail "$how: embed exited $?"
    "$exe" "$model" "$store" > "$tmp/run2.txt" || fail "$how: embed (resumed) exited $?"
    grep -q "0 tokens before, 24 generated" "$tmp/run1.txt" ||
        fail "$how: unexpected output: $(cat "$tmp/run1.txt")"
    local now
    now=$(sed -n 's/.* generated, \([0-9]*\) now.*/\1/p' "$tmp/run1.txt")
    grep -q "$now tokens before, 24 generated" "$tmp/run2.txt" ||
        fail "$how: the second run did not resume the session: $(cat "$tmp/run2.txt")"
    local text
    text=$(head -n1 "$tmp/run1.txt")
    if [ -z "$first_text" ]; then first_text=$text;
    elif [ "$text" != "$first_text" ]; then fail "$how: generated '$text', not '$first_text'"; fi
    say "$how: ok: $(tail -n1 "$tmp/run1.txt")"
}

# embed.c copied out of the tree: nothing but the prefix can be found.
mkdir -p "$tmp/app"
cp "$src/examples/embed.c" "$tmp/app/"

# ---- pkg-config --------------------------------------------------------------
pkgconfig_done=0
if command -v pkg-config > /dev/null; then
    export PKG_CONFIG_PATH=$libdir/pkgconfig
    [ "$(pkg-config --modversion msa)" = "$(sed -n 's/^Version: //p' "$pc")" ] ||
        fail "pkg-config --modversion msa"
    # shellcheck disable=SC2046
    "$cc" -std=c11 -Wall -Werror "$tmp/app/embed.c" -o "$tmp/app/embed-pc" \
        $(pkg-config --cflags --libs msa) -Wl,-rpath,"$(pkg-config --variable=libdir msa)" ||
        fail "cc embed.c \$(pkg-config --cflags --libs msa)"
    check_embed "$tmp/app/embed-pc" "pkg-config, libmsa.so"

    static_libs=$(pkg-config --static --libs msa)
    static_libs=${static_libs/-lmsa /$libdir/libmsa.a }
    # shellcheck disable=SC2086
    "$cc" -std=c11 -Wall -Werror "$tmp/app/embed.c" -o "$tmp/app/embed-pc-static" \
        $(pkg-config --cflags msa) $static_libs ||
        fail "cc embed.c libmsa.a \$(pkg-config --static --libs msa): Libs.private incomplete?"
    if command -v readelf > /dev/null && readelf -d "$tmp/app/embed-pc-static" | grep -q 'libmsa'; then
        fail "the static build still needs libmsa.so"
    fi
    check_embed "$tmp/app/embed-pc-static" "pkg-config --static, libmsa.a"
    unset PKG_CONFIG_PATH
    pkgconfig_done=1
else
    say "pkg-config not installed (Debian: pkg-config): the pkg-config builds were NOT tested"
fi

# ---- find_package(msa) -------------------------------------------------------
cat > "$tmp/app/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(msa_consumer C)
find_package(msa 0.1 REQUIRED)
add_executable(embed-cmake embed.c)
target_link_libraries(embed-cmake PRIVATE msa::msa)
add_executable(embed-cmake-static embed.c)
target_link_libraries(embed-cmake-static PRIVATE msa::msa_static)
EOF
"$cmake" -S "$tmp/app" -B "$tmp/app/build" -G "$gen" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_PREFIX_PATH="$prefix" > "$tmp/cmake.log" 2>&1 ||
    { cat "$tmp/cmake.log"; fail "configuring a project with find_package(msa)"; }
"$cmake" --build "$tmp/app/build" > "$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log"; fail "building against msa::msa / msa::msa_static"; }
check_embed "$tmp/app/build/embed-cmake" "find_package, msa::msa"
check_embed "$tmp/app/build/embed-cmake-static" "find_package, msa::msa_static"

if [ -z "$assets" ]; then
    say "NOTE: no stories260K (set MSA_ASSETS): the programs were built and started, not run on a model"
fi
if [ "$pkgconfig_done" = 0 ]; then
    exit 77
fi
if [ -n "$assets" ]; then
    echo "ok: installed to a prefix, embed.c built four ways, each run on stories260K"
else
    echo "ok: installed to a prefix, embed.c built four ways and started (no model run)"
fi
