# engine/: sampling, sessions, resume across processes.
msa_test(test-sampling SOURCES test-sampling.c LABELS unit)
msa_test(test-session SOURCES test-session.c LABELS unit FAULTS)
