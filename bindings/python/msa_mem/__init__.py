"""Python bindings of msa-mem, a long-memory engine built on MiniMax Sparse
Attention (MSA).

The C library keeps a session's keys and values as compressed blocks in a
persistent store and, at every decoding step, reads only the blocks MSA's
index selects. These bindings wrap its public C API (engine/msa.h) through
ctypes:

    import msa_mem
    with msa_mem.Engine("model.gguf", store="/tmp/store") as eng:
        with eng.session("notes", create=True) as s:
            s.append("Once upon a time")
            for piece in s.generate(max_tokens=32):
                print(piece, end="", flush=True)

Errors raise msa_mem.Error (with .status, and the library's message).
"""

from __future__ import annotations

import ctypes as C
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

__all__ = ["Engine", "Session", "Error", "BlockReads", "load_library", "version"]

# ---- loading the library ----------------------------------------------------


def _checkout_of(here: Path) -> Optional[Path]:
    """The msa-mem checkout holding this package (bindings/python/msa_mem),
    or None when the package was installed elsewhere."""
    root = here.parent.parent.parent
    return root if (root / "engine" / "msa.h").exists() else None


def _recorded_build_dirs() -> List[str]:
    """Build trees recorded when the package was pip-installed (the build
    backend writes msa_mem/_locations.py: $MSA_BUILD_DIR, else the build/
    folders of the checkout it was installed from)."""
    try:
        from . import _locations  # type: ignore
    except ImportError:
        return []
    return list(getattr(_locations, "BUILD_DIRS", []))


def _pkg_config_libdir() -> Optional[str]:
    """libdir of the installed msa.pc (honours PKG_CONFIG_PATH), if any."""
    import shutil
    import subprocess
    exe = shutil.which("pkg-config")
    if not exe:
        return None
    try:
        p = subprocess.run([exe, "--variable=libdir", "msa"], capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    d = p.stdout.strip()
    return d if p.returncode == 0 and d else None


def _candidates() -> List[str]:
    """Where libmsa may be, in the order tried. Paths with a separator must
    exist; bare names go to the dynamic loader (LD_LIBRARY_PATH, the
    ldconfig cache, /lib and /usr/lib)."""
    env = os.environ.get("MSA_LIBRARY")
    if env:
        return [env]
    here = Path(__file__).resolve().parent
    out = [str(Path(d) / "libmsa.so") for d in _recorded_build_dirs()]
    # Used from a checkout without installing: <root>/build/libmsa.so.
    roots = [r for r in (_checkout_of(here), Path.cwd()) if r is not None]
    for root in roots:
        for b in ("build", "build-cpu"):
            out.append(str(root / b / "libmsa.so"))
    out.append(str(here / "libmsa.so"))
    # Installed with `cmake --install`: through its pkg-config file, then the
    # loader's own search, then prefixes the loader skips until ldconfig
    # has run (/usr/local) and the environment's own prefix.
    libdir = _pkg_config_libdir()
    if libdir:
        out.append(str(Path(libdir) / "libmsa.so.0"))
    out.append("libmsa.so.0")
    out.append("libmsa.so")
    import ctypes.util
    import sys
    found = ctypes.util.find_library("msa")
    if found:
        out.append(found)
    import sysconfig
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for prefix in ("/usr/local", sys.prefix):
        for sub in ("lib", "lib64", f"lib/{multiarch}" if multiarch else None):
            if sub:
                out.append(str(Path(prefix) / sub / "libmsa.so.0"))
    return list(dict.fromkeys(out))


_lib = None


def load_library() -> C.CDLL:
    """Loads libmsa once and declares the functions these bindings use.
    Tried in order: $MSA_LIBRARY (only that file, when set); the build
    trees recorded at pip-install time; the build/ folder of the checkout
    this package sits in; an installed libmsa (pkg-config's libdir, the
    dynamic loader's path, /usr/local/lib, the environment's prefix). The
    path loaded is load_library()._name."""
    global _lib
    if _lib is not None:
        return _lib
    errors = []
    for path in _candidates():
        if os.path.sep in path and not os.path.exists(path):
            continue
        try:
            lib = C.CDLL(path)
            break
        except OSError as e:
            errors.append(f"{path}: {e}")
    else:
        raise OSError("libmsa not found; build it (tools/quickstart.sh build) and install "
                      "it (cmake --install build), or pip-install these bindings with "
                      "MSA_BUILD_DIR=<build tree> set, or set MSA_LIBRARY to its path. "
                      "Tried: " + "; ".join(errors or _candidates()))
    _declare(lib)
    _lib = lib
    return lib


class Error(Exception):
    """A failing msa-mem call: .status is the MSA_E* code (negative), the
    message is the library's detailed text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_EINVAL = -1


def _name(name) -> bytes:
    """A session name as the C library takes it: str (UTF-8; lone surrogates
    from os.fsdecode keep their bytes) or bytes, refused with MSA_EINVAL when
    it holds a NUL byte (C would silently cut it there and name another
    session) or is empty."""
    b = name if isinstance(name, bytes) else str(name).encode("utf-8", "surrogateescape")
    if not b:
        raise Error(_EINVAL, "MSA_EINVAL: empty session name")
    if b"\0" in b:
        raise Error(_EINVAL, f"MSA_EINVAL: session name {name!r} holds a NUL byte")
    return b


def _check(status: int) -> None:
    if status != 0:
        lib = load_library()
        name = lib.msa_strerror(status).decode()
        detail = lib.msa_last_error().decode(errors="replace")
        raise Error(status, f"{name}: {detail}" if detail else name)


# ---- C structures (must match engine/msa.h) ---------------------------------


class _EngineParams(C.Structure):
    _fields_ = [
        ("model_path", C.c_char_p),
        ("store_dir", C.c_char_p),
        ("device", C.c_int),
        ("cuda_device", C.c_int),
        ("n_threads", C.c_int),
        ("block_size", C.c_int),
        ("top_k", C.c_int),
        ("prefill_chunk", C.c_int),
        ("host_cache_bytes", C.c_size_t),
        ("durable", C.c_int),
        ("dense", C.c_int),
        ("gpu_pool_bytes", C.c_size_t),
        ("gpu_index_bytes", C.c_size_t),
    ]


class _SamplingParams(C.Structure):
    _fields_ = [
        ("temperature", C.c_float),
        ("top_k", C.c_int),
        ("top_p", C.c_float),
        ("min_p", C.c_float),
        ("repeat_penalty", C.c_float),
        ("repeat_last_n", C.c_int),
        ("seed", C.c_uint64),
    ]


class _GenerateParams(C.Structure):
    _fields_ = [
        ("sampling", _SamplingParams),
        ("max_tokens", C.c_int),
        ("stop_at_eos", C.c_int),
        ("source", C.c_char_p),
    ]


class _PagerStats(C.Structure):
    _fields_ = [(n, C.c_uint64) for n in (
        "gpu_lookups", "gpu_hits", "gpu_misses", "gpu_evictions",
        "host_lookups", "host_hits", "host_misses", "host_evictions",
        "bytes_store_to_host", "bytes_host_to_gpu", "bytes_tail_to_gpu",
        "bytes_index_to_gpu", "blocks_written", "steps")] + [
        ("gpu_slots", C.c_int64), ("host_slots", C.c_int64),
        ("block_bytes", C.c_int64), ("seconds_store", C.c_double)]


class _SessionInfo(C.Structure):
    _fields_ = [
        ("n_tokens", C.c_int64),
        ("n_blocks", C.c_int64),
        ("n_layers", C.c_int),
        ("block_size", C.c_int),
        ("top_k", C.c_int),
        ("bytes_on_disk", C.c_uint64),
        ("bytes_raw", C.c_uint64),
        ("fingerprint", C.c_char * 72),
        ("pager", _PagerStats),
        ("last_step_ms", C.c_double),
        ("store_write_ms", C.c_double),
    ]


class _SessionParams(C.Structure):
    _fields_ = [
        ("top_k", C.c_int),
        ("reserved", C.c_int * 7),
    ]


class _BlockReads(C.Structure):
    _fields_ = [
        ("block", C.c_int64),
        ("first_token", C.c_int64),
        ("n_tokens", C.c_int64),
        ("reads", C.c_uint64),
        ("source", C.c_char * 128),
    ]


class _StoreShape(C.Structure):
    _fields_ = [
        ("n_layers", C.c_int),
        ("n_kv_heads", C.c_int),
        ("head_dim", C.c_int),
        ("idx_key_heads", C.c_int),
        ("idx_dim", C.c_int),
        ("block_size", C.c_int),
        ("kv_dtype", C.c_int),
        ("idx_dtype", C.c_int),
    ]


_STORE_NAME_MAX = 255
_STORE_FINGERPRINT_MAX = 128


class _StoreSessionInfo(C.Structure):
    _fields_ = [
        ("name", C.c_char * (_STORE_NAME_MAX + 1)),
        ("fingerprint", C.c_char * (_STORE_FINGERPRINT_MAX + 1)),
        ("shape", _StoreShape),
        ("n_tokens", C.c_uint64),
        ("n_blocks", C.c_uint64),
        ("raw_bytes", C.c_uint64),
        ("stored_bytes", C.c_uint64),
        ("ratio", C.c_double),
        ("created", C.c_int64),
        ("last_use", C.c_int64),
        ("parent", C.c_char * (_STORE_NAME_MAX + 1)),
    ]


# The structs above, for the test that checks them against the C compiler's
# sizeof and offsetof (tests/test_python.py).
STRUCTS = {
    "msa_engine_params": _EngineParams,
    "msa_sampling_params": _SamplingParams,
    "msa_generate_params": _GenerateParams,
    "msa_pager_stats": _PagerStats,
    "msa_session_info": _SessionInfo,
    "msa_session_params": _SessionParams,
    "msa_block_reads": _BlockReads,
    "msa_store_shape": _StoreShape,
    "msa_store_session_info": _StoreSessionInfo,
}

_PROGRESS_FN = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_int64, C.c_int64)
_TOKEN_FN = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_int32, C.POINTER(C.c_char), C.c_size_t)


def _declare(lib: C.CDLL) -> None:
    P = C.c_void_p
    sig = {
        "msa_version": (C.c_char_p, []),
        "msa_strerror": (C.c_char_p, [C.c_int]),
        "msa_last_error": (C.c_char_p, []),
        "msa_engine_default_params": (_EngineParams, []),
        "msa_engine_open": (C.c_int, [C.POINTER(_EngineParams), C.POINTER(P)]),
        "msa_engine_free": (None, [P]),
        "msa_engine_fingerprint": (C.c_char_p, [P]),
        "msa_session_open": (C.c_int, [P, C.c_char_p, C.c_int, C.POINTER(P)]),
        "msa_session_close": (None, [P]),
        "msa_session_append_text": (C.c_int, [P, C.c_char_p, C.c_size_t, C.c_char_p,
                                              _PROGRESS_FN, P]),
        "msa_session_append_tokens": (C.c_int, [P, C.POINTER(C.c_int32), C.c_size_t,
                                                C.c_char_p, _PROGRESS_FN, P]),
        "msa_sampling_default_params": (_SamplingParams, []),
        "msa_generate_default_params": (_GenerateParams, []),
        "msa_session_generate": (C.c_int, [P, C.POINTER(_GenerateParams), _TOKEN_FN, P,
                                           C.POINTER(C.c_int)]),
        "msa_session_get_info": (C.c_int, [P, C.POINTER(_SessionInfo)]),
        "msa_session_explain": (C.c_int, [P, C.POINTER(_BlockReads), C.c_size_t,
                                          C.POINTER(C.c_size_t)]),
        "msa_session_explain_reset": (None, [P]),
        "msa_session_tokens": (C.POINTER(C.c_int32), [P, C.POINTER(C.c_int64)]),
        "msa_session_name": (C.c_char_p, [P]),
        "msa_engine_store": (P, [P]),
        "msa_engine_tokenizer": (P, [P]),
        "msa_tokenize": (C.c_int, [P, C.c_char_p, C.c_size_t, C.c_int, C.POINTER(C.c_int32),
                                   C.c_size_t, C.POINTER(C.c_size_t)]),
        "msa_detokenize": (C.c_int, [P, C.POINTER(C.c_int32), C.c_size_t, C.c_int,
                                     C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t)]),
        "msa_session_append_message": (C.c_int, [P, C.c_int, C.c_char_p, C.c_char_p, C.c_int,
                                                 C.c_char_p]),
        "msa_chat_template_from_name": (C.c_int, [C.c_char_p]),
        "msa_session_default_params": (_SessionParams, []),
        "msa_session_get_params": (C.c_int, [P, C.POINTER(_SessionParams)]),
        "msa_session_set_params": (C.c_int, [P, C.POINTER(_SessionParams)]),
        "msa_session_remove": (C.c_int, [P, C.c_char_p]),
        "msa_store_fork": (C.c_int, [P, C.c_char_p, C.c_char_p]),
        "msa_store_remove": (C.c_int, [P, C.c_char_p]),
        "msa_store_export": (C.c_int, [P, C.c_char_p, C.c_char_p]),
        "msa_store_import": (C.c_int, [P, C.c_char_p, C.c_char_p]),
        "msa_store_list": (C.c_int, [P, C.POINTER(C.POINTER(_StoreSessionInfo)),
                                     C.POINTER(C.c_size_t)]),
        "msa_store_list_free": (None, [C.POINTER(_StoreSessionInfo)]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args


def version() -> str:
    """The library's version and build features, e.g. '0.1.0 cpu'."""
    return load_library().msa_version().decode()


# ---- the API ------------------------------------------------------------------


@dataclass
class BlockReads:
    """How often a memory block was read (summed over layers, groups and
    steps), with the token range it covers and its source tag."""
    block: int
    first_token: int
    n_tokens: int
    reads: int
    source: str


class _Owned:
    """A C handle released by `_free` (a libmsa function name): close()
    releases it once; also a context manager, and released when collected."""

    _free = ""
    _h = None

    def close(self) -> None:
        if self._h is not None:
            getattr(self._lib, self._free)(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Engine(_Owned):
    """A model, its tokenizer and a store. Use as a context manager, or call
    close()."""

    _free = "msa_engine_free"

    def __init__(self, model: str, store: Optional[str] = None, device: str = "cpu",
                 threads: int = 0, block_size: int = 0, top_k: int = 0,
                 durable: bool = True, dense: bool = False,
                 host_cache_bytes: int = 0, prefill_chunk: int = 0):
        lib = load_library()
        p = lib.msa_engine_default_params()
        self._model = os.fsencode(model)
        self._store = os.fsencode(store) if store else None
        p.model_path = self._model
        p.store_dir = self._store
        if device.startswith("cuda"):
            p.device = 1
            p.cuda_device = int(device.split(":")[1]) if ":" in device else 0
        elif device != "cpu":
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
        p.n_threads = threads
        p.block_size = block_size
        p.top_k = top_k
        p.durable = int(durable)
        p.dense = int(dense)
        p.host_cache_bytes = host_cache_bytes
        p.prefill_chunk = prefill_chunk
        h = C.c_void_p()
        _check(lib.msa_engine_open(C.byref(p), C.byref(h)))
        self._h = h
        self._lib = lib

    @property
    def fingerprint(self) -> str:
        """The model's fingerprint, which binds sessions to it."""
        return self._lib.msa_engine_fingerprint(self._handle()).decode()

    def _handle(self) -> C.c_void_p:
        if self._h is None:
            raise Error(-1, "engine is closed")
        return self._h

    def session(self, name: str, create: bool = False, exclusive: bool = False) -> "Session":
        """Opens session `name` (creating it when `create`; `exclusive` fails
        if it already exists)."""
        flags = (1 if create else 0) | (2 if exclusive else 0)
        h = C.c_void_p()
        _check(self._lib.msa_session_open(self._handle(), _name(name), flags, C.byref(h)))
        return Session(self, h)

    # ---- the tokenizer ----------------------------------------------------------

    def tokenize(self, text: str, bos: bool = False) -> List[int]:
        """Token ids of `text` under the model's tokenizer."""
        data = text.encode()
        cap = len(data) + 16
        ids = (C.c_int32 * cap)()
        n = C.c_size_t()
        tok = self._lib.msa_engine_tokenizer(self._handle())
        _check(self._lib.msa_tokenize(tok, data, len(data), 1 if bos else 0, ids, cap,
                                      C.byref(n)))
        return list(ids[:n.value])

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids (invalid UTF-8 replaced)."""
        arr = (C.c_int32 * max(len(ids), 1))(*ids)
        tok = self._lib.msa_engine_tokenizer(self._handle())
        n = C.c_size_t()
        cap = 16 * len(ids) + 16
        while True:
            buf = C.create_string_buffer(cap)
            rc = self._lib.msa_detokenize(tok, arr, len(ids), 0, buf, cap, C.byref(n))
            if rc == -17 and n.value > cap:  # MSA_ERANGE: retry with the size needed
                cap = n.value
                continue
            _check(rc)
            return buf.raw[:n.value].decode("utf-8", errors="replace")

    # ---- the store (msa_store_* through msa_engine_store) --------------------

    def _store_handle(self) -> C.c_void_p:
        return C.c_void_p(self._lib.msa_engine_store(self._handle()))

    def sessions(self) -> List[dict]:
        """The store's sessions as dicts (name, fingerprint, n_tokens,
        n_blocks, raw_bytes, stored_bytes, ratio, created, last_use, parent,
        block_size), sorted by name."""
        arr = C.POINTER(_StoreSessionInfo)()
        n = C.c_size_t()
        _check(self._lib.msa_store_list(self._store_handle(), C.byref(arr), C.byref(n)))
        try:
            out = []
            for i in range(n.value):
                r = arr[i]
                out.append({"name": r.name.decode(errors="replace"),
                            "fingerprint": r.fingerprint.decode(), "n_tokens": r.n_tokens,
                            "n_blocks": r.n_blocks, "raw_bytes": r.raw_bytes,
                            "stored_bytes": r.stored_bytes, "ratio": r.ratio,
                            "created": r.created, "last_use": r.last_use,
                            "parent": r.parent.decode(errors="replace"),
                            "block_size": r.shape.block_size})
            return out
        finally:
            self._lib.msa_store_list_free(arr)

    def fork(self, src: str, dst: str) -> None:
        """Makes session `dst` a copy of `src` that shares its blocks."""
        _check(self._lib.msa_store_fork(self._store_handle(), _name(src), _name(dst)))

    def remove(self, name: str) -> None:
        """Removes session `name`. A session open for writing (a Session
        here, or any handle in another process) is busy: Error with status
        MSA_EBUSY (-12), nothing removed."""
        _check(self._lib.msa_session_remove(self._store_handle(), _name(name)))

    def export(self, name: str, path: str) -> None:
        """Writes session `name` to a portable, checksummed file."""
        _check(self._lib.msa_store_export(self._store_handle(), _name(name), os.fsencode(path)))

    def import_(self, path: str, name: Optional[str] = None) -> None:
        """Reads a file written by export() into a new session (`name`, else
        the name in the file)."""
        _check(self._lib.msa_store_import(self._store_handle(), os.fsencode(path),
                                          _name(name) if name is not None else None))



class Session(_Owned):
    """A named, persistent memory. Obtain one from Engine.session()."""

    _free = "msa_session_close"

    def __init__(self, engine: Engine, handle: C.c_void_p):
        self._engine = engine  # keeps the engine alive while the session is
        self._lib = engine._lib
        self._h = handle

    def _handle(self) -> C.c_void_p:
        if self._h is None:
            raise Error(-1, "session is closed")
        return self._h

    @property
    def name(self) -> str:
        return self._lib.msa_session_name(self._handle()).decode("utf-8", "surrogateescape")

    def tokens(self) -> List[int]:
        """The session's token ids."""
        n = C.c_int64()
        p = self._lib.msa_session_tokens(self._handle(), C.byref(n))
        return [p[i] for i in range(n.value)]

    def append(self, text: str, source: Optional[str] = None, progress=None) -> None:
        """Appends text to the memory (runs the model over it and commits).
        `progress(done, total)` may return True to stop early."""
        data = text.encode()
        cb = self._progress_cb(progress)
        _check(self._lib.msa_session_append_text(self._handle(), data, len(data),
                                                 source.encode() if source else None,
                                                 cb, None))

    def append_message(self, role: str, content: str, add_generation_prompt: bool = False,
                       template: Optional[str] = None, source: Optional[str] = None) -> None:
        """Appends one chat message (role "system", "user" or "assistant")
        rendered with `template` ("plain", "llama3", "chatml", "llama2"; None:
        the model's), optionally followed by the header of the reply."""
        t = -1
        if template is not None:
            t = self._lib.msa_chat_template_from_name(template.encode())
            _check(t if t < 0 else 0)
        _check(self._lib.msa_session_append_message(self._handle(), t, role.encode(),
                                                    content.encode(),
                                                    int(add_generation_prompt),
                                                    source.encode() if source else None))

    def text(self) -> str:
        """The whole memory as text."""
        return self._engine.detokenize(self.tokens())

    def append_tokens(self, ids: Sequence[int], source: Optional[str] = None,
                      progress=None) -> None:
        arr = (C.c_int32 * len(ids))(*ids)
        cb = self._progress_cb(progress)
        _check(self._lib.msa_session_append_tokens(self._handle(), arr, len(ids),
                                                   source.encode() if source else None,
                                                   cb, None))

    @staticmethod
    def _progress_cb(progress):
        if progress is None:
            return _PROGRESS_FN()
        return _PROGRESS_FN(lambda _u, done, total: 1 if progress(done, total) else 0)

    def generate(self, max_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repeat_penalty: float = 1.0,
                 seed: int = 0, stop_at_eos: bool = True,
                 source: Optional[str] = None) -> Iterator[str]:
        """Generates text, yielding it piece by piece as tokens arrive; the
        tokens join the session's memory. Stop early by leaving the loop."""
        lib = self._lib
        p = lib.msa_generate_default_params()
        p.max_tokens = max_tokens
        p.stop_at_eos = int(stop_at_eos)
        p.sampling.temperature = temperature
        p.sampling.top_k = top_k
        p.sampling.top_p = top_p
        p.sampling.min_p = min_p
        p.sampling.repeat_penalty = repeat_penalty
        p.sampling.seed = seed
        src = source.encode() if source else None
        p.source = src
        q: "queue.Queue" = queue.Queue()
        stop = threading.Event()

        def on_token(_user, token, text, n):
            q.put(C.string_at(text, n).decode("utf-8", errors="replace") if n else "")
            return 1 if stop.is_set() else 0

        cb = _TOKEN_FN(on_token)
        result = {}

        def run():
            try:
                result["rc"] = lib.msa_session_generate(self._handle(), C.byref(p), cb,
                                                        None, None)
                if result["rc"] != 0:
                    result["err"] = (lib.msa_strerror(result["rc"]).decode(),
                                     lib.msa_last_error().decode(errors="replace"))
            finally:
                q.put(None)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if item:
                    yield item
        finally:
            stop.set()
            t.join()
        if result.get("rc", 0) != 0:
            name, detail = result["err"]
            raise Error(result["rc"], f"{name}: {detail}" if detail else name)

    def ask(self, question: str, max_tokens: int = 128, **sampling) -> str:
        """Appends `question` and returns the generated answer."""
        self.append(question, source="question")
        return "".join(self.generate(max_tokens=max_tokens, **sampling))

    def info(self) -> dict:
        """Tokens, blocks, bytes on disk, the model fingerprint and the
        pager's counters."""
        i = _SessionInfo()
        _check(self._lib.msa_session_get_info(self._handle(), C.byref(i)))
        d = {f: getattr(i, f) for f, _ in _SessionInfo._fields_
             if f not in ("fingerprint", "pager")}
        d["fingerprint"] = i.fingerprint.decode()
        d["pager"] = {f: getattr(i.pager, f) for f, _ in _PagerStats._fields_}
        return d

    def params(self) -> dict:
        """The session's parameters as it runs with them: {"top_k": k}, the
        MSA blocks each step reads per KV group. They are stored with the
        session (fork, export and import carry them)."""
        p = _SessionParams()
        _check(self._lib.msa_session_get_params(self._handle(), C.byref(p)))
        return {"top_k": p.top_k}

    def set_params(self, top_k: Optional[int] = None) -> None:
        """Stores new parameters with the session and uses them from the
        next step on (None keeps a value)."""
        p = self._lib.msa_session_default_params()
        if top_k is not None:
            if top_k <= 0:
                raise Error(_EINVAL, f"MSA_EINVAL: top_k must be positive, not {top_k}")
            p.top_k = top_k
        _check(self._lib.msa_session_set_params(self._handle(), C.byref(p)))

    @property
    def top_k(self) -> int:
        """The MSA top-k this session runs with (stored with it)."""
        return self.params()["top_k"]

    def explain(self, limit: int = 64) -> List[BlockReads]:
        """The memory blocks read since the session was opened (or
        explain_reset()), most-read first, with their sources."""
        buf = (_BlockReads * limit)()
        n = C.c_size_t()
        _check(self._lib.msa_session_explain(self._handle(), buf, limit, C.byref(n)))
        return [BlockReads(b.block, b.first_token, b.n_tokens, b.reads,
                           b.source.decode(errors="replace")) for b in buf[:n.value]]

    def explain_reset(self) -> None:
        self._lib.msa_session_explain_reset(self._handle())

