/*
 * setup.c - the front's first use: the condition variables that wait with
 * a deadline, and the one fork child handler; then the vendor's load.
 *
 * The fork child has one thread, the one that called fork; the others may
 * have held any of the locks. The child handler makes each file start over
 * (its *_reset): no sessions (the child's host must call C_Initialize,
 * whose result is the vendor's), no loans, the gate closed, no events. It
 * is registered once, on the first path that loads the vendor, before the
 * vendor is loaded, so it runs before any child handler the vendor
 * registers.
 */
#include <pthread.h>

#include "ha.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void fork_child(void)
{
    front_busy_reset();
    front_table_reset();
    front_loans_reset();
    front_own_reset();
    front_gate_reset();
    front_events_reset();
    front_slotlist_reset();
    front_vendor_reset();
    front_haslot_reset();
}

static void init(void)
{
    front_loans_init();
    front_gate_init();
    pthread_atfork(NULL, NULL, fork_child);
}

int front_setup_load(void)
{
    pthread_once(&once, init);
    return front_vendor_load();
}
