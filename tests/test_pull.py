#!/usr/bin/env python3
"""test_pull.py: `msa-mem pull` end to end against tests/pull_server.py.

Usage: test_pull.py [path/to/msa-mem]; without an argument the binary is
$MSA_BUILD_DIR/msa-mem (ctest sets MSA_BUILD_DIR). Each case runs the real
command against a local server on 127.0.0.1 and checks the exit status, the
file (bytes and sha256), what was left on disk, and what the server saw
(Range requests, where the bearer token went). Exits 1 on any failure.
"""
import atexit
import hashlib
import json
import os
import subprocess
import sys
import shutil
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pull_server  # noqa: E402

failures = 0
checks = 0


def check(cond, what):
    global failures, checks
    checks += 1
    if not cond:
        failures += 1
        print("FAIL:", what, file=sys.stderr)


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ.get("MSA_BUILD_DIR", "."), "msa-mem")
    if not os.access(exe, os.X_OK):
        print("msa-mem not found at %s" % exe, file=sys.stderr)
        return 1
    srv = pull_server.start()
    base = "http://127.0.0.1:%d" % srv.server_port
    tmp = tempfile.mkdtemp(prefix="msa-test-pull-")
    atexit.register(shutil.rmtree, tmp, True)  # the test leaves no folder behind
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_ENDPOINT")}
    env.update(HF_ENDPOINT=base, XDG_DATA_HOME=os.path.join(tmp, "xdg"),
               http_proxy="", https_proxy="", HTTP_PROXY="", HTTPS_PROXY="", no_proxy="*")

    def pull(*args, token=None):
        e = dict(env)
        if token:
            e["HF_TOKEN"] = token
        p = subprocess.run([exe, "pull", "--json", "-q", "--retry-wait", "0.05", *args],
                           env=e, capture_output=True, text=True, timeout=60)
        out = None
        if p.returncode == 0:
            try:
                out = json.loads(p.stdout)
            except ValueError:
                check(False, "--json output is not JSON: %r" % p.stdout)
        return p.returncode, out, p.stderr

    def expect(name, size):
        data = pull_server.file_bytes(name, size)
        return len(data), hashlib.sha256(data).hexdigest()

    def file_sha(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def ranges(path_part):
        return [r["range"] for r in srv.log if path_part in r["path"] and r["range"]]

    # Success, with each way of stating the digest.
    for mode, by in [("xcs", "X-Checksum-Sha256"), ("digest", "Digest"),
                     ("repr", "Repr-Digest"), ("etag", "ETag")]:
        dest = os.path.join(tmp, "ok-%s.bin" % mode)
        rc, out, err = pull(base + "/files/ok-%s?size=150001&digest=%s" % (mode, mode), dest)
        n, sha = expect("ok-" + mode, 150001)
        check(rc == 0, "%s: exit %d: %s" % (mode, rc, err))
        if rc == 0:
            check(out["bytes"] == n and out["sha256"] == sha, "%s: result %r" % (mode, out))
            check(out["verified"] and out["verified_by"] == by, "%s: verified_by %r" % (mode, out))
            check(out["resumed"] is False, "%s: not resumed" % mode)
            check(file_sha(dest) == sha and not os.path.exists(dest + ".part"), "%s: file" % mode)

    # An empty file, and a server that states no digest.
    rc, out, err = pull(base + "/files/empty?size=0&digest=none", os.path.join(tmp, "empty"))
    check(rc == 0 and out["bytes"] == 0 and not out["verified"], "empty file: %d %r %s" % (rc, out, err))

    # Hugging Face shorthand into the default models folder; the token goes
    # to the endpoint, not to the CDN host it redirects to.
    srv.log.clear()
    rc, out, err = pull("gated/model@v1.0:sub/dir/w.gguf", token=srv.token)
    n, sha = expect("gated/model/v1.0/sub/dir/w.gguf", srv.hf_size)
    want_path = os.path.join(tmp, "xdg", "msa-mem", "models", "w.gguf")
    check(rc == 0, "hf: exit %d: %s" % (rc, err))
    if rc == 0:
        check(out["path"] == want_path and file_sha(want_path) == sha, "hf: %r" % out)
        check(out["verified_by"] == "X-Linked-Etag", "hf: verified_by %r" % out)
        check(out["url"] == base + "/gated/model/resolve/v1.0/sub/dir/w.gguf", "hf: url %r" % out["url"])
    res = [r for r in srv.log if "/resolve/" in r["path"]]
    cdn = [r for r in srv.log if r["path"].startswith("/cdn/")]
    check(res and all(r["auth"] == "Bearer " + srv.token for r in res), "hf: token sent to the endpoint")
    check(cdn and all(r["auth"] is None for r in cdn), "hf: token not forwarded to the CDN: %r" % cdn)
    check(cdn and all(r["host"].startswith("localhost") for r in cdn), "hf: redirect went to another host")

    # Gated without a token: refused, HF_TOKEN named, nothing left.
    dest = os.path.join(tmp, "gated.bin")
    rc, out, err = pull("gated/model:w.gguf", dest)
    check(rc == 6 and "HF_TOKEN" in err, "gated without token: exit %d: %s" % (rc, err))
    check(not os.path.exists(dest) and not os.path.exists(dest + ".part"), "gated: nothing left")

    # A plain URL never gets the token, and 401 is reported.
    srv.log.clear()
    dest = os.path.join(tmp, "auth.bin")
    rc, out, err = pull(base.replace("127.0.0.1", "localhost") + "/files/a?auth=1", dest, token=srv.token)
    check(rc == 6 and "401" in err, "401: exit %d: %s" % (rc, err))
    check(all(r["auth"] is None for r in srv.log), "token sent to a non-endpoint host")
    check(not os.path.exists(dest) and not os.path.exists(dest + ".part"), "401: nothing left")

    # 404: exit 3, nothing left.
    dest = os.path.join(tmp, "missing.bin")
    rc, out, err = pull(base + "/nothing/here.bin", dest)
    check(rc == 3 and "404" in err, "404: exit %d: %s" % (rc, err))
    check(not os.path.exists(dest) and not os.path.exists(dest + ".part"), "404: nothing left")
    rc, out, err = pull("org/repo:missing.bin", dest)  # not a resolve route: 404 too
    check(rc == 3, "hf 404: exit %d: %s" % (rc, err))

    # Checksum mismatch: exit 4, nothing left.
    dest = os.path.join(tmp, "bad.bin")
    rc, out, err = pull(base + "/files/bad?bad=1", dest)
    check(rc == 4 and "sha256" in err, "mismatch: exit %d: %s" % (rc, err))
    check(not os.path.exists(dest) and not os.path.exists(dest + ".part"), "mismatch: nothing left")
    rc, out, err = pull(base + "/files/bad2?digest=none", dest, "--sha256", "00" * 32)
    check(rc == 4, "--sha256 mismatch: exit %d: %s" % (rc, err))
    check(not os.path.exists(dest) and not os.path.exists(dest + ".part"), "--sha256: nothing left")

    # Connection cut mid-file, no retries: exit 6, .part kept, DEST absent;
    # the next pull sends Range and completes.
    srv.log.clear()
    dest = os.path.join(tmp, "resume.bin")
    url = base + "/files/resume?size=400000&drop=150000"
    rc, out, err = pull(url, dest, "--retries", "0")
    check(rc == 6 and ".part" in err, "drop: exit %d: %s" % (rc, err))
    check(not os.path.exists(dest), "drop: DEST absent")
    part = os.path.getsize(dest + ".part") if os.path.exists(dest + ".part") else -1
    check(0 < part <= 150000, "drop: .part of %d bytes" % part)
    rc, out, err = pull(url, dest)
    n, sha = expect("resume", 400000)
    check(rc == 0, "resume: exit %d: %s" % (rc, err))
    if rc == 0:
        check(out["resumed"] and out["resumed_bytes"] == part, "resume: %r (part %d)" % (out, part))
        check(out["bytes"] == n and out["sha256"] == sha and file_sha(dest) == sha, "resume: file")
    check("bytes=%d-" % part in ranges("/files/resume"), "resume: Range seen: %r" % ranges("/files/resume"))
    check(not os.path.exists(dest + ".part"), "resume: .part gone")

    # Cut twice within one pull: retried with backoff, resumed, verified.
    dest = os.path.join(tmp, "retry.bin")
    rc, out, err = pull(base + "/files/retry?size=300000&drop=50000&drops=2", dest)
    n, sha = expect("retry", 300000)
    check(rc == 0 and out["resumed"] and out["sha256"] == sha and file_sha(dest) == sha,
          "retry: exit %d %r %s" % (rc, out, err))
    check(len(ranges("/files/retry")) == 2, "retry: two Range requests: %r" % ranges("/files/retry"))

    # A server that ignores Range: the stale .part is replaced, not appended to.
    dest = os.path.join(tmp, "norange.bin")
    with open(dest + ".part", "wb") as f:
        f.write(b"stale" * 1000)
    rc, out, err = pull(base + "/files/norange?norange=1", dest)
    n, sha = expect("norange", 200000)
    check(rc == 0 and not out["resumed"] and file_sha(dest) == sha, "norange: %d %r %s" % (rc, out, err))

    # A .part longer than the file (416): started over.
    dest = os.path.join(tmp, "long.bin")
    with open(dest + ".part", "wb") as f:
        f.write(b"z" * 250000)
    rc, out, err = pull(base + "/files/long?size=1000", dest)
    n, sha = expect("long", 1000)
    check(rc == 0 and out["bytes"] == 1000 and file_sha(dest) == sha, "416: %d %r %s" % (rc, out, err))

    # DEST exists: refused without --force.
    rc, out, err = pull(base + "/files/long?size=1000", dest)
    check(rc != 0 and "exists" in err, "exists: exit %d: %s" % (rc, err))
    rc, out, err = pull(base + "/files/long?size=1000", dest, "--force")
    check(rc == 0, "--force: exit %d: %s" % (rc, err))

    # Usage errors.
    rc, out, err = pull("not-a-source")
    check(rc == 2, "bad source: exit %d: %s" % (rc, err))

    srv.shutdown()
    print("test-pull: %d checks, %d failed" % (checks, failures))
    return 1 if failures or not checks else 0


if __name__ == "__main__":
    sys.exit(main())
