"""What the Python tests share: the seed they draw from, and the real model
files they read from the user cache (tools/fetch-models.sh fills it)."""

import os
from pathlib import Path

# $MSA_TEST_MODELS names the cached models the tests use, as
# tools/quickstart.sh and tools/fetch-models.sh name them (default smollm2;
# "all" for every one).
MODEL_FILES = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
               "qwen-0.5b": "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
               "qwen-1.5b": "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"}


def fresh_seed():
    """$MSA_TEST_SEED when set (to replay a failure), else a fresh seed;
    printed either way, as tests/testutil.h's t_seed() does for C tests."""
    s = os.environ.get("MSA_TEST_SEED")
    seed = int(s, 0) if s else int.from_bytes(os.urandom(6), "little") or 1
    print(f"seed {seed} (MSA_TEST_SEED to replay)")
    return seed


def model_cache():
    return Path(os.environ.get("MSA_MODELS") or
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "msa-mem" / "models")


def selected_models():
    """File names of the models $MSA_TEST_MODELS selects."""
    want = os.environ.get("MSA_TEST_MODELS", "smollm2").split()
    if "all" in want:
        want = list(MODEL_FILES)
    return [MODEL_FILES[w] for w in want if w in MODEL_FILES]
