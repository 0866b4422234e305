/*
 * attach.c - what the front hands libhaext.so (CA_HAExtAttachFront, ca.c):
 * the host's instance of the vendor module with the gate, the loans and
 * the host's slot list (struct haext_vendor), and the event queue (struct
 * haext_front, hostapi.h); and the front's counters, for tests and the
 * bench. Every pointer stays valid for the life of the process.
 */
#include "front.h"

static struct haext_vendor vendor = {
    .list = NULL, /* set once the vendor is loaded */
    .enter = front_gate_enter,
    .leave = front_gate_leave,
    .borrow = front_lend_borrow,
    .give_back = front_lend_give_back,
    .host_slots = front_slotlist_lend,
};

static const struct haext_front front = {
    .abi = HAEXT_FRONT_ABI,
    .vendor = &vendor,
    .wait = front_events_wait,
    .poll = front_events_poll,
    .pending = &front_events_pending,
};

const struct haext_vendor *front_attach_vendor(void)
{
    if (front_setup_load() != 0)
        return NULL;
    /* Every caller stores the same list, before anyone gets the pointer. */
    if (__atomic_load_n(&vendor.list, __ATOMIC_ACQUIRE) == NULL)
        __atomic_store_n(&vendor.list, atomic_load(&front_vendor_list), __ATOMIC_RELEASE);
    return &vendor;
}

const struct haext_front *front_attach(void)
{
    return front_attach_vendor() != NULL ? &front : NULL;
}

void front_attach_stats(struct front_stats *st)
{
    front_loans_stats(st);
    front_own_stats(st);
    front_lend_stats(st);
    st->host_sessions = front_table_count();
}
