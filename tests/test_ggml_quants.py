"""Every ggml tensor format the engine reads, dequantized by the library
(gguf-dump) and by gguf-py (llama.cpp's own Python reference,
gguf.quants.dequantize), must agree bit for bit.

- Random blocks: each type gets rows of random bytes, so that every bit of
  every scale, min and packed integer takes both values (fp16 scales that come
  out as inf or NaN make NaN elements, which must be NaN on both sides).
- Real files: every tensor of the model files named by $MSA_TEST_MODELS
  (default smollm2) that tools/fetch-models.sh has put in the user cache (SmolLM2-135M-Instruct Q4_1, Qwen2.5-Coder Q4_K_M: Q4_K,
  Q5_0, Q6_K, Q8_0, F32), where they are present.

Seeds come from $MSA_TEST_SEED or are fresh, and are printed.
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402
from gguf.quants import dequantize  # noqa: E402
from pyutil import fresh_seed, model_cache, selected_models  # noqa: E402

BUILD = Path(os.environ.get("MSA_BUILD_DIR", "build"))
# random scales include inf and NaN on purpose: numpy warns about them
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K,
         T.Q5_K, T.Q6_K]


def dump(path, name):
    out = subprocess.run([str(BUILD / "gguf-dump"), str(path), name], check=True,
                         capture_output=True).stdout
    return np.frombuffer(out, dtype="<f4")


def same_bits(got, want):
    """Equal bit for bit, except that a NaN only has to be a NaN."""
    want = np.ascontiguousarray(want, dtype=np.float32).reshape(-1)
    if got.shape != want.shape:
        return False
    nan = np.isnan(want)
    return bool(np.array_equal(np.isnan(got), nan) and
                np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32)))


def test_random_blocks_match_gguf_py(tmp_path):
    rng = np.random.default_rng(fresh_seed())
    path = tmp_path / "blocks.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    expect = {}
    for t in TYPES:
        block, nbytes = GGML_QUANT_SIZES[t]
        per_row = 3 if block == 256 else 7  # rows of 768 or 224 elements
        rows = 5
        raw = rng.integers(0, 256, size=(rows, per_row * nbytes), dtype=np.uint8)
        name = f"t.{t.name}"
        w.add_tensor(name, raw, raw_dtype=t)  # shape in bytes: gguf-py derives the elements
        expect[name] = dequantize(raw, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    bad = []
    for name, want in expect.items():
        got = dump(path, name)
        if not same_bits(got, want):
            diff = np.nanmax(np.abs(got - want.reshape(-1))) if got.size == want.size else "size"
            bad.append(f"{name}: max diff {diff}")
    assert not bad, "; ".join(bad)




def cached_models():
    base = model_cache()
    return [base / f for f in selected_models() if (base / f).exists()]


@pytest.mark.parametrize("path", cached_models() or [None], ids=lambda p: p.name if p else "none")
def test_real_files_match_gguf_py(path):
    if path is None:
        pytest.skip("no cached model files: tools/fetch-models.sh fetches them")
    r = gguf.GGUFReader(str(path))
    kinds, bad = set(), []
    for t in r.tensors:
        if t.tensor_type not in TYPES and t.tensor_type != T.F32:
            bad.append(f"{t.name}: type {t.tensor_type.name} not covered")
            continue
        want = dequantize(t.data, t.tensor_type) if t.tensor_type != T.F32 else t.data
        if not same_bits(dump(path, t.name), want):
            bad.append(t.name)
        kinds.add(t.tensor_type.name)
    print(f"{path.name}: {len(r.tensors)} tensors of {sorted(kinds)} equal to gguf-py")
    assert not bad, ", ".join(bad[:10])
