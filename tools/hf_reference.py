#!/usr/bin/env python3
"""hf_reference.py: check the engine's Hugging Face loader and forward pass
against transformers itself, on the GPU machine (torch and transformers are
there, not on the development machines or in CI).

It builds small randomly initialised LlamaForCausalLM and Qwen2ForCausalLM
models (2 layers, hidden 128, 4 heads, 2 KV heads, vocab 256; the Llama one
with llama3 rope scaling and an untied lm_head, the Qwen2 one with q/k/v
biases and tied embeddings), saves each with save_pretrained (safetensors)
in fp32 and in bf16, runs the fp32 model in fp32 on a fixed token sequence,
and writes for every directory:

    DIR/config.json, DIR/model.safetensors   (from save_pretrained)
    DIR/tokens.txt                           the token ids, one line
    DIR/logits.f32                           little-endian fp32 [T][vocab]
    DIR/tolerance.txt                        "f32" or "bf16"

Then, unless --no-check, it runs the engine's checker
(`test-hf --reference DIR`, built from tests/test-hf.c) on each directory:
fp32 must match with max relative error < 1e-4 (max |a-b| / max |b|), bf16
with cosine similarity > 0.999 per position.

    cmake -B build -G Ninja -DCMAKE_PREFIX_PATH=$PWD/.devdeps -DMSA_CUDA=OFF
    ninja -C build test-hf
    export LD_LIBRARY_PATH=$PWD/.devdeps/lib
    python3 tools/hf_reference.py --out /tmp/hfref --checker build/tests/test-hf

Exit status 0 when every check passed.
"""
import argparse
import copy
import os
import subprocess
import sys


def build_models(out, seed, n_tokens):
    import numpy as np
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(seed)
    common = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                  max_position_embeddings=512, rms_norm_eps=1e-5)
    models = {
        "llama": (LlamaForCausalLM, LlamaConfig(
            **common, rope_theta=10000.0, tie_word_embeddings=False,
            attention_bias=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64})),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(
            **common, rope_theta=1000000.0, tie_word_embeddings=True,
            use_sliding_window=False)),
    }
    tokens = torch.randint(0, 256, (1, n_tokens), generator=torch.Generator().manual_seed(seed))
    dirs = []
    for name, (cls, cfg) in models.items():
        model = cls(cfg).eval().float()
        # Default init gives near-zero biases and unit norms, which would not
        # exercise the loader: make every parameter matter.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif pname.endswith(".bias"):
                    p.copy_(0.5 * torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            logits = model(tokens).logits[0].float().numpy()
        for dtype in ("f32", "bf16"):
            d = os.path.join(out, f"{name}-{dtype}")
            m = model if dtype == "f32" else copy.deepcopy(model).to(torch.bfloat16)
            m.save_pretrained(d, safe_serialization=True)
            with open(os.path.join(d, "tokens.txt"), "w") as f:
                f.write(" ".join(str(int(t)) for t in tokens[0]) + "\n")
            np.asarray(logits, dtype="<f4").tofile(os.path.join(d, "logits.f32"))
            with open(os.path.join(d, "tolerance.txt"), "w") as f:
                f.write(dtype + "\n")
            dirs.append(d)
            print(f"{d}: {cls.__name__}, {n_tokens} tokens, logits "
                  f"[{logits.shape[0]}][{logits.shape[1]}]")
    return dirs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/msa-hfref")
    ap.add_argument("--checker", default="build/tests/test-hf")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    dirs = build_models(args.out, args.seed, args.tokens)
    if args.no_check:
        return 0
    failed = 0
    for d in dirs:
        r = subprocess.run([args.checker, "--reference", d])
        print(f"{d}: {'ok' if r.returncode == 0 else 'FAILED'}")
        failed += r.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
