/*
 * fuzz-safetensors.c: libFuzzer entry point for the safetensors parser.
 *
 * Every input is parsed as a whole safetensors image. Whatever the parser
 * accepts must be internally consistent: each tensor's bytes lie inside the
 * input and its size equals its element count times the element size, and
 * every supported tensor converts to fp32 without touching anything else.
 * Built by tests/fuzz.cmake against the instrumented library (coverage,
 * ASan and UBSan in the parser itself, not only in this file).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/safetensors.h"
#include "tests/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    msa_safetensors *st = NULL;
    if (msa_safetensors_open_memory(data, size, "fuzz", &st) != MSA_OK)
        return 0;
    float buf[64];
    for (int i = 0; i < msa_safetensors_count(st); i++) {
        msa_st_tensor t;
        if (msa_safetensors_get(st, i, &t) != MSA_OK) __builtin_trap();
        const uint8_t *p = t.data;
        if (p < data || p + t.size > data + size) __builtin_trap();
        if (t.size != (uint64_t)t.n_elements * msa_st_dtype_size(t.st_dtype))
            __builtin_trap();
        msa_st_tensor again;
        if (msa_safetensors_find(st, t.name, &again) != MSA_OK ||
            again.data != t.data)
            __builtin_trap();
        if (t.supported) {
            int64_t n = t.n_elements < 64 ? t.n_elements : 64;
            if (msa_st_tensor_read_f32(&t, t.n_elements - n, n, buf) != MSA_OK)
                __builtin_trap();
        }
    }
    msa_safetensors_close(st);
    return 0;
}
