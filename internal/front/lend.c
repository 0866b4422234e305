/*
 * lend.c - what a probe thread borrows for its one call: an idle session
 * of the host's on the slot, else the front's own read-only session there
 * (own.c); and its give_back. struct haext_vendor's borrow and give_back
 * (hostapi.h).
 *
 * A host session is lent under the handshake of state.h: the loan is
 * published (loans.c), then the threads' records are read (busy.c), and a
 * record that names the session takes the loan back: the next session is
 * tried. A probe thread never waits for the host.
 */
#include "state.h"

static atomic_ulong st_loans_host, st_backoffs;

/* Lends an idle session of the host's on s (the table's lock held):
 * CKR_OK, CKR_HOST_MEMORY (too many loans out), or CKR_FUNCTION_REJECTED
 * (none idle). The loan is recorded under both locks, so a host
 * C_CloseSession that marks the session closing (the table's lock) either
 * comes first and the session is skipped, or finds the loan and waits for
 * it. */
static CK_RV lend_host(struct front_slot *s, CK_SESSION_HANDLE *out)
{
    struct front_sess *e;
    for (e = s->list; e != NULL; e = e->snext) {
        struct front_loan *l;
        /* Busy now: not worth a loan that would be taken back. */
        if (atomic_load(&e->lent) || atomic_load(&e->closing) || front_busy_seen(e->h))
            continue;
        front_loans_lock();
        l = front_loans_add_host(e);
        front_loans_unlock();
        if (l == NULL)
            return CKR_HOST_MEMORY;
        /* The handshake: the loan is out, and a host call that starts on
         * e from now on waits for it. One that started before is in its
         * thread's record: take the loan back, try the next session. */
        if (!front_busy_seen(e->h)) {
            atomic_fetch_add(&st_loans_host, 1);
            *out = e->h;
            return CKR_OK;
        }
        front_loans_lock();
        front_loans_end(l);
        front_loans_unlock();
        atomic_fetch_add(&st_backoffs, 1);
    }
    return CKR_FUNCTION_REJECTED;
}

CK_RV front_lend_borrow(CK_SLOT_ID slot, CK_SESSION_HANDLE *out)
{
    struct front_slot *s;
    CK_RV rv;
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    if (atomic_load_explicit(&front_vendor_list, memory_order_acquire) == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    front_table_lock();
    s = front_table_slot(slot, 1);
    rv = s == NULL ? CKR_HOST_MEMORY : lend_host(s, out);
    front_table_unlock();
    if (rv != CKR_FUNCTION_REJECTED)
        return rv;
    return front_own_lend(s, out);
}

/* Host session e (handle h) is gone: take it out of the table and, when it
 * was the host's last session on its slot, close the front's own there. */
static void forget_host(struct front_sess *e, CK_SESSION_HANDLE h)
{
    int last = 0;
    struct front_slot *s = front_table_take(e, h, &last);
    if (s != NULL && last)
        front_own_close(s, 0);
}

void front_lend_give_back(CK_SESSION_HANDLE h, CK_RV rv)
{
    struct front_loan *l, copy;
    front_loans_lock();
    l = front_loans_find(h);
    if (l == NULL) {
        front_loans_unlock();
        return;
    }
    copy = *l;
    front_loans_end(l);
    if (copy.e != NULL) {
        front_loans_unlock();
        if (haext_rv_dropped(rv))
            forget_host(copy.e, h); /* the module dropped the host's session: forget it */
        return;
    }
    front_own_returned(&copy, rv);
    front_loans_broadcast();
    front_loans_unlock();
}

void front_lend_stats(struct front_stats *st)
{
    st->loans_host = atomic_load(&st_loans_host);
    st->backoffs = atomic_load(&st_backoffs);
}
