# Tests of engine/sha256.c and engine/pull.c (model download).
msa_test(test-sha256 SOURCES test-sha256.c LABELS unit TIMEOUT 60)
