#!/usr/bin/env python3
"""bench_cpu_llamacpp.py: msa-mem's CPU forward pass beside llama.cpp's on the
same GGUF files, in one run, and the ratios (docs/models.md).

    python3 tools/bench_cpu_llamacpp.py [--build build] [--threads 2] [--prompt 512]
        [--decode 32] [--rounds 5] [--python VENV/bin/python3] [MODEL.gguf ...]

For each model, --rounds rounds; each round runs msa-mem (build/tests/bench-gguf,
one run) and llama.cpp (llama-cpp-python's Llama, in --python's interpreter)
one after the other, each in its own process, so that both see the same
moments of a shared machine. A run: the same --prompt token ids
(1000 + (i * 7919) % 20000) decoded as one batch (prefill, tokens/s), then
--decode greedy steps of one token (ms/token, mean over the steps). The best
round of each engine is reported (the machine is shared: the best is the
least disturbed), with the maximum resident memory of its process.

llama.cpp is run with its defaults but for n_threads = n_threads_batch =
--threads, n_batch = n_ubatch = --prompt (the whole prompt as one batch, as
msa-mem does), n_ctx = prompt + decode rounded up, and logits of the last row
only. Without models given: the Qwen2.5-Coder-0.5B-Instruct Q4_K_M and its
Q8_0 requantisation (tools/requant-q8_0.py) from ~/.cache/msa-mem/models.
"""
import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r'''
import json, sys, time
import numpy as np
import llama_cpp
path, threads, P, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model_path=path, n_ctx=(P + N + 255) // 256 * 256, n_threads=threads,
                      n_threads_batch=threads, n_batch=P, n_ubatch=P, logits_all=False,
                      verbose=False)
V = llm.n_vocab()
def last_logits():  # the last row's logits, as llama.cpp's C API hands them out
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))
toks = [(1000 + (i * 7919) % 20000) % V for i in range(P)]
t = time.perf_counter()
llm.eval(toks)
pf = P / (time.perf_counter() - t)
tok = int(np.argmax(last_logits()))
ids = []
t = time.perf_counter()
for s in range(N):
    if s < 4:
        ids.append(tok)
    llm.eval([tok])
    tok = int(np.argmax(last_logits()))
dec = (time.perf_counter() - t) * 1e3 / N
print(json.dumps({"engine": "llama.cpp", "version": llama_cpp.__version__,
                  "prefill_tok_s": pf, "decode_ms": dec, "first_ids": ids}))
'''


def run_rss(cmd, env=None):
    """As run(), with the child's maximum resident memory (MB) from wait4."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {err.strip()[-2000:]}")
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    r = json.loads(line)
    r["rss_mb"] = ru.ru_maxrss / 1024.0
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--python", default=sys.executable,
                    help="a Python with llama-cpp-python and numpy")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    cache = os.path.expanduser("~/.cache/msa-mem/models")
    models = a.models or [os.path.join(cache, "Qwen2.5-Coder-0.5B-Instruct.Q8_0-requant.gguf"),
                          os.path.join(cache, "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf")]
    bench = os.path.join(a.build, "tests", "bench-gguf")
    if not os.access(bench, os.X_OK):
        sys.exit(f"bench_cpu_llamacpp: {bench} missing (build with -DMSA_BENCHMARKS=ON)")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"{a.threads} threads, prompt {a.prompt}, decode {a.decode}, best of {a.rounds} rounds",
          flush=True)
    results = []
    for path in models:
        if not os.path.exists(path):
            print(f"# {path}: absent, skipped (tools/fetch-models.sh, tools/requant-q8_0.py)")
            continue
        best = {}
        for r in range(a.rounds):
            for eng in ("msa-mem", "llama.cpp"):
                if eng == "msa-mem":
                    res = run_rss([bench, path, "--threads", str(a.threads), "--prompt",
                                   str(a.prompt), "--decode", str(a.decode), "--runs", "1",
                                   "--json"])
                else:
                    res = run_rss([a.python, "-c", CHILD, path, str(a.threads), str(a.prompt),
                                   str(a.decode)])
                print(f"#   round {r + 1} {eng:9s}: prefill {res['prefill_tok_s']:7.1f} tok/s, "
                      f"decode {res['decode_ms']:7.2f} ms/token, rss {res['rss_mb']:6.0f} MB, "
                      f"first ids {res.get('first_ids')}", flush=True)
                b = best.setdefault(eng, dict(res))
                b["prefill_tok_s"] = max(b["prefill_tok_s"], res["prefill_tok_s"])
                b["decode_ms"] = min(b["decode_ms"], res["decode_ms"])
                b["rss_mb"] = max(b["rss_mb"], res["rss_mb"])
        m, l = best["msa-mem"], best["llama.cpp"]
        results.append({"model": os.path.basename(path), "msa-mem": m, "llama.cpp": l})
    print()
    print("| model | engine | prefill tokens/s | decode ms/token | max RSS MB |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        for eng in ("msa-mem", "llama.cpp"):
            e = r[eng]
            print(f"| {r['model']} | {eng} | {e['prefill_tok_s']:.1f} | {e['decode_ms']:.2f} | "
                  f"{e['rss_mb']:.0f} |")
    print()
    print("| model | prefill: msa-mem / llama.cpp (>= 1 is the target) | "
          "decode: msa-mem / llama.cpp (<= 1 is the target) |")
    print("|---|---:|---:|")
    for r in results:
        m, l = r["msa-mem"], r["llama.cpp"]
        print(f"| {r['model']} | {m['prefill_tok_s'] / l['prefill_tok_s']:.2f} | "
              f"{m['decode_ms'] / l['decode_ms']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
