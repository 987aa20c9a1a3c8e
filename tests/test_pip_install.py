#!/usr/bin/env python3
"""The Python bindings as a user installs them: `pip install
./bindings/python` into a fresh virtual environment, offline, then the
README's Python snippet run from a folder outside the checkout, with no
MSA_LIBRARY and no PYTHONPATH, so that the package has to find libmsa by
itself. Two ways it must find it:

  1. the build tree recorded at install time (MSA_BUILD_DIR set for pip:
     bindings/python/_build/msa_build_backend.py writes msa_mem/_locations.py);
  2. an installed prefix (`cmake --install BUILD --prefix TMP`), through
     pkg-config's libdir of msa.pc, the package reinstalled with nothing
     recorded (MSA_BUILD_DIR pointing at an empty folder).

Each run must load the library it is meant to (msa_mem.load_library()._name)
and print what the snippet prints: the generated text, the session's token
count, and its most-read blocks with their source tags; both runs must
generate the same text. The snippet is read from README.md itself, so the
README stays true; only its store path is replaced by a temporary one.

Exits 77 (skipped) with a message when ../shared/assets/stories260K is
absent (after checking that the package installs and imports) or when
`python3 -m venv` is unusable (Debian: install python3-venv).

    test_pip_install.py BUILD_DIR SOURCE_DIR CMAKE

Run by ctest (tests/pip.cmake), label unit.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = 77


def fail(msg: str) -> None:
    print(f"FAIL: {msg}")
    sys.exit(1)


def run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    if p.returncode != 0:
        fail(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def readme_snippet(src: Path) -> str:
    text = (src / "README.md").read_text()
    m = re.search(r"## The Python API.*?```python\n(.*?)```", text, re.S)
    if not m:
        fail("README.md has no ```python block under '## The Python API'")
    return m.group(1)


def assets_dir(src: Path):
    for d in (os.environ.get("MSA_ASSETS"), os.environ.get("MSA_DEFAULT_ASSETS"),
              str(src.parent / "shared" / "assets")):
        if d and (Path(d) / "stories260K" / "stories260K.bin").exists():
            return Path(d)
    return None


def clean_env(**extra) -> dict:
    """The caller's environment without what would point the package at a
    library (LD_LIBRARY_PATH stays: libmsa's own dependencies may need it;
    which libmsa got loaded is checked anyway)."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("MSA_LIBRARY", "PYTHONPATH", "PYTHONHOME", "MSA_BUILD_DIR",
                      "PKG_CONFIG_PATH", "VIRTUAL_ENV")}
    e.update(extra)
    return e


def pip_install(py: Path, src: Path, build_dir: Path) -> None:
    run([py, "-m", "pip", "install", "--no-index", "--no-cache-dir", "--force-reinstall",
         "--quiet", src / "bindings" / "python"],
        env=clean_env(MSA_BUILD_DIR=str(build_dir), PIP_DISABLE_PIP_VERSION_CHECK="1"))


def run_snippet(py: Path, code: str, workdir: Path, env: dict, want_lib: Path) -> str:
    """Runs the snippet in workdir, checks which libmsa it loaded, returns
    its output."""
    probe = ("import msa_mem, sys; lib = msa_mem.load_library()._name; "
             "print(msa_mem.__file__); print(lib)")
    p = run([py, "-c", probe], cwd=workdir, env=env)
    pkg_file, lib = p.stdout.split("\n")[:2]
    if str(src_root) in pkg_file:
        fail(f"msa_mem was imported from the checkout ({pkg_file}), not the venv")
    if Path(lib).resolve() != want_lib.resolve():
        fail(f"loaded {lib}, expected {want_lib}")
    (workdir / "snippet.py").write_text(code)
    return run([py, "snippet.py"], cwd=workdir, env=env).stdout


def check_output(out: str, how: str) -> str:
    """The snippet prints the text, then n_tokens, then 'block reads source'
    rows; returns the text."""
    lines = out.rstrip("\n").split("\n")
    idx = [i for i, l in enumerate(lines) if re.fullmatch(r"\d+", l)]
    if not idx:
        fail(f"{how}: no token count in the output:\n{out}")
    i = idx[-1]
    text, n_tokens, rows = "\n".join(lines[:i]), int(lines[i]), lines[i + 1:]
    if not text.strip():
        fail(f"{how}: nothing generated:\n{out}")
    if not 2 < n_tokens <= 64:   # prompt (a few tokens) + up to 32 generated
        fail(f"{how}: n_tokens {n_tokens}")
    if not rows or not all(re.fullmatch(r"\d+ [1-9]\d* .+", r) for r in rows):
        fail(f"{how}: explain rows are not 'block reads source':\n{out}")
    block, _, source = rows[0].split(" ", 2)
    if block != "0" or not source.startswith("prompt"):
        fail(f"{how}: the most-read block is not block 0 tagged 'prompt...': {rows[0]}")
    print(f"-- {how}: {n_tokens} tokens, {text.strip()[:60]!r}..., explain {rows}")
    return text


def main() -> int:
    global src_root
    build, src, cmake = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), sys.argv[3]
    src_root = src
    lib_build = build / "libmsa.so"
    if not lib_build.exists():
        fail(f"{lib_build} not built")
    code = readme_snippet(src)
    if '"/tmp/store"' not in code or '"stories260K.gguf"' not in code:
        fail("the README snippet no longer opens \"stories260K.gguf\" with store=\"/tmp/store\"; "
             "update this test")

    with tempfile.TemporaryDirectory(prefix="msa-pip.") as t:
        tmp = Path(t)
        venv = tmp / "venv"
        p = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                           text=True)
        if p.returncode != 0:
            print(f"SKIPPED: `{sys.executable} -m venv` failed (on Debian install python3-venv):"
                  f"\n{p.stderr}")
            return SKIP
        py = venv / "bin" / "python"

        # 1. the recorded build tree
        pip_install(py, src, build)
        work = tmp / "work"
        work.mkdir()
        run([py, "-c", "import msa_mem; print(msa_mem.version())"], cwd=work, env=clean_env())
        assets = assets_dir(src)
        if assets is None:
            print("SKIPPED: the package installs and imports, but there is no "
                  "../shared/assets/stories260K (set MSA_ASSETS) to run the README snippet on")
            return SKIP
        run([build / "msa-mem", "-q", "convert", "llama2c",
             assets / "stories260K" / "stories260K.bin", assets / "stories260K" / "tok512.bin",
             work / "stories260K.gguf"])
        snippet = code.replace('"/tmp/store"', repr(str(tmp / "store-build")))
        text1 = check_output(run_snippet(py, snippet, work, clean_env(), lib_build),
                             "recorded build tree")

        # 2. an installed prefix, found through pkg-config
        prefix = tmp / "prefix"
        run([cmake, "--install", build, "--prefix", prefix])
        pcs = list(prefix.glob("**/pkgconfig/msa.pc"))
        if not pcs:
            fail(f"no msa.pc under {prefix}")
        if not shutil.which("pkg-config"):
            print("SKIPPED: pkg-config is not installed (Debian: pkg-config); the recorded "
                  "build tree worked, the installed prefix was not tried")
            return SKIP
        empty = tmp / "no-build"
        empty.mkdir()
        pip_install(py, src, empty)
        libdir = pcs[0].parent.parent
        snippet = code.replace('"/tmp/store"', repr(str(tmp / "store-prefix")))
        env = clean_env(PKG_CONFIG_PATH=str(pcs[0].parent))
        text2 = check_output(run_snippet(py, snippet, work, env, libdir / "libmsa.so.0"),
                             "installed prefix via pkg-config")
        if text1 != text2:
            fail(f"the two libraries generated different text:\n{text1!r}\n{text2!r}")
    print("ok: pip-installed bindings found libmsa (recorded build tree, installed prefix) "
          "and ran the README snippet")
    return 0


src_root = Path("/")
if __name__ == "__main__":
    sys.exit(main())
