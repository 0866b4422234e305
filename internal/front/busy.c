/*
 * busy.c - which session each host thread is in a call on: the threads'
 * records (state.h's front_busy_begin writes its own thread's), and the
 * registry through which borrow (lend.c) reads them all.
 *
 * A thread registers on its first call on a session; when it ends, its
 * node is free for the next thread. The registry's lock is never held
 * across a vendor call.
 */
#include <pthread.h>
#include <stdlib.h>

#include "front.h"

__thread struct front_busy front_busy_self __attribute__((tls_model("initial-exec")));

/* The registry: where each registered thread's front_busy_self is. */
struct reg_node {
    struct front_busy *rec; /* NULL: free for the next thread */
    struct reg_node *next;
};
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct reg_node *registry;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t reg_key;
/* A thread could not be registered (out of memory): borrow cannot see
 * what it is in, so every host session counts as busy from then on. Set
 * under reg_mu, before that thread's first call. */
static atomic_int reg_failed;

/* A registered thread ends: its node is free for the next one. */
static void thread_exit(void *p)
{
    struct reg_node *n = p;
    pthread_mutex_lock(&reg_mu);
    n->rec = NULL;
    pthread_mutex_unlock(&reg_mu);
}

static void make_key(void)
{
    pthread_key_create(&reg_key, thread_exit);
}

void front_busy_register(void)
{
    struct reg_node *n;
    pthread_once(&key_once, make_key);
    pthread_mutex_lock(&reg_mu);
    for (n = registry; n != NULL && n->rec != NULL; n = n->next) {
    }
    if (n == NULL && (n = calloc(1, sizeof *n)) != NULL) {
        n->next = registry;
        registry = n;
    }
    if (n != NULL) {
        n->rec = &front_busy_self;
        pthread_setspecific(reg_key, n);
    } else {
        atomic_store(&reg_failed, 1);
    }
    pthread_mutex_unlock(&reg_mu);
    front_busy_self.registered = 1; /* unregistered when out of memory: see reg_failed */
}

/* The loads are the borrow half of the handshake (state.h): sequentially
 * consistent. */
int front_busy_seen(CK_SESSION_HANDLE h)
{
    struct reg_node *n;
    int busy;
    pthread_mutex_lock(&reg_mu);
    busy = atomic_load(&reg_failed);
    for (n = registry; n != NULL && !busy; n = n->next) {
        CK_SESSION_HANDLE c;
        if (n->rec == NULL)
            continue;
        c = atomic_load_explicit(&n->rec->cur, memory_order_seq_cst);
        busy = c == h || c == FRONT_BUSY_ALL;
    }
    pthread_mutex_unlock(&reg_mu);
    return busy;
}

/* The fork child has one thread, the one that called fork; the others may
 * have held the lock. */
void front_busy_reset(void)
{
    struct reg_node *n;
    pthread_mutex_init(&reg_mu, NULL);
    for (n = registry; n != NULL; n = n->next)
        if (n->rec != &front_busy_self)
            n->rec = NULL; /* threads the child does not have */
}
