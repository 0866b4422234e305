/*
 * loans.c - the sessions lent to libhaext's probe threads right now, and
 * the lock that guards them and the front's own sessions (own.c).
 *
 * A host session is lent only under the handshake of state.h: the loan is
 * published in its bucket's count before borrow reads the threads' records
 * (lend.c), and a host call that starts on it meanwhile waits in
 * front_loans_wait_host until it is given back. Every loan is one short
 * call of libhaext's, made without waiting for the host.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "front.h"

#define MAX_LOANS 256

static pthread_mutex_t lend_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lend_cv; /* CLOCK_MONOTONIC: front_loans_init */
static struct front_loan loans[MAX_LOANS];
static int nloans;
static atomic_ulong st_host_waits;

/* Written under lend_mu, read without a lock by the host's calls. A line
 * of its own, away from anything written often. */
_Alignas(64) atomic_uint front_loans_buckets[FRONT_LENT_BUCKETS];

void front_loans_init(void)
{
    front_cond_init(&lend_cv);
}

void front_loans_lock(void)
{
    pthread_mutex_lock(&lend_mu);
}

void front_loans_unlock(void)
{
    pthread_mutex_unlock(&lend_mu);
}

void front_loans_broadcast(void)
{
    pthread_cond_broadcast(&lend_cv);
}

int front_loans_wait(struct timespec *dl)
{
    if (dl->tv_sec == 0 && dl->tv_nsec == 0) {
        clock_gettime(CLOCK_MONOTONIC, dl);
        dl->tv_sec += FRONT_WAIT_MS / 1000;
        dl->tv_nsec += (FRONT_WAIT_MS % 1000) * 1000000L;
        if (dl->tv_nsec >= 1000000000L) {
            dl->tv_sec++;
            dl->tv_nsec -= 1000000000L;
        }
    }
    return pthread_cond_timedwait(&lend_cv, &lend_mu, dl) != ETIMEDOUT;
}

static struct front_loan *add(CK_SESSION_HANDLE h, struct front_sess *e, struct front_slot *s, unsigned long tag)
{
    int i;
    for (i = 0; i < MAX_LOANS; i++) {
        if (!loans[i].used) {
            loans[i] = (struct front_loan){1, h, e, s, tag};
            nloans++;
            return &loans[i];
        }
    }
    return NULL;
}

struct front_loan *front_loans_add_own(CK_SESSION_HANDLE h, struct front_slot *s, unsigned long tag)
{
    return add(h, NULL, s, tag);
}

struct front_loan *front_loans_add_host(struct front_sess *e)
{
    struct front_loan *l = add(e->h, e, e->slot, 0);
    if (l != NULL) {
        atomic_store(&e->lent, 1);
        atomic_fetch_add_explicit(&front_loans_buckets[front_loans_bucket(e->h)], 1, memory_order_seq_cst);
    }
    return l;
}

void front_loans_end(struct front_loan *l)
{
    l->used = 0;
    nloans--;
    if (l->e == NULL)
        return;
    atomic_store(&l->e->lent, 0);
    atomic_fetch_sub_explicit(&front_loans_buckets[front_loans_bucket(l->h)], 1, memory_order_seq_cst);
    pthread_cond_broadcast(&lend_cv);
}

/* The first loan out that matches: of host session e; else (e NULL) of
 * any session on slot s; else (s NULL too) of session h, a host's only
 * when host_only. */
static struct front_loan *find(struct front_sess *e, struct front_slot *s, CK_SESSION_HANDLE h, int host_only)
{
    int i, seen = 0;
    for (i = 0; i < MAX_LOANS && seen < nloans; i++) {
        struct front_loan *l = &loans[i];
        if (!l->used)
            continue;
        seen++;
        if (e != NULL ? l->e == e : s != NULL ? l->s == s : l->h == h && (!host_only || l->e != NULL))
            return l;
    }
    return NULL;
}

struct front_loan *front_loans_find(CK_SESSION_HANDLE h)
{
    int i;
    for (i = 0; i < MAX_LOANS; i++)
        if (loans[i].used && loans[i].h == h)
            return &loans[i];
    return NULL;
}

void front_loans_wait_returned(struct front_sess *e, struct front_slot *s)
{
    struct timespec dl = {0, 0};
    pthread_mutex_lock(&lend_mu);
    /* For a whole slot (C_CloseAllSessions), also while the front's own
     * session there is being opened or closed: forwarded meanwhile, the
     * host's call would free the handle the front is about to close, and
     * the vendor may give that handle to a new session of the host's
     * before the front's C_CloseSession arrives (SoftHSM2 crashed). */
    while (find(e, s, CK_INVALID_HANDLE, 0) != NULL ||
           (e == NULL && (s->own_state == FRONT_OWN_OPENING || s->own_state == FRONT_OWN_CLOSING))) {
        if (!front_loans_wait(&dl))
            break;
    }
    pthread_mutex_unlock(&lend_mu);
}

/* The host's record names h (or FRONT_BUSY_ALL), so no loan of h can begin
 * any more; wait for the one that may be out. A call made from inside a
 * call (prev set: a vendor callback) waits at most FRONT_WAIT_MS: the
 * vendor may hold, for the outer call, a lock that libhaext's call needs. */
void front_loans_wait_host(CK_SESSION_HANDLE h, CK_SESSION_HANDLE prev)
{
    struct timespec dl = {0, 0};
    int waited = 0;
    pthread_mutex_lock(&lend_mu);
    while (find(NULL, NULL, h, 1) != NULL) {
        waited = 1;
        if (prev == CK_INVALID_HANDLE)
            pthread_cond_wait(&lend_cv, &lend_mu);
        else if (!front_loans_wait(&dl))
            break;
    }
    pthread_mutex_unlock(&lend_mu);
    if (waited)
        atomic_fetch_add(&st_host_waits, 1);
}

void front_loans_stats(struct front_stats *st)
{
    st->host_waits = atomic_load(&st_host_waits);
}

/* The fork child: the lock may be a lost thread's; no loan is out. */
void front_loans_reset(void)
{
    pthread_mutex_init(&lend_mu, NULL);
    front_cond_init(&lend_cv);
    memset(loans, 0, sizeof loans);
    memset(front_loans_buckets, 0, sizeof front_loans_buckets);
    nloans = 0;
}
