/*
 * haop.c - the start of an operation on an HA slot (its Init; hacall.c has
 * its calls after). An operation goes to the usable member holding its key
 * with the fewest operations in flight (standby members only when no
 * active one is usable): a session of ours there, the key's handle there,
 * the vendor's Init. When that member answers a connection-class CK_RV
 * (the member or its connection is gone, or our session there was
 * dropped), the next member is tried; any other answer goes back to the
 * host as it is: a PIN, argument, key, mechanism, data, signature or
 * buffer answer is never failed over. This file's functions on that path
 * are FRONT_HOT; what only a failure or an operation timeout needs is
 * FRONT_COLD.
 */
#include <stdlib.h>
#include <string.h>

#include "ha.h"
#include "state.h"

FRONT_HOT static int has_obj(struct front_ha_slot *s, int m, void *x) { return front_haobj_x_may_have(s, x, m); }

/* The vendor's Init of kind on session h, but a sign's or a verify's. */
static __attribute__((noinline)) CK_RV vendor_init_other(int kind, CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech,
                                                         CK_OBJECT_HANDLE key)
{
    switch (kind) {
    case FRONT_HA_OP_ENCRYPT: return front_vendor_copy.C_EncryptInit(h, mech, key);
    case FRONT_HA_OP_DECRYPT: return front_vendor_copy.C_DecryptInit(h, mech, key);
    case FRONT_HA_OP_DIGEST: return front_vendor_copy.C_DigestInit(h, mech);
    case FRONT_HA_OP_SIGNREC: return front_vendor_copy.C_SignRecoverInit(h, mech, key);
    default: return front_vendor_copy.C_VerifyRecoverInit(h, mech, key);
    }
}

/* The vendor's Init of kind on session h: a sign's and a verify's without
 * a jump table (one more line to load). */
static inline __attribute__((always_inline)) CK_RV vendor_init(int kind, CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech,
                                                               CK_OBJECT_HANDLE key)
{
    if (kind == FRONT_HA_OP_SIGN)
        return front_vendor_copy.C_SignInit(h, mech, key);
    if (kind == FRONT_HA_OP_VERIFY)
        return front_vendor_copy.C_VerifyInit(h, mech, key);
    return vendor_init_other(kind, h, mech, key);
}

/* The update of a replayable kind (sign, verify, digest). */
static CK_RV vendor_update(int kind, CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG n)
{
    if (kind == FRONT_HA_OP_SIGN)
        return front_vendor_copy.C_SignUpdate(h, p, n);
    if (kind == FRONT_HA_OP_VERIFY)
        return front_vendor_copy.C_VerifyUpdate(h, p, n);
    return front_vendor_copy.C_DigestUpdate(h, p, n);
}

/* Starts op on member m: a session, its key x there (NULL: none), the
 * Init, the updates kept. CKR_OK, or the answer that stopped it. */
static inline __attribute__((always_inline)) CK_RV start_direct(struct front_ha_slot *s, struct front_ha_op *op, int m, struct front_ha_obj *x)
{
    CK_OBJECT_HANDLE real = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE h;
    CK_RV rv = front_hamember_session(s, m, &h);
    if (FRONT_UNLIKELY(rv != CKR_OK))
        return rv;
    for (int again = 1; rv == CKR_OK; again = 0) {
        if (x != NULL)
            rv = front_haobj_x_on(s, x, m, h, &real);
        if (FRONT_LIKELY(rv == CKR_OK))
            rv = vendor_init(op->kind, h, &op->mech, real);
        if (FRONT_LIKELY(rv == CKR_OK) || !again || (rv != CKR_KEY_HANDLE_INVALID && rv != CKR_OBJECT_HANDLE_INVALID) ||
            x == NULL || front_haobj_owner(s, op->key) != -1)
            break;
        /* The member forgot the handle it gave (its sessions were all
         * closed meanwhile): its objects are looked up again, once. */
        atomic_fetch_add(&s->m[m].gen, 1);
        rv = CKR_OK;
    }
    if (FRONT_UNLIKELY(op->blen > 0) && rv == CKR_OK)
        rv = vendor_update(op->kind, h, op->buf, op->blen);
    if (FRONT_UNLIKELY(rv != CKR_OK)) {
        front_hamember_release(s, m, h, haext_rv_failover(rv));
        return rv;
    }
    op->m = m;
    op->real = h;
    return CKR_OK;
}

/* A start left to a member's worker (hawork.c): its own copy of op. */
struct start_job {
    struct front_ha_slot *s;
    int m;
    struct front_ha_obj *x;
    struct front_ha_op op;
};

static void free_start(struct start_job *j)
{
    free(j->op.mech.pParameter);
    free(j->op.buf);
    free(j);
}

static CK_RV start_fn(void *arg)
{
    struct start_job *j = arg;
    return start_direct(j->s, &j->op, j->m, j->x);
}

static void start_orphan(void *arg, CK_RV rv)
{
    struct start_job *j = arg;
    if (rv == CKR_OK)
        front_hamember_release(j->s, j->m, j->op.real, 1);
    free_start(j);
}

/* start_direct on the member's worker, with an operation timeout. */
FRONT_COLD static CK_RV start_job(struct front_ha_slot *s, struct front_ha_op *op, int m, struct front_ha_obj *x)
{
    struct start_job *j;
    CK_RV rv;
    if ((j = calloc(1, sizeof *j)) == NULL)
        return CKR_HOST_MEMORY;
    *j = (struct start_job){s, m, x, *op};
    j->op.mech.pParameter = NULL;
    j->op.buf = NULL;
    if ((op->mech.ulParameterLen > 0 && (j->op.mech.pParameter = malloc(op->mech.ulParameterLen)) == NULL) ||
        (op->blen > 0 && (j->op.buf = malloc(op->blen)) == NULL)) {
        free_start(j);
        return CKR_HOST_MEMORY;
    }
    if (op->mech.ulParameterLen > 0)
        memcpy(j->op.mech.pParameter, op->mech.pParameter, op->mech.ulParameterLen);
    if (op->blen > 0)
        memcpy(j->op.buf, op->buf, op->blen);
    if (front_hawork_run(s, m, start_fn, start_orphan, j, &rv) != 0)
        return FRONT_HA_TIMED_OUT;
    if (rv == CKR_OK) {
        op->m = m;
        op->real = j->op.real;
    }
    free_start(j);
    return rv;
}

/* Starts op on member m, on its worker when the group has an operation
 * timeout. */
FRONT_HOT static inline CK_RV start_on(struct front_ha_slot *s, struct front_ha_op *op, int m, struct front_ha_obj *x)
{
    if (FRONT_LIKELY(s->op_timeout_ms <= 0))
        return start_direct(s, op, m, x);
    return start_job(s, op, m, x);
}

/* No usable member holds op's key (x: NULL for none): CKR_KEY_HANDLE_INVALID
 * when some member is usable (none has it), else CKR_DEVICE_ERROR. */
FRONT_COLD static CK_RV none_usable(struct front_ha_slot *s, struct front_ha_op *op, const struct front_ha_obj *x)
{
    int any = front_hamember_pick(s, NULL, NULL, op->skip);
    if (any >= 0)
        front_hamember_done(s, any);
    return any >= 0 && x != NULL ? CKR_KEY_HANDLE_INVALID : CKR_DEVICE_ERROR;
}

/* The start of op on member m failed with rv: 1 to try the next member
 * (m is left out), 0 to give the host rv. */
FRONT_COLD static int start_failed(struct front_ha_slot *s, struct front_ha_op *op, int m, const struct front_ha_obj *x,
                                   CK_RV rv, const char *fn)
{
    front_hamember_done(s, m);
    if (rv == FRONT_HA_TIMED_OUT) {
        front_hanote("group=\"%s\" group_serial=%s member=%s event=stuck (no answer in %ld ms: no work until it "
                     "answers)", s->g->label, s->g->serial, s->g->text[m], s->op_timeout_ms);
        op->skip |= 1U << m; /* stuck, not lost: no recovery thread to get stuck too */
        atomic_fetch_add(&front_ha_failovers, 1);
        return 1;
    }
    if (rv == CKR_KEY_HANDLE_INVALID && x != NULL && !front_haobj_x_may_have(s, x, m)) {
        op->skip |= 1U << m; /* not on that member after all */
        return 1;
    }
    if (!haext_rv_failover(rv))
        return 0;
    front_halogin_lost(s, m, fn, rv);
    op->skip |= 1U << m;
    atomic_fetch_add(&front_ha_failovers, 1);
    return 1;
}

/* Binds op to the best member holding its key x (NULL: none needed), the
 * next while members are lost or stuck: CKR_OK, the deciding member's
 * answer, or (no usable member holds the key) CKR_KEY_HANDLE_INVALID (none
 * has it) or CKR_DEVICE_ERROR. hint (-1: none) is tried first when it is
 * as good as any: it has no operation in flight, so no member is less busy,
 * and the others are not looked at. */
static inline __attribute__((always_inline)) CK_RV bind(struct front_ha_slot *s, struct front_ha_op *op,
                                                        struct front_ha_obj *x, int hint, const char *fn)
{
    for (;;) {
        int m = hint >= 0 && !(op->skip >> hint & 1U) && (x == NULL || front_haobj_x_may_have(s, x, hint)) &&
                        front_hamember_take(s, hint)
                    ? hint
                    : front_hamember_pick(s, x != NULL ? has_obj : NULL, x, op->skip);
        CK_RV rv;
        hint = -1;
        if (FRONT_UNLIKELY(m < 0))
            return none_usable(s, op, x);
        rv = start_on(s, op, m, x);
        if (FRONT_LIKELY(rv == CKR_OK))
            return CKR_OK;
        if (!start_failed(s, op, m, x, rv, fn))
            return rv;
    }
}

FRONT_HOT void front_haop_clear(struct front_ha_op *op)
{
    if (FRONT_UNLIKELY(op->mech.pParameter != NULL || op->buf != NULL)) {
        free(op->mech.pParameter);
        free(op->buf);
    }
    memset(op, 0, sizeof *op);
}

FRONT_HOT void front_haop_end(struct front_ha_slot *s, struct front_ha_op *op)
{
    if (op->kind == 0)
        return;
    front_hamember_release(s, op->m, op->real, 0);
    front_hamember_done(s, op->m);
    front_haop_clear(op);
}

/* The bytes of mech's parameter into op's (a parameter that points
 * elsewhere keeps pointing at the host's memory). */
static __attribute__((noinline)) CK_RV copy_parameter(struct front_ha_op *op, const CK_MECHANISM *mech)
{
    if ((op->mech.pParameter = malloc(mech->ulParameterLen)) == NULL)
        return CKR_HOST_MEMORY;
    memcpy(op->mech.pParameter, mech->pParameter, mech->ulParameterLen);
    return CKR_OK;
}

FRONT_HOT CK_RV front_haop_init(struct front_ha_slot *s, struct front_ha_op *op, struct front_ha_key *last, int kind,
                                CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    struct front_ha_obj *x = NULL;
    CK_RV rv;
    /* Every kind but a digest takes a key, one of the slot's objects. */
    if (kind != FRONT_HA_OP_DIGEST) {
        if (FRONT_LIKELY(key == last->h && last->x != NULL))
            x = last->x;
        else if ((x = front_haobj_get(s, key)) == NULL)
            return CKR_KEY_HANDLE_INVALID;
        last->h = key;
        last->x = x;
    }
    if (op->kind != 0)
        return CKR_OPERATION_ACTIVE;
    if (mech == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->key = key;
    op->mech = *mech;
    op->mech.pParameter = NULL;
    if (FRONT_UNLIKELY(mech->pParameter != NULL && mech->ulParameterLen > 0) && copy_parameter(op, mech) != CKR_OK) {
        front_haop_clear(op);
        return CKR_HOST_MEMORY;
    }
    /* The member the session's last operation with this key ran on first. */
    rv = bind(s, op, x, x != NULL ? last->m1 - 1 : -1, "Init");
    if (FRONT_UNLIKELY(rv != CKR_OK))
        front_haop_clear(op);
    else if (x != NULL)
        last->m1 = op->m + 1;
    return rv;
}

CK_RV front_haop_bind(struct front_ha_slot *s, struct front_ha_op *op, const char *fn)
{
    struct front_ha_obj *x = op->kind != FRONT_HA_OP_DIGEST ? front_haobj_get(s, op->key) : NULL;
    if (op->kind != FRONT_HA_OP_DIGEST && x == NULL)
        return CKR_KEY_HANDLE_INVALID;
    return bind(s, op, x, -1, fn);
}
