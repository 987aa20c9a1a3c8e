# engine/: sampling, sessions, resume across processes.
msa_test(test-sampling SOURCES test-sampling.c LABELS unit)
