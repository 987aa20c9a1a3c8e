"""Pre-tokenizers against Hugging Face's `tokenizers` package.

Every named variant the engine knows is split by the library (pretok-dump)
and by the pre-tokenizer that the model family's own tokenizer.json
declares, built with `tokenizers.pre_tokenizers`; the pieces must be the
same bytes. The texts are a seeded random mix of the cases that separate the
variants (runs of digits and of white space, contractions in both cases,
punctuation, CR LF, letters of several scripts, emoji) and real Python
source from this interpreter's standard library.

With SmolLM2-135M-Instruct in the user cache (tools/fetch-models.sh), its
whole tokenization (the GGUF's vocabulary and merges, pre-tokenizer
"smollm") is compared with a Hugging Face BPE tokenizer built from the same
vocabulary and merges.

Seeds come from $MSA_TEST_SEED or are fresh, and are printed.
"""

import os
import random
import subprocess
import sysconfig
from pathlib import Path

import pytest

tk = pytest.importorskip("tokenizers")
from tokenizers import Regex  # noqa: E402
from tokenizers import pre_tokenizers as P  # noqa: E402
from pyutil import MODEL_FILES, fresh_seed, model_cache  # noqa: E402

BUILD = Path(os.environ.get("MSA_BUILD_DIR", "build"))

# The Split regexes as Llama 3's and Qwen2's tokenizer.json files write them.
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level(use_regex):
    return P.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def split(regex):
    return P.Split(Regex(regex), behavior="isolated", invert=False)


HF = {
    "gpt-2": lambda: byte_level(True),
    "llama-bpe": lambda: P.Sequence([split(LLAMA3), byte_level(False)]),
    "qwen2": lambda: P.Sequence([split(QWEN2), byte_level(False)]),
    "smollm": lambda: P.Sequence([P.Digits(individual_digits=True), byte_level(True)]),
    "starcoder": lambda: P.Sequence([P.Digits(individual_digits=True), byte_level(True)]),
}


def byte_decoder():
    """GPT-2's byte alphabet, reversed: printable Latin-1 bytes stand for
    themselves, the others are the code points from 256 up, in byte order."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


DECODE = byte_decoder()


def hf_pieces(pre, text):
    return [bytes(DECODE[c] for c in piece) for piece, _ in pre.pre_tokenize_str(text)]


def our_pieces(name, data):
    r = subprocess.run([str(BUILD / "pretok-dump"), name], input=data, capture_output=True,
                       check=True)
    out = []
    for line in r.stdout.decode().splitlines():
        start, n = map(int, line.split())
        out.append(data[start:start + n])
    return out


def random_text(rng, n):
    pool = ["hello", "World", "naïve", "Straße", "日本語", "текст", "café", "x", "I",
            "'s", "'S", "'ll", "'LL", "'re", "'d", "don't", "WE'RE", "0", "7", "42", "123",
            "98765", "3.14", "1,000", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n",
            "!", "?!", "...", "(", ")", "{", "}", "==", "->", "#", "@user", "$", "%",
            "😀", "👍🏽", "—", "«", "»", "\u00a0", "_", "__init__", "snake_case", "CamelCase"]
    return "".join(rng.choice(pool) for _ in range(n))


def corpus(seed):
    rng = random.Random(seed)
    texts = [random_text(rng, rng.randint(1, 60)) for _ in range(150)]
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(lib.glob("*.py"))
    for f in rng.sample(files, min(3, len(files))):
        texts.append(f.read_text(encoding="utf-8", errors="replace")[:20000])
    return texts


@pytest.mark.parametrize("name", sorted(HF))
def test_pieces_match_hugging_face(name):
    pre = HF[name]()
    texts = corpus(fresh_seed())
    bad = []
    for text in texts:
        want = hf_pieces(pre, text)
        got = our_pieces(name, text.encode("utf-8"))
        if got != want:
            i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            bad.append(f"{text[:40]!r}: piece {i}: ours {got[i:i + 3]} hf {want[i:i + 3]}")
    assert not bad, f"{len(bad)} of {len(texts)} texts differ: " + "; ".join(bad[:3])


def test_unknown_variant_is_a_clear_error():
    r = subprocess.run([str(BUILD / "pretok-dump"), "no-such-pre"], input=b"x",
                       capture_output=True)
    assert r.returncode == 1
    assert b"unknown pre-tokenizer 'no-such-pre'" in r.stderr and b"smollm" in r.stderr


def smollm_path():
    p = model_cache() / MODEL_FILES["smollm2"]
    return p if p.exists() else None


def test_smollm2_tokenization_matches_hugging_face():
    path = smollm_path()
    if path is None:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf not cached: tools/fetch-models.sh smollm2")
    gguf = pytest.importorskip("gguf")
    from tokenizers import Tokenizer, decoders, models

    r = gguf.GGUFReader(str(path))

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    vocab = {t: i for i, t in enumerate(strings("tokenizer.ggml.tokens"))}
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    hf = Tokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = HF["smollm"]()
    hf.decoder = decoders.ByteLevel()
    texts = corpus(fresh_seed())[:60]
    bad = []
    for text in texts:
        out = subprocess.run([str(BUILD / "msa-mem"), "tokenize", "--model", str(path), "--no-bos",
                              "-"], input=text.encode("utf-8"), capture_output=True, check=True)
        ours = [int(x) for x in out.stdout.split()]
        want = hf.encode(text, add_special_tokens=False).ids
        if ours != want:
            bad.append(f"{text[:40]!r}: ours {ours[:8]} hf {want[:8]}")
    assert not bad, f"{len(bad)} of {len(texts)} texts differ: " + "; ".join(bad[:3])
