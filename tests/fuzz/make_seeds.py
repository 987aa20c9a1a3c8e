#!/usr/bin/env python3
"""Writes the project's seed inputs for the fuzz targets into tests/fuzz/<name>/
(tests/fuzz.cmake). They are tiny valid files of every format, so that the
fuzzers start from the deep paths instead of finding the magic numbers first.

    python3 tests/fuzz/make_seeds.py BUILD_DIR    # BUILD_DIR/msa-mem is used

The GGUF, export and store-record seeds are made by msa-mem itself from a
llama2.c checkpoint of 8 dims, 1 layer and 8 tokens written here.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
msa = Path(sys.argv[1]) / "msa-mem"


def put(name, data):
    p = HERE / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def checkpoint(D=8, F=16, L=1, Hq=2, Hkv=1, V=8, S=4, shared=True):
    d = D // Hq
    kvd = Hkv * d
    n = V * D + L * D + L * D * D + 2 * L * kvd * D + L * D * D + L * D + 3 * L * F * D + D + S * d
    if not shared:
        n += V * D
    w = [((i * 37) % 17 - 8) / 16.0 for i in range(n)]
    return struct.pack("<7i", D, F, L, Hq, Hkv, V if shared else -V, S) + struct.pack(f"<{n}f", *w)


def tokenizer(pieces):
    b = struct.pack("<i", max(len(p) for p in pieces))
    for i, p in enumerate(pieces):
        b += struct.pack("<fi", -float(i), len(p)) + p
    return b


pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b" ", b"a", b"b", b" a", b"ab"]
ck, tok = checkpoint(), tokenizer(pieces)
put("llama2c/tiny", struct.pack("<I", len(ck)) + ck + tok)
ck2 = checkpoint(shared=False)
put("llama2c/tiny-unshared", struct.pack("<I", len(ck2)) + ck2 + tok)
put("llama2c/bytes", struct.pack("<I", 0) + tokenizer(pieces + [b"<0x41>", b"<0x0A>"]))

# safetensors: two tensors and metadata
hdr = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
       "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
       "c": {"dtype": "F16", "shape": [2, 2], "data_offsets": [32, 40]},
       "__metadata__": {"format": "pt"}}
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
put("safetensors/small", struct.pack("<Q", len(h)) + h + bytes(range(40)))

# tokenizer.json: byte-level BPE with merges, added tokens, a post-processor
vocab = {c: i for i, c in enumerate(["!", "a", "b", "c", "\u0120", "\u0120a", "ab", "abc",
                                      "<|s|>", "<|e|>"])}
tj = {"version": "1.0",
      "added_tokens": [{"id": 8, "content": "<|s|>", "special": True},
                       {"id": 9, "content": "<|e|>", "special": True}],
      "normalizer": None,
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
          {"type": "Split", "pattern": {"Regex": "\\d{1,3}"}, "behavior": "Isolated"},
          {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]},
      "post_processor": {"type": "TemplateProcessing",
                         "single": [{"SpecialToken": {"id": "<|s|>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}}]},
      "decoder": {"type": "ByteLevel"},
      "model": {"type": "BPE", "vocab": vocab, "merges": ["\u0120 a", "a b", "ab c"]}}
put("tokenizer-json/bpe.json", json.dumps(tj).encode())
tj2 = dict(tj)
tj2["model"] = dict(tj["model"], merges=[["\u0120", "a"], ["a", "b"]])
tj2["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True}
put("tokenizer-json/bpe-pairs.json", json.dumps(tj2).encode())

if not msa.exists():
    sys.exit(f"{msa} not built: only the seeds that need no msa-mem were written")
with tempfile.TemporaryDirectory() as t:
    t = Path(t)
    (t / "m.bin").write_bytes(ck)
    (t / "t.bin").write_bytes(tok)
    env = dict(os.environ, MSA_STORE=str(t / "store"), MSA_MODEL=str(t / "m.gguf"),
               XDG_CACHE_HOME=str(t / "cache"))
    run = lambda *a: subprocess.run([str(msa), *map(str, a)], env=env, check=True,
                                    capture_output=True)
    run("convert", "llama2c", t / "m.bin", t / "t.bin", t / "m.gguf")
    put("gguf/tiny-llama.gguf", (t / "m.gguf").read_bytes())
    run("new", "s", "--block-size", "4")
    run("ingest", "s", "--text", "ab a b abc a a b")
    run("export", "s", t / "s.msax")
    x = (t / "s.msax").read_bytes()
    put("export/tiny.msax", x)
    # the records inside it, for fuzz-store-records
    pos, k = 16, 0
    while pos + 8 <= len(x):
        typ, ln = struct.unpack_from("<II", x, pos)
        p = x[pos + 8:pos + 8 + ln]
        if typ == 1:
            nl = struct.unpack_from("<I", p)[0]
            put("store-records/srec", b"\x00" + p[4 + nl:])
        elif typ == 3 and k < 3:
            el = struct.unpack_from("<I", p, 12)[0]
            put(f"store-records/bent{k}", b"\x01" + p[16:16 + el])
            # shape: 1 KV head of dim 4, 1 index key head of dim 4 (training-free
            # index of Hkv = 1), blocks of 4, f32
            put(f"store-records/block{k}", bytes([2, 3 << 2, 3 << 2, 3, 0]) + p[16 + el:])
            k += 1
        pos += 8 + ln + 4
print("seeds written to", HERE)
