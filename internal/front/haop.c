/*
 * haop.c - operations on an HA slot. An operation goes to the usable
 * member holding its key with the fewest operations in flight (standby
 * members only when no active one is usable). When its member answers a
 * connection-class CK_RV (the member or its connection is gone, or our
 * session there was dropped), it is issued again on the next member, its
 * Init included, and for a multi-part sign, verify or digest the data of
 * its updates so far (kept up to LibHAExtReplayLimit bytes; past that the
 * operation is pinned). Multi-part encrypt and decrypt are pinned from
 * their first update, and end with CKR_DEVICE_ERROR when their member is
 * lost, as on Luna. Any other answer goes back to the host as it is: a PIN,
 * argument, key, mechanism, data, signature or buffer answer is never
 * failed over.
 */
#include <stdlib.h>
#include <string.h>

#include "ha.h"
#include "state.h"

static int has_key(struct front_ha_slot *s, int m, void *arg) { return front_haobj_may_have(s, *(CK_OBJECT_HANDLE *)arg, m); }

/* The vendor's Init of kind on session h. */
static CK_RV vendor_init(int kind, CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    switch (kind) {
    case FRONT_HA_OP_SIGN: return front_vendor_copy.C_SignInit(h, mech, key);
    case FRONT_HA_OP_VERIFY: return front_vendor_copy.C_VerifyInit(h, mech, key);
    case FRONT_HA_OP_ENCRYPT: return front_vendor_copy.C_EncryptInit(h, mech, key);
    case FRONT_HA_OP_DECRYPT: return front_vendor_copy.C_DecryptInit(h, mech, key);
    case FRONT_HA_OP_DIGEST: return front_vendor_copy.C_DigestInit(h, mech);
    case FRONT_HA_OP_SIGNREC: return front_vendor_copy.C_SignRecoverInit(h, mech, key);
    default: return front_vendor_copy.C_VerifyRecoverInit(h, mech, key);
    }
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

/* Starts op on member m: a session, the key there, the Init, the updates
 * kept. CKR_OK, or the answer that stopped it. */
static CK_RV start_direct(struct front_ha_slot *s, struct front_ha_op *op, int m)
{
    CK_OBJECT_HANDLE real = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE h;
    CK_RV rv = front_hamember_session(s, m, &h);
    if (rv != CKR_OK)
        return rv;
    for (int again = 1; rv == CKR_OK; again = 0) {
        if (op->key != CK_INVALID_HANDLE)
            rv = front_haobj_on(s, op->key, m, h, &real);
        if (rv == CKR_OK)
            rv = vendor_init(op->kind, h, &op->mech, real);
        if (!again || (rv != CKR_KEY_HANDLE_INVALID && rv != CKR_OBJECT_HANDLE_INVALID) ||
            front_haobj_owner(s, op->key) != -1)
            break;
        /* The member forgot the handle it gave (its sessions were all
         * closed meanwhile): its objects are looked up again, once. */
        atomic_fetch_add(&s->m[m].gen, 1);
        rv = CKR_OK;
    }
    if (rv == CKR_OK && op->blen > 0)
        rv = vendor_update(op->kind, h, op->buf, op->blen);
    if (rv != CKR_OK) {
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
    return start_direct(j->s, &j->op, j->m);
}

static void start_orphan(void *arg, CK_RV rv)
{
    struct start_job *j = arg;
    if (rv == CKR_OK)
        front_hamember_release(j->s, j->m, j->op.real, 1);
    free_start(j);
}

/* start_direct, on the member's worker with an operation timeout. */
static CK_RV start_on(struct front_ha_slot *s, struct front_ha_op *op, int m)
{
    struct start_job *j;
    CK_RV rv;
    if (s->g->op_timeout_ms <= 0)
        return start_direct(s, op, m);
    if ((j = calloc(1, sizeof *j)) == NULL)
        return CKR_HOST_MEMORY;
    *j = (struct start_job){s, m, *op};
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

/* Binds op to the best member for it, the next while members are lost or
 * stuck: CKR_OK, the deciding member's answer, or (no usable member holds
 * the key) CKR_KEY_HANDLE_INVALID (none has it) or CKR_DEVICE_ERROR. */
static CK_RV bind(struct front_ha_slot *s, struct front_ha_op *op, const char *fn)
{
    for (;;) {
        int m = front_hamember_pick(s, op->key != CK_INVALID_HANDLE ? has_key : NULL, &op->key, op->skip);
        CK_RV rv;
        if (m < 0) {
            int any = front_hamember_pick(s, NULL, NULL, op->skip);
            if (any >= 0)
                front_hamember_done(s, any);
            return any >= 0 && op->key != CK_INVALID_HANDLE ? CKR_KEY_HANDLE_INVALID : CKR_DEVICE_ERROR;
        }
        rv = start_on(s, op, m);
        if (rv == CKR_OK)
            return CKR_OK;
        front_hamember_done(s, m);
        if (rv == FRONT_HA_TIMED_OUT) {
            front_hanote("group=\"%s\" group_serial=%s member=%s event=stuck (no answer in %ld ms: no work until it "
                         "answers)", s->g->label, s->g->serial, s->g->text[m], s->g->op_timeout_ms);
            op->skip[m] = 1; /* stuck, not lost: no recovery thread to get stuck too */
            atomic_fetch_add(&front_ha_failovers, 1);
            continue;
        }
        if (rv == CKR_KEY_HANDLE_INVALID && op->key != CK_INVALID_HANDLE && !front_haobj_may_have(s, op->key, m)) {
            op->skip[m] = 1; /* not on that member after all */
            continue;
        }
        if (!haext_rv_failover(rv))
            return rv;
        front_halogin_lost(s, m, fn, rv);
        op->skip[m] = 1;
        atomic_fetch_add(&front_ha_failovers, 1);
    }
}

static void clear(struct front_ha_op *op)
{
    free(op->mech.pParameter);
    free(op->buf);
    memset(op, 0, sizeof *op);
}

void front_haop_end(struct front_ha_slot *s, struct front_ha_op *op)
{
    if (op->kind == 0)
        return;
    front_hamember_release(s, op->m, op->real, 0);
    front_hamember_done(s, op->m);
    clear(op);
}

CK_RV front_haop_init(struct front_ha_slot *s, struct front_ha_op *op, int kind, CK_MECHANISM_PTR mech,
                      CK_OBJECT_HANDLE key)
{
    CK_RV rv;
    if (op->kind != 0)
        return CKR_OPERATION_ACTIVE;
    if (mech == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->key = key;
    op->mech = *mech;
    op->mech.pParameter = NULL;
    if (mech->pParameter != NULL && mech->ulParameterLen > 0) {
        /* The bytes of the parameter (a parameter that points elsewhere
         * keeps pointing at the host's memory). */
        if ((op->mech.pParameter = malloc(mech->ulParameterLen)) == NULL) {
            clear(op);
            return CKR_HOST_MEMORY;
        }
        memcpy(op->mech.pParameter, mech->pParameter, mech->ulParameterLen);
    }
    rv = bind(s, op, "Init");
    if (rv != CKR_OK)
        clear(op);
    return rv;
}

/* The vendor's call of kind at stage on session h. */
static CK_RV vendor_call(int kind, int stage, CK_SESSION_HANDLE h, struct front_ha_args *a)
{
    CK_FUNCTION_LIST *v = &front_vendor_copy;
    switch (kind) {
    case FRONT_HA_OP_SIGN:
        return stage == FRONT_HA_SINGLE   ? v->C_Sign(h, a->in, a->inlen, a->out, a->outlen)
               : stage == FRONT_HA_UPDATE ? v->C_SignUpdate(h, a->in, a->inlen)
                                          : v->C_SignFinal(h, a->out, a->outlen);
    case FRONT_HA_OP_VERIFY: /* the signature is out, its length *outlen */
        return stage == FRONT_HA_SINGLE   ? v->C_Verify(h, a->in, a->inlen, a->out, *a->outlen)
               : stage == FRONT_HA_UPDATE ? v->C_VerifyUpdate(h, a->in, a->inlen)
                                          : v->C_VerifyFinal(h, a->out, *a->outlen);
    case FRONT_HA_OP_ENCRYPT:
        return stage == FRONT_HA_SINGLE   ? v->C_Encrypt(h, a->in, a->inlen, a->out, a->outlen)
               : stage == FRONT_HA_UPDATE ? v->C_EncryptUpdate(h, a->in, a->inlen, a->out, a->outlen)
                                          : v->C_EncryptFinal(h, a->out, a->outlen);
    case FRONT_HA_OP_DECRYPT:
        return stage == FRONT_HA_SINGLE   ? v->C_Decrypt(h, a->in, a->inlen, a->out, a->outlen)
               : stage == FRONT_HA_UPDATE ? v->C_DecryptUpdate(h, a->in, a->inlen, a->out, a->outlen)
                                          : v->C_DecryptFinal(h, a->out, a->outlen);
    case FRONT_HA_OP_DIGEST:
        return stage == FRONT_HA_SINGLE   ? v->C_Digest(h, a->in, a->inlen, a->out, a->outlen)
               : stage == FRONT_HA_UPDATE ? v->C_DigestUpdate(h, a->in, a->inlen)
                                          : v->C_DigestFinal(h, a->out, a->outlen);
    case FRONT_HA_OP_SIGNREC:
        return v->C_SignRecover(h, a->in, a->inlen, a->out, a->outlen);
    default:
        return v->C_VerifyRecover(h, a->in, a->inlen, a->out, a->outlen);
    }
}

/* A call left to a member's worker: its own copy of the data in, its own
 * buffer out (copied to the host's when it answered in time). */
struct call_job {
    struct front_ha_slot *s;
    int m, kind, stage, has_out;
    CK_SESSION_HANDLE h;
    unsigned char *in, *out;
    CK_ULONG inlen, outlen;
};

static void free_call(struct call_job *j)
{
    free(j->in);
    free(j->out);
    free(j);
}

static CK_RV call_fn(void *arg)
{
    struct call_job *j = arg;
    struct front_ha_args a = {j->in, j->inlen, j->has_out ? j->out : NULL, &j->outlen};
    return vendor_call(j->kind, j->stage, j->h, &a);
}

static void call_orphan(void *arg, CK_RV rv)
{
    struct call_job *j = arg;
    (void)rv;
    front_hamember_release(j->s, j->m, j->h, 1);
    free_call(j);
}

/* vendor_call on op's session, on the member's worker when the group has
 * an operation timeout: FRONT_HA_TIMED_OUT when it did not answer in time
 * (the session is then the worker's). */
static CK_RV call_on(struct front_ha_slot *s, struct front_ha_op *op, int kind, int stage, struct front_ha_args *a)
{
    int verify = kind == FRONT_HA_OP_VERIFY;
    struct call_job *j;
    CK_RV rv;
    if (s->g->op_timeout_ms <= 0)
        return vendor_call(kind, stage, op->real, a);
    if ((j = calloc(1, sizeof *j)) == NULL)
        return CKR_HOST_MEMORY;
    *j = (struct call_job){.s = s, .m = op->m, .kind = kind, .stage = stage, .h = op->real, .inlen = a->inlen};
    j->outlen = a->outlen != NULL ? *a->outlen : 0;
    j->has_out = a->out != NULL;
    if ((a->in != NULL && (j->in = malloc(a->inlen + 1)) == NULL) ||
        (j->has_out && (j->out = malloc(j->outlen + 1)) == NULL)) {
        free_call(j);
        return CKR_HOST_MEMORY;
    }
    if (a->in != NULL && a->inlen > 0)
        memcpy(j->in, a->in, a->inlen);
    if (verify && j->has_out && j->outlen > 0)
        memcpy(j->out, a->out, j->outlen); /* the signature to check */
    if (front_hawork_run(s, op->m, call_fn, call_orphan, j, &rv) != 0)
        return FRONT_HA_TIMED_OUT;
    if (!verify && a->outlen != NULL && (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL)) {
        if (rv == CKR_OK && a->out != NULL && j->outlen <= *a->outlen)
            memcpy(a->out, j->out, j->outlen);
        *a->outlen = j->outlen;
    }
    free_call(j);
    return rv;
}

/* Whether the operation goes on after rv (a length query or
 * CKR_BUFFER_TOO_SMALL keeps it; any other end ends it: PKCS#11 5.2). */
static int goes_on(int kind, int stage, CK_RV rv, const struct front_ha_args *a)
{
    if (stage == FRONT_HA_UPDATE)
        return rv == CKR_OK;
    if (kind == FRONT_HA_OP_VERIFY)
        return 0;
    return rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && a->out == NULL);
}

/* Before an update: keeps its data for a replay, or pins the operation. */
static void keep(struct front_ha_op *op, const struct front_ha_args *a)
{
    unsigned long limit = front_haconf()->replay;
    if (op->pinned)
        return;
    if (op->kind == FRONT_HA_OP_ENCRYPT || op->kind == FRONT_HA_OP_DECRYPT || op->blen + a->inlen > limit ||
        (a->in == NULL && a->inlen > 0)) {
        op->pinned = 1;
        free(op->buf);
        op->buf = NULL;
        op->blen = op->bcap = 0;
        return;
    }
    if (op->blen + a->inlen > op->bcap) {
        CK_ULONG cap = op->bcap ? op->bcap : 4096;
        unsigned char *g;
        while (cap < op->blen + a->inlen)
            cap *= 2;
        if ((g = realloc(op->buf, cap)) == NULL) {
            op->pinned = 1;
            return;
        }
        op->buf = g;
        op->bcap = cap;
    }
    if (a->inlen > 0)
        memcpy(op->buf + op->blen, a->in, a->inlen);
    op->blen += a->inlen;
}

CK_RV front_haop_call(struct front_ha_slot *s, struct front_ha_op *op, int kind, int stage, struct front_ha_args *a)
{
    if (op->kind != kind)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (stage == FRONT_HA_UPDATE)
        keep(op, a);
    for (;;) {
        CK_RV rv = call_on(s, op, kind, stage, a);
        int m = op->m;
        if (rv != FRONT_HA_TIMED_OUT && !haext_rv_failover(rv)) {
            if (stage == FRONT_HA_UPDATE && rv == CKR_OK)
                op->updates++;
            if (!goes_on(kind, stage, rv, a))
                front_haop_end(s, op);
            return rv;
        }
        /* Its member is lost (or stuck): the next one, from the Init. */
        if (rv != FRONT_HA_TIMED_OUT) {
            front_hamember_release(s, m, op->real, 1);
            front_halogin_lost(s, m, "operation", rv);
        }
        front_hamember_done(s, m);
        op->skip[m] = 1;
        atomic_fetch_add(&front_ha_failovers, 1);
        if ((op->pinned && (op->updates > 0 || stage == FRONT_HA_UPDATE)) || bind(s, op, "operation") != CKR_OK) {
            clear(op);
            return CKR_DEVICE_ERROR;
        }
        if (stage == FRONT_HA_UPDATE) {
            op->updates++;
            return CKR_OK; /* the replay included this update's data */
        }
    }
}
