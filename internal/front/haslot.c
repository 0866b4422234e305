/*
 * haslot.c - the HA slots as the host sees them: the slot IDs after the
 * vendor's (FRONT_HA_SLOT_BASE + NN: stable across failures, renumbering
 * and runs), the slot and token information, the mechanisms every usable
 * member supports, and the HA sessions (the front's handles, tagged
 * FRONT_HA_SESSION_TAG). Sessions on the members are opened when an
 * operation needs one, and kept (hamember.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ha.h"
#include "state.h"

#define MAX_SESS 4096 /* a power of two: the low 12 bits of a handle */

static pthread_mutex_t sess_mu = PTHREAD_MUTEX_INITIALIZER;
static struct front_ha_sess *sess[MAX_SESS];
static unsigned sess_gen;
static __thread char why[256] __attribute__((tls_model("initial-exec")));

CK_RV front_haslot_refuse(CK_RV rv, const char *reason)
{
    snprintf(why, sizeof why, "libhaext-pkcs11: HA slot: %s", reason);
    return rv;
}

const char *front_haslot_why(void)
{
    return why[0] != '\0' ? why : NULL;
}

void front_haslot_why_clear(void)
{
    why[0] = '\0';
}

CK_SLOT_ID front_haslot_member_slot(CK_SLOT_ID id)
{
    struct front_ha_slot *s = front_haslot_get(id);
    CK_SLOT_ID slot = id;
    if (s == NULL)
        return id;
    front_hamember_resolve(s);
    pthread_mutex_lock(&s->mu);
    for (int m = s->nmembers - 1; m >= 0; m--)
        if (s->m[m].resolved)
            slot = s->m[m].slot;
    pthread_mutex_unlock(&s->mu);
    return slot;
}

struct front_ha_slot *front_haslot_get(CK_SLOT_ID id)
{
    return front_haconf() != NULL ? front_hamember_slot(id) : NULL;
}

int front_haslot_ids(CK_SLOT_ID *ids, int *only)
{
    const struct front_ha_conf *c = front_haconf();
    int n = c != NULL ? front_hamember_count() : 0;
    for (int i = 0; i < n; i++)
        ids[i] = front_hamember_at(i)->id;
    *only = c != NULL && c->ha_only;
    return n;
}

/* Without the lock: an entry, once made, is never freed (a closed one is
 * reused), and the host does not close a session while it calls on it. */
FRONT_HOT struct front_ha_sess *front_haslot_session(CK_SESSION_HANDLE h)
{
    struct front_ha_sess *e;
    if (!FRONT_HA_TAGGED(h))
        return NULL;
    e = __atomic_load_n(&sess[h & (MAX_SESS - 1)], __ATOMIC_ACQUIRE);
    if (e != NULL && (!__atomic_load_n(&e->used, __ATOMIC_ACQUIRE) || e->h != h))
        e = NULL;
    return e;
}

static void pad(unsigned char *dst, size_t n, const char *src)
{
    size_t l = strlen(src);
    memset(dst, ' ', n);
    memcpy(dst, src, l < n ? l : n);
}

/* Whether any member of s is up (resolved first, on the host's thread). */
static int present(struct front_ha_slot *s)
{
    front_hamember_resolve(s);
    for (int m = 0; m < s->nmembers; m++)
        if (atomic_load(&s->m[m].up))
            return 1;
    return 0;
}

CK_RV front_haslot_C_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info)
{
    struct front_ha_slot *s = front_haslot_get(id);
    char d[80];
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(info, 0, sizeof *info);
    snprintf(d, sizeof d, "libhaext HA slot %s", s->g->label);
    pad(info->slotDescription, sizeof info->slotDescription, d);
    pad(info->manufacturerID, sizeof info->manufacturerID, "libhaext");
    info->flags = present(s) ? CKF_TOKEN_PRESENT : 0;
    info->hardwareVersion.major = info->firmwareVersion.major = 1;
    return CKR_OK;
}

/* Locked: the intersection of the usable members' tokens into info; 0
 * when none is usable. */
static int intersect(struct front_ha_slot *s, CK_TOKEN_INFO_PTR info)
{
    int any = 0;
    for (int m = 0; m < s->nmembers; m++) {
        const CK_TOKEN_INFO *t = &s->m[m].ti;
        if (!atomic_load(&s->m[m].up))
            continue;
        if (!any) {
            info->flags = t->flags;
            info->ulMaxPinLen = t->ulMaxPinLen;
            info->ulMinPinLen = t->ulMinPinLen;
            info->hardwareVersion = t->hardwareVersion;
            info->firmwareVersion = t->firmwareVersion;
            memcpy(info->utcTime, t->utcTime, sizeof info->utcTime);
        }
        info->flags &= t->flags;
        if (t->ulMaxPinLen < info->ulMaxPinLen)
            info->ulMaxPinLen = t->ulMaxPinLen;
        if (t->ulMinPinLen > info->ulMinPinLen)
            info->ulMinPinLen = t->ulMinPinLen;
        any = 1;
    }
    return any;
}

CK_RV front_haslot_C_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info)
{
    struct front_ha_slot *s = front_haslot_get(id);
    int any;
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(info, 0, sizeof *info);
    front_hamember_resolve(s);
    pthread_mutex_lock(&s->mu);
    any = intersect(s, info);
    info->ulSessionCount = (CK_ULONG)s->sessions;
    pthread_mutex_unlock(&s->mu);
    if (!any)
        return CKR_TOKEN_NOT_PRESENT;
    info->flags &= ~(CK_FLAGS)CKF_WRITE_PROTECTED;
    pad(info->label, sizeof info->label, s->g->label);
    pad(info->manufacturerID, sizeof info->manufacturerID, "libhaext");
    pad(info->model, sizeof info->model, "HA slot");
    pad(info->serialNumber, sizeof info->serialNumber, s->g->serial);
    info->ulMaxSessionCount = info->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
    info->ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
    info->ulTotalPublicMemory = info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulTotalPrivateMemory = info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
    return CKR_OK;
}

/* Member m's mechanisms (malloc'd) in *out: their count, or -1. */
static long mechanisms(struct front_ha_slot *s, int m, CK_MECHANISM_TYPE **out)
{
    CK_ULONG n = 0;
    *out = NULL;
    if (front_vendor_copy.C_GetMechanismList(s->m[m].slot, NULL, &n) != CKR_OK)
        return -1;
    if ((*out = calloc(n + 1, sizeof **out)) == NULL ||
        front_vendor_copy.C_GetMechanismList(s->m[m].slot, *out, &n) != CKR_OK) {
        free(*out);
        *out = NULL;
        return -1;
    }
    return (long)n;
}

/* Keeps in acc (n entries) those also in the m entries of b. */
static CK_ULONG keep_common(CK_MECHANISM_TYPE *acc, CK_ULONG n, const CK_MECHANISM_TYPE *b, long m)
{
    CK_ULONG k = 0;
    for (CK_ULONG i = 0; i < n; i++)
        for (long j = 0; j < m; j++)
            if (acc[i] == b[j]) {
                acc[k++] = acc[i];
                break;
            }
    return k;
}

CK_RV front_haslot_C_GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR n)
{
    struct front_ha_slot *s = front_haslot_get(id);
    CK_MECHANISM_TYPE *acc = NULL, *b;
    CK_ULONG k = 0;
    int any = 0;
    if (n == NULL)
        return CKR_ARGUMENTS_BAD;
    front_hamember_resolve(s);
    for (int m = 0; m < s->nmembers; m++) {
        long got;
        if (!atomic_load(&s->m[m].up) || (got = mechanisms(s, m, &b)) < 0)
            continue;
        if (!any) {
            acc = b;
            k = (CK_ULONG)got;
            any = 1;
            continue;
        }
        k = keep_common(acc, k, b, got);
        free(b);
    }
    if (!any)
        return CKR_TOKEN_NOT_PRESENT;
    if (list != NULL && *n < k) {
        *n = k;
        free(acc);
        return CKR_BUFFER_TOO_SMALL;
    }
    if (list != NULL)
        memcpy(list, acc, k * sizeof *acc);
    *n = k;
    free(acc);
    return CKR_OK;
}

CK_RV front_haslot_C_GetMechanismInfo(CK_SLOT_ID id, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
    struct front_ha_slot *s = front_haslot_get(id);
    int any = 0;
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    front_hamember_resolve(s);
    for (int m = 0; m < s->nmembers; m++) {
        CK_MECHANISM_INFO mi;
        CK_RV rv;
        if (!atomic_load(&s->m[m].up))
            continue;
        rv = front_vendor_copy.C_GetMechanismInfo(s->m[m].slot, type, &mi);
        if (haext_rv_connection(rv))
            continue;
        if (rv != CKR_OK)
            return rv;
        if (!any)
            *info = mi;
        info->flags &= mi.flags;
        info->ulMinKeySize = mi.ulMinKeySize > info->ulMinKeySize ? mi.ulMinKeySize : info->ulMinKeySize;
        info->ulMaxKeySize = mi.ulMaxKeySize < info->ulMaxKeySize ? mi.ulMaxKeySize : info->ulMaxKeySize;
        any = 1;
    }
    return any ? CKR_OK : CKR_TOKEN_NOT_PRESENT;
}

CK_RV front_haslot_open(CK_SLOT_ID id, CK_FLAGS flags, CK_SESSION_HANDLE_PTR out)
{
    struct front_ha_slot *s = front_haslot_get(id);
    struct front_ha_sess *e = NULL;
    unsigned i;
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    if (!(flags & CKF_SERIAL_SESSION))
        return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
    if (!present(s))
        return CKR_TOKEN_NOT_PRESENT;
    pthread_mutex_lock(&sess_mu);
    for (i = 1; i < MAX_SESS && sess[i] != NULL && sess[i]->used; i++)
        ;
    if (i < MAX_SESS && sess[i] == NULL) /* aligned: its first fields in one line */
        __atomic_store_n(&sess[i], aligned_alloc(64, (sizeof *sess[i] + 63) & ~(size_t)63), __ATOMIC_RELEASE);
    if (i < MAX_SESS && sess[i] != NULL) {
        e = sess[i];
        memset(e, 0, sizeof *e);
        sess_gen = (sess_gen + 1) & 0xFFF;
        e->h = FRONT_HA_SESSION_TAG | ((CK_SESSION_HANDLE)sess_gen << 12) | i;
        e->s = s;
        e->flags = flags;
        __atomic_store_n(&e->used, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&sess_mu);
    if (e == NULL)
        return i < MAX_SESS ? CKR_HOST_MEMORY : CKR_SESSION_COUNT;
    pthread_mutex_lock(&s->mu);
    s->sessions++;
    pthread_mutex_unlock(&s->mu);
    front_halogin_recover_all(s);
    *out = e->h;
    return CKR_OK;
}

/* Ends what session e holds and frees its entry; the slot's last one
 * leaves the members idle (logged out, our sessions closed). */
static void close_one(struct front_ha_sess *e)
{
    struct front_ha_slot *s = e->s;
    long left;
    front_haop_end(s, &e->op);
    free(e->found);
    pthread_mutex_lock(&sess_mu);
    e->used = 0;
    e->found = NULL;
    pthread_mutex_unlock(&sess_mu);
    pthread_mutex_lock(&s->mu);
    left = --s->sessions;
    pthread_mutex_unlock(&s->mu);
    if (left == 0) {
        front_halogin_idle(s);
        front_haobj_forget(s, 0);
    }
}

CK_RV front_haslot_close(CK_SESSION_HANDLE h)
{
    struct front_ha_sess *e = front_haslot_session(h);
    if (e == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    close_one(e);
    return CKR_OK;
}

CK_RV front_haslot_close_all(CK_SLOT_ID id)
{
    struct front_ha_slot *s = front_haslot_get(id);
    for (unsigned i = 1; i < MAX_SESS; i++) {
        struct front_ha_sess *e;
        pthread_mutex_lock(&sess_mu);
        e = sess[i] != NULL && sess[i]->used && sess[i]->s == s ? sess[i] : NULL;
        pthread_mutex_unlock(&sess_mu);
        if (e != NULL)
            close_one(e);
    }
    return CKR_OK;
}

/* The module forgot every session: so does the front, without a call. */
static void forget_sessions(int child)
{
    if (child)
        pthread_mutex_init(&sess_mu, NULL);
    pthread_mutex_lock(&sess_mu);
    for (unsigned i = 1; i < MAX_SESS; i++) {
        if (sess[i] == NULL || !sess[i]->used)
            continue;
        free(sess[i]->found);
        free(sess[i]->op.buf);
        free(sess[i]->op.mech.pParameter);
        memset(sess[i], 0, sizeof *sess[i]);
    }
    pthread_mutex_unlock(&sess_mu);
    for (int i = 0; i < front_hamember_count(); i++)
        front_haobj_forget(front_hamember_at(i), child ? 2 : 1);
}

void front_haslot_finalized(void)
{
    if (!front_haconf_loaded() || front_haconf() == NULL)
        return;
    forget_sessions(0);
    front_halogin_forget();
}

void front_haslot_reset(void)
{
    if (!front_haconf_loaded() || front_haconf() == NULL)
        return;
    forget_sessions(1);
    front_halogin_reset();
}
