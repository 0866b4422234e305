/*
 * hapin.c - the user PIN of the HA slots, kept so that a member that joins
 * or comes back is logged in before it gets work (HAConfiguration/
 * LibHAExtKeepPIN = 0 turns keeping it off). It lives in one page of its
 * own, one per slot: mlock'ed (never swapped), MADV_DONTDUMP (never in a core dump),
 * zeroed with explicit_bzero at C_Logout, when the host closes its last HA
 * session, at C_Finalize and in a fork child. It is never logged.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "ha.h"

#define PIN_MAX 256

/* One PIN per HA slot (its group's index). */
struct pin_page {
    CK_ULONG len;
    int set;
    CK_UTF8CHAR pin[PIN_MAX];
};
#define PAGE_BYTES (((FRONT_HA_MAX_GROUPS * sizeof(struct pin_page)) + 4095) & ~(size_t)4095)

static pthread_mutex_t pin_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pin_page *page;

/* The pages, mapped on first use. */
static struct pin_page *get_page(int i)
{
    void *p;
    if (i < 0 || i >= FRONT_HA_MAX_GROUPS)
        return NULL;
    if (page != NULL)
        return &page[i];
    p = mmap(NULL, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* Both may fail (RLIMIT_MEMLOCK, an old kernel): the PIN is then kept
     * all the same, as the host's own copy is. */
    (void)mlock(p, PAGE_BYTES);
    (void)madvise(p, PAGE_BYTES, MADV_DONTDUMP);
    (void)madvise(p, PAGE_BYTES, MADV_DONTFORK);
    page = p;
    return &page[i];
}

int front_hapin_keep(int i, const CK_UTF8CHAR *pin, CK_ULONG len)
{
    struct pin_page *p;
    int rc = -1;
    if (len > PIN_MAX || (pin == NULL && len > 0))
        return -1;
    pthread_mutex_lock(&pin_mu);
    p = get_page(i);
    if (p != NULL) {
        explicit_bzero(p->pin, sizeof p->pin);
        if (len > 0)
            memcpy(p->pin, pin, len);
        p->len = len;
        p->set = 1;
        rc = 0;
    }
    pthread_mutex_unlock(&pin_mu);
    return rc;
}

long front_hapin_get(int i, CK_UTF8CHAR *buf)
{
    long n = -1;
    pthread_mutex_lock(&pin_mu);
    if (page != NULL && i >= 0 && i < FRONT_HA_MAX_GROUPS && page[i].set) {
        memcpy(buf, page[i].pin, page[i].len);
        n = (long)page[i].len;
    }
    pthread_mutex_unlock(&pin_mu);
    return n;
}

void front_hapin_drop(int i)
{
    pthread_mutex_lock(&pin_mu);
    if (page != NULL && i >= 0 && i < FRONT_HA_MAX_GROUPS)
        explicit_bzero(&page[i], sizeof page[i]);
    else if (page != NULL && i < 0)
        explicit_bzero(page, FRONT_HA_MAX_GROUPS * sizeof *page);
    pthread_mutex_unlock(&pin_mu);
}

/* The fork child: MADV_DONTFORK left the page out of the child, so it is
 * mapped again on first use; the lock may be a lost thread's. */
void front_hapin_reset(void)
{
    pthread_mutex_init(&pin_mu, NULL);
    page = NULL;
}
