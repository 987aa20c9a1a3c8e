/*
 * slotmap.c: direct page table plus CLOCK eviction over fixed slots (see
 * slotmap.h). Every operation is O(1) except the CLOCK sweep, which visits
 * at most two rounds of slots (one to clear reference bits, one to find a
 * clear one).
 */
#include "memory/slotmap.h"

#include <stdlib.h>
#include <string.h>

#include "base/base.h"

int msa_slotmap_init(msa_slotmap *m, int n_slots, int64_t n_keys) {
    memset(m, 0, sizeof *m);
    if (n_slots < 1 || n_keys < 1)
        return msa_error(MSA_EINVAL, "slot map: %d slots over %lld keys", n_slots,
                         (long long)n_keys);
    m->n_slots = n_slots;
    m->n_keys = n_keys;
    m->page = malloc((size_t)n_keys * sizeof *m->page);
    m->key = malloc((size_t)n_slots * sizeof *m->key);
    m->pin = malloc((size_t)n_slots * sizeof *m->pin);
    m->ref = calloc((size_t)n_slots, 1);
    m->free_list = malloc((size_t)n_slots * sizeof *m->free_list);
    if (!m->page || !m->key || !m->pin || !m->ref || !m->free_list) {
        msa_slotmap_free(m);
        return msa_error(MSA_ENOMEM, "slot map: %d slots over %lld keys", n_slots,
                         (long long)n_keys);
    }
    memset(m->page, 0xff, (size_t)n_keys * sizeof *m->page);
    for (int s = 0; s < n_slots; s++) {
        m->key[s] = -1;
        m->pin[s] = -1;
        m->free_list[s] = n_slots - 1 - s; /* hand out slot 0 first */
    }
    m->n_free = n_slots;
    return MSA_OK;
}

void msa_slotmap_free(msa_slotmap *m) {
    if (!m) return;
    free(m->page);
    free(m->key);
    free(m->pin);
    free(m->ref);
    free(m->free_list);
    memset(m, 0, sizeof *m);
}

int msa_slotmap_victim(msa_slotmap *m, int64_t epoch, int64_t *old_key) {
    *old_key = -1;
    if (m->n_free > 0) return m->free_list[--m->n_free];
    for (int visited = 0; visited < 2 * m->n_slots; visited++) {
        int s = m->hand;
        m->hand = (m->hand + 1) % m->n_slots;
        if (m->pin[s] == epoch) continue;
        if (m->ref[s]) {
            m->ref[s] = 0;
            continue;
        }
        *old_key = m->key[s];
        if (m->key[s] >= 0) m->page[m->key[s]] = -1;
        m->key[s] = -1;
        return s;
    }
    return -1;
}

void msa_slotmap_insert(msa_slotmap *m, int s, int64_t key, int64_t epoch) {
    m->key[s] = key;
    m->page[key] = s;
    msa_slotmap_touch(m, s, epoch);
}

void msa_slotmap_release(msa_slotmap *m, int s) {
    if (m->key[s] >= 0) m->page[m->key[s]] = -1;
    m->key[s] = -1;
    m->ref[s] = 0;
    m->pin[s] = -1;
    m->free_list[m->n_free++] = s;
}
