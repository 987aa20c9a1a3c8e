/*
 * fault.c: the store's fault-injection hook (see internal.h), compiled only
 * into the test variant of persist/ (MSA_FAULT_INJECTION, set on the
 * msa_persist_faults objects that tests/ link). The shipped library has no
 * hook: there every fault point is the constant 0 and MSA_STORE_FAULT is
 * never read. Where it is compiled in, it is inert unless a test arms it:
 * one relaxed atomic load per fault point. Modelled on SQLite's and Redis's
 * fault tests: fail the Nth write, commit or allocation and check that the
 * store still opens and holds exactly what was committed; or let every read
 * fail from some point on, as a disk going bad would, and check that the
 * session above says it failed instead of running on half-loaded memory.
 */
#include "persist/internal.h"

#ifdef MSA_FAULT_INJECTION

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fault_countdown; /* 0: disarmed */
static atomic_int fault_err;
static atomic_long fault_passed;
static atomic_int fault_env_read;

static atomic_long read_countdown;  /* 0: disarmed; 1: failing */
static atomic_int read_err;

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

void msa_fault_arm_reads(int err, long nth) {
    atomic_store(&read_err, err);
    atomic_store(&read_countdown, err && nth > 0 ? nth : 0);
}

int msa_fault_read_point(void) {
    long c = atomic_load_explicit(&read_countdown, memory_order_relaxed);
    if (!c) return 0;
    if (c == 1) return atomic_load(&read_err); /* failing until disarmed */
    /* this point passes and counts down towards 1 (unless another thread
     * got there first, or disarmed it, meanwhile) */
    while (c > 1 && !atomic_compare_exchange_weak(&read_countdown, &c, c - 1)) {
    }
    return c == 1 ? atomic_load(&read_err) : 0;
}

#else

/* Release build: no hook (internal.h turns the fault points into 0). */
typedef int msa_fault_hook_absent;

#endif /* MSA_FAULT_INJECTION */
