/*
 * slotlist.c - the host's last complete C_GetSlotList answer since its
 * C_Initialize (host.c), lent to the engine (struct haext_vendor's
 * host_slots) so that it lists no slots of its own: p11-kit's proxy makes
 * C_GetSlotList a call to every member, every other call of the process
 * waiting behind it.
 */
#include <pthread.h>
#include <string.h>

#include "front.h"

#define MAX_HOST_SLOTS 256

static pthread_mutex_t slots_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_SLOT_ID slot_ids[MAX_HOST_SLOTS];
static CK_ULONG slot_n;
static int known;

/* With tokenPresent the list leaves out empty slots, which hold no member
 * either: it is remembered all the same. A list too long is not. */
void front_slotlist_remember(const CK_SLOT_ID *list, CK_ULONG count)
{
    if (count > MAX_HOST_SLOTS)
        return;
    pthread_mutex_lock(&slots_mu);
    memcpy(slot_ids, list, count * sizeof *list);
    slot_n = count;
    known = 1;
    pthread_mutex_unlock(&slots_mu);
}

void front_slotlist_forget(void)
{
    pthread_mutex_lock(&slots_mu);
    known = 0;
    pthread_mutex_unlock(&slots_mu);
}

CK_RV front_slotlist_lend(CK_SLOT_ID *list, CK_ULONG *count)
{
    CK_RV rv = CKR_OK;
    pthread_mutex_lock(&slots_mu);
    if (!known) {
        rv = CKR_FUNCTION_FAILED;
    } else if (list != NULL && *count < slot_n) {
        rv = CKR_BUFFER_TOO_SMALL;
    } else if (list != NULL) {
        memcpy(list, slot_ids, slot_n * sizeof *list);
    }
    if (rv != CKR_FUNCTION_FAILED)
        *count = slot_n;
    pthread_mutex_unlock(&slots_mu);
    return rv;
}

/* The fork child: the lock may be a lost thread's; the child's host must
 * call C_Initialize, which forgets the list anyway. */
void front_slotlist_reset(void)
{
    pthread_mutex_init(&slots_mu, NULL);
    known = 0;
}
