#!/usr/bin/env python3
"""pull_server.py: a small HTTP server for testing `msa-mem pull` (stdlib only).

It serves deterministic pseudo-random files, honours "Range: bytes=N-" with
206 and Content-Range, states a sha256 in the header chosen by the request,
and injects faults chosen by the query string. Every request is logged
(path, Range, whether an Authorization header came, Host) so that tests can
check what the client sent.

  /files/NAME?size=N      a file of N bytes (default 200000), contents seeded by NAME
      &digest=MODE        xcs (X-Checksum-Sha256, the default), digest (Digest:
                          sha-256=base64), repr (Repr-Digest), etag (a 64-hex ETag),
                          none
      &bad=1              state the digest of other data (a checksum mismatch)
      &drop=B&drops=K     for the first K requests of this URL (default 1), send
                          the headers and B bytes of the body, then cut the connection
      &norange=1          ignore Range (always 200 with the whole file)
      &auth=1             401 unless "Authorization: Bearer TOKEN"
  /ORG/REPO/resolve/REV/PATH
                          Hugging Face style: 302 to http://localhost:PORT/cdn/...
                          (another host name) with X-Linked-Etag holding the sha256;
                          ORG "gated" answers 401 without the bearer token; a file
                          name starting with "missing" answers 404
  /cdn/...                the file behind a resolve redirect
  anything else           404

Run alone: python3 pull_server.py [--port P] [--token T]; it prints the port.
Tests import it and call start().
"""
import base64
import hashlib
import random
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def file_bytes(name, size):
    return random.Random(name).randbytes(size)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: tests read server.log instead
        pass

    def do_GET(self):
        srv = self.server
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        auth = self.headers.get("Authorization")
        with srv.lock:
            srv.log.append({"path": url.path, "query": url.query,
                            "range": self.headers.get("Range"),
                            "auth": auth, "host": self.headers.get("Host")})
        parts = url.path.strip("/").split("/")
        if url.path.startswith("/files/") and len(parts) == 2:
            if q.get("auth") == "1" and auth != "Bearer " + srv.token:
                return self.fail(401, "Invalid credentials")
            return self.serve_file(parts[1], int(q.get("size", "200000")), q)
        if len(parts) >= 5 and parts[2] == "resolve" and not parts[-1].startswith("missing"):
            if parts[0] == "gated" and auth != "Bearer " + srv.token:
                return self.fail(401, "Access to model %s/%s is restricted" % (parts[0], parts[1]))
            name = "/".join(parts[:2] + parts[3:])
            data = file_bytes(name, srv.hf_size)
            self.send_response(302)
            self.send_header("Location", "http://localhost:%d/cdn/%s" % (srv.server_port, name))
            self.send_header("X-Linked-Etag", '"%s"' % hashlib.sha256(data).hexdigest())
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts[0] == "cdn" and len(parts) > 1:
            return self.serve_file("/".join(parts[1:]), srv.hf_size, {"digest": "none"})
        return self.fail(404, "Entry not found")

    def fail(self, code, msg):
        body = msg.encode()
        self.send_response(code)
        self.send_header("X-Error-Message", msg)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def serve_file(self, name, size, q):
        srv = self.server
        data = file_bytes(name, size)
        stated = hashlib.sha256(data + b"x" if q.get("bad") == "1" else data).digest()
        start = 0
        rng = self.headers.get("Range")
        if rng and q.get("norange") != "1":
            if not rng.startswith("bytes=") or not rng.endswith("-"):
                return self.fail(400, "only bytes=N- ranges are served")
            start = int(rng[6:-1])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        mode = q.get("digest", "xcs")
        if mode == "xcs":
            self.send_header("X-Checksum-Sha256", stated.hex())
        elif mode == "digest":
            self.send_header("Digest", "sha-256=" + base64.b64encode(stated).decode())
        elif mode == "repr":
            self.send_header("Repr-Digest", "sha-256=:%s:" % base64.b64encode(stated).decode())
        elif mode == "etag":
            self.send_header("ETag", '"%s"' % stated.hex())
        self.end_headers()
        key = self.path
        with srv.lock:
            drop = "drop" in q and srv.drops.setdefault(key, int(q.get("drops", "1"))) > 0
            if drop:
                srv.drops[key] -= 1
        if drop:
            self.wfile.write(body[:int(q["drop"])])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # cut it, mid-file
            return
        self.wfile.write(body)


class PullServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port=0, token="secret-token", hf_size=300000):
        super().__init__(("127.0.0.1", port), Handler)
        self.lock = threading.Lock()
        self.log = []
        self.drops = {}
        self.token = token
        self.hf_size = hf_size


def start(token="secret-token"):
    """Starts a server on a free port of 127.0.0.1 in a thread; returns it."""
    srv = PullServer(token=token)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


if __name__ == "__main__":
    port, token = 0, "secret-token"
    args = sys.argv[1:]
    for i, a in enumerate(args):
        if a == "--port":
            port = int(args[i + 1])
        elif a == "--token":
            token = args[i + 1]
    srv = PullServer(port=port, token=token)
    print(srv.server_port, flush=True)
    srv.serve_forever()
