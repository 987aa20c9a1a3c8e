#!/usr/bin/env python3
"""The fault table of docs/reliability.md ("Store damage"): damages copies of
a small stories260K store in located places (LMDB branch and leaf pages of
each table, one block's planes, a token chunk), runs every store command on
each copy and salvage, and prints one Markdown row per fault with the exit
statuses seen, what salvage copied and the crashes (134, 139, signals).

    python3 tools/damage-matrix.py [BUILD_DIR] [SEEDS]

BUILD_DIR defaults to build/ (msa-mem there), SEEDS to 10. Needs
../shared/assets/stories260K (or $MSA_ASSETS). Takes about 1.5 minutes.
"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_store_damage import LmdbFile, block_value, plane_offset, session_sid  # noqa: E402

BUILD = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build"
SEEDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
M = str(BUILD / "msa-mem")
ASSETS = Path(os.environ.get("MSA_ASSETS") or ROOT.parent / "shared" / "assets") / "stories260K"


def branch(table):
    def fn(f, rng):
        pg = f.find(table, "branch")[0]
        used = f.used(pg)
        for _ in range(8):
            f.data[rng.choice(used)] ^= 1 << rng.randrange(8)
    return fn


def leaf(table):
    def fn(f, rng):
        pg = f.find(table, "leaf")[0]
        used = f.used(pg)
        for _ in range(8):
            f.data[rng.choice(used)] ^= 1 << rng.randrange(8)
    return fn


def plane(p):
    def fn(f, rng):
        voff, _ = block_value(f, "a", 0, 2)
        off, plen, _ = plane_offset(f, voff, p)
        f.data[off + plen // 2] ^= 0x10
    return fn


def token(f, rng):
    off, n = f.get("tokens", struct.pack(">QI", session_sid(f, "a"), 0))
    f.data[off + 8 + 4 * 7] ^= 1


FAULTS = [
    ("8 bits in the branch page of `blocks`", branch("blocks"), SEEDS),
    ("8 bits in a branch page of `blockmap`", branch("blockmap"), SEEDS),
    ("8 bits in a leaf page of `blocks`", leaf("blocks"), SEEDS),
    ("8 bits in a leaf page of `blockmap`", leaf("blockmap"), SEEDS),
    ("8 bits in the `sessions` leaf page", leaf("sessions"), SEEDS),
    ("8 bits in the main table's page", leaf("main"), SEEDS),
    ("8 bits in the free-list page", leaf("free"), SEEDS),
    ("1 byte of block (a, 0, 2), an index-key plane", plane(9), 1),
    ("1 byte of block (a, 0, 2), a K plane", plane(1), 1),
    ("1 bit of session a's token chunk 0", token, 1),
]


def main():
    tmp = Path(tempfile.mkdtemp(prefix="msa-damage-"))
    try:
        env = dict(os.environ, MSA_MODEL=str(tmp / "m.gguf"))
        env.pop("MSA_DEVICE", None)
        q = dict(capture_output=True, text=True, errors="replace")
        subprocess.run([M, "convert", "llama2c", ASSETS / "stories260K.bin", ASSETS / "tok512.bin",
                        tmp / "m.gguf"], env=env, check=True, **q)
        base = tmp / "base"
        e = dict(env, MSA_STORE=str(base))
        for s in "ab":
            subprocess.run([M, "new", s, "--block-size", "16", "--top-k", "4"], env=e, check=True, **q)
            subprocess.run([M, "-q", "gen", s, "-n", "200"], env=e, check=True, **q)
        subprocess.run([M, "fork", "b", "f"], env=e, check=True, **q)
        out = tmp / "a.msax"
        cmds = [["fsck"], ["ls"], ["info", "a"], ["export", "a", out], ["gen", "a", "-n", "3"], ["new", "a"],
                ["rm", "b"], ["compact"]]
        print("| fault | seeds | " + " | ".join(" ".join(map(str, c[:2])).replace(str(out), "") for c in cmds) +
              " | salvage | crashes |")
        print("|" + "---|" * (len(cmds) + 4))
        st, new = tmp / "st", tmp / "new"

        def damaged(fn, seed):
            shutil.rmtree(st, ignore_errors=True)
            shutil.copytree(base, st)
            f = LmdbFile(st / "data.mdb")
            fn(f, random.Random(seed))
            f.save()

        for name, fn, seeds in FAULTS:
            codes = [set() for _ in cmds]
            sal, crashes = set(), 0
            for seed in range(1, seeds + 1):
                for i, c in enumerate(cmds):
                    damaged(fn, seed)
                    if out.exists():
                        out.unlink()
                    rc = subprocess.run([M, *map(str, c)], env=dict(env, MSA_STORE=str(st)), **q).returncode
                    codes[i].add(rc)
                    crashes += rc in (134, 139) or rc < 0
                damaged(fn, seed)
                shutil.rmtree(new, ignore_errors=True)
                p = subprocess.run([M, "--json", "salvage", st, new], env=env, **q)
                crashes += p.returncode in (134, 139) or p.returncode < 0
                try:
                    j = json.loads(p.stdout)
                    sal.add(f"{j['sessions_copied']}/{j['sessions_truncated']}/{j['sessions_lost']}")
                    fs = subprocess.run([M, "fsck"], env=dict(env, MSA_STORE=str(new)), **q).returncode
                    crashes += fs in (134, 139) or fs < 0
                    if fs:
                        sal.add("copy not clean")
                except ValueError:
                    sal.add(f"exit {p.returncode}")
            print(f"| {name} | {seeds} | " + " | ".join(", ".join(map(str, sorted(c))) for c in codes) +
                  f" | {', '.join(sorted(sal))} | {crashes} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
