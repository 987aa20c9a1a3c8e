#!/usr/bin/env python3
"""soak.py: SIGKILLs at random moments of a store's writes, with readers
running all the while, and what must hold afterwards.

    tools/soak.py --kills 1000 [--readers 8] [--max-seconds T] [--seed S] [--build build]
                  [--assets DIR] [--keep DIR] [--json FILE]

One writer at a time runs a random operation through the `msa-mem` command
line on one of a few sessions (ingest of a random text, greedy gen, fork,
compact). Three in four are killed with SIGKILL after a delay drawn
uniformly from 0.3x to 1.1x the median run time of that kind of operation
(learnt from the quarter that run to the end; the first third or so of a
run is the process starting and loading the model), so kills land
throughout the writing, commits included; "killed_after_a_commit" counts the kills that
found the session already changed by the killed operation. Eight
readers loop meanwhile over `ls --json`, `info --json`, `fsck` and
`export` of a random session. After every kill the store is checked, with
no writer alive:

  - no lost commit: every session's tokens start with the tokens it held
    before the operation (gen and ingest only append; a fork's copy holds
    what its source held; compact changes nothing);
  - no reader crashed (a signal) or reported damage (exit 4); every other
    exit status is one the command documents for a busy or changing store.

At the end `msa-mem fsck` must pass, and every session must continue (8
greedy tokens through the Python bindings) exactly as a session rebuilt
from its tokens alone in a fresh store. Prints the counts and exits 1 on
any failure; --json writes them for docs/reliability.md.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORDS = ("the cat sat on a mat while Lily ran to the park with her big red ball and a small dog "
         "named Max who liked to jump over the fence and play in the warm sun all day long").split()


def sh(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace", **kw)


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.bin = str(Path(args.build) / "msa-mem")
        self.tmp = Path(args.keep or tempfile.mkdtemp(prefix="msa-soak-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.store = self.tmp / "store"
        self.model = self.tmp / "stories260K.gguf"
        self.failures = []
        self.stats = {"killed_after_a_commit": 0, "kills": 0, "ops_finished": 0, "ops_killed": 0, "reader_runs": 0,
                      "reader_busy": 0, "lost_commits": 0, "reader_crashes": 0,
                      "ops": {}, "sessions": 0, "continuations_equal": 0, "fsck": None}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.names = ["s0"]
        self.durations = {}
        self.env = dict(os.environ, MSA_MODEL=str(self.model))

    def cli(self, *a, timeout=120):
        return sh([self.bin, "--store", str(self.store), "-q", *a], timeout=timeout, env=self.env)

    def fail(self, what):
        with self.lock:
            self.failures.append(what)
        print("FAIL:", what, file=sys.stderr)

    # ---- state ------------------------------------------------------------

    def tokens(self):
        """name -> token list (no writer alive). Read through the store's
        read-only calls (msa_store_session_open / read_tokens), which no
        reader's handle blocks, rather than by opening sessions."""
        import ctypes as C
        import msa_mem
        lib = msa_mem.load_library()
        P = C.c_void_p
        lib.msa_store_session_open.argtypes = [P, C.c_char_p, C.c_char_p, C.POINTER(P)]
        lib.msa_store_session_close.argtypes = [P]
        lib.msa_store_session_stat.argtypes = [P, C.POINTER(msa_mem._StoreSessionInfo)]
        lib.msa_store_read_tokens.argtypes = [P, C.c_uint64, C.c_uint64, C.POINTER(C.c_int32)]
        out = {}
        with msa_mem.Engine(str(self.model), store=str(self.store)) as e:
            st = e._store_handle()
            for info in e.sessions():
                h = P()
                rc = lib.msa_store_session_open(st, info["name"].encode(), None, C.byref(h))
                if rc:
                    self.fail(f"store session {info['name']}: open: {msa_mem.version() and rc}")
                    continue
                si = msa_mem._StoreSessionInfo()
                n = 0
                if lib.msa_store_session_stat(h, C.byref(si)) == 0:
                    n = si.n_tokens
                buf = (C.c_int32 * max(n, 1))()
                if n and lib.msa_store_read_tokens(h, 0, n, buf):
                    self.fail(f"store session {info['name']}: tokens unreadable")
                out[info["name"]] = list(buf[:n])
                lib.msa_store_session_close(h)
        return out

    # ---- readers ----------------------------------------------------------

    def reader(self, k):
        rng = random.Random(self.args.seed * 31 + k)
        exp = self.tmp / f"reader{k}.msax"
        while not self.stop.is_set():
            name = rng.choice(self.names)
            op = rng.choice(("ls", "info", "fsck", "export"))
            if op == "ls":
                cmd = ["ls", "--json"]
            elif op == "info":
                cmd = ["info", name, "--json"]
            elif op == "fsck":
                cmd = ["fsck"]
            else:
                if exp.exists():
                    exp.unlink()
                cmd = ["export", name, str(exp)]
            try:
                r = self.cli(*cmd, timeout=60)
            except subprocess.TimeoutExpired:
                self.fail(f"reader {op} {name}: hung for 60 s")
                continue
            with self.lock:
                self.stats["reader_runs"] += 1
            if r.returncode < 0:
                with self.lock:
                    self.stats["reader_crashes"] += 1
                self.fail(f"reader {op} {name}: killed by signal {-r.returncode}: {r.stderr[-300:]}")
            elif r.returncode == 4:
                self.fail(f"reader {op} {name}: reports damage: {r.stderr[-300:]}")
            elif r.returncode == 0 and op in ("ls", "info"):
                try:
                    json.loads(r.stdout)
                except ValueError:
                    self.fail(f"reader {op}: invalid JSON: {r.stdout[:200]!r}")
            elif r.returncode != 0:
                # a session removed or not yet created, or the store busy
                # (compact holds it): documented outcomes, counted
                with self.lock:
                    self.stats["reader_busy"] += 1

    # ---- the writer -------------------------------------------------------

    def usual(self, op):
        """The median run time of operations of this kind that ran to the end
        and succeeded (a guess of 1 s before the first)."""
        d = sorted(self.durations.get(op, []))
        return d[len(d) // 2] if d else 1.0

    def writer_op(self, existing):
        rng = self.rng
        name = rng.choice(sorted(existing) or ["s0"])
        op = rng.choices(("ingest", "gen", "fork", "compact"), weights=(4, 4, 1, 1))[0]
        if op == "ingest":
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 1200)))
            return op, name, None, ["ingest", name, "--text", text]
        if op == "gen":
            return op, name, None, ["gen", name, "-n", str(rng.randint(8, 96))]
        if op == "fork":
            dst = f"s{len(self.names)}"
            return op, name, dst, ["fork", name, dst]
        return op, name, None, ["compact"]

    def run(self):
        a = self.args
        assets = Path(a.assets)
        r = sh([self.bin, "convert", "llama2c", str(assets / "stories260K" / "stories260K.bin"),
                str(assets / "stories260K" / "tok512.bin"), str(self.model)])
        if r.returncode:
            raise SystemExit(f"soak: convert: {r.stderr}")
        r = self.cli("new", "s0", "--model", str(self.model), "--block-size", "16", "--top-k", "4")
        if r.returncode:
            raise SystemExit(f"soak: new: {r.stderr}")
        readers = [threading.Thread(target=self.reader, args=(k,), daemon=True)
                   for k in range(a.readers)]
        for t in readers:
            t.start()
        t0 = time.time()
        before = self.tokens()
        while self.stats["kills"] < a.kills and not (a.max_seconds and time.time() - t0 > a.max_seconds):
            op, name, dst, cmd = self.writer_op(before)
            p = subprocess.Popen([self.bin, "--store", str(self.store), "-q", *cmd],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env)
            # a quarter of the operations run to the end (the sessions grow
            # and fork, and their run times are learnt); the others are
            # killed at a uniform moment of a usual run of their kind, past
            # most of its start-up
            t_start = time.time()
            let_finish = self.rng.random() < 0.25
            delay = None if let_finish else self.rng.uniform(0.3, 1.1) * self.usual(op)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
            killed = p.poll() is None
            if killed:
                p.send_signal(signal.SIGKILL)
            rc = p.wait()
            if not killed and rc == 0:
                self.durations.setdefault(op, []).append(time.time() - t_start)
            err = p.stderr.read().decode(errors="replace")
            p.stderr.close()
            self.stats["kills" if killed else "ops_finished"] += 1
            if killed:
                self.stats["ops_killed"] += 1
            self.stats["ops"][op] = self.stats["ops"].get(op, 0) + 1
            if not killed and rc not in (0, 3, 7) and not (op == "compact" and rc == 1):
                # 3: not found (a fork's name taken by a killed fork that
                # landed), 7: busy; compact exits 1 while readers hold the store
                self.fail(f"writer {' '.join(cmd[:2])}: exit {rc}: {err[-300:]}")
            if op == "fork" and dst not in self.names:
                self.names.append(dst)
            after = self.tokens()
            if killed and after.get(name, []) != before.get(name, []) and op in ("ingest", "gen"):
                self.stats["killed_after_a_commit"] = self.stats.get("killed_after_a_commit", 0) + 1
            self.check(before, after, op, name, dst)
            before = after
        self.stop.set()
        for t in readers:
            t.join(timeout=120)
        self.stats["seconds"] = round(time.time() - t0, 1)
        self.stats["usual_seconds"] = {op: round(self.usual(op), 3) for op in self.durations}
        self.finish(before)

    def check(self, before, after, op, name, dst):
        for n, toks in before.items():
            got = after.get(n)
            if got is None or got[:len(toks)] != toks:
                self.stats["lost_commits"] += 1
                self.fail(f"after {op} on {name}: session {n} lost committed tokens "
                          f"({len(toks)} before, {None if got is None else len(got)} after)")
            elif op in ("fork", "compact") and got != toks:
                self.fail(f"after {op}: session {n} changed ({len(toks)} -> {len(got)} tokens)")
        if op == "fork" and dst in after and name in before and after[dst] != before[name]:
            self.fail(f"fork {name} -> {dst}: the copy holds {len(after[dst])} tokens, "
                      f"its source {len(before[name])}")
        for n in after:
            if n not in before and not (op == "fork" and n == dst):
                self.fail(f"after {op}: a session {n} appeared")

    def finish(self, final):
        r = self.cli("fsck")
        self.stats["fsck"] = r.returncode
        if r.returncode:
            self.fail(f"fsck: exit {r.returncode}: {r.stderr[-400:]}")
        import msa_mem
        fresh = self.tmp / "fresh"
        self.stats["sessions"] = len(final)
        kw = dict(block_size=16, top_k=4)  # the sessions' shape (`new` below)
        with msa_mem.Engine(str(self.model), store=str(self.store), **kw) as e, \
                msa_mem.Engine(str(self.model), store=str(fresh), **kw) as f:
            for n, toks in sorted(final.items()):
                if not toks:
                    self.stats["continuations_equal"] += 1
                    continue
                with e.session(n) as s:
                    "".join(s.generate(8, stop_at_eos=False))
                    a = s.tokens()[len(toks):]
                with f.session(n, create=True) as s:
                    s.append_tokens(toks)
                    "".join(s.generate(8, stop_at_eos=False))
                    b = s.tokens()[len(toks):]
                if a == b:
                    self.stats["continuations_equal"] += 1
                else:
                    self.fail(f"session {n} ({len(toks)} tokens) continues {a!r}, "
                              f"a rebuilt one {b!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop killing after this long (0: no limit); the counts say how many")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--build", default=os.environ.get("MSA_BUILD_DIR", str(ROOT / "build")))
    ap.add_argument("--assets", default=None)
    ap.add_argument("--keep", default=None, help="work in DIR and keep it")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.seed is None:
        s = os.environ.get("MSA_TEST_SEED")
        a.seed = int(s, 0) if s else int.from_bytes(os.urandom(6), "little")
    print(f"seed {a.seed} (MSA_TEST_SEED to replay)")
    if a.assets is None:
        for d in (os.environ.get("MSA_ASSETS"), os.environ.get("MSA_DEFAULT_ASSETS"),
                  str(ROOT.parent / "shared" / "assets")):
            if d and (Path(d) / "stories260K" / "stories260K.bin").exists():
                a.assets = d
                break
    if a.assets is None:
        print("SKIPPED: no test assets (set MSA_ASSETS or keep ../shared/assets)")
        return 77
    os.environ.setdefault("MSA_LIBRARY", str(Path(a.build) / "libmsa.so"))
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    s = Soak(a)
    try:
        s.run()
    finally:
        if not a.keep:
            shutil.rmtree(s.tmp, ignore_errors=True)
    s.stats["failures"] = len(s.failures)
    print(json.dumps(s.stats, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(s.stats, indent=1) + "\n")
    return 1 if s.failures else 0


if __name__ == "__main__":
    sys.exit(main())
