#!/usr/bin/env python3
"""requant-q8_0.py: rewrite a GGUF model with every weight matrix in Q8_0,
through llama.cpp's own quantizer (llama_model_quantize, from PyPI's
llama-cpp-python), for the Q8_0 rows of the CPU benchmark (docs/models.md).

    python3 tools/requant-q8_0.py IN.gguf OUT.gguf

IN may itself be quantized (a Q4_K_M file): its tensors are dequantized and
quantized again (allow_requantize), so OUT has the shapes and speed of a Q8_0
file of the model, not the accuracy of one made from the original weights.
The default, like tools/bench_cpu_llamacpp.py's:

    ~/.cache/msa-mem/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
 -> ~/.cache/msa-mem/models/Qwen2.5-Coder-0.5B-Instruct.Q8_0-requant.gguf

Needs llama-cpp-python (pip install llama-cpp-python; it builds llama.cpp
from source, some 20 minutes on 2 cores).
"""
import ctypes
import os
import sys


def main():
    cache = os.path.expanduser("~/.cache/msa-mem/models")
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        cache, "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf")
    dst = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        cache, "Qwen2.5-Coder-0.5B-Instruct.Q8_0-requant.gguf")
    try:
        import llama_cpp
    except ImportError:
        sys.exit("requant-q8_0: needs llama-cpp-python (pip install llama-cpp-python)")
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    p.allow_requantize = True
    p.nthread = 2
    tmp = dst + ".tmp"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"requant-q8_0: llama_model_quantize returned {rc}")
    os.replace(tmp, dst)
    print(dst)


if __name__ == "__main__":
    main()
