/*
 * halogin.c - logging the members of an HA slot in and out, losing a
 * member, and bringing it back.
 *
 * C_Login on the HA slot logs in to one member first and stops there on
 * any answer but success (CKR_PIN_INCORRECT, CKR_PIN_LOCKED, ...: a PIN
 * lockout is never multiplied), then to every other usable member, standby
 * ones included. A member that comes back later is logged in with the kept
 * PIN (hapin.c) before it gets work; without a kept PIN it waits for the
 * host's next C_Login. A member is logged in while a session of ours is
 * open on it: the pool keeps one while the host has an HA session open.
 */
#include <string.h>

#include "ha.h"
#include "state.h"

/* Makes h member m's anchor, the session that keeps it logged in while
 * the pool's sessions come and go (a member logs out when the last session
 * of the application there closes), unless it has one: 1 when it did. */
static int anchor(struct front_ha_slot *s, int m, CK_SESSION_HANDLE h)
{
    int took;
    pthread_mutex_lock(&s->mu);
    took = s->m[m].anchor == CK_INVALID_HANDLE;
    if (took)
        s->m[m].anchor = h;
    pthread_mutex_unlock(&s->mu);
    return took;
}

/* Member m's anchor, taken out (CK_INVALID_HANDLE: none). */
static CK_SESSION_HANDLE unanchor(struct front_ha_slot *s, int m)
{
    CK_SESSION_HANDLE h;
    pthread_mutex_lock(&s->mu);
    h = s->m[m].anchor;
    s->m[m].anchor = CK_INVALID_HANDLE;
    if (h != CK_INVALID_HANDLE)
        s->m[m].open--;
    pthread_mutex_unlock(&s->mu);
    return h;
}

/* Logs member m in on a session of ours: its anchor, or one of the pool. */
static CK_RV login_one(struct front_ha_slot *s, int m, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    CK_SESSION_HANDLE h;
    CK_RV rv = front_hamember_session(s, m, &h);
    if (rv != CKR_OK)
        return rv;
    rv = front_vendor_copy.C_Login(h, CKU_USER, pin, len);
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        rv = CKR_OK;
    if (rv == CKR_OK && anchor(s, m, h))
        return rv;
    front_hamember_release(s, m, h, haext_rv_failover(rv));
    return rv;
}

static void set_logged_in(struct front_ha_slot *s, int m, int v)
{
    pthread_mutex_lock(&s->mu);
    s->m[m].logged_in = v;
    pthread_mutex_unlock(&s->mu);
}

/* The first member: the one answer that decides. */
static CK_RV login_first(struct front_ha_slot *s, CK_UTF8CHAR_PTR pin, CK_ULONG len, int *first)
{
    unsigned skip = 0;
    for (;;) {
        CK_RV rv;
        int m = front_hamember_pick(s, NULL, NULL, skip);
        if (m < 0)
            return CKR_TOKEN_NOT_PRESENT;
        rv = login_one(s, m, pin, len);
        front_hamember_done(s, m);
        if (haext_rv_failover(rv)) {
            front_halogin_lost(s, m, "C_Login", rv);
            skip |= 1U << m;
            continue;
        }
        if (rv == CKR_OK) {
            set_logged_in(s, m, 1);
            *first = m;
        }
        return rv;
    }
}

/* Every usable member but first (-1: none), standby ones included. */
static void login_rest(struct front_ha_slot *s, CK_UTF8CHAR_PTR pin, CK_ULONG len, int first)
{
    for (int m = 0; m < s->nmembers; m++) {
        CK_RV rv;
        if (m == first || !atomic_load(&s->m[m].up) || s->m[m].logged_in)
            continue;
        rv = login_one(s, m, pin, len);
        if (haext_rv_failover(rv))
            front_halogin_lost(s, m, "C_Login", rv);
        else
            set_logged_in(s, m, rv == CKR_OK); /* another answer: its PIN differs; it gets no work */
    }
}

CK_RV front_halogin_login(struct front_ha_slot *s, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    int first = -1;
    CK_RV rv;
    front_hamember_resolve(s);
    if (s->logged_in) {
        /* Members that came back while no PIN was kept. */
        login_rest(s, pin, len, -1);
        return CKR_USER_ALREADY_LOGGED_IN;
    }
    rv = login_first(s, pin, len, &first);
    if (rv != CKR_OK)
        return rv;
    if (front_haconf()->keep_pin)
        front_hapin_keep(s->index, pin, len);
    pthread_mutex_lock(&s->mu);
    s->logged_in = 1;
    pthread_mutex_unlock(&s->mu);
    login_rest(s, pin, len, first);
    return CKR_OK;
}

CK_RV front_halogin_logout(struct front_ha_slot *s)
{
    if (!s->logged_in)
        return CKR_USER_NOT_LOGGED_IN;
    pthread_mutex_lock(&s->mu);
    s->logged_in = 0;
    pthread_mutex_unlock(&s->mu);
    front_hapin_drop(s->index);
    for (int m = 0; m < s->nmembers; m++) {
        CK_SESSION_HANDLE h;
        if (!s->m[m].logged_in)
            continue;
        set_logged_in(s, m, 0);
        if (!atomic_load(&s->m[m].up) || front_hamember_session(s, m, &h) != CKR_OK)
            continue;
        front_hamember_release(s, m, h, haext_rv_failover(front_vendor_copy.C_Logout(h)));
    }
    return CKR_OK;
}

void front_halogin_idle(struct front_ha_slot *s)
{
    CK_SESSION_HANDLE idle[FRONT_HA_IDLE_MAX];
    pthread_mutex_lock(&s->mu);
    s->logged_in = 0;
    pthread_mutex_unlock(&s->mu);
    front_hapin_drop(s->index);
    for (int m = 0; m < s->nmembers; m++) {
        int n = front_hamember_drain(s, m, idle);
        CK_SESSION_HANDLE a = unanchor(s, m);
        set_logged_in(s, m, 0);
        for (int i = 0; i < n; i++)
            front_vendor_copy.C_CloseSession(idle[i]);
        if (a != CK_INVALID_HANDLE)
            front_vendor_copy.C_CloseSession(a); /* the last: the member logs out */
    }
}

/* One try of the recovery thread: 1 when member m is back (or nobody needs
 * it any more), 0 to try again. */
static int attempt(struct front_ha_slot *s, int m)
{
    struct front_ha_member *x = &s->m[m];
    CK_UTF8CHAR pin[256];
    CK_TOKEN_INFO ti;
    CK_SESSION_HANDLE h, old[FRONT_HA_IDLE_MAX + 1];
    unsigned long long ser;
    long len;
    int n, back;
    if (s->sessions == 0)
        return 1;
    if (!front_harec_enter())
        return 0;
    back = front_vendor_copy.C_GetTokenInfo(x->slot, &ti) == CKR_OK &&
           front_haconf_serial(ti.serialNumber, sizeof ti.serialNumber, &ser) == 0 && ser == x->serial &&
           front_vendor_copy.C_OpenSession(x->slot, CKF_SERIAL_SESSION, NULL, NULL, &h) == CKR_OK;
    if (back) {
        /* The sessions kept from before may be dead: the new one keeps the
         * member's login while they are closed. */
        n = front_hamember_drain(s, m, old);
        if ((old[n] = unanchor(s, m)) != CK_INVALID_HANDLE)
            n++;
        for (int i = 0; i < n; i++)
            front_vendor_copy.C_CloseSession(old[i]);
        len = s->logged_in ? front_hapin_get(s->index, pin) : -1;
        if (len >= 0) {
            CK_RV rv = front_vendor_copy.C_Login(h, CKU_USER, pin, (CK_ULONG)len);
            set_logged_in(s, m, rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
            explicit_bzero(pin, sizeof pin);
        } else {
            set_logged_in(s, m, 0);
        }
        pthread_mutex_lock(&s->mu);
        x->open++;
        x->ti = ti;
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_add(&x->gen, 1); /* its objects are matched again */
        if (!anchor(s, m, h))
            front_hamember_release(s, m, h, 0);
        atomic_store(&x->up, 1);
        front_hanote("group=\"%s\" group_serial=%s member=%s event=back (logged in: %s)", s->g->label, s->g->serial,
                     s->g->text[m], x->logged_in ? "yes" : "no");
    }
    front_harec_leave();
    return back;
}

void front_halogin_lost(struct front_ha_slot *s, int m, const char *fn, CK_RV rv)
{
    struct front_ha_member *x = &s->m[m];
    if (atomic_exchange(&x->up, 0)) {
        atomic_fetch_add(&x->lost, 1);
        front_hanote("group=\"%s\" group_serial=%s member=%s event=lost function=%s rv=0x%lx (operations move to "
                     "the other members)", s->g->label, s->g->serial, s->g->text[m], fn, (unsigned long)rv);
        /* The engine's verdict changes at once: the host-evidence path. */
        front_events_push(HAEXT_EV_HOST_ERROR, x->slot, rv);
    }
    front_harec_start(s, m, attempt);
}

/* Starts the recovery of every member of s that is not up. */
void front_halogin_recover_all(struct front_ha_slot *s)
{
    for (int m = 0; m < s->nmembers; m++)
        if (s->m[m].resolved && !atomic_load(&s->m[m].up))
            front_harec_start(s, m, attempt);
}

/* Forgets what the module forgot (the host's C_Finalize), or (fork) what
 * a child cannot use. */
static void forget(int child)
{
    for (int i = 0; i < front_hamember_count(); i++) {
        struct front_ha_slot *s = front_hamember_at(i);
        if (child)
            pthread_mutex_init(&s->mu, NULL);
        pthread_mutex_lock(&s->mu);
        s->sessions = 0;
        s->logged_in = 0;
        for (int m = 0; m < s->nmembers; m++) {
            struct front_ha_member *x = &s->m[m];
            x->resolved = x->logged_in = x->nidle = 0;
            x->anchor = CK_INVALID_HANDLE;
            x->open = 0;
            for (int i = 0; i < FRONT_HA_FAST; i++)
                atomic_store(&x->fast[i], CK_INVALID_HANDLE);
            if (child) {
                x->recovering = 0;
                front_hawork_reset(x);
            }
            atomic_store(&x->up, 0);
            atomic_store(&x->inflight, 0);
            atomic_store(&x->busy_since, 0);
        }
        pthread_mutex_unlock(&s->mu);
    }
    front_hapin_drop(-1);
}

void front_halogin_forget(void)
{
    forget(0);
}

void front_halogin_reset(void)
{
    front_hapin_reset();
    front_harec_reset();
    forget(1);
}
