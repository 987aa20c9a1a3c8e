#!/usr/bin/env python3
"""bench_ingest.py: what storing costs an ingest, through a real session.

Appends N tokens (default 128K) of real text to a new session of a real model
through the Python bindings (msa_session_append_tokens: chunked prefill,
each chunk's blocks compressed and committed in one store transaction) and
reports the wall time, tokens/s, the KV bytes written (raw and on disk) and
msa_session_info.store_write_ms: the time the append spent handing blocks
to the store and committing them. The same prefill without storing takes
the wall time minus that (the store's work is not overlapped with the
model's), so the ratio printed is

    storing / not storing = wall / (wall - store_write)

Usage:
    tools/bench_ingest.py --model M.gguf [--device cuda] [--tokens 131072]
                          [--chunk 2048] [--store DIR] [--no-sync] [--json]

The store is a temporary directory under --store (default: under $TMPDIR),
removed at the end. The text: the Python standard library's sources on the
machine (the folder of the running interpreter's `os` module), files in an
order drawn from a printed seed, tokenized by the model until N tokens.
"""
import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bindings" / "python"))
import msa_mem  # noqa: E402


def count(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(s[-1:], 1)
    return int(s[:-1] if mult > 1 else s) * mult


def corpus_tokens(e, n: int, rng: random.Random) -> list:
    files = sorted(Path(os.__file__).parent.glob("*.py"))
    rng.shuffle(files)
    ids = []
    for f in files:
        ids += e.tokenize(f.read_text(errors="replace"))
        if len(ids) >= n:
            return ids[:n]
    sys.exit(f"the corpus ({len(files)} files) holds only {len(ids)} tokens")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=count, default=131072)
    ap.add_argument("--chunk", type=int, default=0, help="prefill chunk (0: the engine's default)")
    ap.add_argument("--store", default=None, help="make the temporary store under this folder")
    ap.add_argument("--no-sync", action="store_true", help="commits without fsync")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 48)
    print(f"seed {seed}", file=sys.stderr)
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="msa-ingest-", dir=a.store))
    try:
        with msa_mem.Engine(a.model, store=str(tmp / "store"), device=a.device,
                            durable=not a.no_sync, prefill_chunk=a.chunk) as e:
            ids = corpus_tokens(e, a.tokens, rng)
            s = e.session("bench", create=True)
            last = [time.time()]

            def progress(done, total):
                if time.time() - last[0] > 5:
                    last[0] = time.time()
                    print(f"  {done}/{total} tokens", file=sys.stderr)
                return 0

            t0 = time.time()
            s.append_tokens(ids, source="bench", progress=progress)
            wall = time.time() - t0
            info = s.info()
            s.close()
        store_s = info["store_write_ms"] / 1e3
        out = {
            "model": os.path.basename(a.model), "device": a.device, "tokens": a.tokens, "seed": seed,
            "durable": not a.no_sync, "wall_s": wall, "store_write_s": store_s,
            "tokens_per_s": a.tokens / wall, "kv_raw_gb": info["bytes_raw"] / 1e9,
            "kv_on_disk_gb": info["bytes_on_disk"] / 1e9,
            "kv_raw_gbps": info["bytes_raw"] / wall / 1e9,
            "ratio_storing_over_not": wall / (wall - store_s) if wall > store_s else float("inf"),
        }
        if a.json:
            print(json.dumps(out, indent=1))
        else:
            print(f"{a.tokens} tokens in {wall:.2f} s ({out['tokens_per_s']:.0f} tokens/s) on {a.device}; "
                  f"KV {out['kv_raw_gb']:.2f} GB raw ({out['kv_raw_gbps']:.2f} GB/s), "
                  f"{out['kv_on_disk_gb']:.2f} GB on disk")
            print(f"store: {store_s:.2f} s of it; storing / not storing = {out['ratio_storing_over_not']:.3f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
