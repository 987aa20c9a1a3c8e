#!/usr/bin/env python3
"""llama2c_to_hf.py: convert a llama2.c checkpoint (.bin) into a Hugging Face
Llama model directory (config.json + safetensors), with python3 and numpy only.

The output is what Hugging Face's own Llama conversion makes of Meta weights:
tensor names model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight
and so on, and the rows of every head of q_proj and k_proj permuted from
llama2.c's interleaved RoPE pairs (2i, 2i+1) to HF's rotate-half pairs
(i, i + head_dim/2). It is the test fixture that proves the engine's handling
of that layout against llama2.c's reference logits (tests/test-hf.c).

The safetensors file is written by hand (the format is an 8-byte
little-endian header length, a JSON header, then the tensor bytes), so no
package beyond numpy is needed.

    tools/llama2c_to_hf.py stories260K.bin OUTDIR [--dtype f32|bf16|f16]
                           [--shards N]

--shards N writes model-0000i-of-0000N.safetensors and
model.safetensors.index.json instead of a single model.safetensors.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np


def read_llama2c(path):
    """Returns (config dict, list of (name, float32 array)) in HF naming."""
    with open(path, "rb") as f:
        raw = f.read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack_from("<7i", raw, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    if dim <= 0 or n_heads <= 0 or dim % n_heads or n_kv <= 0 or n_heads % n_kv:
        sys.exit(f"{path}: implausible header {dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len}")
    hd = dim // n_heads
    kv_dim = n_kv * hd
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.size:
            sys.exit(f"{path}: truncated")
        a = data[pos:pos + n].reshape(shape).astype(np.float32)
        pos += n
        return a

    tok = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len * hd // 2)  # legacy RoPE tables
    take(seq_len * hd // 2)
    wcls = tok if shared else take(vocab, dim)

    def rotate_half_rows(w, heads):
        # Row h*hd + 2i + j (interleaved) moves to h*hd + j*hd/2 + i.
        out_dim, in_dim = w.shape
        return (w.reshape(heads, hd // 2, 2, in_dim).transpose(0, 2, 1, 3)
                 .reshape(out_dim, in_dim))

    tensors = [("model.embed_tokens.weight", tok)]
    for l in range(n_layers):
        p = f"model.layers.{l}."
        tensors += [
            (p + "input_layernorm.weight", rms_att[l]),
            (p + "self_attn.q_proj.weight", rotate_half_rows(wq[l], n_heads)),
            (p + "self_attn.k_proj.weight", rotate_half_rows(wk[l], n_kv)),
            (p + "self_attn.v_proj.weight", wv[l]),
            (p + "self_attn.o_proj.weight", wo[l]),
            (p + "post_attention_layernorm.weight", rms_ffn[l]),
            (p + "mlp.gate_proj.weight", w1[l]),
            (p + "mlp.down_proj.weight", w2[l]),
            (p + "mlp.up_proj.weight", w3[l]),
        ]
    tensors.append(("model.norm.weight", rms_final))
    if not shared:
        tensors.append(("lm_head.weight", wcls))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": dim,
        "intermediate_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": hd,
        "vocab_size": vocab,
        "max_position_embeddings": seq_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": shared,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    return config, tensors


def to_bf16_bytes(a):
    """fp32 -> bf16 with round-to-nearest-even, as little-endian bytes."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2").tobytes()


def encode(a, dtype):
    if dtype == "F32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(a, dtype="<f2").tobytes()
    return to_bf16_bytes(a)


def write_safetensors(path, tensors, dtype):
    """Writes [(name, array)] as one safetensors file; returns its data size."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name, a in sorted(tensors, key=lambda t: t[0]):
        b = encode(a, dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # pad so that the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("outdir")
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    dtype = {"f32": "F32", "bf16": "BF16", "f16": "F16"}[args.dtype]
    config, tensors = read_llama2c(args.checkpoint)
    config["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    os.makedirs(args.outdir, exist_ok=True)
    with open(os.path.join(args.outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    if args.shards <= 1:
        write_safetensors(os.path.join(args.outdir, "model.safetensors"), tensors, dtype)
        return
    n = args.shards
    weight_map, total = {}, 0
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = tensors[i::n]
        total += write_safetensors(os.path.join(args.outdir, name), part, dtype)
        for t, _ in part:
            weight_map[t] = name
    with open(os.path.join(args.outdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total},
                   "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
