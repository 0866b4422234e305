/*
 * harness.h - what the C tests share: loading the vendor module and
 * libhaext.so the way an application does (dlopen), a tiny TAP-like
 * reporter, and small helpers. Written only from include/cryptoki_ha.h.
 */
#ifndef HAEXT_TEST_HARNESS_H
#define HAEXT_TEST_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "cryptoki_ha.h"

typedef CK_RV (*ha_state_fn)(CK_SLOT_ID, CK_HA_STATE_PTR);
typedef CK_ULONG (*ha_error_fn)(char *, CK_ULONG);

/* The host application's view of both libraries. */
struct host {
    void *vendor_handle;
    CK_FUNCTION_LIST_PTR p11; /* the vendor module, initialized by the host */
    void *ha_handle;
    ha_state_fn get_state;    /* CA_GetCurrentHAState */
    ha_state_fn get_state_legacy; /* CA_GetHAState, when exported */
    ha_error_fn last_error;   /* CA_GetHAExtLastError */
};

/* Loads and initializes the vendor module (as the host does first), then
 * libhaext.so. Either path may be NULL to skip that library. Exits on
 * failure. */
void host_load(struct host *h, const char *vendor_path, const char *libhaext_path);

/* Reporter. check() records one assertion; done() prints the closing line
 * "N passed, N failed" and returns the exit status. */
void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int done(void);

/* Monotonic clock in milliseconds. */
double now_ms(void);
/* Sleeps ms milliseconds. */
void sleep_ms(long ms);
/* Threads of this process (/proc/self/status). */
int thread_count(void);
/* Resident set size of this process in KiB. */
long rss_kib(void);

/* Runs "bash $HALAB_LAB_SH ACTION --dir $HALAB_DIR IDX" (a fault on a lab
 * member: kill, stop, cont, ...) and waits for it; returns 0 on success. */
int lab_run(const char *action, int idx);

/* The lab's members, as the test programs see them: reads HALAB_SERIALS
 * (the serials as the tokens report them, in group order) into text and,
 * parsed, into serials; returns how many (at most max). Exits when the
 * variable is missing. */
int lab_members(char text[][32], CK_ULONG *serials, int max);
/* Finds the slot of each of the n members in the host's module; exits when
 * one is missing. */
void lab_slots(struct host *h, char text[][32], int n, CK_SLOT_ID *slots);

/* lab_run, noting a failure (a fault test goes on and its checks say what
 * the fault did). */
void lab_do(const char *action, int idx);

/* One CA_GetCurrentHAState on slot, *st poisoned first (0xA5) so that a
 * field the library did not write shows; returns its CK_RV and, when ms is
 * not NULL, its duration. */
CK_RV timed_state(struct host *h, CK_SLOT_ID slot, CK_HA_STATUS *st, double *ms);

/* Required environment variable; exits when missing. */
const char *need_env(const char *name);

/* Slot of the token with the serial (as the token reports it), or
 * (CK_SLOT_ID)-1. */
CK_SLOT_ID slot_of_serial(struct host *h, const char *serial);
/* Sessions open in this process on a slot: the module is shared with
 * libhaext.so, so the host can see the library's sessions by asking
 * C_GetSessionInfo for every handle up to upto (SoftHSM2 reports no
 * ulSessionCount). */
long sessions_on_slot(struct host *h, CK_SLOT_ID slot, CK_SESSION_HANDLE upto);
/* Opens and closes a host session and returns its handle: a module that
 * numbers handles in sequence (SoftHSM2) shows through the gap between two
 * such markers how many sessions anyone opened in between. */
CK_SESSION_HANDLE session_marker(struct host *h, CK_SLOT_ID slot);
/* Parses a serial the way the library does: decimal when all digits,
 * otherwise hexadecimal. */
CK_ULONG parse_serial(const char *text);

/* Whether a member status is one of the documented values. */
int status_is_documented(CK_RV rv);
/* Name of a status, for messages. */
const char *status_name(CK_RV rv);

#endif
