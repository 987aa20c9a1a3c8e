# The store's tests (persist/): see each program's header.
msa_test(test-store SOURCES test-store.c LABELS unit TIMEOUT 300 FAULTS)
msa_test(test-store-crash SOURCES test-store-crash.c LABELS slow TIMEOUT 900)
msa_test(test-store-concurrency SOURCES test-store-concurrency.c LABELS unit TIMEOUT 300)
# tools/bench-resume (what opening a stored session costs) is defined in
# tools/CMakeLists.txt.
msa_test(test-store-damage SOURCES test-store-damage.c LABELS unit TIMEOUT 120)
