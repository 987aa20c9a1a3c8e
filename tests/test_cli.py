"""End-to-end tests of the msa-mem command line on the real stories260K
model (../shared/assets, or $MSA_ASSETS): convert, new, ingest of a
generated git repository, ask --explain, chat through a pipe, gen, resume in
a second process, export/import, fork, rm, ls --json, and the examples
(examples/embed.c, examples/agent.py, examples/repo_qa).

Run by ctest (tests/cli.cmake) with MSA_BUILD_DIR set; by hand:
    MSA_BUILD_DIR=build python3 -m pytest -q tests/test_cli.py

What `ask --explain` is checked for. The stories260K model with the
training-free index (docs/index.md) selects blocks almost only by position
(the local block, recent blocks and the first block): asking a question
that repeats one file's text does not measurably raise that file's share of
reads against a control question. So the test does not assert a ranking; it
asserts what explain must get right whatever the model: the sources are
exactly ingested files (never the ignored or the binary file, never the
question), each source is a real file with line ranges inside it, every
listed block lies before the question's first block, and the file whose text
the question repeats is among the sources.
"""

import json
import os
import subprocess
import sys
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
                       "(set MSA_ASSETS): skipping the CLI tests"),
    pytest.mark.skipif(not MSA.exists(), reason=f"{MSA} not built"),
]


def run(*args, env=None, input=None, check=True):
    p = subprocess.run([str(MSA), *map(str, args)], env=env, input=input,
                       capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"msa-mem {' '.join(map(str, args))} exited {p.returncode}:\n"
                             f"{p.stderr}")
    return p


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    out = d / "stories260K.gguf"
    p = run("convert", "llama2c", ASSETS / "stories260K" / "stories260K.bin",
            ASSETS / "stories260K" / "tok512.bin", out)
    assert "vocab 512" in p.stdout
    assert out.exists()
    return out


@pytest.fixture
def env(model, tmp_path):
    e = dict(os.environ)
    e["MSA_MODEL"] = str(model)
    e["MSA_STORE"] = str(tmp_path / "store")
    e.pop("MSA_DEVICE", None)
    return e


FILES = {
    "src/ball.txt": "Tom had a big red ball. He liked to kick the red ball in the park.\n"
                    "One day the red ball rolled into the pond and a duck pushed it back.\n",
    "src/cake.txt": "Lily baked a yummy cake with her mom. The cake had pink frosting.\n"
                    "Lily gave the first piece of cake to her little brother Ben.\n",
    "docs/dog.txt": "Max was a happy dog who lived on a farm. Max liked to chase the cows.\n"
                    "At night Max slept in a warm barn next to the old horse.\n",
    "README.md": "Stories about a ball, a cake and a dog.\n",
}


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    for rel, text in FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    (repo / ".gitignore").write_text("secret.txt\n*.log\n")
    (repo / "secret.txt").write_text("The secret password is swordfish.\n")
    (repo / "debug.log").write_text("log line\n")
    (repo / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02binary\x00data")
    g = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(g + ["init", "-q"], check=True)
    subprocess.run(g + ["add", "."], check=True)  # .gitignore keeps secret.txt and debug.log out
    subprocess.run(g + ["commit", "-q", "-m", "init"], check=True)
    return repo


def test_help_teaches():
    for cmd in ("new", "ingest", "chat", "ask", "gen"):
        p = run(cmd, "--help")
        assert "usage: msa-mem " + cmd in p.stdout
        assert "Examples:" in p.stdout


def test_ls_without_a_store_and_version(tmp_path):
    store = tmp_path / "none"
    p = run("--store", store, "ls")
    assert "no store at" in p.stdout and not store.exists()  # listing creates nothing
    j = json.loads(run("--store", store, "--json", "ls").stdout)
    assert j["sessions"] == [] and j["store"] == str(store)
    assert run("-V").stdout == run("--version").stdout and "msa-mem" in run("-V").stdout


def test_usage_errors(env):
    assert run("ask", env=env, check=False).returncode == 2
    assert run("gen", "x", "--temp", "hot", env=env, check=False).returncode == 2
    p = run("gen", "missing", env=env, check=False)
    assert p.returncode == 3 and p.stderr.count("\n") == 1 and "msa-mem new missing" in p.stderr
    e = dict(env)
    e.pop("MSA_MODEL")
    assert run("new", "x", env=e, check=False).returncode == 2


def test_ingest_repo_and_explain(env, tmp_path):
    repo = make_repo(tmp_path)
    p = run("new", "repo", "--block-size", "16", "--top-k", "4", "--json", env=env)
    info = json.loads(p.stdout)
    assert info["block_size"] == 16 and info["top_k"] == 4

    d = json.loads(run("ingest", "repo", repo, "--json", env=env).stdout)
    paths = sorted(f["path"] for f in d["files"])
    assert paths == sorted([".gitignore", *FILES]), paths  # tracked files only
    assert d["skipped"]["binary"] == 1
    assert d["skipped"]["unchanged"] == 0
    assert d["n_tokens"] == d["tokens_added"] > 0

    # again: nothing new
    d2 = json.loads(run("ingest", "repo", repo, "--json", env=env).stdout)
    assert d2["files_ingested"] == 0 and d2["tokens_added"] == 0
    assert d2["skipped"]["unchanged"] == len(FILES) + 1 and d2["skipped"]["binary"] == 1

    # a changed file is appended again, alone
    (repo / "README.md").write_text("Stories about a ball, a cake, a dog and a boat.\n")
    d3 = json.loads(run("ingest", "repo", repo, "--json", env=env).stdout)
    assert [f["path"] for f in d3["files"]] == ["README.md"]
    assert d3["skipped"]["unchanged"] == len(FILES)

    # top-k from `new` is kept for the session
    ls = json.loads(run("ls", "--json", env=env).stdout)
    (s,) = [s for s in ls["sessions"] if s["name"] == "repo"]
    assert s["tokens"] == d3["n_tokens"] and s["shape"]["block_size"] == 16

    question = "Lily baked a yummy cake with her mom. What did Lily bake?"
    p = run("ask", "repo", question, "--explain", "--json", "-n", "8", env=env)
    a = json.loads(p.stdout)
    assert a["n_generated"] > 0 and a["question_first_token"] == d3["n_tokens"]
    srcs = {s["source"]: s for s in a["sources"]}
    assert "src/cake.txt" in srcs, srcs
    assert set(srcs) <= set(FILES) | {".gitignore"}, srcs
    for name, s in srcs.items():
        n_lines = (repo / name).read_text().count("\n")
        assert s["reads"] > 0 and s["lines"], s
        for a_, b_ in s["lines"]:
            assert 1 <= a_ <= b_ <= n_lines + 1, (name, s["lines"])  # +1: the last newline
    assert all(b["block"] < a["question_first_block"] for b in a["blocks"])
    assert a["blocks"] == sorted(a["blocks"], key=lambda b: -b["reads"])

    # the text form names files with line ranges
    run("fork", "repo", "repo2", env=env)
    p = run("ask", "repo2", question, "--explain", "-n", "4", "--limit", "0", env=env)
    assert "memory read" in p.stdout and "src/cake.txt:" in p.stdout
    assert "secret" not in p.stdout and "blob.bin" not in p.stdout


def test_ingest_walk_honours_gitignore(env, tmp_path):
    d = tmp_path / "plain"
    (d / "build").mkdir(parents=True)
    (d / "src").mkdir()
    (d / ".gitignore").write_text("# comment\nbuild/\n*.log\n")
    (d / "build" / "out.txt").write_text("built\n")
    (d / "x.log").write_text("log\n")
    (d / "src" / "a.txt").write_text("A little fish swam in the sea.\n")
    (d / "src" / ".gitignore").write_text("!keep.log\n")
    (d / "src" / "keep.log").write_text("kept\n")
    (d / "big.txt").write_text("word " * 400)
    out = json.loads(run("ingest", "w", d, "--max-file-size", "1K", "--json", "--create",
                         env=env).stdout)
    assert sorted(f["path"] for f in out["files"]) == [".gitignore", "src/.gitignore",
                                                        "src/a.txt", "src/keep.log"]
    assert out["skipped"]["ignored"] == 2  # build/ and x.log
    assert out["skipped"]["too_large"] == 1


def test_sessions_are_created_only_when_asked(env):
    for cmd in (["ingest", "typo", "--text", "hi"], ["gen", "typo", "--prompt", "hi", "-n", "1"],
                ["chat", "typo", "-n", "1"]):
        p = run(*cmd, env=env, check=False, input="hi\n")
        assert p.returncode == 3 and "msa-mem new typo" in p.stderr and "--create" in p.stderr, cmd
    assert "typo" not in [s["name"] for s in json.loads(run("ls", "--json", env=env).stdout)["sessions"]]
    run("gen", "typo", "--prompt", "hi", "-n", "1", "--create", env=env)
    assert "typo" in [s["name"] for s in json.loads(run("ls", "--json", env=env).stdout)["sessions"]]


def test_ingest_stdin_and_text(env):
    p = run("ingest", "notes", "-", "--source", "piped", "--json", "--create", env=env,
            input="The bird sang a song.\n")
    d = json.loads(p.stdout)
    assert d["files"][0]["path"] == "piped"
    d = json.loads(run("ingest", "notes", "--text", "The frog jumped.", "--json", env=env).stdout)
    assert d["files_ingested"] == 1 and d["tokens_added"] > 0


def test_chat_through_pipe(env):
    p = run("chat", "c", "--json", "-n", "12", "--create", env=env,
            input="Hello, who are you?\n\nTell me about your day.\n")
    turns = [json.loads(l) for l in p.stdout.splitlines()]
    assert [t["user"] for t in turns] == ["Hello, who are you?", "Tell me about your day."]
    assert all(0 < t["tokens"] <= 12 for t in turns)
    assert turns[1]["n_tokens"] > turns[0]["n_tokens"]
    # a second process continues the same conversation
    p2 = run("chat", "c", "-n", "6", "--template", "plain", env=env, input="And then?\n")
    assert p2.stdout.strip()
    ls = json.loads(run("ls", "--json", env=env).stdout)
    (s,) = [s for s in ls["sessions"] if s["name"] == "c"]
    assert s["tokens"] > turns[1]["n_tokens"]


def gen_json(env, name, *args):
    return json.loads(run("gen", name, "--json", *args, env=env).stdout)


def test_gen_and_resume_equals_one_process(env):
    prompt = "Once upon a time, there was a little girl named Lily."
    for name in ("one", "two"):  # small blocks: selection matters past 4 blocks
        run("new", name, "--block-size", "16", "--top-k", "4", env=env)
    # one process: prompt + 40 tokens
    one = gen_json(env, "one", "--prompt", prompt, "-n", "40")
    # two processes: prompt + 20, then 20 more after a restart
    a = gen_json(env, "two", "--prompt", prompt, "-n", "20")
    b = gen_json(env, "two", "-n", "20")
    assert one["n_generated"] == 40 and a["n_generated"] + b["n_generated"] == 40
    assert b["tokens_before"] == a["tokens_after"]
    assert a["text"] + b["text"] == one["text"]
    assert b["tokens_after"] == one["tokens_after"]
    # the resume did not prefill: it read no more than what one step reads
    assert b["pager"]["steps"] > 0

    # the token sequences are the same, read back through the bindings
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    os.environ.setdefault("MSA_LIBRARY", str(BUILD / "libmsa.so"))
    import msa_mem
    with msa_mem.Engine(env["MSA_MODEL"], store=env["MSA_STORE"]) as e:
        with e.session("one") as s1, e.session("two") as s2:
            assert s1.tokens() == s2.tokens()


def test_gen_sampling_is_seeded(env):
    seed = str(fresh_seed())
    gen_json(env, "s", "--prompt", "The dog ran", "-n", "1", "--create")
    run("fork", "s", "s2", env=env)
    x = gen_json(env, "s", "-n", "16", "--temp", "0.9", "--top-p", "0.95", "--seed", seed)
    y = gen_json(env, "s2", "-n", "16", "--temp", "0.9", "--top-p", "0.95", "--seed", seed)
    assert x["text"] == y["text"], f"seed {seed}"


def test_export_import_fork_rm_ls(env, tmp_path):
    gen_json(env, "orig", "--prompt", "Sam saw a big tree.", "-n", "20", "--create")
    f = tmp_path / "orig.msax"
    run("export", "orig", f, env=env)
    run("import", f, "copy", env=env)
    run("fork", "orig", "branch", env=env)
    ls = {s["name"]: s for s in json.loads(run("ls", "--json", env=env).stdout)["sessions"]}
    assert {"orig", "copy", "branch"} <= set(ls)
    assert ls["copy"]["tokens"] == ls["orig"]["tokens"] == ls["branch"]["tokens"]
    assert ls["branch"]["parent"] == "orig"
    # the copies continue exactly like the original
    a = gen_json(env, "orig", "-n", "10")
    b = gen_json(env, "copy", "-n", "10")
    c = gen_json(env, "branch", "-n", "10")
    assert a["text"] == b["text"] == c["text"]
    run("rm", "copy", env=env)
    ls = {s["name"] for s in json.loads(run("ls", "--json", env=env).stdout)["sessions"]}
    assert "copy" not in ls and "orig" in ls
    assert run("gen", "copy", "-n", "1", env=env, check=False).returncode == 3


def test_embed_example(model, tmp_path):
    exe = BUILD / "examples" / "embed"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    store = tmp_path / "store"
    p1 = subprocess.run([str(exe), str(model), str(store)], capture_output=True, text=True,
                        timeout=120, check=True)
    p2 = subprocess.run([str(exe), str(model), str(store)], capture_output=True, text=True,
                        timeout=120, check=True)
    assert "0 tokens before, 24 generated" in p1.stdout
    n1 = int(p1.stdout.split(", ")[-2].split()[0])  # "... 37 now"
    assert f"{n1} tokens before, 24 generated" in p2.stdout


def test_agent_example_remembers(model, tmp_path):
    script = ROOT / "examples" / "agent.py"
    e = dict(os.environ, MSA_LIBRARY=str(BUILD / "libmsa.so"))
    args = [sys.executable, str(script), "--model", str(model), "--store", str(tmp_path / "s"),
            "--turns", "2", "--max-tokens", "8", "--json"]
    r1 = json.loads(subprocess.run(args, env=e, capture_output=True, text=True, timeout=300,
                                   check=True).stdout.splitlines()[-1])
    r2 = json.loads(subprocess.run(args, env=e, capture_output=True, text=True, timeout=300,
                                   check=True).stdout.splitlines()[-1])
    assert r1["tokens_at_start"] == 0
    assert r2["tokens_at_start"] == r1["tokens_at_end"] > 0
    assert r2["first_tokens"] == r1["first_tokens"]  # the same memory, read back
    assert r2["turns_seen"] == r1["turns_seen"] + 2


def test_repo_qa_example(model, tmp_path):
    repo = make_repo(tmp_path)
    e = dict(os.environ, MSA_MODEL=str(model), MSA_STORE=str(tmp_path / "store"),
             MSA_BIN=str(MSA))
    p = subprocess.run(["sh", str(ROOT / "examples" / "repo_qa" / "repo_qa.sh"), str(repo),
                        "What did Lily bake?"], env=e, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "memory read" in p.stdout and "src/cake.txt" in p.stdout


def test_ingest_ctrl_c_keeps_last_chunk(env, tmp_path):
    import signal
    import time
    big = tmp_path / "big.txt"
    big.write_text("".join(f"Day {i}: Sue took her kite to the beach and it flew high.\n"
                           for i in range(150)))
    p = subprocess.Popen([str(MSA), "ingest", "big", str(big), "--create"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    tokens = 0
    while time.time() < deadline and p.poll() is None:  # wait for the first commit
        ls = run("ls", "--json", env=env, check=False)
        if ls.returncode == 0:
            s = [s for s in json.loads(ls.stdout)["sessions"] if s["name"] == "big"]
            tokens = s[0]["tokens"] if s else 0
            if tokens:
                break
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the ingest finished before the signal arrived")
    assert p.returncode == 130, err
    assert "interrupted" in err and "last committed chunk" in err
    ls = json.loads(run("ls", "--json", env=env).stdout)
    (s,) = [s for s in ls["sessions"] if s["name"] == "big"]
    assert s["tokens"] > 0 and s["tokens"] % 256 == 0  # whole prefill chunks only
    # the interrupted file was not recorded as ingested: it goes in again, whole
    d = json.loads(run("ingest", "big", big, "--json", env=env).stdout)
    assert d["files_ingested"] == 1 and d["n_tokens"] == s["tokens"] + d["tokens_added"]


# ---- issue 10: sessions and output ---------------------------------------------

def info_json(env, name):
    return json.loads(run("info", name, "--json", env=env).stdout)


def test_top_k_travels_with_the_session(env, tmp_path):
    """The top-k of `new` is stored with the session: a fork, a fork of a
    fork and an exported and imported copy keep it (`info` shows it) and
    generate exactly what the original generates, with no CLI side file to
    lean on; the C/Python callers see it too (test_python)."""
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play."
    run("new", "orig", "--block-size", "16", "--top-k", "4", env=env)
    gen_json(env, "orig", "--prompt", prompt, "-n", "80")  # > 4 blocks: k matters
    run("fork", "orig", "f1", env=env)
    run("fork", "f1", "f2", env=env)
    run("fork", "orig", "ref", env=env)
    run("export", "f2", tmp_path / "f2.msax", env=env)
    run("import", tmp_path / "f2.msax", "copy", env=env)
    i = info_json(env, "copy")
    assert i["params"] == {"top_k": 4, "top_k_from": "session", "top_k_effective": 4}
    assert "top-k 4" in run("info", "copy", env=env).stdout
    # the side files are not needed (nor read) for any of them
    import shutil
    shutil.rmtree(Path(env["MSA_STORE"]) / "cli", ignore_errors=True)
    ref = gen_json(env, "ref", "-n", "24")["text"]
    for name in ("orig", "f1", "f2", "copy"):
        assert info_json(env, name)["params"]["top_k"] == 4, name
        assert gen_json(env, name, "-n", "24")["text"] == ref, name
    # --top-k on an existing session does not silently change it
    p = run("ingest", "f1", "--text", "The end.", "--top-k", "8", env=env)
    assert "keeps its top-k 4" in p.stderr
    assert info_json(env, "f1")["params"]["top_k"] == 4


def fnv1a64(b: bytes) -> int:
    h = 14695981039346656037
    for c in b:
        h = ((h ^ c) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def test_top_k_of_an_earlier_build_side_file_is_migrated(env, tmp_path):
    """A store of a build before session parameters: the record holds no
    top-k, the side file does. info reports it from there, the next command
    stores it in the record, and from then on copies carry it."""
    import ctypes as C
    run("new", "old", "--block-size", "16", env=env)
    gen_json(env, "old", "--prompt", "Tom had a red ball and a blue kite.", "-n", "70")
    # make it look old: no parameters in the record (record version 1) ...
    P = C.c_void_p
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    os.environ.setdefault("MSA_LIBRARY", str(BUILD / "libmsa.so"))
    import msa_mem
    with msa_mem.Engine(env["MSA_MODEL"], store=env["MSA_STORE"]) as e:
        lib2 = e._lib
        lib2.msa_store_session_open.argtypes = [P, C.c_char_p, C.c_char_p, C.POINTER(P)]
        lib2.msa_store_session_set_params.argtypes = [P, P]
        lib2.msa_store_session_close.argtypes = [P]
        ss = P()
        assert lib2.msa_store_session_open(e._store_handle(), b"old", None, C.byref(ss)) == 0
        zero = msa_mem._SessionParams()
        assert lib2.msa_store_session_set_params(ss, C.byref(zero)) == 0
        lib2.msa_store_session_close(ss)
    i = info_json(env, "old")
    assert i["params"]["top_k"] is None and i["params"]["top_k_from"] == "default"
    # ... and its top-k in the side file, as those builds kept it
    side = Path(env["MSA_STORE"]) / "cli" / f"{fnv1a64(b'old'):016x}.json"
    side.parent.mkdir(exist_ok=True)
    side.write_text(json.dumps({"session": "old", "created": i["created"], "top_k": 4}))
    i = info_json(env, "old")
    assert i["params"] == {"top_k": None, "top_k_from": "cli side file", "top_k_effective": 4}
    run("fork", "old", "ref", env=env)  # a fork made before the migration: parent's side file
    p = run("gen", "old", "-n", "1", "-v", env=env)
    assert "now stored with the session" in p.stderr
    assert info_json(env, "old")["params"]["top_k"] == 4
    run("export", "old", tmp_path / "old.msax", env=env)
    run("import", tmp_path / "old.msax", "copy", env=env)
    assert info_json(env, "copy")["params"]["top_k"] == 4
    assert gen_json(env, "ref", "-n", "1")["n_generated"] == 1  # the fork migrates from its parent's
    assert info_json(env, "ref")["params"]["top_k"] == 4
    a, b = gen_json(env, "copy", "-n", "16"), gen_json(env, "ref", "-n", "16")
    assert a["text"] == b["text"]


def test_rm_of_a_session_in_use_is_busy(env):
    """rm of a session that another process is writing (a chat between
    turns) is refused with exit 7, like a second writer; the writer goes on
    unharmed; once it has ended, rm works."""
    run("new", "busy", env=env)
    p = subprocess.Popen([str(MSA), "chat", "busy", "--json", "-n", "6"], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        p.stdin.write("Hello there.\n")
        p.stdin.flush()
        first = json.loads(p.stdout.readline())  # the first turn is committed
        r = run("rm", "busy", env=env, check=False)
        assert r.returncode == 7, r
        assert "in use" in r.stderr and "busy" in r.stderr and r.stderr.count("\n") == 1
        # a second writer gets the same status
        w = run("gen", "busy", "-n", "1", env=env, check=False)
        assert w.returncode == 7 and "in use" in w.stderr
        assert "busy" in [s["name"] for s in json.loads(run("ls", "--json", env=env).stdout)["sessions"]]
        p.stdin.write("What next?\n")
        p.stdin.flush()
        second = json.loads(p.stdout.readline())
        assert second["n_tokens"] > first["n_tokens"]
        p.stdin.close()
        assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    assert info_json(env, "busy")["tokens"] == second["n_tokens"]
    run("rm", "busy", env=env)
    assert "busy" not in [s["name"] for s in json.loads(run("ls", "--json", env=env).stdout)["sessions"]]
    # the lock file of the removed session is gone too
    assert not list(Path(env["MSA_STORE"]).glob("session-*.lock"))


def run_b(*args, env=None, input=None):
    """run() with bytes arguments and output (names and texts that are not UTF-8)."""
    p = subprocess.run([bytes(MSA), *[a if isinstance(a, bytes) else os.fsencode(str(a))
                                      for a in args]], env=env, input=input,
                       capture_output=True, timeout=300)
    assert p.returncode == 0, (args, p.returncode, p.stderr)
    return p


def bad_utf8(rng, n=3):
    """Random ill-formed UTF-8 pieces: lone continuation bytes, truncated
    sequences, overlongs, surrogates, bytes never valid."""
    pieces = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
              b"\xff", b"\xfe", b"\xf0\x9f\x98", b"\xc3"]
    return b"".join(rng.choice(pieces) + bytes([rng.randrange(0x61, 0x7b)]) for _ in range(n))


def test_json_output_with_invalid_utf8_keeps_every_record(env, tmp_path):
    """Names, paths and texts that are not UTF-8: every --json output parses
    and keeps every record, with each ill-formed sequence as U+FFFD as
    Python's decode(errors="replace") gives it."""
    import random
    seed = fresh_seed()
    rng = random.Random(seed)
    dec = lambda b: b.decode("utf-8", "replace")
    name = b"s-" + bad_utf8(rng)
    d = tmp_path / "files"
    d.mkdir()
    files = {}
    for i in range(4):
        fn = b"f%d-" % i + bad_utf8(rng) + b".txt"
        body = b"The cat " + bad_utf8(rng) + b" sat on the mat.\n"
        (Path(os.fsdecode(bytes(d))) / os.fsdecode(fn)).write_bytes(body)
        files[fn] = body
    (d / "plain.txt").write_text("A plain file.\n")
    j = json.loads(run_b("new", name, "--block-size", "16", "--json", env=env).stdout)
    assert j["name"] == dec(name), seed
    j = json.loads(run_b("ingest", name, d, "--json", env=env).stdout)
    assert j["files_ingested"] == 5 and j["session"] == dec(name), seed
    assert sorted(f["path"] for f in j["files"]) == sorted([dec(f) for f in files] + ["plain.txt"]), seed
    j = json.loads(run_b("ingest", name, d, "--json", env=env).stdout)  # the manifest kept them too
    assert j["files_ingested"] == 0 and j["skipped"]["unchanged"] == 5, seed
    ls = json.loads(run_b("ls", "--json", env=env).stdout)
    assert [s["name"] for s in ls["sessions"]] == [dec(name)], seed
    j = json.loads(run_b("info", name, "--json", env=env).stdout)
    assert j["name"] == dec(name) and j["tokens"] > 0
    q = b"What did the cat " + bad_utf8(rng) + b" do?"
    a = json.loads(run_b("ask", name, q, "--explain", "--json", "-n", "4", env=env).stdout)
    assert a["question"] == dec(q) and a["session"] == dec(name), seed
    assert {s["source"] for s in a["sources"]} <= {dec(f) for f in files} | {"plain.txt"}, seed
    lines = [b"hello " + bad_utf8(rng) + b"\n", b"\xff\xfe\n", b"again\n"]
    p = run_b("chat", name, "--json", "-n", "3", env=env, input=b"".join(lines))
    turns = [json.loads(l) for l in p.stdout.splitlines()]
    assert [t["user"] for t in turns] == [dec(l[:-1]) for l in lines], seed
    g = json.loads(run_b("gen", name, "--json", "-n", "3", env=env).stdout)
    assert g["session"] == dec(name)
    other = b"t-" + bad_utf8(rng)
    j = json.loads(run_b("fork", name, other, "--json", env=env).stdout)
    assert j["session"] == dec(other)
    out = tmp_path / os.fsdecode(b"x-" + bad_utf8(rng) + b".msax")
    j = json.loads(run_b("export", name, out, "--json", env=env).stdout)
    assert j["file"] == dec(os.fsencode(str(out)))
    ls = json.loads(run_b("ls", "--json", env=env).stdout)
    assert sorted(s["name"] for s in ls["sessions"]) == sorted([dec(name), dec(other)])
    assert json.loads(run_b("fsck", "--json", env=env).stdout)["clean"]
    # the text forms print the bytes as they are
    assert name in run_b("ls", env=env).stdout


def test_explain_shares_add_up_to_100(env, tmp_path):
    """Blocks that hold several files (small files, blocks of 16 tokens)
    give each an equal part of their reads: the shares add up to 100%, in
    --json and in the text, and every source keeps its blocks' reads."""
    d = tmp_path / "many"
    d.mkdir()
    for i in range(12):
        (d / f"n{i:02d}.txt").write_text(f"Ben {i} ran.\n")
    run("new", "m", "--block-size", "16", "--top-k", "3", env=env)
    run("ingest", "m", d, env=env)
    a = json.loads(run("ask", "m", "Who ran?", "--explain", "--json", "-n", "6", env=env).stdout)
    assert any(" + " in b["source"] for b in a["blocks"]), a["blocks"]  # shared blocks exist
    total = sum(b["reads"] for b in a["blocks"])
    assert abs(sum(s["share"] for s in a["sources"]) - 1) < 1e-9, a["sources"]
    assert abs(sum(s["reads"] for s in a["sources"]) - total) < 1e-6 * total
    for s in a["sources"]:
        assert s["block_reads"] >= s["reads"] > 0
    p = run("ask", "m", "Who ran?", "--explain", "-n", "6", "--limit", "0", env=env)
    table = p.stdout.split("memory read", 1)[1].splitlines()
    head = next(i for i, l in enumerate(table) if l.split()[:2] == ["reads", "share"])
    rows = [l.split() for l in table[head + 1:]]
    shares = [float(r[1].rstrip("%")) for r in rows if len(r) > 3 and "(all" not in r[3]]
    assert any(r[3].startswith("turn") or r[3] == "answer" for r in rows if len(r) > 3), rows
    assert shares and abs(sum(shares) - 100) <= 0.05 * len(shares) + 1e-9, shares
    assert "100.0%" in p.stdout and "(all blocks read)" in p.stdout


def test_ls_counts_shared_blocks_once(env):
    run("new", "base", "--block-size", "16", env=env)
    gen_json(env, "base", "--prompt", "Sam had a small boat on the lake.", "-n", "60")
    run("fork", "base", "k1", env=env)
    run("fork", "k1", "k2", env=env)
    gen_json(env, "k2", "-n", "20")
    ls = json.loads(run("ls", "--json", env=env).stdout)
    ss = {s["name"]: s for s in ls["sessions"]}
    for s in ss.values():
        assert s["own_bytes"] + s["shared_bytes"] == s["bytes_on_disk"], s
    assert ss["k1"]["shared_bytes"] > 0 and ss["k1"]["own_bytes"] < ss["k1"]["bytes_on_disk"]
    t = ls["total"]
    assert t["bytes_on_disk"] == t["own_bytes"] + t["shared_bytes"]
    assert t["own_bytes"] == sum(s["own_bytes"] for s in ss.values())
    assert t["bytes_on_disk"] < sum(s["bytes_on_disk"] for s in ss.values())
    # each shared block counted once, not once per sharer
    shared = [s["shared_bytes"] for s in ss.values()]
    assert min(shared) > 0 and max(shared) <= t["shared_bytes"] < sum(shared), (shared, t)
    assert "SHARED" in run("ls", env=env).stdout and "counted once" in run("ls", env=env).stdout
    run("rm", "k1", "k2", env=env)
    ls = json.loads(run("ls", "--json", env=env).stdout)
    (s,) = ls["sessions"]
    assert s["shared_bytes"] == 0 and s["own_bytes"] == s["bytes_on_disk"] == ls["total"]["bytes_on_disk"]


def test_cli_and_library_refuse_the_same_sampling(env):
    run("new", "x", env=env)
    for opt in (["--temp", "nan"], ["--temp", "inf"], ["--repeat-penalty", "0"],
                ["--top-p", "0"], ["--temp", "-1"]):
        p = run("gen", "x", "-n", "1", *opt, env=env, check=False)
        assert p.returncode == 2 and opt[0] in p.stderr, opt
    assert info_json(env, "x")["tokens"] == 0  # nothing appended


def test_show_prints_the_session_text_and_ranges(env, tmp_path):
    text = "The frog jumped over the log. Then the frog sat in the sun."
    run("ingest", "notes", "--text", text, "--create", env=env)
    g = gen_json(env, "notes", "-n", "10")
    d = json.loads(run("show", "notes", "--json", env=env).stdout)
    assert d["session"] == "notes" and d["start"] == 0 and d["end"] == d["tokens"] == len(d["ids"])
    assert text in d["text"] and d["text"].endswith(g["text"])
    # the ids are what tokenize gives the same text (BOS first: the session began with it)
    ids = json.loads(run("tokenize", text, "--json", env=env).stdout)["ids"]
    assert d["ids"][:len(ids)] == ids
    # the plain output is the text; ranges count from either end
    assert run("show", "notes", env=env).stdout.rstrip("\n") == d["text"]
    last = json.loads(run("show", "notes", "--range", "-5:", "--json", env=env).stdout)
    assert last["ids"] == d["ids"][-5:] and last["start"] == d["tokens"] - 5
    mid = run("show", "notes", "--range", "2:6", "--ids", env=env).stdout.split()
    assert list(map(int, mid)) == d["ids"][2:6]
    assert json.loads(run("show", "notes", "--range", "10:3", "--json", env=env).stdout)["ids"] == []
    # errors: a bad range, a missing session, another model's tokenizer
    assert run("show", "notes", "--range", "x", env=env, check=False).returncode == 2
    assert run("show", "nope", env=env, check=False).returncode == 3
    other = dict(env, MSA_MODEL=str(ASSETS / "gguf" / "llama-2-tiny-random.gguf"))
    p = run("show", "notes", env=other, check=False)
    assert p.returncode == 5 and "written by model" in p.stderr
