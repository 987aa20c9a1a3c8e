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
