# Tokenizers (engine/tokenizer*): llama.cpp's and llama2.c's test vectors for
# SentencePiece (GGUF), GPT-2 (GGUF), Llama-3 (tokenizer.json), stories260K
# (llama2.c .bin), plus streaming decode and flags.
msa_test(test-tokenizer SOURCES test-tokenizer.c LABELS unit TIMEOUT 300)
