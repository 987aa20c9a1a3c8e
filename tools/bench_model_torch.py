#!/usr/bin/env python3
"""bench_model_torch.py: the baseline for tools/bench-model. The same
Llama-3.2-1B shape (16 layers, hidden 2048, 32 query heads, 8 KV heads, head
dim 64, FFN 8192, vocab 128256, tied embeddings) in Hugging Face transformers:
LlamaForCausalLM from a config, random init, bf16, attn_implementation="sdpa",
on the same GPU.

  - prefill: one chunk of P tokens (default 4096) into an empty DynamicCache,
    logits of the last position only (logits_to_keep=1, as bench-model);
  - batch-1 greedy decode with L tokens of memory: a DynamicCache filled with
    random K/V tensors of L tokens per layer (no 512K-token prefill), then
    `steps` tokens, each fed the previous step's argmax. The time includes
    what DynamicCache does per step (it concatenates the new token onto every
    layer's cache, a copy that grows with L). The loop does not wait for the
    host between steps (torch queues ahead); bench-model does wait.

Prints a table; --ours bench.json (bench-model --json) adds the ratio.

  python3 tools/bench_model_torch.py [--lengths 4096,32768,131072,524288]
      [--steps 16] [--prefill 4096] [--json FILE] [--ours FILE]
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache


def make_config():
    kw = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
              num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
              head_dim=64, max_position_embeddings=1 << 20, tie_word_embeddings=True,
              rope_theta=500000.0, attn_implementation="sdpa")
    try:
        return LlamaConfig(**kw)
    except TypeError:
        kw.pop("rope_theta")
        return LlamaConfig(**kw)


def new_cache(config):
    try:
        return DynamicCache(config=config)
    except TypeError:
        return DynamicCache()


def sync_time():
    torch.cuda.synchronize()
    return time.perf_counter()


@torch.inference_mode()
def prefill(model, config, P, reps=3):
    ids = (torch.arange(P, device="cuda") * 7919 + 13) % config.vocab_size
    ids = ids[None]
    times = []
    for i in range(reps + 1):
        cache = new_cache(config)
        t0 = sync_time()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        out.logits.argmax(-1)
        t1 = sync_time()
        if i:
            times.append(t1 - t0)
        del cache, out
    times.sort()
    return times[len(times) // 2]


@torch.inference_mode()
def decode(model, config, L, steps):
    cache = new_cache(config)
    g = torch.Generator(device="cuda").manual_seed(7)
    hkv, d = config.num_key_value_heads, config.head_dim
    for layer in range(config.num_hidden_layers):
        k = torch.rand(1, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
        v = torch.rand(1, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
        cache.update(k, v, layer)
        del k, v
    tok = torch.ones(1, 1, dtype=torch.long, device="cuda")
    t0 = 0.0
    for s in range(-2, steps):
        if s == 0:
            t0 = sync_time()
        pos = torch.tensor([cache.get_seq_length()], device="cuda")
        out = model(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=pos)
        tok = out.logits[:, -1:].argmax(-1)
    t1 = sync_time()
    del cache
    torch.cuda.empty_cache()
    return (t1 - t0) * 1e3 / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4096,32768,131072,524288")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--prefill", type=int, default=4096)
    ap.add_argument("--json")
    ap.add_argument("--ours")
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",") if x]

    torch.manual_seed(0)
    config = make_config()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    dev = torch.cuda.get_device_name(0)
    print(f"device: {dev}; torch {torch.__version__}; transformers "
          f"{__import__('transformers').__version__}", flush=True)

    res = {"device": dev, "rows": []}
    t = prefill(model, config, a.prefill)
    res["rows"].append({"what": "prefill", "tokens": a.prefill, "ms_per_token": t * 1e3 / a.prefill,
                        "tokens_per_s": a.prefill / t})
    print(f"prefill {a.prefill} tokens: {t * 1e3:.1f} ms, {a.prefill / t:.0f} tok/s", flush=True)
    for L in lengths:
        try:
            ms = decode(model, config, L, a.steps)
        except torch.cuda.OutOfMemoryError:
            print(f"decode L={L}: out of memory")
            torch.cuda.empty_cache()
            continue
        res["rows"].append({"what": "decode", "tokens": L, "ms_per_token": ms,
                            "tokens_per_s": 1e3 / ms})
        print(f"decode L={L}: {ms:.3f} ms/token, {1e3 / ms:.1f} tok/s", flush=True)

    ours = {}
    if a.ours:
        try:
            with open(a.ours) as f:
                for r in json.load(f)["rows"]:
                    ours[(r["what"], r["tokens"])] = r["tokens_per_s"]
        except (OSError, ValueError, KeyError) as e:
            print(f"--ours {a.ours}: {e}")
    print("\n| run | memory tokens | transformers tok/s | msa-mem MSA tok/s | msa-mem dense tok/s "
          "| MSA / transformers |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        pre = r["what"] == "prefill"
        m = ours.get(("prefill MSA" if pre else "MSA", r["tokens"]))
        dn = ours.get(("prefill dense" if pre else "dense", r["tokens"]))
        fmt = lambda x: f"{x:.1f}" if x else "-"
        ratio = f"{m / r['tokens_per_s']:.2f}x" if m else "-"
        print(f"| {r['what']} | {r['tokens']} | {r['tokens_per_s']:.1f} | {fmt(m)} | {fmt(dn)} "
              f"| {ratio} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
