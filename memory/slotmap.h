/*
 * slotmap.h: a page table from keys (layer * max_blocks + block) to a fixed
 * set of slots, with CLOCK eviction that skips pinned slots.
 *
 * Both tiers of the pager (host cache, GPU pool) are a slotmap over their
 * own arena. The page table is a direct array over all keys (4 bytes per
 * block of every layer: 256 KiB for 64 layers of 1 Mi tokens at Bk 128), so
 * lookups are one load. A slot is pinned while its `pin` equals the current
 * epoch (the pager's step counter): starting a new step unpins everything
 * at once, with no per-slot work.
 *
 * CLOCK: each slot has a reference bit set on use; the hand sweeps, clears
 * set bits and takes the first unpinned slot whose bit is clear. Free slots
 * are handed out first. Folder-local.
 */
#ifndef MSA_MEMORY_SLOTMAP_H
#define MSA_MEMORY_SLOTMAP_H

#include <stdint.h>

typedef struct msa_slotmap {
    int n_slots;
    int64_t n_keys;
    int32_t *page;     /* [n_keys] slot of each key, -1 when not resident */
    int64_t *key;      /* [n_slots] key held by each slot, -1 when free */
    int64_t *pin;      /* [n_slots] epoch of the last step that used it */
    uint8_t *ref;      /* [n_slots] CLOCK reference bit */
    int hand;
    int n_free;        /* slots 0..n_free-1 of free_list are free */
    int32_t *free_list;
} msa_slotmap;

/* Allocates a map of n_slots slots over keys [0, n_keys), all free.
 * MSA_OK, MSA_ENOMEM, MSA_EINVAL (n_slots < 1). */
int msa_slotmap_init(msa_slotmap *m, int n_slots, int64_t n_keys);
void msa_slotmap_free(msa_slotmap *m);

/* Slot holding `key`, or -1. */
static inline int msa_slotmap_find(const msa_slotmap *m, int64_t key) {
    return m->page[key];
}

/* Marks slot s used by step `epoch`: pinned for that step, reference set. */
static inline void msa_slotmap_touch(msa_slotmap *m, int s, int64_t epoch) {
    m->pin[s] = epoch;
    m->ref[s] = 1;
}

/* Picks a slot for a new key: a free one, else the CLOCK victim among slots
 * not pinned at `epoch`. The victim's old key leaves the page table and is
 * returned in *old_key (-1 for a free slot). The slot is left unmapped;
 * map it with msa_slotmap_insert. Returns the slot, or -1 when every slot
 * is pinned. */
int msa_slotmap_victim(msa_slotmap *m, int64_t epoch, int64_t *old_key);

/* Maps `key` to slot s (unmapped), touching it at `epoch`. */
void msa_slotmap_insert(msa_slotmap *m, int s, int64_t key, int64_t epoch);

/* Unmaps slot s (if mapped) and returns it to the free list. */
void msa_slotmap_release(msa_slotmap *m, int s);

#endif /* MSA_MEMORY_SLOTMAP_H */
