# Tests of engine/model/safetensors.c and engine/model/model_hf.c (Hugging Face model
# directories): parser checks, truncation/byte-flip mutation, config.json
# reading, and the stories260K model converted by tools/llama2c_to_hf.py.
msa_test(test-hf SOURCES test-hf.c LABELS unit TIMEOUT 300)

# The libFuzzer target fuzz-safetensors is in tests/fuzz.cmake.
