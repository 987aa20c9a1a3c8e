/*
 * fault.c: the store's fault-injection hook (see internal.h). Always
 * compiled, inert unless a test arms it: one relaxed atomic load per fault
 * point on the write path. Modelled on SQLite's and Redis's fault tests:
 * fail the Nth write, commit or allocation and check that the store still
 * opens and holds exactly what was committed.
 */
#include "persist/internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fault_countdown; /* 0: disarmed */
static atomic_int fault_err;
static atomic_long fault_passed;
static atomic_int fault_env_read;

void msa_fault_arm(int err, long nth) {
    atomic_store(&fault_env_read, 1);
    atomic_store(&fault_err, err);
    atomic_store(&fault_passed, 0);
    atomic_store(&fault_countdown, nth > 0 ? nth : 0);
}

long msa_fault_points(void) { return atomic_load(&fault_passed); }

static void fault_from_env(void) {
    const char *s = getenv("MSA_STORE_FAULT");
    if (!s) return;
    int err = !strncmp(s, "enospc:", 7) ? ENOSPC
              : !strncmp(s, "eio:", 4)  ? EIO
              : !strncmp(s, "enomem:", 7) ? ENOMEM : 0;
    const char *n = strchr(s, ':');
    if (err && n) msa_fault_arm(err, atol(n + 1));
}

int msa_fault_point(void) {
    if (!atomic_load_explicit(&fault_env_read, memory_order_relaxed)) {
        if (!atomic_exchange(&fault_env_read, 1)) fault_from_env();
    }
    atomic_fetch_add_explicit(&fault_passed, 1, memory_order_relaxed);
    if (!atomic_load_explicit(&fault_countdown, memory_order_relaxed)) return 0;
    if (atomic_fetch_sub(&fault_countdown, 1) == 1) return atomic_load(&fault_err);
    return 0;
}
