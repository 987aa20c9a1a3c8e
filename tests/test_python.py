"""Tests of the Python bindings (bindings/python/msa_mem) on the real
stories260K model: the ctypes structs against the C compiler's layout
(abi-sizes, built from tests/abi_sizes.c), Engine and Session (append,
generate, info, explain, fork, export/import, remove), context managers,
and errors that carry msa_strerror()'s text.

Run by ctest (tests/cli.cmake) with MSA_BUILD_DIR and MSA_LIBRARY set.
"""

import ctypes as C
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("MSA_BUILD_DIR", ROOT / "build"))
os.environ.setdefault("MSA_LIBRARY", str(BUILD / "libmsa.so"))
sys.path.insert(0, str(ROOT / "bindings" / "python"))
import msa_mem  # noqa: E402

HAVE_LIB = Path(os.environ["MSA_LIBRARY"]).exists()


def assets_dir():
    for d in (os.environ.get("MSA_ASSETS"), os.environ.get("MSA_DEFAULT_ASSETS"),
              str(ROOT.parent / "shared" / "assets")):
        if d and (Path(d) / "stories260K" / "stories260K.bin").exists():
            return Path(d)
    return None


ASSETS = assets_dir()
needs_lib = pytest.mark.skipif(not HAVE_LIB, reason=f"{os.environ['MSA_LIBRARY']} not built")
needs_model = pytest.mark.skipif(ASSETS is None or not HAVE_LIB,
                                 reason="no ../shared/assets/stories260K (set MSA_ASSETS) "
                                        "or libmsa not built")


@needs_lib
def test_struct_layouts_match_the_header():
    exe = BUILD / "abi-sizes"
    assert exe.exists(), f"{exe} not built (target abi-sizes, tests/cli.cmake)"
    c = json.loads(subprocess.run([str(exe)], capture_output=True, text=True,
                                  check=True).stdout)
    assert set(c) == set(msa_mem.STRUCTS), "abi_sizes.c and msa_mem.STRUCTS list other structs"
    for name, cls in msa_mem.STRUCTS.items():
        assert C.sizeof(cls) == c[name]["size"], f"sizeof({name})"
        py = {f: getattr(cls, f).offset for f, *_ in cls._fields_}
        assert py == c[name]["fields"], f"fields of {name}"


@needs_lib
def test_version_and_error_text():
    assert msa_mem.version().startswith("0.")
    with pytest.raises(msa_mem.Error) as e:
        msa_mem.Engine("/nonexistent/model.gguf")
    lib = msa_mem.load_library()
    assert e.value.status == -5
    assert lib.msa_strerror(-5).decode() in str(e.value)
    assert "/nonexistent/model.gguf" in str(e.value)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    if ASSETS is None or not HAVE_LIB:
        pytest.skip("no assets or library")
    out = tmp_path_factory.mktemp("m") / "stories260K.gguf"
    lib = msa_mem.load_library()
    lib.msa_convert_llama2c.argtypes = [C.c_char_p] * 3
    rc = lib.msa_convert_llama2c(str(ASSETS / "stories260K" / "stories260K.bin").encode(),
                                 str(ASSETS / "stories260K" / "tok512.bin").encode(),
                                 str(out).encode())
    assert rc == 0
    return str(out)


@needs_model
def test_append_generate_info_explain(model, tmp_path):
    with msa_mem.Engine(model, store=str(tmp_path), block_size=16, top_k=4) as e:
        assert len(e.fingerprint) == 64
        with e.session("s", create=True) as s:
            assert s.name == "s" and s.tokens() == []
            seen = []
            s.append("Once upon a time, there was a little dog named Max. Max liked to run.",
                     source="story.txt", progress=lambda d, t: seen.append((d, t)))
            assert seen and seen[-1][0] == seen[-1][1] == len(s.tokens())
            n0 = len(s.tokens())
            assert s.tokens()[0] == 1  # BOS
            text = "".join(s.generate(max_tokens=20))
            assert text and len(s.tokens()) == n0 + 20
            i = s.info()
            assert i["n_tokens"] == n0 + 20 and i["block_size"] == 16 and i["top_k"] == 4
            assert i["n_blocks"] == (n0 + 20 + 15) // 16
            assert i["fingerprint"] == e.fingerprint
            assert i["bytes_on_disk"] > 0 and i["pager"]["steps"] > 0
            reads = s.explain()
            assert reads and reads == sorted(reads, key=lambda r: (-r.reads, r.block))
            assert any(r.source.startswith("story.txt:") for r in reads)
            s.explain_reset()
            assert s.explain() == []
            assert e.detokenize(e.tokenize("a red ball")) .strip() == "a red ball"
            assert "little dog named Max" in s.text()


@needs_model
def test_resume_fork_export_import_remove(model, tmp_path):
    with msa_mem.Engine(model, store=str(tmp_path), block_size=16, top_k=4) as e:
        with e.session("a", create=True) as s:
            s.append("Lily found a shiny stone near the river.")
            first = "".join(s.generate(max_tokens=12))
        e.fork("a", "b")
        assert {x["name"]: x["parent"] for x in e.sessions()} == {"a": "", "b": "a"}
        e.export("a", str(tmp_path / "a.msax"))
        e.import_(str(tmp_path / "a.msax"), "c")
        outs = []
        for name in ("a", "b", "c"):
            with e.session(name) as s:  # a reopened session continues, no re-prefill
                outs.append((s.tokens(), "".join(s.generate(max_tokens=12))))
        assert outs[0] == outs[1] == outs[2]
        assert first
        e.remove("c")
        assert [x["name"] for x in e.sessions()] == ["a", "b"]
        with pytest.raises(msa_mem.Error) as err:
            e.remove("c")
        assert err.value.status == -5 and "not found" in str(err.value)


@needs_model
def test_errors_and_context_managers(model, tmp_path):
    e = msa_mem.Engine(model, store=str(tmp_path))
    with pytest.raises(msa_mem.Error) as err:
        e.session("missing")
    assert err.value.status == -5 and "missing" in str(err.value)
    with e.session("x", create=True) as s:
        with pytest.raises(msa_mem.Error) as err:  # one writer per session
            e.session("x")
        assert err.value.status == -12
        list(s.generate(max_tokens=1))  # an empty session starts from BOS alone
        assert len(s.tokens()) == 2 and s.tokens()[0] == e.tokenize("", bos=True)[0]
        with pytest.raises(msa_mem.Error):
            e.session("x", create=True, exclusive=True)
    with pytest.raises(msa_mem.Error):
        s.tokens()  # closed
    # a progress callback that stops: EINTR, and what was committed stays
    with msa_mem.Engine(model, store=str(tmp_path), prefill_chunk=8) as e2:
        with e2.session("y", create=True) as s:
            with pytest.raises(msa_mem.Error) as err:
                s.append("The cat sat on the mat and looked at the big red sun.",
                         progress=lambda d, t: d >= 8)
            assert err.value.status == -15
            assert len(s.tokens()) == 8
    e.close()
    e.close()  # twice is fine
    with pytest.raises(msa_mem.Error):
        e.session("x")


@needs_model
def test_session_params_travel_with_the_session(model, tmp_path):
    """The top-k a session was created with is stored with it: a caller with
    default engine parameters (top_k 16), a fork, a fork of a fork and an
    export/import copy all run with it, and continue exactly as the
    original does (more than k blocks, so k matters)."""
    prompt = ("Once upon a time, there was a little girl named Lily. She loved to play "
              "outside in the park with her friends. One day, she saw a big red ball.")
    with msa_mem.Engine(model, store=str(tmp_path), block_size=16, top_k=4) as e:
        with e.session("orig", create=True) as s:
            s.append(prompt)
            list(s.generate(max_tokens=40))
            assert s.top_k == 4 and s.info()["n_blocks"] > 4
        e.fork("orig", "ref")
        with e.session("ref") as s:
            ref = "".join(s.generate(max_tokens=24))
    with msa_mem.Engine(model, store=str(tmp_path)) as e:  # default top_k
        e.fork("orig", "f1")
        e.fork("f1", "f2")
        e.export("f2", str(tmp_path / "f2.msax"))
        e.import_(str(tmp_path / "f2.msax"), "copy")
        for name in ("orig", "f1", "f2", "copy"):
            with e.session(name) as s:
                assert s.params() == {"top_k": 4} and s.info()["top_k"] == 4, name
                assert "".join(s.generate(max_tokens=24)) == ref, name
        # set_params is stored: another engine sees it
        with e.session("f1") as s:
            s.set_params(top_k=2)
            assert s.top_k == 2
            with pytest.raises(msa_mem.Error) as err:
                s.set_params(top_k=-3)
            assert err.value.status == -1
        # a session created by a default engine stores the default
        with e.session("new", create=True) as s:
            assert s.top_k == 16
    with msa_mem.Engine(model, store=str(tmp_path), top_k=8) as e:
        with e.session("f1") as s:
            assert s.top_k == 2
        with e.session("new") as s:
            assert s.top_k == 16


@needs_model
def test_library_refuses_what_the_cli_refuses(model, tmp_path):
    with msa_mem.Engine(model, store=str(tmp_path)) as e:
        # a NUL in a name: C would cut it there and name session "a"
        for bad in ("a\0b", b"a\0", ""):
            with pytest.raises(msa_mem.Error) as err:
                e.session(bad, create=True)
            assert err.value.status == -1, bad
        with pytest.raises(msa_mem.Error) as err:
            e.session("tab\there", create=True)  # control characters: the library's check
        assert err.value.status == -1 and "control" in str(err.value)
        assert e.sessions() == []
        with e.session("s", create=True) as s:
            for bad in ("x\ny", "a\0b"):  # fork takes no name that session() refuses
                with pytest.raises(msa_mem.Error) as err:
                    e.fork("s", bad)
                assert err.value.status == -1, bad
            for kw in ({"temperature": float("nan")}, {"temperature": float("inf")},
                       {"temperature": -1.0}, {"repeat_penalty": 0.0},
                       {"repeat_penalty": float("nan")}, {"top_p": 0.0},
                       {"top_p": float("nan")}, {"min_p": float("nan")}):
                with pytest.raises(msa_mem.Error) as err:
                    list(s.generate(max_tokens=4, **kw))
                assert err.value.status == -1, kw
                assert s.tokens() == [], kw  # refused before anything: no BOS appended
            with pytest.raises(msa_mem.Error) as err:
                list(s.generate(max_tokens=-1))
            assert err.value.status == -1
            # a session open for writing is busy for remove, as for a second writer
            with pytest.raises(msa_mem.Error) as err:
                e.remove("s")
            assert err.value.status == -12 and "in use" in str(err.value)
        e.remove("s")
        assert e.sessions() == []
