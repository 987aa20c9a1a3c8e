/*
 * abi_sizes.c: prints, as JSON, sizeof and the offset of every field of the
 * public structs that the Python bindings mirror with ctypes
 * (bindings/python/msa_mem). tests/test_python.py compares them with the
 * ctypes layouts, so that a field added to engine/msa.h and not to the
 * bindings (or the other way round) fails a test instead of corrupting
 * memory.
 */
#include <stddef.h>
#include <stdio.h>

#include "engine/msa.h"

static int first_struct = 1, first_field;

static void begin(const char *name, size_t size) {
    printf("%s\n  \"%s\": {\"size\": %zu, \"fields\": {", first_struct ? "" : ",", name, size);
    first_struct = 0;
    first_field = 1;
}

static void field(const char *name, size_t off) {
    printf("%s\"%s\": %zu", first_field ? "" : ", ", name, off);
    first_field = 0;
}

static void end(void) { printf("}}"); }

#define S(T) begin(#T, sizeof(T))
#define F(T, f) field(#f, offsetof(T, f))

int main(void) {
    printf("{");
    S(msa_engine_params);
    F(msa_engine_params, model_path); F(msa_engine_params, store_dir);
    F(msa_engine_params, device); F(msa_engine_params, cuda_device);
    F(msa_engine_params, n_threads); F(msa_engine_params, block_size);
    F(msa_engine_params, top_k); F(msa_engine_params, prefill_chunk);
    F(msa_engine_params, host_cache_bytes); F(msa_engine_params, durable);
    F(msa_engine_params, dense); F(msa_engine_params, gpu_pool_bytes);
    F(msa_engine_params, gpu_index_bytes);
    end();
    S(msa_sampling_params);
    F(msa_sampling_params, temperature); F(msa_sampling_params, top_k);
    F(msa_sampling_params, top_p); F(msa_sampling_params, min_p);
    F(msa_sampling_params, repeat_penalty); F(msa_sampling_params, repeat_last_n);
    F(msa_sampling_params, seed);
    end();
    S(msa_generate_params);
    F(msa_generate_params, sampling); F(msa_generate_params, max_tokens);
    F(msa_generate_params, stop_at_eos); F(msa_generate_params, source);
    end();
    S(msa_pager_stats);
    F(msa_pager_stats, gpu_lookups); F(msa_pager_stats, gpu_hits);
    F(msa_pager_stats, gpu_misses); F(msa_pager_stats, gpu_evictions);
    F(msa_pager_stats, host_lookups); F(msa_pager_stats, host_hits);
    F(msa_pager_stats, host_misses); F(msa_pager_stats, host_evictions);
    F(msa_pager_stats, bytes_store_to_host); F(msa_pager_stats, bytes_host_to_gpu);
    F(msa_pager_stats, bytes_tail_to_gpu); F(msa_pager_stats, bytes_index_to_gpu);
    F(msa_pager_stats, blocks_written); F(msa_pager_stats, steps);
    F(msa_pager_stats, gpu_slots); F(msa_pager_stats, host_slots);
    F(msa_pager_stats, block_bytes); F(msa_pager_stats, seconds_store);
    end();
    S(msa_session_info);
    F(msa_session_info, n_tokens); F(msa_session_info, n_blocks);
    F(msa_session_info, n_layers); F(msa_session_info, block_size);
    F(msa_session_info, top_k); F(msa_session_info, bytes_on_disk);
    F(msa_session_info, bytes_raw); F(msa_session_info, fingerprint);
    F(msa_session_info, pager); F(msa_session_info, last_step_ms); F(msa_session_info, store_write_ms);
    end();
    S(msa_session_params);
    F(msa_session_params, top_k); F(msa_session_params, reserved);
    end();
    S(msa_block_reads);
    F(msa_block_reads, block); F(msa_block_reads, first_token);
    F(msa_block_reads, n_tokens); F(msa_block_reads, reads); F(msa_block_reads, source);
    end();
    S(msa_store_shape);
    F(msa_store_shape, n_layers); F(msa_store_shape, n_kv_heads);
    F(msa_store_shape, head_dim); F(msa_store_shape, idx_key_heads);
    F(msa_store_shape, idx_dim); F(msa_store_shape, block_size);
    F(msa_store_shape, kv_dtype); F(msa_store_shape, idx_dtype);
    end();
    S(msa_store_session_info);
    F(msa_store_session_info, name); F(msa_store_session_info, fingerprint);
    F(msa_store_session_info, shape); F(msa_store_session_info, n_tokens);
    F(msa_store_session_info, n_blocks); F(msa_store_session_info, raw_bytes);
    F(msa_store_session_info, stored_bytes); F(msa_store_session_info, ratio);
    F(msa_store_session_info, created); F(msa_store_session_info, last_use);
    F(msa_store_session_info, parent);
    end();
    printf("\n}\n");
    return 0;
}
