"""Store damage through the command line (issue 10, items 1-4 and 12), on the
real stories260K model (../shared/assets, or $MSA_ASSETS).

A store with four sessions is made once: 'a' and 'b' (200 generated tokens
each, blocks of 16, top-k 4), 'f' a fork of 'b' grown by 20 tokens, and 'e'
empty. Every test damages a copy of it deterministically, locating what it
damages by reading LMDB's file itself (LmdbFile below: the branch pages of a
table, the leaf page of the sessions table, one block's index-key plane, a
token chunk), and checks that:

  - every command reports the damage with exit status 4 and a message that
    says what to do (`msa-mem salvage`), and nothing crashes (no 134/139:
    LMDB's assertion or a segfault);
  - a damaged block is left out and the session keeps generating; the
    intact session 'b' generates exactly the tokens it generated before;
  - `info` and `fsck` name the damaged block; `export` refuses a damaged
    session (exit 4, no file) instead of writing one that import refuses;
  - `salvage` copies every intact session (whole) into a new store that
    fsck finds clean and in which 'b' still generates the same tokens;
  - a read-only store can be listed, checked and exported, and the model
    commands on it say that the store is not writable.

Which bits are flipped is drawn from the printed seed (MSA_TEST_SEED to
replay). Runs in a few seconds.
"""

import json
import os
import random
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from pyutil import fresh_seed

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("MSA_BUILD_DIR", ROOT / "build"))
MSA = BUILD / "msa-mem"


def assets_dir():
    for d in (os.environ.get("MSA_ASSETS"), os.environ.get("MSA_DEFAULT_ASSETS"),
              str(ROOT.parent / "shared" / "assets")):
        if d and (Path(d) / "stories260K" / "stories260K.bin").exists():
            return Path(d)
    return None


ASSETS = assets_dir()
pytestmark = [
    pytest.mark.skipif(ASSETS is None, reason="no ../shared/assets/stories260K "
                       "(set MSA_ASSETS): skipping the store damage tests"),
    pytest.mark.skipif(not MSA.exists(), reason=f"{MSA} not built"),
]

CRASH = (134, 139, -6, -11)  # abort (LMDB's assertion), segfault


def run(*args, env, input=None, prefix=()):
    p = subprocess.run([*prefix, str(MSA), *map(str, args)], env=env, input=input,
                       capture_output=True, text=True, errors="replace", timeout=120)
    assert p.returncode not in CRASH, f"msa-mem {args} crashed ({p.returncode}):\n{p.stderr}"
    return p


def ok(*args, env):
    p = run(*args, env=env)
    assert p.returncode == 0, f"msa-mem {args} exited {p.returncode}:\n{p.stderr}"
    return p


# ---- LMDB's file, read here to find what to damage -------------------------

P_BRANCH, F_BIGDATA, F_SUBDATA = 1, 1, 2


class LmdbFile:
    """LMDB 0.9's data file: the current meta page, every table's pages, a
    lookup by key that gives the file offset of a value."""

    def __init__(self, path):
        self.path = Path(path)
        self.data = bytearray(self.path.read_bytes())
        psize = struct.unpack_from("<I", self.data, 16 + 24)[0]
        metas = []
        for off in (0, psize):
            dbs = [struct.unpack_from("<IHHQQQQQ", self.data, off + 16 + 24 + 48 * i) for i in range(2)]
            txn = struct.unpack_from("<Q", self.data, off + 16 + 128)[0]
            metas.append((txn, dbs))
        dbs = max(metas)[1]
        self.psize = psize
        self.tables = {"free": (dbs[0][7], dbs[0][2]), "main": (dbs[1][7], dbs[1][2])}
        self.pages = {}
        self._walk("free", dbs[0][7])
        self._walk("main", dbs[1][7])

    def _nodes(self, pg):
        off = pg * self.psize
        flags, lower = struct.unpack_from("<HH", self.data, off + 10)
        for i in range((lower - 16) // 2):
            p = struct.unpack_from("<H", self.data, off + 16 + 2 * i)[0]
            lo, hi, fl, ks = struct.unpack_from("<HHHH", self.data, off + p)
            yield flags, off + p, lo, hi, fl, ks

    def _walk(self, table, root):
        if root == 2 ** 64 - 1:
            return
        for flags, noff, lo, hi, fl, ks in self._nodes(root):
            self.pages[root] = (table, "branch" if flags & P_BRANCH else "leaf")
            if flags & P_BRANCH:
                self._walk(table, lo | hi << 16 | fl << 32)
            elif fl & F_SUBDATA:
                name = bytes(self.data[noff + 8: noff + 8 + ks]).decode()
                sub = struct.unpack_from("<IHHQQQQQ", self.data, noff + 8 + ks)
                self.tables[name] = (sub[7], sub[2])
                self._walk(name, sub[7])

    def find(self, table, kind):
        return sorted(pg for pg, v in self.pages.items() if v == (table, kind))

    def get(self, table, key):
        pg, depth = self.tables[table]
        for _ in range(depth):
            child = None
            for flags, noff, lo, hi, fl, ks in self._nodes(pg):
                k = bytes(self.data[noff + 8: noff + 8 + ks])
                if flags & P_BRANCH:
                    if child is None or k <= key:
                        child = lo | hi << 16 | fl << 32
                elif k == key:
                    size = lo | hi << 16
                    if fl & F_BIGDATA:
                        opg = struct.unpack_from("<Q", self.data, noff + 8 + ks)[0]
                        return opg * self.psize + 16, size
                    return noff + 8 + ks, size
            if child is None:
                return None
            pg = child
        return None

    def key_offsets(self, pg):
        """(file offset, size) of every key of a leaf page."""
        return [(noff + 8, ks) for _, noff, _, _, _, ks in self._nodes(pg)]

    def used(self, pg):
        off = pg * self.psize
        lower, upper = struct.unpack_from("<HH", self.data, off + 12)
        return list(range(off, off + lower)) + list(range(off + upper, off + self.psize))

    def save(self):
        self.path.write_bytes(self.data)


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        t.append(c)
    return t


CRC_T = _crc_table()


def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = CRC_T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def session_sid(f, name):
    off, n = f.get("sessions", name.encode())
    return struct.unpack_from("<Q", f.data, off + 8)[0]


def block_value(f, name, layer, block):
    """(offset, size) of the stored value of a session's (layer, block)."""
    off, n = f.get("blockmap", struct.pack(">QIQ", session_sid(f, name), layer, block))
    bid = struct.unpack_from("<Q", f.data, off + 8)[0]
    return f.get("blocks", struct.pack(">Q", bid))


def plane_offset(f, val_off, plane):
    """Start of plane `plane` of a block value ("MSB1": 24-byte header, then
    per plane u32 length (bit 31: stored as is) and u32 crc, then the planes)."""
    np_ = f.data[val_off + 11]
    lens = [struct.unpack_from("<I", f.data, val_off + 24 + 8 * i)[0] & 0x7FFFFFFF for i in range(np_)]
    return val_off + 24 + 8 * np_ + sum(lens[:plane]), lens[plane], np_


# ---- the store -------------------------------------------------------------

BK = 16


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("damage")
    model = d / "stories260K.gguf"
    env = dict(os.environ)
    env.pop("MSA_DEVICE", None)
    env["MSA_MODEL"] = str(model)
    env["MSA_STORE"] = str(d / "store")
    ok("convert", "llama2c", ASSETS / "stories260K" / "stories260K.bin",
       ASSETS / "stories260K" / "tok512.bin", model, env=env)
    for s in ("a", "b"):
        ok("new", s, "--block-size", BK, "--top-k", 4, env=env)
        ok("-q", "gen", s, "-n", 200, env=env)
    ok("fork", "b", "f", env=env)
    ok("-q", "gen", "f", "-n", 20, env=env)
    ok("new", "e", "--block-size", BK, "--top-k", 4, env=env)
    # what 'a' and 'b' generate next, on a copy
    shutil.copytree(d / "store", d / "probe")
    env2 = dict(env, MSA_STORE=str(d / "probe"))
    expect = {s: ok("-q", "gen", s, "-n", 24, env=env2).stdout for s in ("a", "b")}
    shutil.rmtree(d / "probe")
    return {"dir": d, "env": env, "model": model, "expect": expect,
            "sessions": {"a": 201, "b": 201, "f": 221, "e": 0}}


@pytest.fixture
def store(base, tmp_path):
    st = tmp_path / "store"
    shutil.copytree(base["dir"] / "store", st)
    env = dict(base["env"], MSA_STORE=str(st))
    return st, env


def assert_damage(p, what):
    assert p.returncode == 4, f"{what}: exit {p.returncode} (4 expected):\n{p.stdout}\n{p.stderr}"
    assert "salvage" in p.stderr, f"{what}: the message says nothing to do:\n{p.stderr}"


def salvage_all(st, env, tmp_path, base, want_whole, want_cut=None):
    """Salvages into a new store; checks what was copied, fsck of the copy and
    that 'b' there generates what it generated before."""
    new = tmp_path / "rescued"
    p = run("--json", "salvage", st, new, env=env)
    assert p.returncode in (0, 4), p.stderr
    j = json.loads(p.stdout)
    print("\n".join(j["lines"]))
    env2 = dict(env, MSA_STORE=str(new))
    ls = {s["name"]: s["tokens"] for s in json.loads(ok("--json", "ls", env=env2).stdout)["sessions"]}
    for s in want_whole:
        assert ls.get(s) == base["sessions"][s], f"session {s} not copied whole: {ls}"
    for s, n in (want_cut or {}).items():
        assert ls.get(s) == n, f"session {s}: {ls.get(s)} tokens copied, {n} expected"
    ok("fsck", env=env2)
    if "b" in want_whole:
        assert ok("-q", "gen", "b", "-n", 24, env=env2).stdout == base["expect"]["b"]
    return j, ls


# ---- 1. a damaged branch page ---------------------------------------------

@pytest.mark.parametrize("table", ["blocks", "blockmap"])
def test_branch_page_flip(base, store, tmp_path, table):
    st, env = store
    seed = fresh_seed()
    rng = random.Random(seed)
    f = LmdbFile(st / "data.mdb")
    branches = f.find(table, "branch")
    assert branches, f"no branch page in table {table}: the store is too small for this test"
    pg = branches[0]
    used = f.used(pg)
    # eight flipped bits: one in the page number of the header (always
    # detectable), seven anywhere in the page's used bytes
    picks = [pg * f.psize + rng.randrange(4)] + [rng.choice(used) for _ in range(7)]
    for o in picks:
        f.data[o] ^= 1 << rng.randrange(8)
    f.save()
    print(f"table {table}, branch page {pg}, bytes {[o - pg * f.psize for o in picks]}")
    out = tmp_path / "a.msax"
    for args in (["fsck"], ["ls"], ["info", "a"], ["export", "a", out], ["rm", "b"], ["compact"],
                 ["gen", "a", "-n", 3], ["ask", "a", "Who is Lily?", "-n", 3], ["new", "zz"],
                 ["fork", "a", "a2"], ["--json", "ls"]):
        p = run(*args, env=env)
        assert_damage(p, " ".join(map(str, args)))
    assert not out.exists()
    # fsck lists the damaged page
    p = run("fsck", env=env)
    assert f"LMDB table '{table}', page {pg}" in p.stdout + p.stderr
    # nothing was changed by any of it, and salvage copies every session whole:
    # the leaves under the damaged branch page are read without it
    j, _ = salvage_all(st, env, tmp_path, base, want_whole=["a", "b", "f", "e"])
    assert j["sessions_copied"] == 4 and j["tokens_lost"] == 0 and j["damaged"] >= 1


# ---- 4. a damaged leaf page of the sessions table --------------------------

def test_sessions_leaf_key_flip(base, store, tmp_path):
    """The name of 'a' in the sessions leaf page gets a high bit: the keys are
    out of order. gen and new must both say that the store is damaged (they
    said 'no such session' and 'already exists')."""
    st, env = store
    f = LmdbFile(st / "data.mdb")
    (leaf,) = f.find("sessions", "leaf")
    koff, ks = f.key_offsets(leaf)[0]
    assert bytes(f.data[koff:koff + ks]) == b"a"
    f.data[koff] ^= 0x80
    f.save()
    for args in (["gen", "a", "-n", 3], ["new", "a"], ["ls"], ["info", "a"], ["rm", "a"], ["fsck"]):
        p = run(*args, env=env)
        assert_damage(p, " ".join(map(str, args)))
        assert "already exists" not in p.stderr and "no session" not in p.stderr
    salvage_all(st, env, tmp_path, base, want_whole=["b", "f", "e"])


def test_sessions_leaf_random_flips(base, store):
    """Eight random bits of the sessions leaf page: whatever they hit, nothing
    crashes, and gen and new agree on whether 'a' exists."""
    st, env = store
    seed = fresh_seed()
    rng = random.Random(seed)
    pristine = (st / "data.mdb").read_bytes()
    for trial in range(3):
        (st / "data.mdb").write_bytes(pristine)
        f = LmdbFile(st / "data.mdb")
        (leaf,) = f.find("sessions", "leaf")
        used = f.used(leaf)
        for _ in range(8):
            f.data[rng.choice(used)] ^= 1 << rng.randrange(8)
        f.save()
        g = run("-q", "gen", "a", "-n", 2, env=env)
        n = run("new", "a", env=env)
        fs = run("fsck", env=env)
        print(f"trial {trial}: gen {g.returncode}, new {n.returncode}, fsck {fs.returncode}")
        assert g.returncode in (0, 3, 4) and fs.returncode in (0, 4)
        assert not (g.returncode == 3 and "already exists" in n.stderr), (g.stderr, n.stderr)
        if g.returncode == 4 or n.returncode == 4:
            assert fs.returncode == 4


# ---- 2. one block's index keys ----------------------------------------------

def test_index_keys_flip(base, store, tmp_path):
    st, env = store
    f = LmdbFile(st / "data.mdb")
    voff, vlen = block_value(f, "a", 0, 2)
    off, plen, np_ = plane_offset(f, voff, 9)  # fp32: K 0-3, V 4-7, index keys 8-11
    assert np_ == 12
    f.data[off + plen // 2] ^= 0x10
    f.save()
    # the session still opens and generates; the intact one is unchanged
    # (on a copy: salvage below expects the sessions as they were)
    probe = tmp_path / "probe"
    shutil.copytree(st, probe)
    penv = dict(env, MSA_STORE=str(probe))
    assert ok("-q", "gen", "a", "-n", 24, env=penv).stdout
    assert ok("-q", "ask", "a", "Who is Lily?", "-n", 8, env=penv).stdout
    assert ok("-q", "gen", "b", "-n", 24, env=penv).stdout == base["expect"]["b"]
    assert run("info", "a", env=penv).returncode == 4  # still damaged, still named
    # info and fsck name the block
    p = run("info", "a", env=env)
    assert p.returncode == 4 and "layer 0, block 2" in p.stdout, (p.stdout, p.stderr)
    j = json.loads(run("--json", "info", "a", env=env).stdout)
    assert any("layer 0, block 2" in d for d in j["damaged"])
    assert run("info", "b", env=env).returncode == 0
    p = run("fsck", env=env)
    assert p.returncode == 4 and "session 'a', layer 0, block 2" in p.stdout, p.stdout
    assert "salvage" in p.stderr
    # 3. export refuses the damaged session and leaves no file
    out = tmp_path / "a.msax"
    p = run("export", "a", out, env=env)
    assert p.returncode == 4 and "layer 0, block 2" in p.stderr and not out.exists()
    ok("export", "b", tmp_path / "b.msax", env=env)
    ok("import", tmp_path / "b.msax", "b-copy", env=penv)
    # salvage: 'a' up to its block 2 (2 blocks of 16, in every layer), the rest whole
    salvage_all(st, env, tmp_path, base, want_whole=["b", "f", "e"], want_cut={"a": 2 * BK})


def test_kv_flip_left_out(base, store):
    """A damaged K plane: found when a step selects the block, which is then
    left out; fsck names it."""
    st, env = store
    f = LmdbFile(st / "data.mdb")
    for blk in (0, 1, 5, 11):  # the sink and recent blocks are selected often
        voff, _ = block_value(f, "a", 1, blk)
        off, plen, _ = plane_offset(f, voff, 1)
        f.data[off] ^= 0x01
    f.save()
    p = run("fsck", env=env)
    assert p.returncode == 4 and "session 'a', layer 1, block 5" in p.stdout
    assert ok("-q", "gen", "a", "-n", 24, env=env).stdout
    assert ok("-q", "gen", "b", "-n", 24, env=env).stdout == base["expect"]["b"]


def test_overflow_header_flip(base, store, tmp_path):
    """The header of the first overflow page of one block value says 0 pages
    instead of 2: the data is intact, but LMDB would free the wrong pages when
    the block is removed (and compact would copy the wrong run). rm and
    compact refuse, fsck names the page, generation is unaffected."""
    st, env = store
    f = LmdbFile(st / "data.mdb")
    voff, vlen = block_value(f, "a", 1, 3)
    assert voff % f.psize == 16 and vlen > f.psize - 16  # an overflow value
    f.data[voff - 16 + 12] ^= 0x02
    f.save()
    for args in (["rm", "a"], ["compact"]):
        assert_damage(run(*args, env=env), " ".join(args))
    p = run("fsck", env=env)
    assert p.returncode == 4 and "overflow page header damaged" in p.stdout, p.stdout
    assert ok("-q", "gen", "b", "-n", 24, env=env).stdout == base["expect"]["b"]
    ok("rm", "b", env=env)  # blocks whose headers are intact are freed as usual
    assert run("fsck", env=env).returncode == 4  # still the one header
    base2 = dict(base, sessions=dict(base["sessions"]))
    salvage_all(st, env, tmp_path, base2, want_whole=["a", "f", "e"])


# ---- 3. export verifies what it writes ---------------------------------------

def test_export_token_chunk_damage(base, store, tmp_path):
    st, env = store
    f = LmdbFile(st / "data.mdb")
    off, n = f.get("tokens", struct.pack(">QI", session_sid(f, "a"), 0))
    f.data[off + 8 + 4 * 7] ^= 0x01  # token 7
    f.save()
    out = tmp_path / "a.msax"
    p = run("export", "a", out, env=env)
    assert p.returncode == 4 and "token chunk 0" in p.stderr and not out.exists(), p.stderr
    assert run("fsck", env=env).returncode == 4
    p = run("gen", "a", "-n", 2, env=env)
    assert_damage(p, "gen a")
    salvage_all(st, env, tmp_path, base, want_whole=["b", "f", "e"], want_cut={"a": 0})


def test_export_decoded_checksum_damage(base, store, tmp_path):
    """A plane changed with its own checksum and the header's recomputed:
    every plane checks out, only the checksum of the decoded data (which
    fsck and now export verify) does not. The old export wrote such a
    session."""
    st, env = store
    f = LmdbFile(st / "data.mdb")
    voff, vlen = block_value(f, "a", 2, 3)
    np_ = f.data[voff + 11]
    hdr = 24 + 8 * np_
    assert crc32c(f.data[voff + 8: voff + hdr]) == struct.unpack_from("<I", f.data, voff + 4)[0]
    j = next(i for i in range(np_) if struct.unpack_from("<I", f.data, voff + 24 + 8 * i)[0] & 0x80000000)
    off, plen, _ = plane_offset(f, voff, j)  # a plane stored as is
    f.data[off] ^= 0x01
    struct.pack_into("<I", f.data, voff + 24 + 8 * j + 4, crc32c(f.data[off:off + plen]))
    struct.pack_into("<I", f.data, voff + 4, crc32c(f.data[voff + 8: voff + hdr]))
    f.save()
    p = run("fsck", env=env)
    assert p.returncode == 4 and "decoded data checksum mismatch" in p.stdout, p.stdout
    out = tmp_path / "a.msax"
    p = run("export", "a", out, env=env)
    assert p.returncode == 4 and "layer 2, block 3" in p.stderr and not out.exists(), p.stderr


# ---- 12. a read-only store -----------------------------------------------------

def test_readonly_store(base, tmp_path):
    prefix = ()
    if os.geteuid() == 0:  # root ignores permissions: run as nobody
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a store unwritable")
        prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    top = Path(tempfile.mkdtemp(prefix="msa-ro-"))
    try:
        os.chmod(top, 0o755)
        st, out = top / "store", top / "out"
        shutil.copytree(base["dir"] / "store", st)
        shutil.copy(base["model"], top / "m.gguf")
        out.mkdir()
        os.chmod(out, 0o777)
        os.chmod(top / "m.gguf", 0o444)
        for p in [st, *st.iterdir()]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        env = dict(base["env"], MSA_STORE=str(st), MSA_MODEL=str(top / "m.gguf"))
        for args in (["ls"], ["--json", "ls"], ["info", "a"], ["fsck"], ["export", "a", out / "a.msax"]):
            p = run(*args, env=env, prefix=prefix)
            assert p.returncode == 0, f"{args}: exit {p.returncode}: {p.stderr}"
        assert (out / "a.msax").exists()
        assert {s["name"] for s in json.loads(run("--json", "ls", env=env, prefix=prefix).stdout)["sessions"]} \
            == {"a", "b", "f", "e"}
        for args in (["gen", "a", "-n", 2], ["new", "x"]):
            p = run(*args, env=env, prefix=prefix)
            assert p.returncode != 0
            assert "not writable" in p.stderr and "cannot open model" not in p.stderr, p.stderr
    finally:
        for dirpath, dirs, files in os.walk(top):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(top, ignore_errors=True)
