"""The command line against the files a user gets wrong (issue 10, items 8,
10 and 11), on the real stories260K model (../shared/assets, or $MSA_ASSETS):

- convert and calibrate never overwrite an input (by device and inode: the
  same name, ./name, a hard link, a symbolic link), and an existing output
  only with --force; a refused run changes nothing and leaves no temporary
  file behind;
- --model naming a FIFO fails at once with a message that says so;
- `ingest S /nonexistent` says "No such file or directory" (it said "out of
  memory": -ENOENT is MSA_ENOMEM's value) and exits 3;
- a full disk during ingest says "no space left on device" and exits 6 (it
  said "Input/output error"): the store lives on a 3 MiB tmpfs mounted in a
  private mount namespace (unshare -rm); skipped where that is not allowed.

Run by ctest (tests/model.cmake) with MSA_BUILD_DIR set; by hand:
    MSA_BUILD_DIR=build python3 -m pytest -q tests/test_cli_files.py
"""

import hashlib
import os
import random
import shutil
import subprocess
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
    pytest.mark.skipif(ASSETS is None, reason="no ../shared/assets/stories260K (set MSA_ASSETS)"),
    pytest.mark.skipif(not MSA.exists(), reason=f"{MSA} not built"),
]


def run(*args, env=None, timeout=300):
    return subprocess.run([str(MSA), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def digest(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture
def work(tmp_path):
    s = ASSETS / "stories260K"
    shutil.copy(s / "stories260K.bin", tmp_path / "m.bin")
    shutil.copy(s / "tok512.bin", tmp_path / "tok.bin")
    env = dict(os.environ, MSA_STORE=str(tmp_path / "store"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("MSA_MODEL", None)
    env.pop("MSA_DEVICE", None)
    return tmp_path, env


def leftovers(d):
    return [p.name for p in Path(d).iterdir() if ".tmp" in p.name or p.name.endswith(".msa-fp")]


def test_convert_refuses_its_inputs(work):
    d, env = work
    (d / "hard.bin").hardlink_to(d / "m.bin")
    (d / "sym.bin").symlink_to(d / "m.bin")
    (d / "tok-sym.bin").symlink_to(d / "tok.bin")
    before = digest(d / "m.bin"), digest(d / "tok.bin")
    for out in ("m.bin", "tok.bin", "./m.bin", "hard.bin", "sym.bin", "tok-sym.bin"):
        for force in ([], ["--force"]):
            p = run("convert", "llama2c", d / "m.bin", d / "tok.bin", f"{d}/{out}", *force, env=env)
            assert p.returncode != 0, out
            assert "input" in p.stderr and "refusing" in p.stderr, p.stderr
    assert (digest(d / "m.bin"), digest(d / "tok.bin")) == before
    assert (d / "sym.bin").is_symlink()
    assert leftovers(d) == []


def test_convert_needs_force_to_replace(work):
    d, env = work
    out = d / "m.gguf"
    assert run("convert", "llama2c", d / "m.bin", d / "tok.bin", out, env=env).returncode == 0
    first = digest(out)
    out.write_bytes(b"something the user wrote")
    p = run("convert", "llama2c", d / "m.bin", d / "tok.bin", out, env=env)
    assert p.returncode == 1 and "--force" in p.stderr, p.stderr
    assert out.read_bytes() == b"something the user wrote"
    p = run("convert", "llama2c", d / "m.bin", d / "tok.bin", out, "--force", env=env)
    assert p.returncode == 0, p.stderr
    assert digest(out) == first
    assert leftovers(d) == []  # and no fingerprint cache beside the model


def test_calibrate_refuses_its_model(work):
    d, env = work
    model = d / "m.gguf"
    assert run("convert", "llama2c", d / "m.bin", d / "tok.bin", model, env=env).returncode == 0
    (d / "text.txt").write_text("Once upon a time there was a cat. " * 20)
    (d / "alias.gguf").hardlink_to(model)
    before = digest(model)
    for out, force in ((model, []), (model, ["--force"]), (d / "alias.gguf", ["--force"]),
                       (f"{d}/./m.gguf", [])):
        p = run("calibrate", model, out, "--text", d / "text.txt", "--steps", "1", *force,
                env=env, timeout=60)
        assert p.returncode == 1 and "input model" in p.stderr, p.stderr
        assert "calibrating" not in p.stderr  # refused before any training
    assert digest(model) == before
    other = d / "other.gguf"
    other.write_bytes(b"keep me")
    p = run("calibrate", model, other, "--text", d / "text.txt", "--steps", "1", env=env)
    assert p.returncode == 1 and "--force" in p.stderr and other.read_bytes() == b"keep me"


def test_fifo_model_fails_at_once(work):
    d, env = work
    fifo = d / "model.fifo"
    os.mkfifo(fifo)
    env = dict(env, MSA_MODEL=str(fifo))
    for args in (["new", "s"], ["tokenize", "hello"]):
        p = run(*args, env=env, timeout=30)  # before the fix: never returned
        assert p.returncode != 0 and "FIFO" in p.stderr, p.stderr


def test_ingest_missing_path(work):
    d, env = work
    model = d / "m.gguf"
    assert run("convert", "llama2c", d / "m.bin", d / "tok.bin", model, env=env).returncode == 0
    env = dict(env, MSA_MODEL=str(model))
    assert run("new", "s", env=env).returncode == 0
    p = run("ingest", "s", d / "does-not-exist", env=env)
    assert p.returncode == 3, p.stderr
    assert "No such file or directory" in p.stderr and "memory" not in p.stderr, p.stderr


def test_full_disk_during_ingest(work):
    d, env = work
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rm (a private mount namespace) is not allowed here")
    seed = fresh_seed()
    rng = random.Random(seed)
    model = d / "m.gguf"
    assert run("convert", "llama2c", d / "m.bin", d / "tok.bin", model, env=env).returncode == 0
    words = "the cat sat on a mat and dog ran far away from home".split()
    (d / "big.txt").write_text(" ".join(rng.choice(words) for _ in range(120000)))
    store = d / "store"
    store.mkdir()
    script = (f'mount -t tmpfs -o size=3m tmpfs "{store}" || exit 99\n'
              f'"{MSA}" new s --block-size 16 >/dev/null || exit 98\n'
              f'"{MSA}" ingest s "{d / "big.txt"}"\n')
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                       timeout=600, env=dict(env, MSA_MODEL=str(model), MSA_STORE=str(store)))
    if p.returncode == 99:
        pytest.skip("cannot mount a tmpfs in a private mount namespace: " + p.stderr)
    assert p.returncode == 6, (p.returncode, p.stderr)
    assert "no space left on device" in p.stderr.lower(), p.stderr
    assert "Input/output error" not in p.stderr, p.stderr
