#!/usr/bin/env python3
"""Load test of `msa-mem serve` on loopback: N concurrent streaming chat
clients for a bounded time, then a SIGKILL of the server and a restart on
the same store.

Each client holds one conversation: it sends the whole history every turn
(as an OpenAI client does), streams the reply, and records the time to the
first content token, the tokens it got and usage's cached_tokens. Checked,
not only measured:
  - every turn after the first should find its conversation stored:
    cached_tokens equal to the prompt and reply tokens of the turn before
    (counted: a sampled reply whose text does not tokenize back to the
    tokens generated finds only the turn's prompt);
  - then 16 more generations start and the server is killed (SIGKILL) in
    the middle of them: the store must pass fsck, and every snapshot listed
    before the kill must hold the same tokens after it (no committed token
    lost); after a restart one more turn of every conversation must find
    its conversation stored (all it held, or at least its last prompt where
    the last reply does not tokenize back).
Prints a Markdown table (docs/server.md has one run's).

    tools/bench-serve.py --model stories260K.gguf [--clients 64] [--duration 30]

With --long N instead: the time to a continued conversation's reply when its
first message is about N tokens long, against sending the same conversation
to a server with an empty store (which prefills all of it), in one run:

    tools/bench-serve.py --model stories260K.gguf --long 8000
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(msa, model, store, threads, extra=()):
    p = subprocess.Popen([msa, "serve", "--model", model, "--store", store, "--port", "0",
                          "--model-name", "m", "--threads", str(threads), "-q", *extra],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if "listening on" not in line:
        sys.exit(f"the server did not start: {line!r}")
    return p, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def turn(port, messages, max_tokens, seed):
    """One streamed turn: (reply text, ttft s, seconds, usage)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body=json.dumps({
        "model": "m", "messages": messages, "max_tokens": max_tokens, "temperature": 0.8,
        "seed": seed, "stream": True, "stream_options": {"include_usage": True}}),
        headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    text, ttft, usage = [], None, None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev["choices"]:
            piece = ch["delta"].get("content")
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                text.append(piece)
    c.close()
    return "".join(text), ttft, time.perf_counter() - t0, usage


def long_conversation(a):
    """--long: a conversation of about a.long tokens, continued 3 times, and
    its last turn sent again to a server without that memory."""
    line = "Once upon a time there was a little girl named Lily who loved to play in the park. "
    store = a.store or tempfile.mkdtemp(prefix="bench-serve-")
    extra = ["--no-sync"] if a.no_sync else []
    srv, port = start(a.msa_mem, a.model, store, a.threads, extra)

    def ask(port, msgs):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        t0 = time.perf_counter()
        c.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": "m", "messages": msgs, "max_tokens": 1, "temperature": 0}),
            headers={"Content-Type": "application/json"})
        r = json.loads(c.getresponse().read())
        c.close()
        return time.perf_counter() - t0, r

    rows = []
    try:
        n_words = max(1, a.long // 21)  # stories260K: about 21 tokens a line
        msgs = [{"role": "user", "content": line * n_words}]
        dt, r = ask(port, msgs)
        rows.append(("first turn (everything prefilled)", dt, r["usage"]))
        for k in range(3):
            msgs = msgs + [{"role": "assistant", "content": r["choices"][0]["message"]["content"]},
                           {"role": "user", "content": f"And then? ({k})"}]
            dt, r = ask(port, msgs)
            rows.append((f"continued turn {k + 1}", dt, r["usage"]))
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait()
    fresh = tempfile.mkdtemp(prefix="bench-serve-fresh-")
    srv, port = start(a.msa_mem, a.model, fresh, a.threads, extra)
    try:
        dt, r = ask(port, msgs)
        rows.append(("continued turn 3 sent to an empty store (re-prefill)", dt, r["usage"]))
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait()
    print("| request | prompt tokens | cached | time to the reply (1 token) ms |")
    print("|---|---|---|---|")
    for what, dt, u in rows:
        print(f"| {what} | {u['prompt_tokens']} | {u['prompt_tokens_details']['cached_tokens']} "
              f"| {dt * 1000:.0f} |")
    print(f"re-prefill / continued: {rows[-1][1] / rows[-2][1]:.0f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--msa-mem", default=str(Path(os.environ.get("MSA_BUILD_DIR", ROOT / "build"))
                                             / "msa-mem"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--store")
    ap.add_argument("--no-sync", action="store_true", help="serve with --no-sync (no fsync)")
    ap.add_argument("--long", type=int, help="measure one long conversation instead (tokens)")
    a = ap.parse_args()
    if a.long:
        return long_conversation(a)
    store = a.store or tempfile.mkdtemp(prefix="bench-serve-")
    srv, port = start(a.msa_mem, a.model, store, a.threads,
                      ("--max-sessions", "1000000", *(["--no-sync"] if a.no_sync else [])))
    stop_at = time.time() + a.duration
    lock = threading.Lock()
    ttfts, tokens, bad, errors, hits = [], [0], [], [], [0]
    convs = [None] * a.clients  # (messages, held tokens) after the last finished turn

    def client(i):
        msgs = [{"role": "system", "content": f"You are storyteller {i}."},
                {"role": "user", "content": "Once upon a time"}]
        held, k = 0, 0
        while time.time() < stop_at:
            try:
                text, ttft, _, u = turn(port, msgs, a.max_tokens, 1000 * i + k)
            except Exception as e:
                with lock:
                    errors.append(repr(e))
                return
            cached = u["prompt_tokens_details"]["cached_tokens"]
            with lock:
                if ttft is not None:
                    ttfts.append(ttft)
                tokens[0] += u["completion_tokens"]
                if k and cached == held:
                    hits[0] += 1
                elif k:
                    bad.append((i, k, cached, held))
            held = u["prompt_tokens"] + u["completion_tokens"]
            msgs = msgs + [{"role": "assistant", "content": text},
                           {"role": "user", "content": f"And then? ({k})"}]
            convs[i] = (msgs, held, u["prompt_tokens"])
            k += 1

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0

    def listing():
        p = subprocess.run([a.msa_mem, "--store", store, "ls", "--json"], capture_output=True,
                           text=True, check=True)
        return {x["name"]: x["tokens"] for x in json.loads(p.stdout)["sessions"]}

    before = listing()
    # kill it while generations are in flight
    inflight = [threading.Thread(target=lambda i=i: _swallow(turn, port, [
        {"role": "user", "content": f"Tell a long story {i}"}], 100000, i))
        for i in range(min(16, a.clients))]
    for t in inflight:
        t.start()
    time.sleep(1.0)
    srv.send_signal(signal.SIGKILL)
    srv.wait()
    for t in inflight:
        t.join()
    fsck = subprocess.run([a.msa_mem, "--store", store, "fsck"], capture_output=True, text=True)
    after = listing()
    changed = [n for n, k in before.items() if after.get(n) != k]

    srv, port = start(a.msa_mem, a.model, store, a.threads,
                      ("--max-sessions", "1000000", *(["--no-sync"] if a.no_sync else [])))
    lost, whole, n_conv = [], 0, 0
    try:
        for i, cv in enumerate(convs):
            if cv is None:
                continue
            n_conv += 1
            msgs, held, prompt = cv
            _, _, _, u = turn(port, msgs, 1, 1)
            cached = u["prompt_tokens_details"]["cached_tokens"]
            whole += cached == held
            if cached < prompt:  # not even the last turn's prompt: something is gone
                lost.append((i, cached, prompt, held))
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait()

    ttfts.sort()
    q = lambda p: ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))] * 1000 if ttfts else float("nan")
    turns = len(ttfts)
    later = turns - sum(c is not None for c in convs)
    print("| clients | turns | tokens | wall s | tokens/s | TTFT p50 ms | TTFT p99 ms | "
          "continued turns that found the whole conversation stored |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {a.clients} | {turns} | {tokens[0]} | {wall:.1f} | {tokens[0] / wall:.0f} | "
          f"{q(0.5):.0f} | {q(0.99):.0f} | {hits[0]} of {hits[0] + len(bad)} |")
    print(f"SIGKILL with {len(inflight)} generations in flight: fsck "
          f"{'clean' if fsck.returncode == 0 else 'FAILED'}; {len(before)} snapshots before, "
          f"{len(changed)} of them changed or missing after; after the restart "
          f"{whole} of {n_conv} conversations continue with everything they held cached, "
          f"{n_conv - whole - len(lost)} with their last prompt (the reply did not tokenize "
          f"back), {len(lost)} with less")
    if errors:
        print(f"errors: {len(errors)}: {errors[:3]}")
    if bad:
        print(f"turns that found only part of their conversation (a reply that does not "
              f"tokenize back): {bad[:5]}")
    if lost:
        print(f"conversations not intact after the restart: {lost[:5]}")
    sys.exit(1 if errors or lost or changed or fsck.returncode else 0)


def _swallow(f, *args):
    try:
        f(*args)
    except Exception:
        pass


if __name__ == "__main__":
    main()
