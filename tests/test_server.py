"""`msa-mem serve` end to end on the real stories260K model, with real
clients: the `openai` Python package (chat, streaming, completions,
responses with previous_response_id) and raw HTTP (http.client) for what
a client library would never send: malformed, truncated and huge bodies,
invalid UTF-8, wrong types, unknown models and response ids, wrong API
keys, a full queue (429), a client that disconnects mid-stream, and a
SIGKILL of the server followed by a restart on the same store.

Each server runs on a free loopback port (--port 0; the port is read from
the line it prints). Greedy decoding (temperature 0) makes replies
deterministic, which is what the memory checks rest on: a conversation
continued from its stored snapshot (only the new tokens prefilled) must
answer exactly what a server without that memory answers after
prefilling everything.

Run by ctest (tests/server.cmake) with MSA_BUILD_DIR set; by hand:
    MSA_BUILD_DIR=build python3 -m pytest -q tests/test_server.py
The load test (64 streaming clients) is in tools/bench-serve.py.
"""

import http.client
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


def assets_dir():
    for d in (os.environ.get("MSA_ASSETS"), os.environ.get("MSA_DEFAULT_ASSETS"),
              str(ROOT.parent / "shared" / "assets")):
        if d and (Path(d) / "stories260K" / "stories260K.bin").exists():
            return Path(d)
    return None


def serve_built():
    if not MSA.exists():
        return False
    p = subprocess.run([str(MSA), "serve", "--model", "x"], capture_output=True, text=True)
    return "built without libmicrohttpd" not in p.stderr


ASSETS = assets_dir()
pytestmark = [
    pytest.mark.skipif(ASSETS is None, reason="no ../shared/assets/stories260K "
                       "(set MSA_ASSETS): skipping the server tests"),
    pytest.mark.skipif(not serve_built(), reason=f"{MSA} not built, or built without "
                       "libmicrohttpd (Debian package libmicrohttpd-dev)"),
]

try:
    import openai
except ImportError:  # the raw-HTTP tests still run
    openai = None
needs_openai = pytest.mark.skipif(openai is None, reason="the openai package is not "
                                  "installed (pip install openai): skipping its client tests")

MODEL_ID = "stories260K"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    out = d / "stories260K.gguf"
    subprocess.run([str(MSA), "convert", "llama2c", ASSETS / "stories260K" / "stories260K.bin",
                    ASSETS / "stories260K" / "tok512.bin", out], check=True,
                   capture_output=True, timeout=120)
    return out


class Server:
    """One `msa-mem serve` process on a free loopback port. Without fsync
    (--no-sync) unless `sync`: a killed process loses nothing either way,
    and fsync's latency on a shared disk is not what these tests measure."""

    def __init__(self, model, store, *extra, env=None, sync=False):
        e = dict(os.environ)
        e.pop("MSA_API_KEY", None)
        e.pop("MSA_DEVICE", None)
        e.update(env or {})
        self.proc = subprocess.Popen(
            [str(MSA), "serve", "--model", str(model), "--store", str(store), "--port", "0",
             "--threads", "1", *([] if sync else ["--no-sync"]), *map(str, extra)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        self.base = f"http://127.0.0.1:{self.port}/v1"

    def request(self, method, path, body=None, headers=None, raw=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        text = r.read()
        c.close()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    def health(self):
        return self.request("GET", "/health")[1]

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(model, tmp_path):
    s = Server(model, tmp_path / "store")
    yield s
    s.stop()


def client(srv, key="none"):
    return openai.OpenAI(base_url=srv.base, api_key=key, max_retries=0, timeout=60)


def chat(srv, messages, **kw):
    body = {"model": MODEL_ID, "messages": messages, "temperature": 0, "max_tokens": 24}
    body.update(kw)
    st, r = srv.request("POST", "/v1/chat/completions", body)
    assert st == 200, r
    return r


def is_error(r, status, st, param=None, code=None):
    assert st == status, r
    assert set(r) == {"error"}, r
    e = r["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert isinstance(e["message"], str) and e["message"]
    if param is not None:
        assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e


# ---- the openai package ----------------------------------------------------------------


@needs_openai
def test_openai_models_and_chat(server):
    c = client(server)
    ids = [m.id for m in c.models.list().data]
    assert ids == [MODEL_ID]
    r = c.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=16,
                                  messages=[{"role": "user", "content": "Once upon a time"}])
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens == 0  # a fresh store


@needs_openai
def test_openai_streaming_equals_non_streaming(server):
    c = client(server)
    msgs = [{"role": "user", "content": "Tell me about a cat"}]
    full = c.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=20, messages=msgs)
    pieces, finish, usage = [], None, None
    for ch in c.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=20,
                                        messages=msgs, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        for choice in ch.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert len(pieces) > 1  # it really streamed
    assert "".join(pieces) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens
    # the second request found the first one's prompt stored
    assert usage.prompt_tokens_details.cached_tokens == full.usage.prompt_tokens


@needs_openai
def test_openai_completions_stop_and_seed(server):
    c = client(server)
    r = c.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=40,
                             temperature=0, stop=["."])
    assert r.object == "text_completion"
    t = r.choices[0].text
    assert "." not in t and t
    assert r.choices[0].finish_reason == "stop"
    # streamed, the text that may still become a stop string is held back:
    # the same text arrives, and never a piece of the stop string
    for stop in (["."], ["the", "a l"], ["little girl"]):
        full = c.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=60,
                                    temperature=0, stop=stop).choices[0].text
        pieces = [ch.choices[0].text for ch in c.completions.create(
            model=MODEL_ID, prompt="Once upon a time", max_tokens=60, temperature=0, stop=stop,
            stream=True) if ch.choices]
        assert "".join(pieces) == full
        assert not any(x in full for x in stop)
    # sampling with a seed is reproducible, and differs across seeds
    a = [c.completions.create(model=MODEL_ID, prompt="The dog", max_tokens=24, temperature=1,
                              seed=s).choices[0].text for s in (7, 7, 8)]
    assert a[0] == a[1]
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=MODEL_ID, prompt="The dog", max_tokens=24, temperature=1, seed=7, stream=True)
        if ch.choices)
    assert streamed == a[0]


@needs_openai
def test_openai_conversation_continues_its_session(server, model, tmp_path):
    """A conversation sent back with the reply it got prefills only the new
    message, and answers what a server without memory answers."""
    c = client(server)
    msgs = [{"role": "system", "content": "You tell stories."},
            {"role": "user", "content": "Once upon a time"}]
    r1 = c.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=20, messages=msgs)
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "What happened next?"}]
    r2 = c.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=20, messages=msgs)
    held = r1.usage.prompt_tokens + r1.usage.completion_tokens
    assert r2.usage.prompt_tokens_details.cached_tokens == held
    assert r2.usage.prompt_tokens > held
    assert server.health()["live"] >= 1  # r2 continued r1's open working session
    fresh = Server(model, tmp_path / "fresh-store")
    try:
        r3 = client(fresh).chat.completions.create(model=MODEL_ID, temperature=0,
                                                   max_tokens=20, messages=msgs)
    finally:
        fresh.stop()
    assert r3.usage.prompt_tokens_details.cached_tokens == 0
    assert r3.usage.prompt_tokens == r2.usage.prompt_tokens
    assert r3.choices[0].message.content == r2.choices[0].message.content


@needs_openai
def test_openai_prompt_cache_key_keeps_clients_apart(server):
    c = client(server)
    msgs = [{"role": "user", "content": "A shared prompt"}]
    a = c.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=8, messages=msgs,
                                  extra_body={"prompt_cache_key": "alice"})
    b = c.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=8, messages=msgs,
                                  extra_body={"prompt_cache_key": "bob"})
    a2 = c.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=8, messages=msgs,
                                   extra_body={"prompt_cache_key": "alice"})
    assert a.usage.prompt_tokens_details.cached_tokens == 0
    assert b.usage.prompt_tokens_details.cached_tokens == 0  # not alice's
    assert a2.usage.prompt_tokens_details.cached_tokens == a.usage.prompt_tokens
    assert a.choices[0].message.content == b.choices[0].message.content == \
        a2.choices[0].message.content


@needs_openai
def test_openai_responses_previous_response_id(server):
    c = client(server)
    r1 = c.responses.create(model=MODEL_ID, input="Once upon a time", temperature=0,
                            max_output_tokens=16, instructions="Tell a story.")
    assert r1.id.startswith("resp_") and r1.output_text
    assert r1.usage.input_tokens_details.cached_tokens == 0
    # two continuations of one response: each forks it, neither sees the other
    a = c.responses.create(model=MODEL_ID, input="And then?", previous_response_id=r1.id,
                           temperature=0, max_output_tokens=16)
    b = c.responses.create(model=MODEL_ID, input="And then?", previous_response_id=r1.id,
                           temperature=0, max_output_tokens=16)
    held = r1.usage.input_tokens + r1.usage.output_tokens
    for x in (a, b):
        assert x.previous_response_id == r1.id
        assert x.usage.input_tokens_details.cached_tokens == held
    assert a.output_text == b.output_text
    assert a.usage.input_tokens == b.usage.input_tokens
    # a continuation of a continuation, streamed
    events = list(c.responses.create(model=MODEL_ID, input="Why?", previous_response_id=a.id,
                                     temperature=0, max_output_tokens=8, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == final.output_text and deltas
    assert final.usage.input_tokens_details.cached_tokens == \
        a.usage.input_tokens + a.usage.output_tokens
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=MODEL_ID, input="x", previous_response_id="resp_unknown")


@needs_openai
def test_openai_api_key(model, tmp_path):
    s = Server(model, tmp_path / "store", env={"MSA_API_KEY": "sesame"})
    try:
        assert [m.id for m in client(s, "sesame").models.list().data] == [MODEL_ID]
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").models.list()
    finally:
        s.stop()


# ---- raw HTTP: what no client library sends -----------------------------------------------


def test_bad_input_gets_openai_errors(server):
    good = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (b'{"model": "stories260K", "messages": [', 400, None),        # truncated
        (b'{"model": stories260K}', 400, None),                         # malformed
        (b'[1, 2, 3]', 400, None),                                       # not an object
        (b'', 400, None),                                                # empty
        (b'{"model": "stories260K", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
         400, None),                                                     # invalid UTF-8
        (b'{"model": "stories260K", "model": "x", "messages": []}', 400, None),  # duplicate key
    ]
    for raw, status, param in cases:
        st, r = server.request("POST", "/v1/chat/completions", raw=raw)
        is_error(r, status, st, param)
    typed = [
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0]"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0]"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 9}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": "many"}, "max_completion_tokens"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"model": 3}, "model"),
        ({"prompt_cache_key": 3}, "prompt_cache_key"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": "x"}, "repetition_penalty"),
    ]
    for change, param in typed:
        body = dict(good)
        body.update(change)
        st, r = server.request("POST", "/v1/chat/completions", body)
        is_error(r, 400, st, param)
    st, r = server.request("POST", "/v1/chat/completions", dict(good, model="gpt-4o"))
    is_error(r, 404, st, "model", "model_not_found")
    body = dict(good)
    del body["model"]
    st, r = server.request("POST", "/v1/chat/completions", body)
    is_error(r, 400, st, "model")
    for bad in ({"prompt": 3}, {"prompt": [99999]}, {}, {"echo": True, "prompt": "x"}):
        st, r = server.request("POST", "/v1/completions", dict({"model": MODEL_ID}, **bad))
        is_error(r, 400, st, "prompt" if "echo" not in bad else "echo")
    for bad, param in (({"input": 3}, "input"), ({}, "input"),
                       ({"input": "x", "previous_response_id": 5}, "previous_response_id"),
                       ({"input": "x", "instructions": []}, "instructions"),
                       ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
                        "input[0]")):
        st, r = server.request("POST", "/v1/responses", dict({"model": MODEL_ID}, **bad))
        is_error(r, 400, st, param)
    for pid in ("resp_doesnotexist", "../../etc/passwd", "resp_" + "a" * 300, "resp_\u00e9"):
        st, r = server.request("POST", "/v1/responses", {"model": MODEL_ID, "input": "x",
                                                         "previous_response_id": pid})
        is_error(r, 404, st, "previous_response_id", "previous_response_not_found")
    st, r = server.request("GET", "/v1/nowhere")
    is_error(r, 404, st)
    st, r = server.request("GET", "/v1/chat/completions")
    is_error(r, 405, st)
    # after all of that the server still answers
    assert chat(server, good["messages"])["choices"][0]["message"]["content"] is not None
    assert server.proc.poll() is None


def test_huge_bodies_get_413(model, tmp_path):
    s = Server(model, tmp_path / "store", "--max-body", "64K")
    try:
        big = {"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 100000}]}
        st, r = s.request("POST", "/v1/chat/completions", big)
        is_error(r, 413, st, None, "request_too_large")
        # chunked, with no Content-Length to refuse it by
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        c.putrequest("POST", "/v1/chat/completions")
        c.putheader("Transfer-Encoding", "chunked")
        c.putheader("Content-Type", "application/json")
        c.endheaders()
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            part = data[i:i + 8192]
            c.send(b"%x\r\n%s\r\n" % (len(part), part))
        c.send(b"0\r\n\r\n")
        r = c.getresponse()
        assert r.status == 413
        is_error(json.loads(r.read()), 413, 413, None, "request_too_large")
        c.close()
        small = {"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 1000}],
                 "max_tokens": 2}
        assert s.request("POST", "/v1/chat/completions", small)[0] == 200
    finally:
        s.stop()


def test_auth(model, tmp_path):
    s = Server(model, tmp_path / "store", "--api-key", "k3y")
    try:
        for h in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k3y"},
                  {"Authorization": "Bearer k3y2"}, {"Authorization": "Basic k3y"}):
            st, r = s.request("GET", "/v1/models", headers=h)
            is_error(r, 401, st, None, "invalid_api_key")
            st, r = s.request("POST", "/v1/chat/completions", {"model": MODEL_ID}, headers=h)
            is_error(r, 401, st, None, "invalid_api_key")
        st, r = s.request("GET", "/v1/models", headers={"Authorization": "Bearer k3y"})
        assert st == 200 and r["data"][0]["id"] == MODEL_ID
    finally:
        s.stop()


def open_stream(srv, max_tokens, path="/v1/completions", prompt="Once upon a time"):
    """Starts a streaming request and returns (connection, response) once
    the first event arrived."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
            "stream": True, "seed": 1}
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Type") == "text/event-stream"
    line = r.readline()
    assert line.startswith(b"data: "), line
    return c, r


def test_queue_full_gets_429_and_disconnect_cancels(model, tmp_path):
    s = Server(model, tmp_path / "store", "--queue", "1", "--max-sessions", "1000")
    try:
        c, r = open_stream(s, 100000)
        st, body = s.request("POST", "/v1/chat/completions",
                             {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}]})
        is_error(body, 429, st, None, "rate_limit_exceeded")
        assert s.health()["in_flight"] == 1
        for _ in range(50):  # some tokens on the way
            r.readline()
        # the client goes away: its generation stops soon after, keeping what
        # it committed
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        t0 = time.time()
        while s.health()["in_flight"] and time.time() - t0 < 20:
            time.sleep(0.05)
        assert s.health()["in_flight"] == 0, "the generation did not stop"
        st, body = s.request("POST", "/v1/completions",
                             {"model": MODEL_ID, "prompt": "x", "max_tokens": 2})
        assert st == 200
    finally:
        s.stop()
    p = subprocess.run([str(MSA), "--store", str(tmp_path / "store"), "ls", "--json"],
                       capture_output=True, text=True, check=True)
    sessions = json.loads(p.stdout)["sessions"]
    cut = [x for x in sessions if x["name"].startswith("srv.c.cmpl-") and
           not x["name"].endswith(".p") and x["tokens"] > 20]
    assert cut, [(x["name"], x["tokens"]) for x in sessions]  # the cancelled reply is stored, cut short
    assert all(x["tokens"] < 100000 for x in cut)


def test_concurrent_streams_interleave(server):
    """Eight clients at once: every one gets its whole, correct reply."""
    want = chat(server, [{"role": "user", "content": "Hello"}], max_tokens=30)
    want = want["choices"][0]["message"]["content"]
    out, errors = [None] * 8, []

    def one(i):
        try:
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            c.request("POST", "/v1/chat/completions", body=json.dumps(
                {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}],
                 "max_tokens": 30, "temperature": 0, "stream": True}),
                headers={"Content-Type": "application/json"})
            r = c.getresponse()
            text = []
            for line in r:
                line = line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                for ch in json.loads(line[6:])["choices"]:
                    text.append(ch["delta"].get("content") or "")
            out[i] = "".join(text)
        except Exception as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    assert out == [want] * 8


def test_sigkill_and_restart_keep_sessions(model, tmp_path):
    store = tmp_path / "store"
    s = Server(model, store, sync=True)
    msgs = [{"role": "user", "content": "Once upon a time"}]
    r1 = chat(s, msgs, max_tokens=20)
    st, resp = s.request("POST", "/v1/responses", {"model": MODEL_ID, "input": "A story",
                                                   "temperature": 0, "max_output_tokens": 12})
    assert st == 200
    c, r = open_stream(s, 100000)  # killed in the middle of this one
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    c.close()
    fsck = subprocess.run([str(MSA), "--store", str(store), "fsck"], capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    s = Server(model, store, sync=True)
    try:
        msgs2 = msgs + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                        {"role": "user", "content": "And then?"}]
        r2 = chat(s, msgs2, max_tokens=10)
        held = r1["usage"]["prompt_tokens"] + r1["usage"]["completion_tokens"]
        assert r2["usage"]["prompt_tokens_details"]["cached_tokens"] == held
        st, resp2 = s.request("POST", "/v1/responses", {
            "model": MODEL_ID, "input": "More", "temperature": 0, "max_output_tokens": 8,
            "previous_response_id": resp["id"]})
        assert st == 200, resp2
        u = resp["usage"]
        assert resp2["usage"]["input_tokens_details"]["cached_tokens"] == \
            u["input_tokens"] + u["output_tokens"]
    finally:
        s.stop()
    # the open working sessions (the killed server's too) are gone
    p = subprocess.run([str(MSA), "--store", str(store), "ls", "--json"], capture_output=True,
                       text=True, check=True)
    names = [x["name"] for x in json.loads(p.stdout)["sessions"]]
    assert names and not [n for n in names if n.startswith("srv.w.")], names


def test_fuzz_request_bodies(model, tmp_path):
    """Random mutations of valid bodies of every endpoint (bytes flipped,
    cut, duplicated, inserted): every answer is 200 or an OpenAI error
    object, and the server never dies."""
    import random
    seed = int(os.environ.get("MSA_TEST_SEED", "0"), 0) or int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed} (MSA_TEST_SEED to replay)")
    rng = random.Random(seed)
    s = Server(model, tmp_path / "store", "--timeout", "2", "--max-tokens", "4")
    bodies = [
        ("/v1/chat/completions", {"model": MODEL_ID, "max_tokens": 3, "temperature": 0.5,
                                  "stop": ["x"], "seed": 4, "messages": [
                                      {"role": "system", "content": "s"},
                                      {"role": "user", "content": [{"type": "text",
                                                                    "text": "hi \u00e9"}]}]}),
        ("/v1/completions", {"model": MODEL_ID, "prompt": "Once", "max_tokens": 3,
                             "top_p": 0.9}),
        ("/v1/completions", {"model": MODEL_ID, "prompt": [1, 2, 3], "max_tokens": 2}),
        ("/v1/responses", {"model": MODEL_ID, "input": [{"role": "user", "content": "a"}],
                           "instructions": "b", "max_output_tokens": 3, "stream": True}),
    ]
    tokens = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"\xff", b"\xc3",
              b"null", b"true", b"-1", b"1e999", b"0", b"99999999999999999999", b"\x00"]
    try:
        for i in range(200):
            path, body = bodies[i % len(bodies)]
            raw = bytearray(json.dumps(body).encode())
            for _ in range(rng.randint(1, 4)):
                op = rng.randrange(4)
                at = rng.randrange(len(raw) + 1)
                if op == 0 and raw:
                    raw[min(at, len(raw) - 1)] = rng.randrange(256)
                elif op == 1:
                    del raw[at:at + rng.randint(1, 8)]
                elif op == 2:
                    raw[at:at] = rng.choice(tokens)
                else:
                    raw = raw[:at]
            st, r = s.request("POST", path, raw=bytes(raw))
            if st == 200:
                assert isinstance(r, (dict, bytes)), r
            else:
                is_error(r, st, st)
            assert s.proc.poll() is None, f"the server died on {bytes(raw)!r}"
    finally:
        s.stop()
    assert s.proc.returncode == 0


def test_sigterm_stops_streams_promptly(model, tmp_path):
    s = Server(model, tmp_path / "store")
    c, r = open_stream(s, 100000)
    t0 = time.time()
    s.proc.send_signal(signal.SIGTERM)
    s.proc.wait(timeout=20)
    assert s.proc.returncode == 0
    assert time.time() - t0 < 10
    c.close()


@needs_openai
def test_example_openai_client(server):
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "openai_client.py"),
                        "--base-url", server.base], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"model: {MODEL_ID}" in p.stdout
    cached = [int(line.split("tokens, ")[1].split(" of")[0])
              for line in p.stdout.splitlines() if "of them cached" in line]
    assert len(cached) == 3 and cached[0] == 0 and cached[1] > 0 and cached[2] > cached[1]
    conts = [line for line in p.stdout.splitlines() if line.startswith("continuation")]
    assert len(conts) == 2 and conts[0].split(": ", 1)[1] == conts[1].split(": ", 1)[1]


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_curl_streams(server):
    p = subprocess.run(["curl", "-sN", "--fail-with-body", f"{server.base}/chat/completions",
                        "-H", "Content-Type: application/json", "-d", json.dumps(
                            {"model": MODEL_ID, "stream": True, "max_tokens": 8, "temperature": 0,
                             "messages": [{"role": "user", "content": "Hi"}]})],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    events = [line[6:] for line in p.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        f"{server.base}/chat/completions", "-d", "{"], capture_output=True,
                       text=True, timeout=60)
    assert p.stdout == "400"
