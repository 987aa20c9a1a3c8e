"""Quantized GGUF tensors against an independent implementation.

gguf-py (the GGUF reference library of llama.cpp, from PyPI) writes the
stories260K model with its matrices quantized to Q8_0, F16 and BF16. Then:

- every tensor, dequantized by our library (gguf-dump), equals gguf-py's own
  dequantization bit for bit;
- the quantized model runs through `msa-mem gen` and its greedy text starts
  like the F32 model's (Q8_0 moves the logits a little; the first tokens of a
  greedy run are stable under that).

Skips when gguf-py or the assets are missing.
"""

import os
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

BUILD = Path(os.environ.get("MSA_BUILD_DIR", "build"))
ASSETS = Path(os.environ.get("MSA_ASSETS") or os.environ.get("MSA_DEFAULT_ASSETS", "../shared/assets"))
MODEL = ASSETS / "stories260K" / "stories260K.bin"
TOKENIZER = ASSETS / "stories260K" / "tok512.bin"
if not MODEL.exists():
    pytest.skip(f"no test assets at {ASSETS}", allow_module_level=True)


def read_llama2c(path):
    """The llama2.c checkpoint: header and weights as (name, array) in GGUF names."""
    raw = path.read_bytes()
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", raw[:28])
    w = np.frombuffer(raw, dtype="<f4", offset=28)
    hd = dim // heads
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        a = w[off:off + n].reshape(shape)
        off += n
        return a

    emb = take(abs(vocab), dim)
    att_norm = take(layers, dim)
    wq, wk = take(layers, dim, dim), take(layers, kv_heads * hd, dim)
    wv, wo = take(layers, kv_heads * hd, dim), take(layers, dim, dim)
    ffn_norm = take(layers, dim)
    w1, w2, w3 = take(layers, hidden, dim), take(layers, dim, hidden), take(layers, hidden, dim)
    out_norm = take(dim)
    t = [("token_embd.weight", emb)]
    for i in range(layers):
        t += [(f"blk.{i}.attn_norm.weight", att_norm[i]), (f"blk.{i}.attn_q.weight", wq[i]),
              (f"blk.{i}.attn_k.weight", wk[i]), (f"blk.{i}.attn_v.weight", wv[i]),
              (f"blk.{i}.attn_output.weight", wo[i]), (f"blk.{i}.ffn_norm.weight", ffn_norm[i]),
              (f"blk.{i}.ffn_gate.weight", w1[i]), (f"blk.{i}.ffn_down.weight", w2[i]),
              (f"blk.{i}.ffn_up.weight", w3[i])]
    t.append(("output_norm.weight", out_norm))
    hp = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
              vocab=abs(vocab), seq=seq)
    return hp, t


def read_tokenizer(path, vocab):
    raw = path.read_bytes()
    off = 4
    toks, scores = [], []
    for _ in range(vocab):
        score, n = struct.unpack("<fi", raw[off:off + 8])
        off += 8
        toks.append(raw[off:off + n].decode("utf-8", errors="replace").replace(" ", "\u2581"))
        scores.append(score)
        off += n
    types = []
    for i, s in enumerate(toks):
        if i == 0:
            types.append(2)
        elif i in (1, 2):
            types.append(3)
        elif s.startswith("<0x") and s.endswith(">") and len(s) == 6:
            types.append(6)
        else:
            types.append(1)
    return toks, scores, types


def new_writer(path, arch, hp):
    """A gguf-py writer for the stories260K network as architecture `arch`,
    hyperparameters and the SentencePiece vocabulary already added."""
    toks, scores, types = read_tokenizer(TOKENIZER, hp["vocab"])
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(hp["seq"])
    w.add_embedding_length(hp["dim"])
    w.add_feed_forward_length(hp["hidden"])
    w.add_block_count(hp["layers"])
    w.add_head_count(hp["heads"])
    w.add_head_count_kv(hp["kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(hp["vocab"])
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    return w


def qtype_for(name, a):
    """Q8_0 where rows split into blocks of 32, else F16 (1-D norms: F32);
    the attention output in BF16 to cover that type too."""
    if a.ndim == 1:
        return T.F32
    if name.endswith("attn_output.weight"):
        return T.BF16
    return T.Q8_0 if a.shape[-1] % 32 == 0 else T.F16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    f32 = d / "f32.gguf"
    subprocess.run([str(BUILD / "msa-mem"), "-q", "convert", "llama2c", str(MODEL),
                    str(TOKENIZER), str(f32)], check=True, capture_output=True)
    hp, tensors = read_llama2c(MODEL)
    q = d / "q8.gguf"
    w = new_writer(q, "llama", hp)
    expect = {}
    for name, a in tensors:
        a = np.ascontiguousarray(a, dtype=np.float32)
        qt = qtype_for(name, a)
        if qt == T.F32:
            w.add_tensor(name, a)
            expect[name] = a
        else:
            data = quantize(a, qt)
            w.add_tensor(name, data, raw_dtype=qt)
            expect[name] = dequantize(data, qt).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return f32, q, expect


def test_dequantization_matches_gguf_py(models):
    _, q, expect = models
    kinds = set()
    for name, want in expect.items():
        out = subprocess.run([str(BUILD / "gguf-dump"), str(q), name], check=True,
                             capture_output=True).stdout
        got = np.frombuffer(out, dtype="<f4")
        assert got.size == want.size, name
        assert np.array_equal(got, want.reshape(-1)), f"{name}: max diff {np.abs(got - want.reshape(-1)).max()}"
        kinds.add(want.ndim)
    assert kinds == {1, 2}


def gen(model, store, prompt, n=24):
    r = subprocess.run([str(BUILD / "msa-mem"), "-q", "--model", str(model), "--store", str(store),
                        "gen", "s", "--create", "--prompt", prompt, "-n", str(n)],
                       check=True, capture_output=True, text=True)
    return r.stdout


def test_quantized_model_generates_like_f32(models, tmp_path):
    f32, q, _ = models
    prompt = "Once upon a time, there was a little"
    a = gen(f32, tmp_path / "a", prompt)
    b = gen(q, tmp_path / "b", prompt)
    words_a, words_b = a.split(), b.split()
    same = 0
    while same < min(len(words_a), len(words_b)) and words_a[same] == words_b[same]:
        same += 1
    assert same >= 8, f"f32: {a!r}\nq8: {b!r}"


def to_rotate_half(w, n_heads):
    """Rows of a q/k projection reordered from interleaved RoPE pairs
    (2i, 2i+1) to rotate-half pairs (i, i + d/2), as qwen2 GGUFs expect."""
    rows, dim = w.shape
    hd = rows // n_heads
    return np.ascontiguousarray(
        w.reshape(n_heads, hd // 2, 2, dim).swapaxes(1, 2).reshape(rows, dim))


def test_qwen2_layout_matches_llama(models, tmp_path):
    """The same network written as a qwen2 GGUF (rotate-half RoPE, q/k/v
    biases present, here zero) by gguf-py must generate exactly what the
    llama GGUF generates: this exercises the qwen2 tensor names, the biases
    and the NEOX RoPE path against the interleaved one."""
    f32, _, _ = models
    hp, tensors = read_llama2c(MODEL)
    path = tmp_path / "qwen2.gguf"
    w = new_writer(path, arch="qwen2", hp=hp)
    for name, a in tensors:
        a = np.ascontiguousarray(a, dtype=np.float32)
        if name.endswith("attn_q.weight"):
            a = to_rotate_half(a, hp["heads"])
        elif name.endswith("attn_k.weight"):
            a = to_rotate_half(a, hp["kv_heads"])
        w.add_tensor(name, a)
        for proj in ("q", "k", "v"):
            if name.endswith(f"attn_{proj}.weight"):
                w.add_tensor(name.replace(".weight", ".bias"),
                             np.zeros(a.shape[0], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    prompt = "Once upon a time, there was a little"
    assert gen(path, tmp_path / "q", prompt, 48) == gen(f32, tmp_path / "l", prompt, 48)
