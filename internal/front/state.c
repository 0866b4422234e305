/*
 * state.c - what the front knows about the host, and what it lends the
 * engine (struct haext_host, internal/hostapi/hostapi.h).
 *
 * The gate. enter() succeeds while the module is initialized by the host
 * and no C_Finalize has begun; the host's C_Finalize closes it, waits for
 * the calls inside it (at most HAEXT_FRONT_WAIT_MS), then forwards. The
 * host's C_Initialize opens it after the vendor's CKR_OK or
 * CKR_CRYPTOKI_ALREADY_INITIALIZED.
 *
 * The host's sessions: handle -> slot and lent flag, under tab_mu; which
 * session each host thread is in a call on (state.h).
 * borrow() lends an idle session of the host's on the slot, else the
 * front's own read-only session there, opened on demand. A host session is
 * lent only under the handshake of state.h: borrow publishes the loan,
 * then reads the threads' records and takes the loan back if one names
 * the session; a host call that starts on it while it is lent waits in
 * haext_busy_wait until it is given back. So no host call on a session
 * overlaps libhaext's, and libhaext never waits for the host. The front closes
 * its own session on a slot before it forwards C_Login(CKU_SO) (or 3.0's
 * C_LoginUser) or C_InitToken there, and right after the host's last session there is
 * closed, so that login state is what it would be without the front; the
 * next borrow opens it again. A host call that would close a session lent
 * at that moment waits for it to be given back (bounded), so the vendor
 * never sees a session closed under a call.
 *
 * Events: initialized, finalized, host errors (connection-class CK_RVs, or
 * a session the table knew that the module dropped), read by the engine
 * with haext_front_wait and haext_front_poll.
 *
 * Locks: tab_mu (the table), lend_mu (own sessions and loans), gate_mu,
 * ev_mu, and reg_mu (the host's threads). None is held across a vendor
 * call; the only nesting is tab_mu -> lend_mu and tab_mu -> reg_mu. In a
 * fork child everything is reset: the child's host must call C_Initialize,
 * whose result is the vendor's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "state.h"

#define MAX_SLOTS 256
#define MAX_LOANS 256
#define EV_CAP 128
#define CHUNK 64

enum { OWN_NONE, OWN_OPENING, OWN_OPEN, OWN_CLOSING };

struct haext_slot {
    CK_SLOT_ID id;
    int used;
    /* tab_mu */
    long host_count;
    struct haext_sess *list;
    /* lend_mu */
    int own_state;
    CK_SESSION_HANDLE own;
    unsigned long own_tag; /* changes whenever the own session is forgotten */
    int own_lent;
    int close_pending; /* close the own session as soon as nobody uses it */
    int so_pending;    /* an SO login or C_InitToken is on its way: open none */
};

struct loan {
    int used;
    CK_SESSION_HANDLE h;
    struct haext_sess *e; /* a host session, or NULL: the slot's own */
    struct haext_slot *s;
    unsigned long tag;
};

#define BUCKETS 4096 /* power of two */

/* One session of the host's: the key h, the slot and the list links change
 * only under tab_mu; lent and closing are atomics (lend_mu's side reads
 * them too). */
struct haext_sess {
    CK_SESSION_HANDLE h;
    struct haext_sess *next; /* bucket chain */
    atomic_int lent;         /* lent to libhaext right now */
    atomic_int closing;      /* the host is closing it: lend no more */
    struct haext_slot *slot;
    struct haext_sess *snext, *sprev; /* the slot's list */
    struct haext_sess *fnext;         /* free or zombie list */
    int linked;                       /* in the table */
};

static unsigned bucket_of(CK_SESSION_HANDLE h)
{
    unsigned long long x = (unsigned long long)h * 0x9E3779B97F4A7C15ULL;
    return (unsigned)(x >> 52); /* 64 - log2(BUCKETS) */
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static pthread_mutex_t tab_mu = PTHREAD_MUTEX_INITIALIZER;
static struct haext_slot slots[MAX_SLOTS];
static struct haext_sess *buckets[BUCKETS];
static struct haext_sess *free_list, *zombies;
static long host_sessions;

static pthread_mutex_t lend_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lend_cv;
static struct loan loans[MAX_LOANS];
static int nloans;
static unsigned long tag_seq, epoch;

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv;
static int gate_open, gate_inside;

static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cv;
static struct haext_front_event evq[EV_CAP];
static int ev_head, ev_len, ev_overflow;

static atomic_ulong st_own_opened, st_own_closed, st_loans_host, st_loans_own, st_backoffs, st_host_waits;

/* The loans of host sessions per bucket (state.h): written under lend_mu,
 * read without a lock by the host's calls. A line of its own, away from
 * anything written often. */
_Alignas(64) atomic_uint haext_lent[HAEXT_LENT_BUCKETS];

__thread struct haext_tls haext_self __attribute__((tls_model("initial-exec")));

/* The registry: where each registered thread's haext_self is. */
struct reg_node {
    struct haext_tls *tls; /* NULL: free for the next thread */
    struct reg_node *next;
};
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct reg_node *registry;
static pthread_key_t reg_key;
/* A thread could not be registered (out of memory): borrow cannot see
 * what it is in, so every host session counts as busy from then on. Set
 * under reg_mu, before that thread's first call. */
static atomic_int reg_failed;

/* --- time, locks, signals ------------------------------------------------ */

static void init_cond(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static void deadline_in(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Waits on cv until woken or the deadline passed: 0 when it passed. */
static int wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, const struct timespec *ts)
{
    return pthread_cond_timedwait(cv, mu, ts) != ETIMEDOUT;
}

static void atfork_child(void);
static void thread_exit(void *t);

static void init(void)
{
    init_cond(&lend_cv);
    init_cond(&gate_cv);
    init_cond(&ev_cv);
    pthread_key_create(&reg_key, thread_exit);
    pthread_atfork(NULL, NULL, atfork_child);
}

/* --- the host's threads ------------------------------------------------------ */

void haext_thread_register(void)
{
    struct reg_node *n;
    haext_state_init();
    pthread_mutex_lock(&reg_mu);
    for (n = registry; n != NULL && n->tls != NULL; n = n->next) {
    }
    if (n == NULL && (n = calloc(1, sizeof *n)) != NULL) {
        n->next = registry;
        registry = n;
    }
    if (n != NULL) {
        n->tls = &haext_self;
        pthread_setspecific(reg_key, n);
    } else {
        atomic_store(&reg_failed, 1);
    }
    pthread_mutex_unlock(&reg_mu);
    haext_self.registered = 1; /* unregistered when out of memory: see reg_failed */
}

/* A registered thread ends: its node is free for the next one. */
static void thread_exit(void *p)
{
    struct reg_node *n = p;
    pthread_mutex_lock(&reg_mu);
    n->tls = NULL;
    pthread_mutex_unlock(&reg_mu);
}

/* Whether a host thread is in a call on session h right now (or in a call
 * made from inside a call: on any; or may be, unseen: a thread that could
 * not be registered). The loads are the borrow half of the handshake
 * (state.h): sequentially consistent. */
static int sess_busy(CK_SESSION_HANDLE h)
{
    struct reg_node *n;
    int busy;
    pthread_mutex_lock(&reg_mu);
    busy = atomic_load(&reg_failed);
    for (n = registry; n != NULL && !busy; n = n->next) {
        CK_SESSION_HANDLE c;
        if (n->tls == NULL)
            continue;
        c = atomic_load_explicit(&n->tls->cur, memory_order_seq_cst);
        busy = c == h || c == HAEXT_BUSY_ALL;
    }
    pthread_mutex_unlock(&reg_mu);
    return busy;
}

void haext_state_init(void)
{
    pthread_once(&init_once, init);
}

/* The front's own vendor calls run on the host's or the engine's threads:
 * a write to a dead member's socket must not raise SIGPIPE on them. Block
 * it around the call and take a SIGPIPE the call raised. */
struct pipe_guard {
    sigset_t old;
    int was_pending;
};

static void guard_begin(struct pipe_guard *g)
{
    sigset_t pipe, pend;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &g->old);
    sigpending(&pend);
    g->was_pending = sigismember(&pend, SIGPIPE);
}

static void guard_end(struct pipe_guard *g)
{
    sigset_t pipe, pend;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigpending(&pend);
    if (!g->was_pending && sigismember(&pend, SIGPIPE)) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe, NULL, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static CK_RV own_open(CK_SLOT_ID slot, CK_SESSION_HANDLE *h)
{
    struct pipe_guard g;
    CK_RV rv;
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    guard_begin(&g);
    rv = v->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, h);
    guard_end(&g);
    if (rv == CKR_OK)
        atomic_fetch_add(&st_own_opened, 1);
    return rv;
}

static void own_close(CK_SESSION_HANDLE h)
{
    struct pipe_guard g;
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    guard_begin(&g);
    v->C_CloseSession(h);
    guard_end(&g);
    atomic_fetch_add(&st_own_closed, 1);
}

/* --- events ---------------------------------------------------------------- */

static void push_event(int kind, CK_SLOT_ID slot, CK_RV rv)
{
    int i;
    haext_state_init();
    pthread_mutex_lock(&ev_mu);
    if (kind == HAEXT_EV_HOST_ERROR) {
        for (i = 0; i < ev_len; i++) {
            struct haext_front_event *q = &evq[(ev_head + i) % EV_CAP];
            if (q->kind == HAEXT_EV_HOST_ERROR && q->slot == slot) {
                q->rv = rv; /* unread: the newest wins */
                pthread_mutex_unlock(&ev_mu);
                return;
            }
        }
    }
    if (ev_len == EV_CAP) {
        ev_overflow = 1;
        ev_len = 0;
    }
    evq[(ev_head + ev_len) % EV_CAP] = (struct haext_front_event){kind, slot, rv};
    ev_len++;
    pthread_cond_signal(&ev_cv);
    pthread_mutex_unlock(&ev_mu);
}

static int take_event(struct haext_front_event *ev)
{
    if (ev_overflow) {
        ev_overflow = 0;
        *ev = (struct haext_front_event){HAEXT_EV_OVERFLOW, HAEXT_SLOT_NONE, CKR_OK};
        return 1;
    }
    if (ev_len == 0)
        return 0;
    *ev = evq[ev_head];
    ev_head = (ev_head + 1) % EV_CAP;
    ev_len--;
    return 1;
}

int haext_front_wait(void)
{
    int n;
    haext_state_init();
    pthread_mutex_lock(&ev_mu);
    while (ev_len == 0 && !ev_overflow)
        pthread_cond_wait(&ev_cv, &ev_mu);
    n = ev_len + ev_overflow;
    pthread_mutex_unlock(&ev_mu);
    return n;
}

int haext_front_poll(struct haext_front_event *ev)
{
    int got;
    haext_state_init();
    pthread_mutex_lock(&ev_mu);
    got = take_event(ev);
    pthread_mutex_unlock(&ev_mu);
    return got;
}

/* --- the table (tab_mu held) ----------------------------------------------- */

static struct haext_slot *slot_get(CK_SLOT_ID id, int create)
{
    int i, free_i = -1;
    for (i = 0; i < MAX_SLOTS; i++) {
        if (slots[i].used && slots[i].id == id)
            return &slots[i];
        if (!slots[i].used && free_i < 0)
            free_i = i;
    }
    if (!create || free_i < 0)
        return NULL;
    memset(&slots[free_i], 0, sizeof slots[free_i]);
    slots[free_i].id = id;
    slots[free_i].used = 1;
    return &slots[free_i];
}

/* The entry of h in the table (tab_mu held), or NULL. */
static struct haext_sess *sess_linked(CK_SESSION_HANDLE h)
{
    struct haext_sess *e = buckets[bucket_of(h)];
    while (e != NULL && e->h != h)
        e = e->next;
    return e;
}

static struct haext_sess *sess_alloc(void)
{
    struct haext_sess *e, **pp;
    int i;
    if (free_list == NULL) {
        /* Reuse a closed session that is no longer lent. */
        for (pp = &zombies; *pp != NULL; pp = &(*pp)->fnext) {
            e = *pp;
            if (!atomic_load(&e->lent)) {
                *pp = e->fnext;
                return e;
            }
        }
        e = calloc(CHUNK, sizeof *e);
        if (e == NULL)
            return NULL;
        for (i = 1; i < CHUNK; i++) {
            e[i].fnext = free_list;
            free_list = &e[i];
        }
        return &e[0];
    }
    e = free_list;
    free_list = e->fnext;
    return e;
}

static void sess_link(struct haext_sess *e, CK_SESSION_HANDLE h, struct haext_slot *s)
{
    struct haext_sess **head = &buckets[bucket_of(h)];
    e->h = h;
    atomic_store(&e->lent, 0);
    atomic_store(&e->closing, 0);
    e->slot = s;
    e->linked = 1;
    e->fnext = NULL;
    e->sprev = NULL;
    e->snext = s->list;
    if (s->list != NULL)
        s->list->sprev = e;
    s->list = e;
    s->host_count++;
    host_sessions++;
    e->next = *head;
    *head = e;
}

/* Takes e out of the table. An entry still lent is kept apart until it is
 * given back (give_back writes to it). */
static void sess_unlink(struct haext_sess *e)
{
    struct haext_sess **pp = &buckets[bucket_of(e->h)];
    while (*pp != NULL && *pp != e)
        pp = &(*pp)->next;
    if (*pp != NULL)
        *pp = e->next;
    e->next = NULL;
    if (e->sprev != NULL)
        e->sprev->snext = e->snext;
    else
        e->slot->list = e->snext;
    if (e->snext != NULL)
        e->snext->sprev = e->sprev;
    e->slot->host_count--;
    host_sessions--;
    e->linked = 0;
    if (!atomic_load(&e->lent)) {
        e->fnext = free_list;
        free_list = e;
    } else {
        e->fnext = zombies;
        zombies = e;
    }
}

/* Forgets every session of the host's (C_Finalize, fork child). */
static void forget_all_locked(void)
{
    int i;
    for (i = 0; i < MAX_SLOTS; i++) {
        while (slots[i].used && slots[i].list != NULL)
            sess_unlink(slots[i].list);
        slots[i].host_count = 0;
    }
}

/* --- own sessions and loans (lend_mu held) --------------------------------- */

static struct loan *loan_add(CK_SESSION_HANDLE h, struct haext_sess *e, struct haext_slot *s, unsigned long tag)
{
    int i;
    for (i = 0; i < MAX_LOANS; i++) {
        if (!loans[i].used) {
            loans[i] = (struct loan){1, h, e, s, tag};
            nloans++;
            return &loans[i];
        }
    }
    return NULL;
}

/* Whether a loan of session e (or, e NULL, any on slot s) is out. */
static int lent_out(struct haext_sess *e, struct haext_slot *s)
{
    int i, seen = 0;
    for (i = 0; i < MAX_LOANS && seen < nloans; i++) {
        if (!loans[i].used)
            continue;
        seen++;
        if (e != NULL ? loans[i].e == e : loans[i].s == s)
            return 1;
    }
    return 0;
}

/* Whether host session h is lent right now. */
static int host_lent(CK_SESSION_HANDLE h)
{
    int i, seen = 0;
    for (i = 0; i < MAX_LOANS && seen < nloans; i++) {
        if (!loans[i].used)
            continue;
        seen++;
        if (loans[i].e != NULL && loans[i].h == h)
            return 1;
    }
    return 0;
}

/* Lends host session e: the loan is published (the bucket's count, seq_cst)
 * before borrow reads the threads' records. */
static struct loan *host_loan(struct haext_sess *e, struct haext_slot *s)
{
    struct loan *l = loan_add(e->h, e, s, 0);
    if (l != NULL) {
        atomic_store(&e->lent, 1);
        atomic_fetch_add_explicit(&haext_lent[haext_lent_bucket(e->h)], 1, memory_order_seq_cst);
    }
    return l;
}

/* Ends loan l of a host session, and wakes the host calls waiting for it. */
static void host_unloan(struct loan *l)
{
    l->used = 0;
    nloans--;
    atomic_store(&l->e->lent, 0);
    atomic_fetch_sub_explicit(&haext_lent[haext_lent_bucket(l->h)], 1, memory_order_seq_cst);
    pthread_cond_broadcast(&lend_cv);
}

static void forget_own(struct haext_slot *s)
{
    s->own_state = OWN_NONE;
    s->own = CK_INVALID_HANDLE;
    s->own_tag = ++tag_seq;
    s->own_lent = 0;
    s->close_pending = 0;
}

/* Closes slot s's own session now if nobody uses it, else as soon as the
 * last user gives it back. so: an SO login or C_InitToken follows, so open
 * none until so_done. Waits at most HAEXT_FRONT_WAIT_MS. */
static void close_own(struct haext_slot *s, int so)
{
    struct timespec dl;
    deadline_in(&dl, HAEXT_FRONT_WAIT_MS);
    pthread_mutex_lock(&lend_mu);
    if (so)
        s->so_pending++;
    while (s->own_state == OWN_OPENING || s->own_state == OWN_CLOSING ||
           (s->own_state == OWN_OPEN && s->own_lent > 0)) {
        if (!wait_until(&lend_cv, &lend_mu, &dl))
            break;
    }
    if (s->own_state == OWN_OPEN && s->own_lent == 0) {
        CK_SESSION_HANDLE h = s->own;
        s->own_state = OWN_CLOSING;
        pthread_mutex_unlock(&lend_mu);
        own_close(h);
        pthread_mutex_lock(&lend_mu);
        forget_own(s);
        pthread_cond_broadcast(&lend_cv);
    } else if (s->own_state == OWN_OPEN || s->own_state == OWN_OPENING) {
        s->close_pending = 1; /* still in use after the wait: the last user closes it */
    }
    pthread_mutex_unlock(&lend_mu);
}

static void so_done(struct haext_slot *s)
{
    pthread_mutex_lock(&lend_mu);
    s->so_pending--;
    pthread_cond_broadcast(&lend_cv);
    pthread_mutex_unlock(&lend_mu);
}

/* Waits (bounded) until no loan of e, or of any session on s, is out. */
static void wait_returned(struct haext_sess *e, struct haext_slot *s)
{
    struct timespec dl;
    deadline_in(&dl, HAEXT_FRONT_WAIT_MS);
    pthread_mutex_lock(&lend_mu);
    /* For a whole slot (C_CloseAllSessions), also while the front's own
     * session there is being opened or closed: forwarded meanwhile, the
     * host's call would free the handle the front is about to close, and
     * the vendor may give that handle to a new session of the host's
     * before the front's C_CloseSession arrives (SoftHSM2 crashed). */
    while (lent_out(e, s) || (e == NULL && (s->own_state == OWN_OPENING || s->own_state == OWN_CLOSING))) {
        if (!wait_until(&lend_cv, &lend_mu, &dl))
            break;
    }
    pthread_mutex_unlock(&lend_mu);
}

/* A host call on h found a loan in h's bucket (haext_busy_begin). Its
 * record names h (or HAEXT_BUSY_ALL), so no loan of h can begin any more;
 * wait for the one that may be out. Every loan is one short call of
 * libhaext's, made without waiting for the host, so the wait ends with
 * it. A call made from inside a call (prev set: a vendor callback) waits
 * at most HAEXT_FRONT_WAIT_MS: the vendor may hold, for the outer call, a
 * lock that libhaext's call needs. */
void haext_busy_wait(CK_SESSION_HANDLE h, CK_SESSION_HANDLE prev)
{
    struct timespec dl = {0, 0};
    int waited = 0;
    haext_state_init();
    if (prev != CK_INVALID_HANDLE)
        deadline_in(&dl, HAEXT_FRONT_WAIT_MS);
    pthread_mutex_lock(&lend_mu);
    while (host_lent(h)) {
        waited = 1;
        if (prev == CK_INVALID_HANDLE)
            pthread_cond_wait(&lend_cv, &lend_mu);
        else if (!wait_until(&lend_cv, &lend_mu, &dl))
            break;
    }
    pthread_mutex_unlock(&lend_mu);
    if (waited)
        atomic_fetch_add(&st_host_waits, 1);
}

/* --- the host's slot list ------------------------------------------------------ */

/* The host's last complete C_GetSlotList answer since its C_Initialize
 * (slots_known), lent to the engine (host_slots) so that it lists no slots
 * of its own: p11-kit's proxy makes C_GetSlotList a call to every member,
 * every other call of the process waiting behind it. */
#define MAX_HOST_SLOTS 256
static pthread_mutex_t slots_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_SLOT_ID host_slot_ids[MAX_HOST_SLOTS];
static CK_ULONG host_slot_n;
static int slots_known;

static void forget_host_slots(void)
{
    pthread_mutex_lock(&slots_mu);
    slots_known = 0;
    pthread_mutex_unlock(&slots_mu);
}

CK_RV haext_host_slot_list(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    rv = v->C_GetSlotList(present, list, count);
    if (rv == CKR_OK && list != NULL && *count <= MAX_HOST_SLOTS) {
        /* With tokenPresent the list leaves out empty slots, which hold no
         * member either. */
        pthread_mutex_lock(&slots_mu);
        memcpy(host_slot_ids, list, *count * sizeof *list);
        host_slot_n = *count;
        slots_known = 1;
        pthread_mutex_unlock(&slots_mu);
    } else if (haext_rv_connection(rv)) {
        haext_slot_failed(HAEXT_SLOT_NONE, rv);
    }
    return rv;
}

static CK_RV host_slots(CK_SLOT_ID *list, CK_ULONG *count)
{
    CK_RV rv = CKR_OK;
    pthread_mutex_lock(&slots_mu);
    if (!slots_known) {
        rv = CKR_FUNCTION_FAILED;
    } else if (list != NULL && *count < host_slot_n) {
        rv = CKR_BUFFER_TOO_SMALL;
    } else if (list != NULL) {
        memcpy(list, host_slot_ids, host_slot_n * sizeof *list);
    }
    if (rv != CKR_FUNCTION_FAILED)
        *count = host_slot_n;
    pthread_mutex_unlock(&slots_mu);
    return rv;
}

/* --- the hooks ------------------------------------------------------------- */

static int gate_enter(void)
{
    int ok;
    pthread_mutex_lock(&gate_mu);
    ok = gate_open;
    if (ok)
        gate_inside++;
    pthread_mutex_unlock(&gate_mu);
    return ok;
}

static void gate_leave(void)
{
    pthread_mutex_lock(&gate_mu);
    if (gate_inside > 0)
        gate_inside--;
    if (gate_inside == 0)
        pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

static CK_RV borrow(CK_SLOT_ID slot, CK_SESSION_HANDLE *out)
{
    struct haext_slot *s;
    struct haext_sess *e, *chosen = NULL;
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    unsigned long ep;
    int full = 0;
    CK_RV rv;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    if (atomic_load_explicit(&haext_vendor, memory_order_acquire) == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;

    /* An idle session of the host's. The loan is recorded under both
     * locks, so a host C_CloseSession that marks the session closing
     * (tab_mu) either comes first and the session is skipped, or finds the
     * loan and waits for it. */
    pthread_mutex_lock(&tab_mu);
    s = slot_get(slot, 1);
    if (s == NULL) {
        pthread_mutex_unlock(&tab_mu);
        return CKR_HOST_MEMORY;
    }
    for (e = s->list; e != NULL; e = e->snext) {
        struct loan *l;
        /* Busy now: not worth a loan that would be taken back. */
        if (atomic_load(&e->lent) || atomic_load(&e->closing) || sess_busy(e->h))
            continue;
        pthread_mutex_lock(&lend_mu);
        l = host_loan(e, s);
        pthread_mutex_unlock(&lend_mu);
        if (l == NULL) {
            full = 1; /* MAX_LOANS loans out */
            break;
        }
        /* The handshake: the loan is out, and a host call that starts on
         * e from now on waits for it. One that started before is in its
         * thread's record: take the loan back, try the next session. */
        if (!sess_busy(e->h)) {
            chosen = e;
            h = e->h;
            break;
        }
        pthread_mutex_lock(&lend_mu);
        host_unloan(l);
        pthread_mutex_unlock(&lend_mu);
        atomic_fetch_add(&st_backoffs, 1);
    }
    pthread_mutex_unlock(&tab_mu);
    if (chosen != NULL) {
        atomic_fetch_add(&st_loans_host, 1);
        *out = h;
        return CKR_OK;
    }
    if (full)
        return CKR_HOST_MEMORY;

    pthread_mutex_lock(&lend_mu);
    /* The front's own read-only session on the slot. */
    if (s->own_state == OWN_OPEN && !s->close_pending && s->so_pending == 0) {
        if (loan_add(s->own, NULL, s, s->own_tag) == NULL) {
            pthread_mutex_unlock(&lend_mu);
            return CKR_HOST_MEMORY;
        }
        s->own_lent++;
        *out = s->own;
        pthread_mutex_unlock(&lend_mu);
        atomic_fetch_add(&st_loans_own, 1);
        return CKR_OK;
    }
    if (s->own_state != OWN_NONE || s->so_pending > 0) {
        /* Being opened or closed by another thread, or an SO login is on
         * its way: no session to lend right now. */
        pthread_mutex_unlock(&lend_mu);
        return CKR_FUNCTION_REJECTED;
    }
    s->own_state = OWN_OPENING;
    ep = epoch;
    pthread_mutex_unlock(&lend_mu);

    rv = own_open(slot, &h);

    pthread_mutex_lock(&lend_mu);
    if (rv != CKR_OK) {
        if (epoch == ep)
            s->own_state = OWN_NONE;
        pthread_cond_broadcast(&lend_cv);
        pthread_mutex_unlock(&lend_mu);
        return rv;
    }
    if (epoch != ep || s->close_pending || s->so_pending > 0) {
        /* Finalized meanwhile, or the host wants it closed: do not keep it. */
        int mine = epoch == ep;
        if (mine)
            s->own_state = OWN_CLOSING;
        pthread_mutex_unlock(&lend_mu);
        own_close(h);
        pthread_mutex_lock(&lend_mu);
        if (mine)
            forget_own(s);
        pthread_cond_broadcast(&lend_cv);
        pthread_mutex_unlock(&lend_mu);
        return CKR_FUNCTION_REJECTED;
    }
    s->own = h;
    s->own_state = OWN_OPEN;
    s->own_tag = ++tag_seq;
    s->own_lent = 0;
    if (loan_add(h, NULL, s, s->own_tag) == NULL) {
        pthread_cond_broadcast(&lend_cv);
        pthread_mutex_unlock(&lend_mu);
        return CKR_HOST_MEMORY;
    }
    s->own_lent = 1;
    pthread_cond_broadcast(&lend_cv);
    pthread_mutex_unlock(&lend_mu);
    atomic_fetch_add(&st_loans_own, 1);
    *out = h;
    return CKR_OK;
}

static void host_gone(struct haext_sess *e, CK_SESSION_HANDLE h, int record, CK_RV rv);

static void give_back(CK_SESSION_HANDLE h, CK_RV rv)
{
    struct loan l;
    int i;
    pthread_mutex_lock(&lend_mu);
    for (i = 0; i < MAX_LOANS; i++)
        if (loans[i].used && loans[i].h == h)
            break;
    if (i == MAX_LOANS) {
        pthread_mutex_unlock(&lend_mu);
        return;
    }
    l = loans[i];
    if (l.e != NULL) {
        host_unloan(&loans[i]);
        pthread_mutex_unlock(&lend_mu);
        if (haext_rv_dropped(rv))
            host_gone(l.e, h, 0, rv); /* the module dropped the host's session: forget it */
        return;
    }
    loans[i].used = 0;
    nloans--;
    if (l.tag == l.s->own_tag && l.s->own_state == OWN_OPEN) {
        l.s->own_lent--;
        if (haext_rv_dropped(rv)) {
            forget_own(l.s); /* the module dropped it: open a new one next time */
        } else if (l.s->own_lent == 0 && l.s->close_pending) {
            CK_SESSION_HANDLE own = l.s->own;
            l.s->own_state = OWN_CLOSING;
            pthread_mutex_unlock(&lend_mu);
            own_close(own);
            pthread_mutex_lock(&lend_mu);
            forget_own(l.s);
        }
    }
    pthread_cond_broadcast(&lend_cv);
    pthread_mutex_unlock(&lend_mu);
}

void haext_state_hooks(struct haext_host *h)
{
    h->enter = gate_enter;
    h->leave = gate_leave;
    h->borrow = borrow;
    h->give_back = give_back;
    h->host_slots = host_slots;
}

/* --- the host's calls ------------------------------------------------------ */

/* Host session e (handle h) is gone: take it out of the table, record it
 * (record: as a host error with rv) and, when it was the host's last
 * session on its slot, close the front's own session there. */
static void host_gone(struct haext_sess *e, CK_SESSION_HANDLE h, int record, CK_RV rv)
{
    struct haext_slot *s = NULL;
    int last = 0;
    pthread_mutex_lock(&tab_mu);
    if (e->linked && e->h == h) {
        s = e->slot;
        sess_unlink(e);
        last = s->host_count == 0;
    }
    pthread_mutex_unlock(&tab_mu);
    if (s == NULL)
        return;
    if (record)
        push_event(HAEXT_EV_HOST_ERROR, s->id, rv);
    if (last)
        close_own(s, 0);
}

void haext_sess_failed(CK_SESSION_HANDLE h, CK_RV rv)
{
    struct haext_sess *e;
    if (haext_rv_connection(rv)) {
        CK_SLOT_ID slot = HAEXT_SLOT_NONE;
        pthread_mutex_lock(&tab_mu);
        if ((e = sess_linked(h)) != NULL)
            slot = e->slot->id;
        pthread_mutex_unlock(&tab_mu);
        push_event(HAEXT_EV_HOST_ERROR, slot, rv);
    } else if (haext_rv_dropped(rv)) {
        pthread_mutex_lock(&tab_mu);
        e = sess_linked(h);
        pthread_mutex_unlock(&tab_mu);
        if (e != NULL && !atomic_load(&e->closing))
            host_gone(e, h, 1, rv);
    }
}

void haext_slot_failed(CK_SLOT_ID slot, CK_RV rv)
{
    push_event(HAEXT_EV_HOST_ERROR, slot, rv);
}

/* The arguments the vendor gets: the host's, with CKF_OS_LOCKING_OK added
 * when the host asked for no locking at all (NULL, or no mutex callbacks
 * and no flag). A host that initializes with NULL promises not to call
 * from two threads at once, and a vendor may then skip its own locks
 * (SoftHSM2 does); but libhaext's prober threads call too. More locking
 * changes nothing the host sees. */
static CK_VOID_PTR locking_args(CK_VOID_PTR args, CK_C_INITIALIZE_ARGS *local)
{
    CK_C_INITIALIZE_ARGS *in = args;
    if (in != NULL && (in->CreateMutex != NULL || in->DestroyMutex != NULL || in->LockMutex != NULL ||
                       in->UnlockMutex != NULL || (in->flags & CKF_OS_LOCKING_OK)))
        return args;
    if (in != NULL)
        *local = *in;
    else
        memset(local, 0, sizeof *local);
    local->flags |= CKF_OS_LOCKING_OK;
    return local;
}

/* CKF_LIBRARY_CANT_CREATE_OS_THREADS. A host that passes it to C_Initialize
 * says that the library may not create threads from its calls. The front
 * itself creates none: it forwards the flag, and the host's calls run as
 * they would without it. But libhaext's status engine needs threads of its
 * own (one per member, the Go runtime's), so while the host's C_Initialize
 * carried the flag the front refuses status calls (ca.c:
 * CKR_FUNCTION_FAILED, with the reason) and does not even load the engine:
 * no thread of libhaext's exists then unless an earlier status call started
 * the engine. The alternative, CKR_NEED_TO_CREATE_THREADS from
 * C_Initialize, would break a host that works with the vendor alone. */
static atomic_int no_threads;

int haext_front_threads_forbidden(void)
{
    return atomic_load(&no_threads);
}

/* Set while this thread is inside the vendor's C_Initialize: a vendor that
 * initializes the front in turn (p11-kit-proxy with the front among its
 * modules) gets CKR_GENERAL_ERROR instead of a loop. */
static __thread int initializing __attribute__((tls_model("initial-exec")));

CK_RV haext_host_initialize(CK_VOID_PTR args)
{
    CK_FUNCTION_LIST_PTR v;
    CK_C_INITIALIZE_ARGS local;
    CK_VOID_PTR a;
    CK_RV rv;
    int was;
    if (initializing || haext_front_load() != 0)
        return CKR_GENERAL_ERROR;
    v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    a = locking_args(args, &local);
    initializing = 1;
    rv = v->C_Initialize(a);
    if (rv == CKR_CANT_LOCK && a != args)
        rv = v->C_Initialize(args); /* the vendor cannot lock: the host's own arguments */
    initializing = 0;
    if (rv == CKR_OK)
        forget_host_slots(); /* a new instance: its slots may differ */
    if (rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        int forbid = args != NULL && (((CK_C_INITIALIZE_ARGS *)args)->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS);
        if (rv == CKR_OK)
            atomic_store(&no_threads, forbid);
        else if (forbid)
            atomic_store(&no_threads, 1); /* the stricter word holds */
        pthread_mutex_lock(&gate_mu);
        was = gate_open;
        gate_open = 1;
        pthread_mutex_unlock(&gate_mu);
        if (!was)
            push_event(HAEXT_EV_INITIALIZED, HAEXT_SLOT_NONE, rv);
    } else if (haext_rv_connection(rv)) {
        push_event(HAEXT_EV_HOST_ERROR, HAEXT_SLOT_NONE, rv);
    }
    return rv;
}

CK_RV haext_host_finalize(CK_VOID_PTR reserved)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    struct timespec dl;
    CK_RV rv;
    int was, i;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    /* Close the gate and let libhaext's calls inside it finish. */
    deadline_in(&dl, HAEXT_FRONT_WAIT_MS);
    pthread_mutex_lock(&gate_mu);
    was = gate_open;
    gate_open = 0;
    while (gate_inside > 0)
        if (!wait_until(&gate_cv, &gate_mu, &dl))
            break;
    pthread_mutex_unlock(&gate_mu);

    rv = v->C_Finalize(reserved);

    if (rv != CKR_OK && rv != CKR_CRYPTOKI_NOT_INITIALIZED) {
        pthread_mutex_lock(&gate_mu); /* still initialized */
        gate_open = was;
        pthread_mutex_unlock(&gate_mu);
        return rv;
    }
    forget_host_slots();
    /* Every session is gone with the module's state. */
    pthread_mutex_lock(&tab_mu);
    forget_all_locked();
    pthread_mutex_unlock(&tab_mu);
    pthread_mutex_lock(&lend_mu);
    epoch++;
    for (i = 0; i < MAX_SLOTS; i++)
        if (slots[i].used)
            forget_own(&slots[i]);
    pthread_cond_broadcast(&lend_cv);
    pthread_mutex_unlock(&lend_mu);
    if (rv == CKR_OK)
        push_event(HAEXT_EV_FINALIZED, HAEXT_SLOT_NONE, rv);
    return rv;
}

CK_RV haext_host_open(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR ph)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    rv = v->C_OpenSession(slot, flags, app, notify, ph);
    if (rv == CKR_OK && ph != NULL) {
        struct haext_slot *s;
        struct haext_sess *e;
        pthread_mutex_lock(&tab_mu);
        s = slot_get(slot, 1);
        if (s != NULL) {
            if ((e = sess_linked(*ph)) != NULL)
                sess_unlink(e); /* a handle the module reused: the old session is gone */
            if ((e = sess_alloc()) != NULL)
                sess_link(e, *ph, s);
        }
        pthread_mutex_unlock(&tab_mu);
    } else if (haext_rv_connection(rv)) {
        push_event(HAEXT_EV_HOST_ERROR, slot, rv);
    }
    return rv;
}

CK_RV haext_host_close(CK_SESSION_HANDLE h)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    struct haext_sess *e;
    CK_SLOT_ID slot = HAEXT_SLOT_NONE;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    pthread_mutex_lock(&tab_mu);
    e = sess_linked(h);
    if (e != NULL) {
        atomic_store(&e->closing, 1); /* lend it no more */
        slot = e->slot->id;
    }
    pthread_mutex_unlock(&tab_mu);
    if (e != NULL)
        wait_returned(e, NULL); /* never close a session under libhaext's call */

    rv = v->C_CloseSession(h);

    if (e != NULL) {
        if (rv == CKR_OK || haext_rv_dropped(rv))
            host_gone(e, h, haext_rv_dropped(rv), rv);
        else
            atomic_store(&e->closing, 0);
    }
    if (haext_rv_connection(rv))
        push_event(HAEXT_EV_HOST_ERROR, slot, rv);
    return rv;
}

CK_RV haext_host_close_all(CK_SLOT_ID slot)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    struct haext_slot *s;
    struct haext_sess *e;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    pthread_mutex_lock(&tab_mu);
    s = slot_get(slot, 0);
    if (s != NULL)
        for (e = s->list; e != NULL; e = e->snext)
            atomic_store(&e->closing, 1);
    pthread_mutex_unlock(&tab_mu);
    if (s != NULL) {
        /* The module closes the front's own session too: let every
         * session on the slot come back first, open no new one. */
        pthread_mutex_lock(&lend_mu);
        s->so_pending++;
        pthread_mutex_unlock(&lend_mu);
        wait_returned(NULL, s);
    }

    rv = v->C_CloseAllSessions(slot);

    if (s != NULL) {
        pthread_mutex_lock(&tab_mu);
        if (rv == CKR_OK) {
            while (s->list != NULL)
                sess_unlink(s->list);
        } else {
            for (e = s->list; e != NULL; e = e->snext)
                atomic_store(&e->closing, 0);
        }
        pthread_mutex_unlock(&tab_mu);
        pthread_mutex_lock(&lend_mu);
        if (rv == CKR_OK)
            forget_own(s);
        s->so_pending--;
        pthread_cond_broadcast(&lend_cv);
        pthread_mutex_unlock(&lend_mu);
    }
    if (haext_rv_connection(rv))
        push_event(HAEXT_EV_HOST_ERROR, slot, rv);
    return rv;
}

/* C_Login, or 3.0's C_LoginUser when login_user is the vendor's. */
static CK_RV host_login(CK_C_LoginUser login_user, CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                        CK_ULONG len, CK_UTF8CHAR_PTR name, CK_ULONG name_len)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    struct haext_slot *s = NULL;
    struct haext_sess *e;
    CK_SESSION_HANDLE prev;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (user == CKU_SO) {
        /* A read-only session of the front's would make it fail with
         * CKR_SESSION_READ_ONLY_EXISTS: close it first. */
        pthread_mutex_lock(&tab_mu);
        e = sess_linked(h);
        if (e != NULL)
            s = e->slot;
        pthread_mutex_unlock(&tab_mu);
        if (s != NULL)
            close_own(s, 1);
    }
    prev = haext_busy_begin(h);
    rv = login_user != NULL ? login_user(h, user, pin, len, name, name_len) : v->C_Login(h, user, pin, len);
    haext_busy_end(prev);
    if (s != NULL)
        so_done(s);
    if (rv != CKR_OK)
        haext_sess_failed(h, rv);
    return rv;
}

CK_RV haext_host_login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    return host_login(NULL, h, user, pin, len, NULL, 0);
}

CK_RV haext_host_login_user(CK_C_LoginUser login_user, CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                            CK_ULONG len, CK_UTF8CHAR_PTR name, CK_ULONG name_len)
{
    return host_login(login_user, h, user, pin, len, name, name_len);
}

CK_RV haext_host_init_token(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG len, CK_UTF8CHAR_PTR label)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&haext_vendor, memory_order_acquire);
    struct haext_slot *s;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    /* C_InitToken fails with CKR_SESSION_EXISTS while any session is open,
     * the front's own included. */
    pthread_mutex_lock(&tab_mu);
    s = slot_get(slot, 0);
    pthread_mutex_unlock(&tab_mu);
    if (s != NULL)
        close_own(s, 1);
    rv = v->C_InitToken(slot, pin, len, label);
    if (s != NULL)
        so_done(s);
    if (haext_rv_connection(rv))
        push_event(HAEXT_EV_HOST_ERROR, slot, rv);
    return rv;
}

/* --- stats and fork ---------------------------------------------------------- */

void haext_front_stats(struct haext_front_stats *st)
{
    st->own_opened = atomic_load(&st_own_opened);
    st->own_closed = atomic_load(&st_own_closed);
    st->loans_host = atomic_load(&st_loans_host);
    st->loans_own = atomic_load(&st_loans_own);
    st->backoffs = atomic_load(&st_backoffs);
    st->host_waits = atomic_load(&st_host_waits);
    pthread_mutex_lock(&tab_mu);
    st->host_sessions = host_sessions;
    pthread_mutex_unlock(&tab_mu);
}

/* The fork child has one thread, the one that called fork; the others may
 * have held any of the locks. Start over: no sessions (the child's host
 * must call C_Initialize, and its result is the vendor's), no loans, the
 * gate closed, no events. The entries of the parent's table are left
 * behind, unreachable. */
static void atfork_child(void)
{
    struct reg_node *n;
    pthread_mutex_init(&reg_mu, NULL);
    for (n = registry; n != NULL; n = n->next)
        if (n->tls != &haext_self)
            n->tls = NULL; /* threads the child does not have */
    pthread_mutex_init(&tab_mu, NULL);
    pthread_mutex_init(&lend_mu, NULL);
    pthread_mutex_init(&gate_mu, NULL);
    pthread_mutex_init(&ev_mu, NULL);
    pthread_mutex_init(&slots_mu, NULL);
    slots_known = 0;
    init_cond(&lend_cv);
    init_cond(&gate_cv);
    init_cond(&ev_cv);
    memset(buckets, 0, sizeof buckets);
    memset(slots, 0, sizeof slots);
    memset(loans, 0, sizeof loans);
    memset(haext_lent, 0, sizeof haext_lent);
    free_list = zombies = NULL;
    host_sessions = 0;
    nloans = 0;
    epoch++;
    gate_open = gate_inside = 0;
    ev_head = ev_len = ev_overflow = 0;
    haext_vendor_atfork_child();
}
