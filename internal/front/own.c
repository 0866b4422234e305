/*
 * own.c - the front's own read-only session on a slot, lent when no
 * session of the host's is idle there (lend.c), opened on demand.
 *
 * The front closes it before the host's C_Login(CKU_SO) (or 3.0's
 * C_LoginUser) or C_InitToken on the slot, and right after the host's last
 * session there is closed, so that login state is what it would be
 * without the front; the next borrow opens it again. Its state is guarded
 * by the loans' lock (loans.c), released for every vendor call.
 */
#include <pthread.h>

#include "call.h"
#include "state.h"

static unsigned long tag_seq, epoch;
static atomic_ulong st_own_opened, st_own_closed, st_loans_own;

/* The front's own vendor calls run on the host's threads or inside a probe
 * thread's hx_enter: the SIGPIPE guard alone (call.h). */
static CK_RV own_open(CK_SLOT_ID slot, CK_SESSION_HANDLE *h)
{
    struct hx_guard g;
    CK_RV rv;
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    hx_guard_begin(&g);
    rv = v->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, h);
    hx_guard_end(&g);
    if (rv == CKR_OK)
        atomic_fetch_add(&st_own_opened, 1);
    return rv;
}

static void own_close(CK_SESSION_HANDLE h)
{
    struct hx_guard g;
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    hx_guard_begin(&g);
    v->C_CloseSession(h);
    hx_guard_end(&g);
    atomic_fetch_add(&st_own_closed, 1);
}

/* Locked: s has no own session any more (the next borrow opens one). */
static void forget(struct front_slot *s)
{
    s->own_state = FRONT_OWN_NONE;
    s->own = CK_INVALID_HANDLE;
    s->own_tag = ++tag_seq;
    s->own_lent = 0;
    s->close_pending = 0;
}

/* Locked: closes s's own session, open and lent to nobody; the lock is
 * released for the call. */
static void close_open(struct front_slot *s)
{
    CK_SESSION_HANDLE h = s->own;
    s->own_state = FRONT_OWN_CLOSING;
    front_loans_unlock();
    own_close(h);
    front_loans_lock();
    forget(s);
}

/* Locked: lends s's own session, open. */
static CK_RV lend_open(struct front_slot *s, CK_SESSION_HANDLE *out)
{
    if (front_loans_add_own(s->own, s, s->own_tag) == NULL)
        return CKR_HOST_MEMORY;
    s->own_lent++;
    *out = s->own;
    atomic_fetch_add(&st_loans_own, 1);
    return CKR_OK;
}

/* Locked: session h, just opened while s was FRONT_OWN_OPENING in epoch
 * ep, is not kept (finalized meanwhile, or the host wants it closed); the
 * lock is released for the call. */
static void discard(struct front_slot *s, unsigned long ep, CK_SESSION_HANDLE h)
{
    int mine = epoch == ep;
    if (mine)
        s->own_state = FRONT_OWN_CLOSING;
    front_loans_unlock();
    own_close(h);
    front_loans_lock();
    if (mine)
        forget(s);
}

/* Opens s's own session (s is FRONT_OWN_OPENING since epoch ep, the lock
 * not held) and lends it. */
static CK_RV open_and_lend(struct front_slot *s, unsigned long ep, CK_SESSION_HANDLE *out)
{
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = own_open(s->id, &h);
    front_loans_lock();
    if (rv != CKR_OK) {
        if (epoch == ep)
            s->own_state = FRONT_OWN_NONE;
    } else if (epoch != ep || s->close_pending || s->so_pending > 0) {
        discard(s, ep, h);
        rv = CKR_FUNCTION_REJECTED;
    } else {
        s->own = h;
        s->own_state = FRONT_OWN_OPEN;
        s->own_tag = ++tag_seq;
        s->own_lent = 0;
        rv = lend_open(s, out);
    }
    front_loans_broadcast();
    front_loans_unlock();
    return rv;
}

CK_RV front_own_lend(struct front_slot *s, CK_SESSION_HANDLE *out)
{
    unsigned long ep;
    CK_RV rv;
    front_loans_lock();
    if (s->own_state == FRONT_OWN_OPEN && !s->close_pending && s->so_pending == 0) {
        rv = lend_open(s, out);
        front_loans_unlock();
        return rv;
    }
    if (s->own_state != FRONT_OWN_NONE || s->so_pending > 0) {
        /* Being opened or closed by another thread, or an SO login is on
         * its way: no session to lend right now. */
        front_loans_unlock();
        return CKR_FUNCTION_REJECTED;
    }
    s->own_state = FRONT_OWN_OPENING;
    ep = epoch;
    front_loans_unlock();
    return open_and_lend(s, ep, out);
}

void front_own_returned(const struct front_loan *l, CK_RV rv)
{
    struct front_slot *s = l->s;
    if (l->tag != s->own_tag || s->own_state != FRONT_OWN_OPEN)
        return; /* forgotten meanwhile */
    s->own_lent--;
    if (haext_rv_dropped(rv))
        forget(s); /* the module dropped it: open a new one next time */
    else if (s->own_lent == 0 && s->close_pending)
        close_open(s);
}

void front_own_close(struct front_slot *s, int stop)
{
    struct timespec dl = {0, 0};
    front_loans_lock();
    if (stop)
        s->so_pending++;
    while (s->own_state == FRONT_OWN_OPENING || s->own_state == FRONT_OWN_CLOSING ||
           (s->own_state == FRONT_OWN_OPEN && s->own_lent > 0)) {
        if (!front_loans_wait(&dl))
            break;
    }
    if (s->own_state == FRONT_OWN_OPEN && s->own_lent == 0) {
        close_open(s);
        front_loans_broadcast();
    } else if (s->own_state == FRONT_OWN_OPEN || s->own_state == FRONT_OWN_OPENING) {
        s->close_pending = 1; /* still in use after the wait: the last user closes it */
    }
    front_loans_unlock();
}

void front_own_stop(struct front_slot *s)
{
    front_loans_lock();
    s->so_pending++;
    front_loans_unlock();
}

void front_own_resume(struct front_slot *s, int forget_own)
{
    front_loans_lock();
    if (forget_own)
        forget(s);
    s->so_pending--;
    front_loans_broadcast();
    front_loans_unlock();
}

void front_own_forget_all(void)
{
    struct front_slot *slots = front_table_slots();
    int i;
    front_loans_lock();
    epoch++;
    for (i = 0; i < FRONT_MAX_SLOTS; i++)
        if (slots[i].used)
            forget(&slots[i]);
    front_loans_broadcast();
    front_loans_unlock();
}

void front_own_stats(struct front_stats *st)
{
    st->own_opened = atomic_load(&st_own_opened);
    st->own_closed = atomic_load(&st_own_closed);
    st->loans_own = atomic_load(&st_loans_own);
}

void front_own_reset(void)
{
    epoch++;
}
