/*
 * table.c - the host's sessions: handle -> slot, under one lock that is
 * never held across a vendor call and never on the path of an ordinary
 * call (state.h). Entries are allocated in chunks and never freed: a
 * closed session's entry is reused, once no loan of it is out (lend.c
 * writes to a lent entry when it is given back).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "front.h"

#define BUCKETS 4096 /* power of two */
#define CHUNK 64

static pthread_mutex_t tab_mu = PTHREAD_MUTEX_INITIALIZER;
static struct front_slot slots[FRONT_MAX_SLOTS];
static struct front_sess *buckets[BUCKETS];
static struct front_sess *free_list, *zombies;
static long host_sessions;

static unsigned bucket_of(CK_SESSION_HANDLE h)
{
    unsigned long long x = (unsigned long long)h * 0x9E3779B97F4A7C15ULL;
    return (unsigned)(x >> 52); /* 64 - log2(BUCKETS) */
}

void front_table_lock(void)
{
    pthread_mutex_lock(&tab_mu);
}

void front_table_unlock(void)
{
    pthread_mutex_unlock(&tab_mu);
}

struct front_slot *front_table_slot(CK_SLOT_ID id, int create)
{
    int i, free_i = -1;
    for (i = 0; i < FRONT_MAX_SLOTS; i++) {
        if (slots[i].used && slots[i].id == id)
            return &slots[i];
        if (!slots[i].used && free_i < 0)
            free_i = i;
    }
    if (!create || free_i < 0)
        return NULL;
    memset(&slots[free_i], 0, sizeof slots[free_i]);
    slots[free_i].id = id;
    slots[free_i].used = 1;
    return &slots[free_i];
}

struct front_sess *front_table_find(CK_SESSION_HANDLE h)
{
    struct front_sess *e = buckets[bucket_of(h)];
    while (e != NULL && e->h != h)
        e = e->next;
    return e;
}

void front_table_mark_closing(struct front_slot *s, int closing)
{
    struct front_sess *e;
    for (e = s->list; e != NULL; e = e->snext)
        atomic_store(&e->closing, closing);
}

static struct front_sess *sess_alloc(void)
{
    struct front_sess *e, **pp;
    int i;
    if (free_list == NULL) {
        /* Reuse a closed session that is no longer lent. */
        for (pp = &zombies; *pp != NULL; pp = &(*pp)->fnext) {
            e = *pp;
            if (!atomic_load(&e->lent)) {
                *pp = e->fnext;
                return e;
            }
        }
        e = calloc(CHUNK, sizeof *e);
        if (e == NULL)
            return NULL;
        for (i = 1; i < CHUNK; i++) {
            e[i].fnext = free_list;
            free_list = &e[i];
        }
        return &e[0];
    }
    e = free_list;
    free_list = e->fnext;
    return e;
}

static void sess_link(struct front_sess *e, CK_SESSION_HANDLE h, struct front_slot *s)
{
    struct front_sess **head = &buckets[bucket_of(h)];
    e->h = h;
    atomic_store(&e->lent, 0);
    atomic_store(&e->closing, 0);
    e->slot = s;
    e->linked = 1;
    e->fnext = NULL;
    e->sprev = NULL;
    e->snext = s->list;
    if (s->list != NULL)
        s->list->sprev = e;
    s->list = e;
    s->host_count++;
    host_sessions++;
    e->next = *head;
    *head = e;
}

/* Takes e out of the table. An entry still lent is kept apart until it is
 * given back (give_back writes to it). */
static void sess_unlink(struct front_sess *e)
{
    struct front_sess **pp = &buckets[bucket_of(e->h)];
    while (*pp != NULL && *pp != e)
        pp = &(*pp)->next;
    if (*pp != NULL)
        *pp = e->next;
    e->next = NULL;
    if (e->sprev != NULL)
        e->sprev->snext = e->snext;
    else
        e->slot->list = e->snext;
    if (e->snext != NULL)
        e->snext->sprev = e->sprev;
    e->slot->host_count--;
    host_sessions--;
    e->linked = 0;
    if (!atomic_load(&e->lent)) {
        e->fnext = free_list;
        free_list = e;
    } else {
        e->fnext = zombies;
        zombies = e;
    }
}

void front_table_clear_slot(struct front_slot *s)
{
    while (s->list != NULL)
        sess_unlink(s->list);
}

void front_table_add(CK_SLOT_ID id, CK_SESSION_HANDLE h)
{
    struct front_slot *s;
    struct front_sess *e;
    pthread_mutex_lock(&tab_mu);
    s = front_table_slot(id, 1);
    if (s != NULL) {
        if ((e = front_table_find(h)) != NULL)
            sess_unlink(e); /* a handle the module reused: the old session is gone */
        if ((e = sess_alloc()) != NULL)
            sess_link(e, h, s);
    }
    pthread_mutex_unlock(&tab_mu);
}

struct front_slot *front_table_take(struct front_sess *e, CK_SESSION_HANDLE h, int *last)
{
    struct front_slot *s = NULL;
    pthread_mutex_lock(&tab_mu);
    if (e->linked && e->h == h) {
        s = e->slot;
        sess_unlink(e);
        *last = s->host_count == 0;
    }
    pthread_mutex_unlock(&tab_mu);
    return s;
}

void front_table_forget_all(void)
{
    int i;
    pthread_mutex_lock(&tab_mu);
    for (i = 0; i < FRONT_MAX_SLOTS; i++) {
        if (slots[i].used)
            front_table_clear_slot(&slots[i]);
        slots[i].host_count = 0;
    }
    pthread_mutex_unlock(&tab_mu);
}

struct front_slot *front_table_slots(void)
{
    return slots;
}

long front_table_count(void)
{
    long n;
    pthread_mutex_lock(&tab_mu);
    n = host_sessions;
    pthread_mutex_unlock(&tab_mu);
    return n;
}

/* The fork child: the lock may be a lost thread's; the entries of the
 * parent's table are left behind, unreachable. */
void front_table_reset(void)
{
    pthread_mutex_init(&tab_mu, NULL);
    memset(buckets, 0, sizeof buckets);
    memset(slots, 0, sizeof slots);
    free_list = zombies = NULL;
    host_sessions = 0;
}
