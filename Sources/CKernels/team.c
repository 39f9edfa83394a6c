// The thread team our kernels run on: the caller plus pool threads that spin (yielding the core)
// for a short while after each parallel region, then sleep.
//
// Why not OpenMP's team: libgomp's wait policy is fixed when it loads. Spinning ("active", or its
// default 300 000 spins) keeps a forward pass fast (an empty region costs about 1 µs) but, when
// anything else runs on the machine, a spinning thread holds a core that a descheduled team member
// needs, and a pass becomes many times slower; sleeping ("passive", the CLI's choice) costs a
// wake-up (tens of µs) per region, and a cvt-13 pass has about 160 regions. Here a
// waiting thread spins for `CVT_TEAM_SPIN_US` (default 1000 µs: a pass's regions follow each other
// within microseconds) and calls sched_yield between checks, so a thread of another process that
// wants the core gets it; then it sleeps on a futex until the next region.
//
// On AVX-512 CPUs the matmuls are oneDNN's, on OpenMP's team; there the regions run on OpenMP's
// team too, so two pools never wait beside each other
// (`CVT_TEAM=openmp|own` overrides, for comparisons).
//
// One region runs at a time. A region started inside another (a kernel called by a team member) or
// while another thread's region runs (two pipelines used from two threads) runs on its caller
// alone, so threads are never oversubscribed.
#define _GNU_SOURCE
#include "ckernels.h"
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define MAX_MEMBERS 256

static pthread_mutex_t region_lock = PTHREAD_MUTEX_INITIALIZER;
// The region word: (sequence << 8) | members. Workers wait for it to change; the member count
// travels in the same word so a worker never pairs one region's sequence with another's count.
static _Atomic uint32_t region_word;
static ck_team_fn region_fn;
static void *region_ctx;
static _Atomic uint32_t pending;     // members (other than the caller) still running the region
static _Atomic int sleeping_workers; // workers in (or entering) a futex wait on region_word
static _Atomic int caller_sleeping;  // the caller is in (or entering) a futex wait on pending
static int started;                  // pool threads started (guarded by region_lock)
static _Atomic int team_threads;     // threads a region may use (0: not set yet)
static _Atomic long spin_ns = -1;
static _Thread_local int in_region;
static _Thread_local int local_threads;  // 0: the process's count applies
static _Atomic int use_openmp = -1;  // -1: not decided yet

// libgomp (linked by oneDNN's module), as `#pragma omp parallel` would call it.
extern void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
extern int omp_get_thread_num(void);
extern int omp_get_num_threads(void);
extern int omp_get_max_threads(void);

int ck_team_uses_openmp(void) {
    int u = atomic_load(&use_openmp);
    if (u >= 0) return u;
    const char *env = getenv("CVT_TEAM");
    if (env && strcmp(env, "openmp") == 0) u = 1;
    else if (env && strcmp(env, "own") == 0) u = 0;
    else u = ck_cpu_has_avx512f();
    atomic_store(&use_openmp, u);
    return u;
}

void ck_team_set_openmp(int openmp) { atomic_store(&use_openmp, openmp < 0 ? -1 : openmp != 0); }

typedef struct { ck_team_fn fn; void *ctx; } openmp_region;

static void openmp_member(void *data) {
    const openmp_region *r = data;
    int outer = in_region;
    in_region = 1;
    r->fn(r->ctx, omp_get_thread_num(), omp_get_num_threads());
    in_region = outer;
}

static long futex(_Atomic uint32_t *word, int op, uint32_t value) {
    return syscall(SYS_futex, (uint32_t *)word, op | FUTEX_PRIVATE_FLAG, value, NULL, NULL, 0);
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static long spin_limit_ns(void) {
    long s = atomic_load_explicit(&spin_ns, memory_order_relaxed);
    if (s >= 0) return s;
    const char *env = getenv("CVT_TEAM_SPIN_US");
    char *end = NULL;
    long us = env ? strtol(env, &end, 10) : -1;
    s = (env && end && *end == '\0' && us >= 0 && us <= 10000000) ? us * 1000 : 1000000;
    atomic_store_explicit(&spin_ns, s, memory_order_relaxed);
    return s;
}

void ck_team_set_spin_us(long us) { atomic_store(&spin_ns, us < 0 ? -1 : us * 1000); }

// Spins (256 pauses, a few µs, then yielding) while `*word == value` for up to the spin limit;
// returns whether the word changed. The clock is read every 64 checks only.
static int spin_while(_Atomic uint32_t *word, uint32_t value) {
    long limit = spin_limit_ns(), start = 0;
    for (unsigned i = 0;; i++) {
        if (atomic_load_explicit(word, memory_order_acquire) != value) return 1;
        if (i < 256) { CPU_RELAX(); continue; }
        if (limit == 0) return 0;
        if ((i & 63) == 0) {
            long t = now_ns();
            if (start == 0) start = t;
            else if (t - start >= limit) return 0;
        }
        sched_yield();
    }
}

static void *worker_main(void *arg) {
    // The member id (1…) and the region word when the thread was created: a region published
    // before the thread runs is then still seen as new.
    int id = (int)((uintptr_t)arg >> 32);
    uint32_t seen = (uint32_t)(uintptr_t)arg;
    for (;;) {
        if (!spin_while(&region_word, seen)) {
            atomic_fetch_add(&sleeping_workers, 1);
            while (atomic_load(&region_word) == seen) futex(&region_word, FUTEX_WAIT, seen);
            atomic_fetch_sub(&sleeping_workers, 1);
        }
        seen = atomic_load_explicit(&region_word, memory_order_acquire);
        int members = (int)(seen & 0xff) + 1;
        if (id >= members) continue;
        // region_fn/ctx stay as published until every member of this region is done.
        in_region = 1;
        region_fn(region_ctx, id, members);
        in_region = 0;
        if (atomic_fetch_sub(&pending, 1) == 1 && atomic_load(&caller_sleeping))
            futex(&pending, FUTEX_WAKE, 1);
    }
    return NULL;
}

static int default_threads(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void ck_team_set_threads(int threads) {
    atomic_store(&team_threads, threads < 1 ? 1 : threads > MAX_MEMBERS ? MAX_MEMBERS : threads);
}

int ck_team_set_local_threads(int threads) {
    int previous = local_threads;
    local_threads = threads < 1 ? 0 : threads > MAX_MEMBERS ? MAX_MEMBERS : threads;
    return previous;
}

int ck_team_threads(void) {
    if (in_region) return 1;
    if (ck_team_uses_openmp()) return omp_get_max_threads();
    if (local_threads > 0) return local_threads;
    int t = atomic_load(&team_threads);
    if (t == 0) {
        ck_team_set_threads(default_threads());
        t = atomic_load(&team_threads);
    }
    return t;
}

int ck_team_in_region(void) { return in_region; }

// A forked child has none of the parent's pool threads: it starts its own when it needs them.
static void team_forked_child(void) {
    started = 0;
    atomic_store(&sleeping_workers, 0);
    atomic_store(&pending, 0);
    atomic_store(&caller_sleeping, 0);
    pthread_mutex_init(&region_lock, NULL);
}
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void team_register_fork(void) { pthread_atfork(NULL, NULL, team_forked_child); }

// The whole region on the calling thread, as one member.
static void run_alone(ck_team_fn fn, void *ctx) {
    int outer = in_region;
    in_region = 1;
    fn(ctx, 0, 1);
    in_region = outer;
}

void ck_parallel(ck_team_fn fn, void *ctx, int members) {
    pthread_once(&fork_once, team_register_fork);
    int limit = ck_team_threads();
    if (members > limit) members = limit;
    if (members > 1 && ck_team_uses_openmp()) {
        // (OpenMP grants one thread inside another of its regions; `omp_get_num_threads` tells.)
        openmp_region r = {fn, ctx};
        GOMP_parallel(openmp_member, &r, (unsigned)members, 0);
        return;
    }
    if (members <= 1 || in_region || pthread_mutex_trylock(&region_lock) != 0) {
        run_alone(fn, ctx);
        return;
    }
    uint32_t word = atomic_load_explicit(&region_word, memory_order_relaxed);  // changes only under region_lock
    while (started < members - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, worker_main, (void *)(((uintptr_t)(started + 1) << 32) | word));
        pthread_attr_destroy(&attr);
        if (failed) break;
        started++;
    }
    if (members > started + 1) members = started + 1;  // a thread could not be created: fewer members
    if (members <= 1) {
        pthread_mutex_unlock(&region_lock);
        run_alone(fn, ctx);
        return;
    }
    region_fn = fn;
    region_ctx = ctx;
    atomic_store(&pending, members - 1);
    word = (((word >> 8) + 1) << 8) | (uint32_t)(members - 1);
    atomic_store(&region_word, word);  // publishes fn, ctx and pending (sequentially consistent)
    if (atomic_load(&sleeping_workers) > 0) futex(&region_word, FUTEX_WAKE, INT_MAX);
    in_region = 1;
    fn(ctx, 0, members);
    in_region = 0;
    for (;;) {
        uint32_t p = atomic_load(&pending);
        if (p == 0) break;
        if (spin_while(&pending, p)) continue;
        atomic_store(&caller_sleeping, 1);
        while ((p = atomic_load(&pending)) != 0) futex(&pending, FUTEX_WAIT, p);
        atomic_store(&caller_sleeping, 0);
    }
    pthread_mutex_unlock(&region_lock);
}
