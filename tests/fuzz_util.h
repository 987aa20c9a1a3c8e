/*
 * fuzz_util.h: what the libFuzzer targets share (tests/fuzz.cmake).
 *
 * Some parsers take a path, not bytes (tokenizer.json, llama2.c files,
 * export files): fuzz_path() puts the input into an anonymous memory file
 * (memfd) and returns "/proc/self/fd/N", which open(), fopen() and mmap()
 * read like any regular file, without touching the disk.
 *
 * Every stored record of the project carries a CRC32C, so a mutated input
 * almost never gets past the first check and the fuzzer would only ever
 * test that check. The targets therefore recompute the CRCs of the input
 * before handing it over (fuzz_fix_*), so that the code behind them sees
 * hostile bytes with valid checksums; the checks themselves are covered by
 * inputs that are not fixed up (every target leaves one input in eight
 * as it is).
 */
#ifndef MSA_FUZZ_UTIL_H
#define MSA_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A memfd holding data[0, size); its path into path (>= 32 bytes). The fd
 * is kept and rewritten by the next call with the same slot. */
static inline int fuzz_path(int slot, const uint8_t *data, size_t size, char *path) {
    static int fds[4] = {-1, -1, -1, -1};
    if (fds[slot] < 0) {
        fds[slot] = memfd_create("fuzz", 0);
        if (fds[slot] < 0) { perror("memfd_create"); abort(); }
    }
    int fd = fds[slot];
    if (ftruncate(fd, 0) != 0) abort();
    size_t off = 0;
    while (off < size) {
        ssize_t w = pwrite(fd, data + off, size - off, (off_t)off);
        if (w <= 0) abort();
        off += (size_t)w;
    }
    snprintf(path, 32, "/proc/self/fd/%d", fd);
    return 0;
}

/* Removes a folder and what is in it (the targets' scratch folders, at
 * exit: the replay tests must leave nothing behind). */
static inline int fuzz_rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
    (void)st;
    (void)flag;
    (void)f;
    return remove(p);
}

static inline void fuzz_rmtree(const char *dir) {
    nftw(dir, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* CRC32C (Castagnoli), table-driven (the fixups run on every input). */
static inline uint32_t fuzz_crc32c(uint32_t crc, const void *buf, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
            table[i] = c;
        }
    const uint8_t *p = buf;
    crc = ~crc;
    while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static inline uint32_t fuzz_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void fuzz_put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* A block value ("MSB1", persist/internal.h): the header CRC (over bytes
 * [8, 24 + 8 * planes)) and each plane's CRC, where the lengths allow. */
static inline void fuzz_fix_block(uint8_t *v, size_t len) {
    if (len < 24) return;
    size_t np = v[11], hdr = 24 + np * 8;
    if (np < 1 || np > 15 || hdr > len) return;
    size_t pos = hdr;
    for (size_t i = 0; i < np; i++) {
        size_t pl = fuzz_le32(v + 24 + 8 * i) & 0x7fffffffu;
        if (pl > len - pos) break;
        fuzz_put_le32(v + 24 + 8 * i + 4, fuzz_crc32c(0, v + pos, pl));
        pos += pl;
    }
    fuzz_put_le32(v + 4, fuzz_crc32c(0, v + 8, hdr - 8));
}

/* A session record or block entry: u32 CRC of the rest, first. */
static inline void fuzz_fix_rec(uint8_t *v, size_t len) {
    if (len >= 4) fuzz_put_le32(v, fuzz_crc32c(0, v + 4, len - 4));
}

#endif /* MSA_FUZZ_UTIL_H */
