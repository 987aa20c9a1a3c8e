# engine/: sampling, sessions, resume across processes, MSA state across
# every restore (test-restore).
msa_test(test-sampling SOURCES test-sampling.c LABELS unit)
msa_test(test-session SOURCES test-session.c LABELS unit FAULTS)
msa_test(test-restore SOURCES test-restore.c LABELS unit)
