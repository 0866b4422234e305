/*
 * front.h - the C side of libhaext-pkcs11.so, the PKCS#11 module a host
 * loads instead of the vendor's.
 *
 * Everything here is plain C: the trampolines (front.c), the state the
 * engine borrows through struct haext_host (state.c), and the vendor's
 * location (conf.c, vendor.c). No Go runs on the path of a host call, so a
 * fork child and a host that calls before the Go runtime is up both work.
 * The Go side (front.go) only reads events and hands struct haext_host to
 * the engine. test/consumers/test_front.c links these files directly.
 */
#ifndef HAEXT_FRONT_H
#define HAEXT_FRONT_H

#include <stddef.h>

#include "hostapi.h"

/* The slot of a host error that names no slot (C_GetSlotList,
 * C_WaitForSlotEvent, C_Initialize). */
#define HAEXT_SLOT_NONE (~(CK_SLOT_ID)0)

/* How long the front waits, at most, for libhaext's own calls before it
 * forwards a host call that must not overlap them: C_Finalize (the gate),
 * and C_CloseSession / C_CloseAllSessions / C_Login(CKU_SO) / C_InitToken on
 * a session or slot libhaext is using. Afterwards it forwards anyway. */
#ifndef HAEXT_FRONT_WAIT_MS
#define HAEXT_FRONT_WAIT_MS 5000
#endif

/* Events for the engine, in the order they happened. */
enum haext_front_event_kind {
    HAEXT_EV_INITIALIZED = 1, /* the host's C_Initialize: CKR_OK or ALREADY_INITIALIZED */
    HAEXT_EV_FINALIZED = 2,   /* the host's C_Finalize was forwarded and succeeded */
    HAEXT_EV_HOST_ERROR = 3,  /* a host call failed with a connection-class CK_RV */
    HAEXT_EV_OVERFLOW = 4     /* events were lost (queue full): re-read everything */
};

struct haext_front_event {
    int kind;
    CK_SLOT_ID slot; /* HAEXT_EV_HOST_ERROR: the slot, or HAEXT_SLOT_NONE */
    CK_RV rv;        /* HAEXT_EV_HOST_ERROR: the host call's CK_RV */
};

/* Loads the vendor module once (pthread_once); returns the hooks, or NULL
 * when the vendor cannot be loaded (haext_front_error says why). */
const struct haext_host *haext_front_host(void);

/* Blocks until an event is queued, without taking it; returns how many
 * are. Host errors on one slot coalesce while unread (the newest CK_RV
 * wins), so the queue stays small. */
int haext_front_wait(void);

/* Takes an event if one is queued: 1, else 0. */
int haext_front_poll(struct haext_front_event *ev);

/* Why the vendor could not be loaded, or "" (after haext_front_host). */
const char *haext_front_error(void);

/* The vendor module's path as configured, or "" (after haext_front_host). */
const char *haext_front_vendor_path(void);

/* Counters, for tests and the bench: own sessions opened and closed by the
 * front, loans made, loans of host sessions taken back because a host call
 * had just started on them (backoffs), host calls that waited for a loan
 * to be given back, host sessions in the table. */
struct haext_front_stats {
    unsigned long own_opened;
    unsigned long own_closed;
    unsigned long loans_host;
    unsigned long loans_own;
    unsigned long backoffs;
    unsigned long host_waits;
    long host_sessions;
};
void haext_front_stats(struct haext_front_stats *st);

/* --- configuration (conf.c) ------------------------------------------ */

/* The module keys of the Chrystoki2 section, as pkg/conf reads them (last
 * occurrence wins, values trimmed). NULL: key absent. */
struct haext_conf_keys {
    char *vendor; /* Chrystoki2/LibHAExtVendor: libhaext's own key, first */
    char *unix64; /* Chrystoki2/LibUNIX64 */
    char *unix32; /* Chrystoki2/LibUNIX */
    size_t vendor_len, unix64_len, unix32_len; /* a value may hold a NUL byte */
};

/* Finds the configuration file like pkg/conf.Locate: a regular file
 * $ChrystokiConfigurationPath/Chrystoki.conf, else .../crystoki.ini, else
 * /etc/Chrystoki.conf. 0 and the path, or -1 and the reason in err. */
int haext_conf_locate(char *path, size_t pathlen, char *err, size_t errlen);

/* Parses file contents (either format) into keys; free with
 * haext_conf_keys_free. Lenient: a line pkg/conf would reject is skipped. */
void haext_conf_parse(const char *data, size_t len, struct haext_conf_keys *keys);
void haext_conf_keys_free(struct haext_conf_keys *keys);

/* Reads the file at path (regular, at most 4 MiB) and returns the module
 * to load: LibHAExtVendor, else LibUNIX64, else LibUNIX (the first that is
 * not empty) in *module (malloc'd) and which key in *key. 0, or -1 and the
 * reason in err. */
int haext_conf_module(const char *path, char **module, const char **key, char *err, size_t errlen);

/* --- internals shared by front.c, state.c and vendor.c ----------------- */

/* The front's own function list (front.c). */
extern CK_FUNCTION_LIST haext_front_list;
/* Loads the vendor once; 0 on success. */
int haext_front_load(void);

#endif
