/*
 * haobj.c - the objects of an HA slot: the front's handles, each mapped to
 * one object per member. A token object is the same object on every member
 * when its CKA_CLASS, CKA_KEY_TYPE, CKA_ID and CKA_LABEL are; it is looked
 * up on a member when first needed there, and again after the member came
 * back. An object that is missing or ambiguous (two matches) on a member is
 * not on that member: its operations go to the others, and the drift is
 * noted once per member and object (front_haobj_note). A session object
 * made through the HA slot lives on the member that made it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ha.h"
#include "state.h"

#define MAX_VALUE 256 /* CKA_ID and CKA_LABEL bytes compared */

enum { UNKNOWN, HAVE, MISSING, AMBIGUOUS };

/* An object: where it is on each member first (what an operation reads),
 * then what it is. */
struct front_ha_obj {
    int owner; /* -1: a token object; else the member of a session object */
    struct {
        CK_OBJECT_HANDLE real;
        unsigned long gen;
        unsigned char state, noted;
    } on[FRONT_HA_MAX_MEMBERS];
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE kt;
    CK_ULONG idlen, labellen;
    unsigned char id[MAX_VALUE], label[MAX_VALUE];
};

/* Written under mu, read without it: o never moves (room for MAX_OBJS), n
 * grows after its entry is in place, and an object's on[m].gen is written
 * after its on[m].state and on[m].real (a reader that sees the gen sees
 * them). */
#define MAX_OBJS 16384
struct front_ha_objtab {
    pthread_mutex_t mu;
    struct front_ha_obj **o;
    CK_ULONG n;
};

static pthread_mutex_t tab_mu = PTHREAD_MUTEX_INITIALIZER;

FRONT_HOT static struct front_ha_objtab *table(struct front_ha_slot *s)
{
    struct front_ha_objtab *t = __atomic_load_n(&s->objs, __ATOMIC_ACQUIRE);
    if (t != NULL) /* made once, never freed */
        return t;
    pthread_mutex_lock(&tab_mu);
    /* The handles right after the header: the first objects' entries
     * share its page. */
    if (s->objs == NULL && (t = calloc(1, sizeof *t + MAX_OBJS * sizeof *t->o)) != NULL) {
        t->o = (struct front_ha_obj **)(t + 1);
        pthread_mutex_init(&t->mu, NULL);
        __atomic_store_n(&s->objs, t, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&tab_mu);
    return s->objs;
}

/* The object of handle o, or NULL (locked or not). */
FRONT_HOT static struct front_ha_obj *get(struct front_ha_objtab *t, CK_OBJECT_HANDLE o)
{
    CK_ULONG i = (o & ~FRONT_HA_OBJ_TAG) - 1;
    if ((o & 0xFF000000UL) != FRONT_HA_OBJ_TAG || o > 0xFFFFFFFFUL || i >= __atomic_load_n(&t->n, __ATOMIC_ACQUIRE))
        return NULL;
    return __atomic_load_n(&t->o[i], __ATOMIC_ACQUIRE);
}

/* Locked: adds x, returns its handle (0: no room). */
static CK_OBJECT_HANDLE add(struct front_ha_objtab *t, struct front_ha_obj *x)
{
    if (t->n == MAX_OBJS)
        return 0;
    __atomic_store_n(&t->o[t->n], x, __ATOMIC_RELEASE);
    __atomic_store_n(&t->n, t->n + 1, __ATOMIC_RELEASE);
    return FRONT_HA_OBJ_TAG | t->n;
}

/* Locked: records where x is on member m, its gen last. */
static void place(struct front_ha_obj *x, int m, int state, CK_OBJECT_HANDLE real, unsigned long gen)
{
    x->on[m].real = real;
    x->on[m].state = (unsigned char)state;
    __atomic_store_n(&x->on[m].gen, gen, __ATOMIC_RELEASE);
}

static void note(struct front_ha_slot *s, int m, const struct front_ha_obj *x, const char *what)
{
    int n = (int)(x->labellen > 64 ? 64 : x->labellen);
    front_hanote_drift("HA slot %lu (%s): member %s: object class 0x%lx label \"%.*s\" is %s there",
                       (unsigned long)s->id, s->g->label, s->g->text[m], (unsigned long)x->cls, n,
                       (const char *)x->label, what);
    front_hanote("group=\"%s\" group_serial=%s member=%s event=drift object_class=0x%lx label=\"%.*s\" (%s there: "
                 "its operations go to the other members)", s->g->label, s->g->serial, s->g->text[m],
                 (unsigned long)x->cls, n, (const char *)x->label, what);
}


/* x on member m (session h): HAVE, MISSING, AMBIGUOUS; UNKNOWN and *rv. */
static int lookup(const struct front_ha_obj *x, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *real, CK_RV *rv)
{
    CK_BBOOL tok = CK_TRUE;
    CK_OBJECT_CLASS cls = x->cls;
    CK_KEY_TYPE kt = x->kt;
    CK_ATTRIBUTE t[] = {{CKA_TOKEN, &tok, sizeof tok},
                        {CKA_CLASS, &cls, sizeof cls},
                        {CKA_ID, (void *)x->id, x->idlen},
                        {CKA_LABEL, (void *)x->label, x->labellen},
                        {CKA_KEY_TYPE, &kt, sizeof kt}};
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    CK_ULONG nt = kt == (CK_KEY_TYPE)-1 ? 4 : 5;
    *rv = front_vendor_copy.C_FindObjectsInit(h, t, nt);
    if (*rv != CKR_OK)
        return UNKNOWN;
    *rv = front_vendor_copy.C_FindObjects(h, found, 2, &n);
    front_vendor_copy.C_FindObjectsFinal(h);
    if (*rv != CKR_OK)
        return UNKNOWN;
    *real = found[0];
    return n == 1 ? HAVE : n == 0 ? MISSING : AMBIGUOUS;
}

FRONT_HOT struct front_ha_obj *front_haobj_get(struct front_ha_slot *s, CK_OBJECT_HANDLE o)
{
    struct front_ha_objtab *t = table(s);
    return t != NULL ? get(t, o) : NULL;
}

/* x's lookup on member m, once per object and member (and comeback). */
FRONT_COLD static CK_RV on_lookup(struct front_ha_slot *s, struct front_ha_obj *x, int m, unsigned long gen,
                                  CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *out)
{
    struct front_ha_objtab *t = table(s);
    struct front_ha_obj copy;
    CK_OBJECT_HANDLE real = CK_INVALID_HANDLE;
    CK_RV rv;
    int st;
    pthread_mutex_lock(&t->mu);
    copy = *x;
    pthread_mutex_unlock(&t->mu);
    st = lookup(&copy, h, &real, &rv);
    if (st == UNKNOWN)
        return rv;
    pthread_mutex_lock(&t->mu);
    place(x, m, st, real, gen);
    if (st != HAVE && !x->on[m].noted) {
        x->on[m].noted = 1;
        note(s, m, x, st == MISSING ? "missing" : "ambiguous (two or more match)");
    }
    pthread_mutex_unlock(&t->mu);
    *out = real;
    return st == HAVE ? CKR_OK : CKR_KEY_HANDLE_INVALID;
}

FRONT_HOT CK_RV front_haobj_x_on(struct front_ha_slot *s, struct front_ha_obj *x, int m, CK_SESSION_HANDLE h,
                                 CK_OBJECT_HANDLE *out)
{
    unsigned long gen = atomic_load_explicit(&s->m[m].gen, memory_order_acquire);
    if (x->owner >= 0) {
        *out = x->on[m].real;
        return x->owner == m ? CKR_OK : CKR_KEY_HANDLE_INVALID;
    }
    if (__atomic_load_n(&x->on[m].gen, __ATOMIC_ACQUIRE) == gen && x->on[m].state != UNKNOWN) {
        *out = x->on[m].real;
        return x->on[m].state == HAVE ? CKR_OK : CKR_KEY_HANDLE_INVALID;
    }
    return on_lookup(s, x, m, gen, h, out);
}

FRONT_HOT int front_haobj_x_may_have(struct front_ha_slot *s, const struct front_ha_obj *x, int m)
{
    if (x->owner >= 0)
        return x->owner == m;
    return !(__atomic_load_n(&x->on[m].gen, __ATOMIC_ACQUIRE) == atomic_load(&s->m[m].gen) &&
             (x->on[m].state == MISSING || x->on[m].state == AMBIGUOUS));
}

int front_haobj_owner(struct front_ha_slot *s, CK_OBJECT_HANDLE o)
{
    struct front_ha_obj *x = front_haobj_get(s, o);
    return x != NULL ? x->owner : -2;
}

CK_OBJECT_HANDLE front_haobj_add_session(struct front_ha_slot *s, int m, CK_OBJECT_HANDLE real)
{
    struct front_ha_objtab *t = table(s);
    struct front_ha_obj *x = calloc(1, sizeof *x);
    CK_OBJECT_HANDLE o = 0;
    if (t == NULL || x == NULL) {
        free(x);
        return 0;
    }
    x->owner = m;
    x->on[m].real = real;
    x->on[m].state = HAVE;
    pthread_mutex_lock(&t->mu);
    o = add(t, x);
    pthread_mutex_unlock(&t->mu);
    if (o == 0)
        free(x);
    return o;
}

/* Locked: the token object of identity id, added when new (0: no memory). */
static CK_OBJECT_HANDLE identity(struct front_ha_objtab *t, const struct front_ha_obj *id)
{
    struct front_ha_obj *x;
    CK_OBJECT_HANDLE o;
    for (CK_ULONG i = 0; i < t->n; i++) {
        x = t->o[i];
        if (x != NULL && x->owner < 0 && x->cls == id->cls && x->kt == id->kt && x->idlen == id->idlen &&
            x->labellen == id->labellen && memcmp(x->id, id->id, id->idlen) == 0 &&
            memcmp(x->label, id->label, id->labellen) == 0)
            return FRONT_HA_OBJ_TAG | (i + 1);
    }
    if ((x = malloc(sizeof *x)) == NULL)
        return 0;
    *x = *id;
    memset(x->on, 0, sizeof x->on); /* UNKNOWN everywhere */
    if ((o = add(t, x)) == 0)
        free(x);
    return o;
}

/* Reads object real's identity on session h into id: 1 for a token object,
 * 0 for a session object, -1 on failure. */
static int read_identity(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE real, struct front_ha_obj *id)
{
    CK_BBOOL tok = CK_FALSE;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &id->cls, sizeof id->cls},
                        {CKA_KEY_TYPE, &id->kt, sizeof id->kt},
                        {CKA_ID, id->id, sizeof id->id},
                        {CKA_LABEL, id->label, sizeof id->label},
                        {CKA_TOKEN, &tok, sizeof tok}};
    CK_RV rv;
    memset(id, 0, sizeof *id);
    id->owner = -1;
    rv = front_vendor_copy.C_GetAttributeValue(h, real, a, 5);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE)
        return -1;
    if (a[0].ulValueLen == CK_UNAVAILABLE_INFORMATION || a[2].ulValueLen > MAX_VALUE || a[3].ulValueLen > MAX_VALUE)
        return -1;
    if (a[1].ulValueLen == CK_UNAVAILABLE_INFORMATION)
        id->kt = (CK_KEY_TYPE)-1;
    id->idlen = a[2].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : a[2].ulValueLen;
    id->labellen = a[3].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : a[3].ulValueLen;
    return tok == CK_TRUE;
}

/* Member m has object real (found with session h): its front handle
 * appended to *out, once. */
static void found_one(struct front_ha_slot *s, int m, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE real,
                      struct front_ha_objtab *t, CK_OBJECT_HANDLE **out, CK_ULONG *count)
{
    struct front_ha_obj id;
    CK_OBJECT_HANDLE o = 0;
    int tok = read_identity(h, real, &id);
    CK_ULONG i;
    if (tok < 0)
        return;
    pthread_mutex_lock(&t->mu);
    if (tok) {
        struct front_ha_obj *x;
        if ((o = identity(t, &id)) != 0 && (x = get(t, o)) != NULL) {
            int again = x->on[m].gen == atomic_load(&s->m[m].gen) && x->on[m].state == HAVE && x->on[m].real != real;
            place(x, m, again ? AMBIGUOUS : HAVE, real, atomic_load(&s->m[m].gen));
        }
    } else {
        for (i = 0; i < t->n && o == 0; i++)
            if (t->o[i] != NULL && t->o[i]->owner == m && t->o[i]->on[m].real == real)
                o = FRONT_HA_OBJ_TAG | (i + 1);
    }
    pthread_mutex_unlock(&t->mu);
    for (i = 0; i < *count; i++)
        if ((*out)[i] == o)
            return;
    if (o != 0 && (*count & 63) == 0) {
        CK_OBJECT_HANDLE *g = realloc(*out, (*count + 64) * sizeof *g);
        if (g == NULL)
            return;
        *out = g;
    }
    if (o != 0)
        (*out)[(*count)++] = o;
}

/* Member m's part of a search: CKR_OK, or the vendor's answer. */
static CK_RV find_on(struct front_ha_slot *s, int m, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n, CK_OBJECT_HANDLE **out,
                     CK_ULONG *count)
{
    struct front_ha_objtab *t = table(s);
    CK_OBJECT_HANDLE batch[64];
    CK_SESSION_HANDLE h;
    CK_ULONG got;
    CK_RV rv = t == NULL ? CKR_HOST_MEMORY : front_hamember_session(s, m, &h);
    if (rv != CKR_OK)
        return rv;
    rv = front_vendor_copy.C_FindObjectsInit(h, tmpl, n);
    while (rv == CKR_OK) {
        rv = front_vendor_copy.C_FindObjects(h, batch, 64, &got);
        if (rv != CKR_OK || got == 0)
            break;
        for (CK_ULONG i = 0; i < got; i++)
            found_one(s, m, h, batch[i], t, out, count);
    }
    if (rv == CKR_OK)
        rv = front_vendor_copy.C_FindObjectsFinal(h);
    front_hamember_release(s, m, h, haext_rv_failover(rv));
    return rv;
}

/* After a search: a token object found on some members and not on member
 * m, which answered, is missing there. */
static void mark_missing(struct front_ha_slot *s, const int *answered, const CK_OBJECT_HANDLE *o, CK_ULONG n)
{
    struct front_ha_objtab *t = table(s);
    pthread_mutex_lock(&t->mu);
    for (CK_ULONG i = 0; i < n; i++) {
        struct front_ha_obj *x = get(t, o[i]);
        if (x == NULL || x->owner >= 0)
            continue;
        for (int m = 0; m < s->nmembers; m++) {
            unsigned long gen = atomic_load(&s->m[m].gen);
            if (!answered[m] || (x->on[m].gen == gen && x->on[m].state != UNKNOWN && x->on[m].state != MISSING))
                continue;
            place(x, m, MISSING, x->on[m].real, gen);
            if (!x->on[m].noted) {
                x->on[m].noted = 1;
                note(s, m, x, "missing");
            }
        }
    }
    pthread_mutex_unlock(&t->mu);
}

CK_RV front_haobj_find(struct front_ha_slot *s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n, CK_OBJECT_HANDLE **out,
                       CK_ULONG *count)
{
    int answered[FRONT_HA_MAX_MEMBERS] = {0}, any = 0;
    CK_RV first = CKR_TOKEN_NOT_PRESENT;
    *out = NULL;
    *count = 0;
    for (int m = 0; m < s->nmembers; m++) {
        CK_RV rv;
        if (!atomic_load(&s->m[m].up))
            continue;
        rv = find_on(s, m, tmpl, n, out, count);
        if (haext_rv_failover(rv)) {
            front_halogin_lost(s, m, "C_FindObjects", rv);
            continue;
        }
        if (rv != CKR_OK && !any) {
            first = rv; /* the template: every member would say the same */
            break;
        }
        answered[m] = any = 1;
    }
    if (!any) {
        free(*out);
        *out = NULL;
        *count = 0;
        return first;
    }
    mark_missing(s, answered, *out, *count);
    return CKR_OK;
}

void front_haobj_forget(struct front_ha_slot *s, int all)
{
    struct front_ha_objtab *t;
    if (all == 2) { /* the fork child: the locks may be lost threads' */
        pthread_mutex_init(&tab_mu, NULL);
        if (s->objs != NULL)
            pthread_mutex_init(&s->objs->mu, NULL);
    }
    if ((t = table(s)) == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    for (CK_ULONG i = 0; i < t->n; i++) {
        struct front_ha_obj *x = t->o[i];
        if (x == NULL)
            continue;
        if (x->owner >= 0) {
            __atomic_store_n(&t->o[i], NULL, __ATOMIC_RELEASE);
            free(x); /* its handle stays unused: the front never reuses one */
        } else if (all) {
            for (int m = 0; m < FRONT_HA_MAX_MEMBERS; m++)
                x->on[m].state = UNKNOWN;
        }
    }
    pthread_mutex_unlock(&t->mu);
}
