/*
 * callback.c - CA_HAExtSetStateCallback: the registered callbacks and the
 * one thread that calls them.
 *
 * Go finds the changes (internal/notify, over every report of a group that
 * has a callback) and queues them here with hx_cb_push; it never calls the
 * application itself, because a Go thread does not have every signal
 * blocked. The dispatcher is a pthread of this file's, created with every
 * signal blocked (pthread_attr_setsigmask_np), when the first callback is
 * registered; it takes the changes in order and calls the group's current
 * callback with no lock held, so a slow callback delays only the calls
 * after it. When the last callback is unregistered the dispatcher drops
 * what is left and ends: no callback, no thread.
 *
 * Locks: Go calls hx_cb_set and hx_cb_push under the notifier's lock and
 * they take cb_mu briefly; the dispatcher takes only cb_mu, and never
 * holds it while calling the application. So a callback may call any CA_*
 * function.
 *
 * Unregistering or replacing waits until the old callback is not running
 * (unless the call comes from that callback), so that the application may
 * free its ctx when CA_HAExtSetStateCallback returns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "_cgo_export.h"
#include "callback.h"

/* The longest member serial kept: PKCS#11 serials have 16 characters, the
 * configuration's are trimmed numbers. */
#define HX_CB_SERIAL 40
/* Changes waiting for a slow callback before a member's newer ones merge
 * into its last waiting one (cryptoki_ha.h). */
#define HX_CB_QUEUE_MAX 1024

struct hx_cb_entry { /* one registration */
    struct hx_cb_entry *next;
    uint64_t group, id;
    CK_HA_STATE_CALLBACK fn;
    void *ctx;
    CK_SLOT_ID slot;
};

struct hx_cb_change { /* one queued change */
    struct hx_cb_change *next;
    uint64_t group;
    CK_RV old_status, new_status;
    char serial[HX_CB_SERIAL + 1];
};

static pthread_mutex_t cb_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cb_work = PTHREAD_COND_INITIALIZER; /* a change queued, or the last callback gone */
static pthread_cond_t cb_idle = PTHREAD_COND_INITIALIZER; /* a call ended, or the dispatcher */
static struct hx_cb_entry *cb_regs;                       /* the registrations */
static int cb_nregs;
static uint64_t cb_next_id = 1;
static struct hx_cb_change *cb_head, *cb_tail; /* the queue */
static int cb_queued;
static int cb_running; /* a dispatcher runs (or is about to end with nothing registered) */
static int cb_holds;   /* registrations under way: the dispatcher stays */
static uint64_t cb_calling;     /* id of the registration whose fn runs now; 0: none */
static pthread_t cb_caller;     /* the thread that runs it */

static struct hx_cb_entry *find_reg(uint64_t group)
{
    struct hx_cb_entry *e;
    for (e = cb_regs; e != NULL; e = e->next) {
        if (e->group == group) {
            return e;
        }
    }
    return NULL;
}

static void drop_queue(void)
{
    while (cb_head != NULL) {
        struct hx_cb_change *c = cb_head;
        cb_head = c->next;
        free(c);
    }
    cb_tail = NULL;
    cb_queued = 0;
}

void hx_cb_set(uint64_t group, struct hx_cb_reg *reg)
{
    struct hx_cb_entry *e, **pp;
    pthread_mutex_lock(&cb_mu);
    reg->replaced = 0;
    for (pp = &cb_regs; *pp != NULL && (*pp)->group != group; pp = &(*pp)->next) {
    }
    e = *pp;
    if (e != NULL) {
        reg->replaced = e->id;
    }
    if (reg->fn == NULL) {
        if (e != NULL) {
            *pp = e->next;
            free(e);
            cb_nregs--;
            if (cb_nregs == 0) {
                pthread_cond_signal(&cb_work); /* the dispatcher ends */
            }
        }
    } else {
        if (e == NULL && (e = calloc(1, sizeof *e)) != NULL) {
            e->group = group;
            e->next = cb_regs;
            cb_regs = e;
            cb_nregs++;
        }
        if (e != NULL) { /* else out of memory: changes of the group are dropped */
            e->id = cb_next_id++;
            e->fn = reg->fn;
            e->ctx = reg->ctx;
            e->slot = reg->slot;
        }
    }
    pthread_mutex_unlock(&cb_mu);
}

/* The last waiting change of a member of group, or NULL. */
static struct hx_cb_change *last_of(uint64_t group, const char *serial, struct hx_cb_change **before)
{
    struct hx_cb_change *c, *prev = NULL, *found = NULL;
    for (c = cb_head; c != NULL; prev = c, c = c->next) {
        if (c->group == group && strcmp(c->serial, serial) == 0) {
            found = c;
            *before = prev;
        }
    }
    return found;
}

void hx_cb_push(uint64_t group, const char *serial, size_t len, CK_RV old_status, CK_RV new_status)
{
    struct hx_cb_change *c, *prev = NULL;
    char text[HX_CB_SERIAL + 1];
    if (len > HX_CB_SERIAL) {
        len = HX_CB_SERIAL;
    }
    if (len > 0) {
        memcpy(text, serial, len);
    }
    text[len] = '\0';
    pthread_mutex_lock(&cb_mu);
    if (!cb_running || find_reg(group) == NULL) {
        pthread_mutex_unlock(&cb_mu);
        return;
    }
    if (cb_queued >= HX_CB_QUEUE_MAX && (c = last_of(group, text, &prev)) != NULL) {
        /* The callback is far behind: the member's last waiting change now
         * ends where this one does; it goes when it ends where it began. */
        c->new_status = new_status;
        if (c->old_status == c->new_status) {
            if (prev != NULL) {
                prev->next = c->next;
            } else {
                cb_head = c->next;
            }
            if (cb_tail == c) {
                cb_tail = prev;
            }
            cb_queued--;
            free(c);
        }
        pthread_mutex_unlock(&cb_mu);
        return;
    }
    if ((c = malloc(sizeof *c)) == NULL) {
        pthread_mutex_unlock(&cb_mu);
        return;
    }
    c->next = NULL;
    c->group = group;
    c->old_status = old_status;
    c->new_status = new_status;
    memcpy(c->serial, text, len + 1);
    if (cb_tail != NULL) {
        cb_tail->next = c;
    } else {
        cb_head = c;
    }
    cb_tail = c;
    cb_queued++;
    pthread_cond_signal(&cb_work);
    pthread_mutex_unlock(&cb_mu);
}

/* The dispatcher: every queued change, in order, to its group's current
 * callback, with cb_mu released for the call. It ends when nothing is
 * registered (or about to be). */
static void *dispatch(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&cb_mu);
    for (;;) {
        struct hx_cb_change *c;
        struct hx_cb_entry *e;
        CK_HA_STATE_CALLBACK fn;
        void *ctx;
        CK_SLOT_ID slot;
        while (cb_head == NULL && (cb_nregs > 0 || cb_holds > 0)) {
            pthread_cond_wait(&cb_work, &cb_mu);
        }
        if (cb_nregs == 0 && cb_holds == 0) {
            break;
        }
        c = cb_head;
        cb_head = c->next;
        if (cb_head == NULL) {
            cb_tail = NULL;
        }
        cb_queued--;
        if ((e = find_reg(c->group)) == NULL) {
            free(c); /* unregistered since */
            continue;
        }
        fn = e->fn;
        ctx = e->ctx;
        slot = e->slot;
        cb_calling = e->id;
        cb_caller = pthread_self();
        pthread_mutex_unlock(&cb_mu);
        fn(slot, c->serial, c->old_status, c->new_status, ctx);
        free(c);
        pthread_mutex_lock(&cb_mu);
        cb_calling = 0;
        pthread_cond_broadcast(&cb_idle);
    }
    drop_queue();
    cb_running = 0;
    pthread_cond_broadcast(&cb_idle);
    pthread_mutex_unlock(&cb_mu);
    return NULL;
}

/* Holds the dispatcher for a registration, starting it when none runs;
 * CKR_HOST_MEMORY when it cannot be started. */
static CK_RV hold_dispatcher(void)
{
    pthread_attr_t attr;
    pthread_t t;
    sigset_t all;
    int rc;
    pthread_mutex_lock(&cb_mu);
    cb_holds++;
    if (cb_running) {
        pthread_mutex_unlock(&cb_mu);
        return CKR_OK;
    }
    sigfillset(&all);
    rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_attr_setsigmask_np(&attr, &all); /* every signal blocked from its first instruction */
        if (rc == 0) {
            rc = pthread_create(&t, &attr, dispatch, NULL);
        }
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        cb_holds--;
        pthread_mutex_unlock(&cb_mu);
        return CKR_HOST_MEMORY;
    }
    pthread_setname_np(t, "haext-callback");
    cb_running = 1;
    pthread_mutex_unlock(&cb_mu);
    return CKR_OK;
}

static void release_dispatcher(void)
{
    pthread_mutex_lock(&cb_mu);
    cb_holds--;
    if (cb_holds == 0 && cb_nregs == 0) {
        pthread_cond_signal(&cb_work);
    }
    pthread_mutex_unlock(&cb_mu);
}

/* After a registration was replaced or removed: waits until its fn is not
 * running, and, when nothing is registered any more, until the dispatcher
 * ended; neither when called from a callback (which would wait for
 * itself). */
static void settle(uint64_t replaced)
{
    pthread_mutex_lock(&cb_mu);
    if (cb_calling != 0 && pthread_equal(cb_caller, pthread_self())) {
        pthread_mutex_unlock(&cb_mu);
        return;
    }
    while (replaced != 0 && cb_calling == replaced) {
        pthread_cond_wait(&cb_idle, &cb_mu);
    }
    while (cb_running && cb_nregs == 0 && cb_holds == 0) {
        pthread_cond_wait(&cb_idle, &cb_mu);
    }
    pthread_mutex_unlock(&cb_mu);
}

/* Called by capi.c's CA_HAExtSetStateCallback between haext_enter and
 * haext_leave. */
CK_RV haext_set_callback(CK_SLOT_ID slotId, CK_HA_STATE_CALLBACK fn, CK_ULONG intervalMs, void *ctx, char **reason)
{
    struct hx_cb_reg reg;
    CK_RV rv;
    memset(&reg, 0, sizeof reg);
    reg.fn = fn;
    reg.ctx = ctx;
    reg.slot = slotId;
    if (fn != NULL && (rv = hold_dispatcher()) != CKR_OK) {
        *reason = strdup("cannot start libhaext's callback thread (pthread_create failed)");
        return rv;
    }
    rv = haextSetCallback(slotId, fn != NULL, intervalMs, &reg, reason);
    if (fn != NULL) {
        release_dispatcher();
    }
    settle(reg.replaced); /* also after a failure: a dispatcher started for nothing has ended */
    return rv;
}
