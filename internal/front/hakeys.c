/*
 * hakeys.c - the host's object and key calls on an HA session, and the
 * random numbers: each one call on the member picked for its objects
 * (haop.c's front_haop_once), issued again on the next member holding
 * them when that member is lost. Objects the host makes through the HA
 * slot are session objects of the member that made it; their calls go
 * there only. Token objects are read, never written (hasess.c says why).
 */
#include <stdlib.h>

#include "ha.h"
#include "state.h"

#define SESS(e) \
    struct front_ha_sess *e = front_haslot_session(hSession); \
    if (e == NULL) \
    return CKR_SESSION_HANDLE_INVALID

static int has_key(struct front_ha_slot *s, int m, void *arg)
{
    struct front_ha_obj *x = front_haobj_get(s, *(CK_OBJECT_HANDLE *)arg);
    return x != NULL && front_haobj_x_may_have(s, x, m);
}

/* One call on the member picked for keys[0..nkeys) (the front's handles,
 * mapped to that member's in real[]), issued again on the next member
 * holding them when that member is lost; *where (if not NULL) gets the
 * member it ran on. It waits for its member (no operation timeout). */
static CK_RV once(struct front_ha_slot *s, const CK_OBJECT_HANDLE *keys, int nkeys, front_haop_fn fn, void *arg,
                  int *where)
{
    unsigned skip = 0;
    CK_OBJECT_HANDLE key0 = nkeys > 0 ? keys[0] : CK_INVALID_HANDLE;
    for (;;) {
        CK_OBJECT_HANDLE real[2] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE};
        CK_SESSION_HANDLE h;
        int m = front_hamember_pick(s, nkeys > 0 ? has_key : NULL, &key0, skip);
        struct front_ha_obj *x;
        CK_RV rv;
        if (m < 0)
            return CKR_DEVICE_ERROR;
        rv = front_hamember_session(s, m, &h);
        for (int i = 0; i < nkeys && i < 2 && rv == CKR_OK; i++)
            rv = (x = front_haobj_get(s, keys[i])) == NULL ? CKR_OBJECT_HANDLE_INVALID
                                                           : front_haobj_x_on(s, x, m, h, &real[i]);
        if (rv == CKR_OK)
            rv = fn(h, real, arg);
        else if (rv == CKR_KEY_HANDLE_INVALID) {
            front_hamember_release(s, m, h, 0);
            front_hamember_done(s, m);
            skip |= 1U << m; /* a second key this member lacks */
            continue;
        }
        if (!haext_rv_failover(rv)) {
            front_hamember_release(s, m, h, haext_rv_failover(rv));
            front_hamember_done(s, m);
            if (where != NULL)
                *where = m;
            return rv;
        }
        front_hamember_release(s, m, h, 1);
        front_hamember_done(s, m);
        front_halogin_lost(s, m, "call", rv);
        skip |= 1U << m;
        atomic_fetch_add(&front_ha_failovers, 1);
    }
}

/* Whether template t asks for a token object (CKA_TOKEN = TRUE). */
static int token_template(CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n && t != NULL; i++)
        if (t[i].type == CKA_TOKEN && t[i].pValue != NULL && t[i].ulValueLen == sizeof(CK_BBOOL) &&
            *(CK_BBOOL *)t[i].pValue == CK_TRUE)
            return 1;
    return 0;
}

static CK_RV no_token_write(const char *fn)
{
    (void)fn;
    return front_haslot_refuse(CKR_TEMPLATE_INCONSISTENT,
                               "token objects cannot be created through an HA slot (replicated writes are not "
                               "supported): provision identical keys on every member, or make a session object");
}

static CK_RV prohibited(void)
{
    return front_haslot_refuse(CKR_ACTION_PROHIBITED,
                               "token objects cannot be copied, changed or destroyed through an HA slot: do it on "
                               "every member through its own slot");
}

/* The arguments of one call, whatever it is. */
struct call {
    CK_MECHANISM_PTR mech;
    CK_ATTRIBUTE_PTR t, t2;
    CK_ULONG n, n2;
    CK_BYTE_PTR p;
    CK_ULONG len;
    CK_ULONG_PTR plen;
    CK_OBJECT_HANDLE out, out2;
};

static CK_RV get_attr(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    return front_vendor_copy.C_GetAttributeValue(h, r[0], c->t, c->n);
}

static CK_RV get_size(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    return front_vendor_copy.C_GetObjectSize(h, r[0], ((struct call *)a)->plen);
}

static CK_RV set_attr(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    return front_vendor_copy.C_SetAttributeValue(h, r[0], c->t, c->n);
}

static CK_RV copy_obj(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    return front_vendor_copy.C_CopyObject(h, r[0], c->t, c->n, &c->out);
}

static CK_RV destroy_obj(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    (void)a;
    return front_vendor_copy.C_DestroyObject(h, r[0]);
}

static CK_RV create_obj(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    (void)r;
    return front_vendor_copy.C_CreateObject(h, c->t, c->n, &c->out);
}

static CK_RV gen_key(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    (void)r;
    return front_vendor_copy.C_GenerateKey(h, c->mech, c->t, c->n, &c->out);
}

static CK_RV gen_pair(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    (void)r;
    return front_vendor_copy.C_GenerateKeyPair(h, c->mech, c->t, c->n, c->t2, c->n2, &c->out, &c->out2);
}

static CK_RV wrap(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    return front_vendor_copy.C_WrapKey(h, c->mech, r[0], r[1], c->p, c->plen);
}

static CK_RV unwrap(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    return front_vendor_copy.C_UnwrapKey(h, c->mech, r[0], c->p, c->len, c->t, c->n, &c->out);
}

static CK_RV derive(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    return front_vendor_copy.C_DeriveKey(h, c->mech, r[0], c->t, c->n, &c->out);
}

static CK_RV seed(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    (void)r;
    return front_vendor_copy.C_SeedRandom(h, c->p, c->len);
}

static CK_RV random_bytes(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *r, void *a)
{
    struct call *c = a;
    (void)r;
    return front_vendor_copy.C_GenerateRandom(h, c->p, c->len);
}

/* An object the member made: the front's handle in *ph (0 when it could not
 * be recorded: the object is destroyed again). */
static CK_RV made(struct front_ha_slot *s, int m, CK_OBJECT_HANDLE real, CK_OBJECT_HANDLE_PTR ph)
{
    *ph = front_haobj_add_session(s, m, real);
    return *ph != 0 ? CKR_OK : CKR_HOST_MEMORY;
}

CK_RV front_ha_C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    struct call c = {.t = t, .n = n};
    SESS(e);
    if (front_haobj_owner(e->s, o) == -2)
        return CKR_OBJECT_HANDLE_INVALID;
    return once(e->s, &o, 1, get_attr, &c, NULL);
}

CK_RV front_ha_C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, CK_ULONG_PTR n)
{
    struct call c = {.plen = n};
    SESS(e);
    if (front_haobj_owner(e->s, o) == -2)
        return CKR_OBJECT_HANDLE_INVALID;
    return once(e->s, &o, 1, get_size, &c, NULL);
}

/* A call that changes object o: a session object's goes to its member. */
static CK_RV change(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, front_haop_fn fn, struct call *c, int *m)
{
    int owner;
    SESS(e);
    owner = front_haobj_owner(e->s, o);
    if (owner == -2)
        return CKR_OBJECT_HANDLE_INVALID;
    if (owner < 0)
        return prohibited();
    return once(e->s, &o, 1, fn, c, m);
}

CK_RV front_ha_C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    struct call c = {.t = t, .n = n};
    if (token_template(t, n))
        return prohibited();
    return change(hSession, o, set_attr, &c, NULL);
}

CK_RV front_ha_C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o)
{
    struct call c = {0};
    return change(hSession, o, destroy_obj, &c, NULL);
}

CK_RV front_ha_C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                            CK_OBJECT_HANDLE_PTR ph)
{
    struct call c = {.t = t, .n = n};
    int m = -1;
    CK_RV rv;
    SESS(e);
    if (ph == NULL)
        return CKR_ARGUMENTS_BAD;
    if (token_template(t, n))
        return no_token_write("C_CopyObject");
    rv = change(hSession, o, copy_obj, &c, &m);
    return rv == CKR_OK ? made(e->s, m, c.out, ph) : rv;
}

/* A call that makes an object from keys (nkeys of them). */
static CK_RV make(CK_SESSION_HANDLE hSession, const CK_OBJECT_HANDLE *keys, int nkeys, front_haop_fn fn,
                  struct call *c, CK_OBJECT_HANDLE_PTR ph, CK_OBJECT_HANDLE_PTR ph2)
{
    int m = -1;
    CK_RV rv;
    SESS(e);
    if (ph == NULL || (ph2 == NULL && fn == gen_pair))
        return CKR_ARGUMENTS_BAD;
    if (token_template(c->t, c->n) || token_template(c->t2, c->n2))
        return no_token_write("make");
    for (int i = 0; i < nkeys; i++)
        if (front_haobj_owner(e->s, keys[i]) == -2)
            return CKR_KEY_HANDLE_INVALID;
    rv = once(e->s, keys, nkeys, fn, c, &m);
    if (rv == CKR_OK && ph2 != NULL && made(e->s, m, c->out2, ph2) != CKR_OK)
        return CKR_HOST_MEMORY;
    return rv == CKR_OK ? made(e->s, m, c->out, ph) : rv;
}

CK_RV front_ha_C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph)
{
    struct call c = {.t = t, .n = n};
    return make(hSession, NULL, 0, create_obj, &c, ph, NULL);
}

CK_RV front_ha_C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                             CK_OBJECT_HANDLE_PTR ph)
{
    struct call c = {.mech = mech, .t = t, .n = n};
    return make(hSession, NULL, 0, gen_key, &c, ph, NULL);
}

CK_RV front_ha_C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR t,
                                 CK_ULONG n, CK_ATTRIBUTE_PTR t2, CK_ULONG n2, CK_OBJECT_HANDLE_PTR ph,
                                 CK_OBJECT_HANDLE_PTR ph2)
{
    struct call c = {.mech = mech, .t = t, .n = n, .t2 = t2, .n2 = n2};
    return make(hSession, NULL, 0, gen_pair, &c, ph, ph2);
}

CK_RV front_ha_C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE k, CK_BYTE_PTR p,
                           CK_ULONG len, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph)
{
    struct call c = {.mech = mech, .t = t, .n = n, .p = p, .len = len};
    return make(hSession, &k, 1, unwrap, &c, ph, NULL);
}

CK_RV front_ha_C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE k,
                           CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph)
{
    struct call c = {.mech = mech, .t = t, .n = n};
    return make(hSession, &k, 1, derive, &c, ph, NULL);
}

CK_RV front_ha_C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k,
                         CK_BYTE_PTR p, CK_ULONG_PTR plen)
{
    struct call c = {.mech = mech, .p = p, .plen = plen};
    CK_OBJECT_HANDLE keys[2] = {wk, k};
    SESS(e);
    if (front_haobj_owner(e->s, wk) == -2 || front_haobj_owner(e->s, k) == -2)
        return CKR_KEY_HANDLE_INVALID;
    return once(e->s, keys, 2, wrap, &c, NULL);
}

CK_RV front_ha_C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR p, CK_ULONG len)
{
    struct call c = {.p = p, .len = len};
    SESS(e);
    return once(e->s, NULL, 0, seed, &c, NULL);
}

CK_RV front_ha_C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR p, CK_ULONG len)
{
    struct call c = {.p = p, .len = len};
    SESS(e);
    return once(e->s, NULL, 0, random_bytes, &c, NULL);
}
