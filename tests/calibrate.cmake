# The index calibration: gradient check on a tiny random layer, then
# stories260K calibrated, reloaded and compared with the training-free index.
msa_test(test-calibrate SOURCES test-calibrate.c LABELS unit TIMEOUT 300)
