/*
 * callback.h - the C half of CA_HAExtSetStateCallback (callback.c): the
 * registered callbacks, per group, and the dispatcher thread that calls
 * them. The Go half (callback.go, internal/notify) finds the changes and
 * queues them here; only the dispatcher ever calls the application.
 */
#ifndef HAEXT_CAPI_CALLBACK_H
#define HAEXT_CAPI_CALLBACK_H

#include <stddef.h>
#include <stdint.h>

#include "cryptoki_ha.h"

/* One registration as CA_HAExtSetStateCallback was given it, on the
 * caller's stack. Go passes it back to hx_cb_set without reading it: the
 * application's ctx is any value, which Go must never hold as a pointer. */
struct hx_cb_reg {
    CK_HA_STATE_CALLBACK fn; /* NULL: unregister */
    void *ctx;
    CK_SLOT_ID slot;
    uint64_t replaced; /* out: the id of the registration replaced or removed; 0: none */
};

/* Records (fn != NULL) or removes the group's registration. Called by Go
 * under the notifier's lock, so that no change is queued for the group
 * between the Go registration and this one. */
void hx_cb_set(uint64_t group, struct hx_cb_reg *reg);

/* Queues a change of one member of group for the dispatcher. serial is
 * len bytes, not NUL-terminated (a Go string), copied. Never blocks. */
void hx_cb_push(uint64_t group, const char *serial, size_t len, CK_RV old_status, CK_RV new_status);

/* CA_HAExtSetStateCallback's work, between capi.c's haext_enter and
 * haext_leave; *reason as haextState's. */
CK_RV haext_set_callback(CK_SLOT_ID slotId, CK_HA_STATE_CALLBACK fn, CK_ULONG intervalMs, void *ctx, char **reason);

#endif
