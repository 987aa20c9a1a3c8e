#!/bin/sh
# repo_qa.sh: questions about a repository, answered from an msa-mem session
# that holds the whole repository, with the memory blocks each answer read.
#
#   examples/repo_qa/repo_qa.sh REPO "QUESTION" [SESSION]
#
# The first run creates the session (named after the repository unless
# SESSION is given) and ingests the files git tracks (or, outside git, the
# files .gitignore does not exclude); later runs ingest only what changed,
# then ask. `ask --explain` lists the files and line ranges the answer read.
#
# Environment: MSA_MODEL (the GGUF model, required), MSA_STORE (the store;
# default ~/.local/share/msa-mem), MSA_BIN (the msa-mem binary; default: the
# one on PATH, else build/msa-mem of this checkout), REPO_QA_BLOCK (block
# size, default 32), REPO_QA_TOPK (blocks read per step, default 8).
set -eu
if [ $# -lt 2 ]; then
  echo "usage: $0 REPO \"QUESTION\" [SESSION]" >&2
  exit 2
fi
repo=$1
question=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${MSA_BIN:-$(command -v msa-mem || echo "$here/build/msa-mem")}
session=${3:-repo-$(basename "$(cd "$repo" && pwd)")}
: "${MSA_MODEL:?set MSA_MODEL to a GGUF model}"

if ! "$bin" info "$session" >/dev/null 2>&1; then
  "$bin" new "$session" --block-size "${REPO_QA_BLOCK:-32}" --top-k "${REPO_QA_TOPK:-8}"
fi
"$bin" ingest "$session" "$repo"
# ask a fork, so that questions do not pile up in the repository's memory
"$bin" rm "$session-q" >/dev/null 2>&1 || true
"$bin" fork "$session" "$session-q"
"$bin" ask "$session-q" "$question" --explain -n "${REPO_QA_TOKENS:-48}"
"$bin" rm "$session-q" >/dev/null
