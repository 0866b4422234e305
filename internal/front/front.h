/*
 * front.h - the C side of libhaext-pkcs11.so, the PKCS#11 module a host
 * loads instead of the vendor's.
 *
 * Everything here is plain C, and libhaext-pkcs11.so is built from these
 * files alone: the trampolines (front.c, iface.c), the state the engine
 * borrows through struct haext_host (state.c), the vendor's location
 * (conf.c, vendor.c), and the CA_* calls (ca.c), which load the engine,
 * libhaext.so, on the first of them and hand it struct haext_front
 * (hostapi.h). A host that never calls CA_* never has the Go runtime in its
 * process. front.go exposes the C reader and the events to Go tests;
 * test/consumers/test_front.c links these files directly.
 */
#ifndef HAEXT_FRONT_H
#define HAEXT_FRONT_H

#include <stddef.h>

#include "hostapi.h"

/* How long the front waits, at most, for libhaext's own calls before it
 * forwards a host call that must not overlap them: C_Finalize (the gate),
 * and C_CloseSession / C_CloseAllSessions / C_Login(CKU_SO) / C_InitToken on
 * a session or slot libhaext is using. Afterwards it forwards anyway. */
#ifndef HAEXT_FRONT_WAIT_MS
#define HAEXT_FRONT_WAIT_MS 5000
#endif

/* Loads the vendor module once (pthread_once); returns the hooks, or NULL
 * when the vendor cannot be loaded (haext_front_error says why). */
const struct haext_host *haext_front_host(void);

/* Blocks until an event is queued, without taking it; returns how many
 * are. Host errors on one slot coalesce while unread (the newest CK_RV
 * wins), so the queue stays small. */
int haext_front_wait(void);

/* Takes an event if one is queued: 1, else 0. */
int haext_front_poll(struct haext_front_event *ev);

/* Whether the host's C_Initialize forbade the library threads
 * (CKF_LIBRARY_CANT_CREATE_OS_THREADS): libhaext then starts none. */
int haext_front_threads_forbidden(void);

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
