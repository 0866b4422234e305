/*
 * hamember.c - the members of the HA slots: which vendor slot each is,
 * its sessions of ours (a pool), and which one gets the next operation.
 * halogin.c logs them in, and brings back one that was lost.
 *
 * Every call here is made on the host's thread, for a call of the host's
 * on an HA slot; the group's lock is never held across a vendor call.
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ha.h"

static struct front_ha_slot *slots; /* nslots of them, made on first use (no BSS for a host without groups) */
static int nslots;
static pthread_once_t once = PTHREAD_ONCE_INIT;
atomic_ulong front_ha_failovers;

static void setup(void)
{
    const struct front_ha_conf *c = front_haconf();
    size_t size = (size_t)c->ngroups * sizeof *slots;
    if (c == NULL || (slots = aligned_alloc(_Alignof(struct front_ha_slot), size)) == NULL)
        return;
    memset(slots, 0, size);
    for (int i = 0; i < c->ngroups; i++) {
        struct front_ha_slot *s = &slots[i];
        s->g = &c->group[i];
        s->index = i;
        s->id = FRONT_HA_SLOT_BASE + (CK_SLOT_ID)c->group[i].nn;
        s->nmembers = c->group[i].nmembers;
        s->op_timeout_ms = c->group[i].op_timeout_ms;
        pthread_mutex_init(&s->mu, NULL);
        for (int m = 0; m < s->nmembers; m++) {
            s->m[m].anchor = CK_INVALID_HANDLE;
            s->m[m].serial = c->group[i].member[m];
            s->m[m].standby = c->group[i].standby[m];
        }
    }
    nslots = c->ngroups;
}

int front_hamember_count(void)
{
    pthread_once(&once, setup);
    return nslots;
}

struct front_ha_slot *front_hamember_at(int i)
{
    return i >= 0 && i < front_hamember_count() ? &slots[i] : NULL;
}

struct front_ha_slot *front_hamember_slot(CK_SLOT_ID id)
{
    int n = front_hamember_count();
    if (id < FRONT_HA_SLOT_BASE || id >= FRONT_HA_SLOT_BASE + FRONT_HA_MAX_GROUPS)
        return NULL;
    for (int i = 0; i < n; i++)
        if (slots[i].id == id)
            return &slots[i];
    return NULL;
}

/* The monotonic clock, coarse, in ms. */
static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    return (long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Records that slot id holds the token of serial ser, if it is a member. */
static void learn(struct front_ha_slot *s, CK_SLOT_ID id, unsigned long long ser, const CK_TOKEN_INFO *ti)
{
    pthread_mutex_lock(&s->mu);
    for (int m = 0; m < s->nmembers; m++) {
        if (s->m[m].serial != ser || s->m[m].resolved)
            continue;
        s->m[m].slot = id;
        s->m[m].ti = *ti;
        s->m[m].resolved = 1;
        atomic_store(&s->m[m].up, 1);
        atomic_fetch_add(&s->m[m].gen, 1);
    }
    pthread_mutex_unlock(&s->mu);
}

static int all_resolved(struct front_ha_slot *s)
{
    int all = 1;
    pthread_mutex_lock(&s->mu);
    for (int m = 0; m < s->nmembers; m++)
        all &= s->m[m].resolved;
    pthread_mutex_unlock(&s->mu);
    return all;
}

atomic_int front_hamember_sockets FRONT_HIDDEN;

/* Whether this process has a socket open: a vendor that reaches its
 * members through one may write to it after the member died, and raise
 * SIGPIPE on the calling thread. */
static int has_socket(void)
{
    char link[64];
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int found = 0;
    if (d == NULL)
        return 1; /* cannot tell: guard */
    while (!found && (e = readdir(d)) != NULL) {
        ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof link - 1);
        found = n > 7 && strncmp(link, "socket:", 7) == 0;
    }
    closedir(d);
    return found;
}

void front_hamember_resolve(struct front_ha_slot *s)
{
    if (!atomic_load_explicit(&front_hamember_sockets, memory_order_relaxed) && has_socket())
        atomic_store(&front_hamember_sockets, 1);
    CK_SLOT_ID ids[FRONT_MAX_SLOTS];
    CK_ULONG n = FRONT_MAX_SLOTS;
    if (all_resolved(s) || front_vendor_copy.C_GetSlotList == NULL)
        return;
    if (front_vendor_copy.C_GetSlotList(CK_FALSE, ids, &n) != CKR_OK)
        return;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        unsigned long long ser;
        if (front_vendor_copy.C_GetTokenInfo(ids[i], &ti) != CKR_OK)
            continue;
        if (front_haconf_serial(ti.serialNumber, sizeof ti.serialNumber, &ser) == 0)
            learn(s, ids[i], ser, &ti);
    }
}

/* The clock for a busy member's check, read once per pick and only when
 * needed (*now: 0 before). */
static long clock_once(long *now)
{
    if (*now == 0)
        *now = now_ms();
    return *now;
}

/* Whether busy member x (calls in flight since since) may get new work:
 * not when none of them was answered for a second or the group's operation
 * timeout. A member not stamped yet is stamped now. */
static __attribute__((noinline)) int busy_usable(struct front_ha_slot *s, struct front_ha_member *x, long since,
                                                  long *now)
{
    long limit = s->op_timeout_ms > 0 ? s->op_timeout_ms : 1000;
    if (since == FRONT_HA_BUSY_UNSTAMPED) {
        atomic_compare_exchange_strong_explicit(&x->busy_since, &since, clock_once(now), memory_order_relaxed,
                                                memory_order_relaxed);
        return 1;
    }
    return clock_once(now) - since < limit;
}

/* Whether member m may get new work: up, logged in when the slot is, and
 * not stuck (busy_usable). */
FRONT_HOT static inline int usable(struct front_ha_slot *s, int m, long *now)
{
    struct front_ha_member *x = &s->m[m];
    long since;
    if (!atomic_load_explicit(&x->up, memory_order_acquire))
        return 0;
    if ((s->logged_in && !x->logged_in) || atomic_load_explicit(&x->stuck, memory_order_relaxed))
        return 0;
    since = atomic_load_explicit(&x->busy_since, memory_order_relaxed);
    return FRONT_LIKELY(since == 0) || busy_usable(s, x, since, now);
}

FRONT_HOT int front_hamember_pick(struct front_ha_slot *s, front_ha_has has, void *arg, unsigned skip)
{
    long now = 0;
    for (int pass = 0; pass < 2; pass++) {
        int best = -1, load = 0;
        for (int m = 0; m < s->nmembers; m++) {
            int l;
            if ((skip >> m & 1U) || s->m[m].standby != pass || !usable(s, m, &now))
                continue;
            l = atomic_load_explicit(&s->m[m].inflight, memory_order_relaxed);
            /* has only for a member that would be the best so far */
            if ((best >= 0 && l >= load) || (has != NULL && !has(s, m, arg)))
                continue;
            best = m;
            load = l;
        }
        if (best >= 0) {
            struct front_ha_member *x = &s->m[best];
            if (atomic_fetch_add(&x->inflight, 1) == 0)
                atomic_store_explicit(&x->busy_since, FRONT_HA_BUSY_UNSTAMPED, memory_order_relaxed);
            return best;
        }
    }
    return -1;
}

FRONT_HOT int front_hamember_take(struct front_ha_slot *s, int m)
{
    struct front_ha_member *x = &s->m[m];
    int idle = 0;
    if (x->standby || !atomic_load_explicit(&x->up, memory_order_acquire) ||
        atomic_load_explicit(&x->stuck, memory_order_relaxed) || (s->logged_in && !x->logged_in) ||
        !atomic_compare_exchange_strong(&x->inflight, &idle, 1))
        return 0;
    atomic_store_explicit(&x->busy_since, FRONT_HA_BUSY_UNSTAMPED, memory_order_relaxed);
    return 1;
}

FRONT_HOT void front_hamember_done(struct front_ha_slot *s, int m)
{
    struct front_ha_member *x = &s->m[m];
    atomic_fetch_add_explicit(&x->ops, 1, memory_order_relaxed);
    /* An answer: the member is not stuck; the calls still out are as old
     * as now, at worst (stamped when next looked at). */
    atomic_store_explicit(&x->busy_since, atomic_fetch_sub(&x->inflight, 1) == 1 ? 0 : FRONT_HA_BUSY_UNSTAMPED,
                          memory_order_relaxed);
}

/* A session of member m from the locked pool, or a new one. */
FRONT_COLD static CK_RV session_slow(struct front_ha_slot *s, int m, CK_SESSION_HANDLE *out)
{
    struct front_ha_member *x = &s->m[m];
    CK_SLOT_ID slot;
    CK_RV rv;
    pthread_mutex_lock(&s->mu);
    if (x->nidle > 0) {
        *out = x->idle[--x->nidle];
        pthread_mutex_unlock(&s->mu);
        return CKR_OK;
    }
    slot = x->slot;
    pthread_mutex_unlock(&s->mu);
    rv = front_vendor_copy.C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, out);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&s->mu);
        x->open++;
        pthread_mutex_unlock(&s->mu);
    }
    return rv;
}

FRONT_HOT CK_RV front_hamember_session(struct front_ha_slot *s, int m, CK_SESSION_HANDLE *out)
{
    struct front_ha_member *x = &s->m[m];
    for (int i = 0; i < FRONT_HA_FAST; i++) {
        CK_SESSION_HANDLE h = atomic_load_explicit(&x->fast[i], memory_order_relaxed);
        if (h != CK_INVALID_HANDLE &&
            atomic_compare_exchange_strong_explicit(&x->fast[i], &h, CK_INVALID_HANDLE, memory_order_acquire,
                                                    memory_order_relaxed)) {
            *out = h;
            return CKR_OK;
        }
    }
    return session_slow(s, m, out);
}

/* Whether an idle session of member x may be kept. */
FRONT_HOT static int keepable(struct front_ha_slot *s, struct front_ha_member *x)
{
    return atomic_load_explicit(&s->sessions, memory_order_relaxed) > 0 && atomic_load_explicit(&x->up, memory_order_relaxed);
}

/* Puts h among x's fast idle sessions: 1, or 0 when there is no room, or
 * when it may not be kept after all (a drain raced it: it is taken back). */
FRONT_HOT static int give_fast(struct front_ha_slot *s, struct front_ha_member *x, CK_SESSION_HANDLE h)
{
    for (int i = 0; i < FRONT_HA_FAST; i++) {
        CK_SESSION_HANDLE empty = CK_INVALID_HANDLE;
        if (!atomic_compare_exchange_strong_explicit(&x->fast[i], &empty, h, memory_order_release,
                                                     memory_order_relaxed))
            continue;
        if (keepable(s, x))
            return 1;
        /* The last HA session closed, or the member was lost, meanwhile:
         * take it back unless a drain already did (then it is the drain's). */
        return !atomic_compare_exchange_strong(&x->fast[i], &h, CK_INVALID_HANDLE);
    }
    return 0;
}

/* Session h of member m back to the locked pool, or closed. */
FRONT_COLD static void release_slow(struct front_ha_slot *s, int m, CK_SESSION_HANDLE h, int failed)
{
    struct front_ha_member *x = &s->m[m];
    pthread_mutex_lock(&s->mu);
    if (!failed && x->nidle < FRONT_HA_POOL && keepable(s, x)) {
        x->idle[x->nidle++] = h;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    if (--x->open <= 0)
        atomic_fetch_add(&x->gen, 1); /* its last session: a module may forget the object handles (SoftHSM2 does) */
    pthread_mutex_unlock(&s->mu);
    /* A session of a lost member may answer nothing useful; the close only
     * frees what the module keeps. A healthy member's is closed when the
     * pool is full or the host closed its last HA session. */
    front_vendor_copy.C_CloseSession(h);
}

FRONT_HOT void front_hamember_release(struct front_ha_slot *s, int m, CK_SESSION_HANDLE h, int failed)
{
    struct front_ha_member *x = &s->m[m];
    if (FRONT_LIKELY(!failed && keepable(s, x) && give_fast(s, x, h)))
        return;
    release_slow(s, m, h, failed);
}

/* Takes member m's idle sessions out of the pool into out; returns how many. */
int front_hamember_drain(struct front_ha_slot *s, int m, CK_SESSION_HANDLE *out)
{
    struct front_ha_member *x = &s->m[m];
    int n;
    pthread_mutex_lock(&s->mu);
    n = x->nidle;
    memcpy(out, x->idle, (size_t)n * sizeof *out);
    x->nidle = 0;
    for (int i = 0; i < FRONT_HA_FAST; i++) {
        CK_SESSION_HANDLE h = atomic_exchange(&x->fast[i], CK_INVALID_HANDLE);
        if (h != CK_INVALID_HANDLE)
            out[n++] = h;
    }
    x->open -= n;
    if (n > 0 && x->open <= 0)
        atomic_fetch_add(&x->gen, 1);
    pthread_mutex_unlock(&s->mu);
    return n;
}
