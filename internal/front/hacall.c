/*
 * hacall.c - the calls of an HA slot's operation after its Init (haop.c):
 * C_Sign, C_SignUpdate, C_SignFinal and their kin go to the session of
 * ours the Init chose. When its member answers a connection-class CK_RV
 * (or, with an operation timeout, does not answer), the operation starts
 * again on the next member, its Init included, and for a multi-part sign,
 * verify or digest the data of its updates so far (kept up to
 * LibHAExtReplayLimit bytes; past that the operation is pinned). Multi-part
 * encrypt and decrypt are pinned from their first update, and end with
 * CKR_DEVICE_ERROR when their member is lost, as on Luna. Any other answer
 * goes back to the host as it is.
 */
#include <stdlib.h>
#include <string.h>

#include "ha.h"
#include "state.h"

/* The vendor's call of kind at stage on session h, but a single-part sign
 * or verify. */
static __attribute__((noinline)) CK_RV vendor_other(int kind, int stage, CK_SESSION_HANDLE h, struct front_ha_args *a)
{
    CK_FUNCTION_LIST *v = &front_vendor_copy;
    int up = stage == FRONT_HA_UPDATE, one = stage == FRONT_HA_SINGLE;
    switch (kind) {
    case FRONT_HA_OP_SIGN:
        return up ? v->C_SignUpdate(h, a->in, a->inlen) : v->C_SignFinal(h, a->out, a->outlen);
    case FRONT_HA_OP_VERIFY: /* the signature is out, its length *outlen */
        return up ? v->C_VerifyUpdate(h, a->in, a->inlen) : v->C_VerifyFinal(h, a->out, *a->outlen);
    case FRONT_HA_OP_ENCRYPT:
        return one  ? v->C_Encrypt(h, a->in, a->inlen, a->out, a->outlen)
               : up ? v->C_EncryptUpdate(h, a->in, a->inlen, a->out, a->outlen)
                    : v->C_EncryptFinal(h, a->out, a->outlen);
    case FRONT_HA_OP_DECRYPT:
        return one  ? v->C_Decrypt(h, a->in, a->inlen, a->out, a->outlen)
               : up ? v->C_DecryptUpdate(h, a->in, a->inlen, a->out, a->outlen)
                    : v->C_DecryptFinal(h, a->out, a->outlen);
    case FRONT_HA_OP_DIGEST:
        return one  ? v->C_Digest(h, a->in, a->inlen, a->out, a->outlen)
               : up ? v->C_DigestUpdate(h, a->in, a->inlen)
                    : v->C_DigestFinal(h, a->out, a->outlen);
    case FRONT_HA_OP_SIGNREC:
        return v->C_SignRecover(h, a->in, a->inlen, a->out, a->outlen);
    default:
        return v->C_VerifyRecover(h, a->in, a->inlen, a->out, a->outlen);
    }
}

/* The vendor's call of kind at stage on session h: a single-part sign and
 * verify without a jump table (one more line to load). */
static inline __attribute__((always_inline)) CK_RV vendor_call(int kind, int stage, CK_SESSION_HANDLE h,
                                                               struct front_ha_args *a)
{
    if (FRONT_LIKELY(stage == FRONT_HA_SINGLE) && kind == FRONT_HA_OP_SIGN)
        return front_vendor_copy.C_Sign(h, a->in, a->inlen, a->out, a->outlen);
    if (FRONT_LIKELY(stage == FRONT_HA_SINGLE) && kind == FRONT_HA_OP_VERIFY)
        return front_vendor_copy.C_Verify(h, a->in, a->inlen, a->out, *a->outlen);
    return vendor_other(kind, stage, h, a);
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

/* vendor_call on op's session on the member's worker, with an operation
 * timeout: FRONT_HA_TIMED_OUT when it did not answer in time (the session
 * is then the worker's). */
FRONT_COLD static CK_RV call_job(struct front_ha_slot *s, struct front_ha_op *op, int kind, int stage,
                                 struct front_ha_args *a)
{
    int verify = kind == FRONT_HA_OP_VERIFY;
    struct call_job *j;
    CK_RV rv;
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
FRONT_HOT static int goes_on(int kind, int stage, CK_RV rv, const struct front_ha_args *a)
{
    if (stage == FRONT_HA_UPDATE)
        return rv == CKR_OK;
    if (kind == FRONT_HA_OP_VERIFY)
        return 0;
    return rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && a->out == NULL);
}

/* Before an update: keeps its data for a replay, or pins the operation. */
static __attribute__((noinline)) void keep(struct front_ha_op *op, const struct front_ha_args *a)
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

/* op's member answered rv, a connection-class answer, or did not answer
 * in time: op starts again on the next member, its updates replayed.
 * CKR_OK, or CKR_DEVICE_ERROR when it cannot (it is then over). */
FRONT_COLD static CK_RV move(struct front_ha_slot *s, struct front_ha_op *op, int stage, CK_RV rv)
{
    int m = op->m;
    if (rv != FRONT_HA_TIMED_OUT) {
        front_hamember_release(s, m, op->real, 1);
        front_halogin_lost(s, m, "operation", rv);
    }
    front_hamember_done(s, m);
    op->skip |= 1U << m;
    atomic_fetch_add(&front_ha_failovers, 1);
    if ((op->pinned && (op->updates > 0 || stage == FRONT_HA_UPDATE)) || front_haop_bind(s, op, "operation") != CKR_OK) {
        front_haop_clear(op);
        return CKR_DEVICE_ERROR;
    }
    return CKR_OK;
}

FRONT_HOT CK_RV front_haop_call(struct front_ha_slot *s, struct front_ha_op *op, int kind, int stage,
                                struct front_ha_args *a)
{
    if (FRONT_UNLIKELY(op->kind != kind))
        return CKR_OPERATION_NOT_INITIALIZED;
    if (stage == FRONT_HA_UPDATE)
        keep(op, a);
    for (;;) {
        CK_RV rv = FRONT_LIKELY(s->op_timeout_ms <= 0) ? vendor_call(kind, stage, op->real, a)
                                                       : call_job(s, op, kind, stage, a);
        if (FRONT_LIKELY(rv != FRONT_HA_TIMED_OUT && !haext_rv_failover(rv))) {
            if (stage == FRONT_HA_UPDATE && rv == CKR_OK)
                op->updates++;
            if (!goes_on(kind, stage, rv, a))
                front_haop_end(s, op);
            return rv;
        }
        /* Its member is lost (or stuck): the next one, from the Init. */
        if (move(s, op, stage, rv) != CKR_OK)
            return CKR_DEVICE_ERROR;
        if (stage == FRONT_HA_UPDATE) {
            op->updates++;
            return CKR_OK; /* the replay included this update's data */
        }
    }
}
