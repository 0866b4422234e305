/*
 * front.h - the C of libhaext-pkcs11.so, the PKCS#11 module a host loads
 * instead of the vendor's. Plain C, built from these files alone; the CA_*
 * calls (ca.c) load the engine, libhaext.so, on the first of them, so a
 * host that never calls CA_* never has the Go runtime in its process.
 * front.go exposes the C reader, the events and the counters to Go tests;
 * test/consumers/test_front.c links these files directly.
 *
 * Layers, lowest first. A file calls only files before it in this list, so
 * no two files call each other (test/consumers/layers.sh checks it):
 * conf_text.c (text as Go sees it) <- conf_parse.c (the Chrystoki2 keys,
 * and the HA sections' keys) <- conf.c (finding and reading the file;
 * conf.h) <- haconf.c (the HA slot's configuration) <- vendor.c (loading
 * the vendor; its lists) <- busy.c (which session each host thread is in
 * a call on) <- table.c (the host's sessions) <- loans.c (sessions lent
 * right now) <- own.c (the front's own sessions) <- lend.c (borrow,
 * give_back) <- gate.c (libhaext's calls against the host's C_Finalize) <-
 * events.c (what the host did, for the engine) <- slotlist.c (the host's
 * C_GetSlotList answer) <- the HA slot (ha.h): hanote.c (its log lines) <-
 * hapin.c (the kept PIN) <- harec.c (recovery threads, the exit fence) <-
 * hawork.c (the operation timeout's workers) <- hamember.c (members, their
 * sessions, which one works) <- halogin.c (login, loss, recovery) <-
 * haobj.c (objects) <- haop.c (an operation's start) <- hacall.c (its
 * calls, failover) <- haslot.c (the slots, HA sessions) <- hasess.c,
 * hakeys.c (the host's calls on HA sessions) <- setup.c (first use, the
 * fork child) <- host.c (C_Initialize, C_Finalize, C_GetSlotList) <-
 * session.c (C_OpenSession, C_CloseSession, C_CloseAllSessions, C_Login,
 * C_InitToken) <- front.c (the trampolines, the 2.40 list) <- iface.c (the
 * 3.0 interfaces) <- attach.c (what libhaext.so gets) <- ca.c (the CA_*).
 *
 * Names: front_<file>_ for what a file offers the files after it
 * (conf_text.c: front_text_; conf_parse.c and conf.c: front_conf_; the HA
 * session handlers of hasess.c and hakeys.c: front_ha_C_*), FRONT_ for
 * macros; hostapi.h's haext_ and call.h's hx_ are those units'.
 */
#ifndef HAEXT_FRONT_H
#define HAEXT_FRONT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

#include "conf.h"
#include "hostapi.h"
#include "pkcs11v3.h"

/* Initializes cv to time its waits on CLOCK_MONOTONIC (gate.c, loans.c). */
static inline void front_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

/* How long the front waits, at most, for libhaext's own calls before it
 * forwards a host call that must not overlap them: C_Finalize (the gate),
 * and C_CloseSession / C_CloseAllSessions / C_Login(CKU_SO) / C_InitToken on
 * a session or slot libhaext is using. Afterwards it forwards anyway. */
#ifndef FRONT_WAIT_MS
#define FRONT_WAIT_MS 5000
#endif

/* Hidden: the trampolines reach them without a GOT load. */
#define FRONT_HIDDEN __attribute__((visibility("hidden")))

/* The HA slot's per-operation path: its functions together (.text.hot),
 * each from a line's start. A vendor call that enters the kernel leaves
 * the front's lines cold: each one touched again costs a miss. */
#define FRONT_HOT __attribute__((hot, aligned(64)))
/* Off it: what only a failure, a first use or a timeout needs. */
#define FRONT_COLD __attribute__((noinline, cold))
#define FRONT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define FRONT_LIKELY(x) __builtin_expect(!!(x), 1)

/* --- vendor.c: the vendor module --------------------------------------- */

/* The vendor's function list once loaded; NULL before. */
extern CK_FUNCTION_LIST_PTR _Atomic front_vendor_list FRONT_HIDDEN;
/* A copy of it, written before front_vendor_list is set: the trampolines
 * read the function they forward to from here, one cache line of the
 * front's. */
extern CK_FUNCTION_LIST front_vendor_copy FRONT_HIDDEN;
/* The vendor's 3.0 list, copied when the host first asks for the
 * interfaces and the vendor offers 3.0; its 3.0 entries are NULL until
 * then. The 3.0 trampolines read the function they forward to from here. */
extern CK_FUNCTION_LIST_3_0 front_vendor_copy3 FRONT_HIDDEN;

/* What a trampoline answers when its entry in a copy is NULL: not loaded
 * yet (CKR_CRYPTOKI_NOT_INITIALIZED), or not supported. */
CK_RV front_vendor_missing(void);

/* Loads the vendor once; 0, or -1 (front_vendor_error says why). A failed
 * load is tried again on the next call. */
int front_vendor_load(void);

/* Why the vendor could not be loaded, or "". */
const char *front_vendor_error(void);

/* The vendor module's path as configured, or "" (before the first load). */
const char *front_vendor_path(void);

/* The vendor's interfaces: whether it offers "PKCS 11" 3.0 (then
 * front_vendor_copy3 holds its list), and the flags of its 3.0 and 2.40
 * interfaces. */
struct front_vendor_ifaces {
    int has30;
    CK_FLAGS flags3, flags240;
};

/* Asks the vendor's C_GetInterface once, after front_vendor_load. NULL
 * while this thread is inside that very call (a vendor that asks the
 * front in turn gets 2.40 only). */
const struct front_vendor_ifaces *front_vendor_interfaces(void);

/* The fork child: the load lock may be a lost thread's. */
void front_vendor_reset(void);

/* --- busy.c: which session each host thread is in a call on ------------- */

/* Each host thread's own record: the session it is in a call on right now
 * (CK_INVALID_HANDLE when none, FRONT_BUSY_ALL inside a call made from
 * inside a call), and whether borrow can see it (the registry holds its
 * address). A handle, not the table's entry, so that the path of an
 * ordinary call looks nothing up. */
struct front_busy {
    _Atomic CK_SESSION_HANDLE cur;
    int registered;
};

/* In a record: the thread is in a call made from inside another call
 * (e.g. from a vendor callback), on two sessions or more at once; borrow
 * lends none of the host's sessions while it is there. (A vendor session
 * with this very handle is merely never lent while in use.) */
#define FRONT_BUSY_ALL (~(CK_SESSION_HANDLE)0)

extern __thread struct front_busy front_busy_self __attribute__((tls_model("initial-exec"))) FRONT_HIDDEN;

/* Registers the calling thread (its first call on a session). */
void front_busy_register(void);

/* Whether a host thread is in a call on session h right now (or in a call
 * made from inside a call: on any; or may be, unseen: a thread that could
 * not be registered). The borrow half of the handshake (state.h). */
int front_busy_seen(CK_SESSION_HANDLE h);

/* The fork child: only the forking thread's record remains. */
void front_busy_reset(void);

/* --- table.c: the host's sessions ---------------------------------------- */

#define FRONT_MAX_SLOTS 256

/* A slot the host has sessions on, or libhaext borrowed on. */
struct front_slot {
    CK_SLOT_ID id;
    int used;
    /* table.c's, under its lock */
    long host_count;
    struct front_sess *list;
    /* own.c's, under the loans' lock (loans.c) */
    int own_state;
    CK_SESSION_HANDLE own;
    unsigned long own_tag; /* changes whenever the own session is forgotten */
    int own_lent;
    int close_pending; /* close the own session as soon as nobody uses it */
    int so_pending;    /* an SO login, C_InitToken or C_CloseAllSessions is on its way: open none */
};

/* One session of the host's: the key h, the slot and the list links change
 * only under the table's lock; lent and closing are atomics (the loans
 * read them too). An entry is never freed: a closed one is reused. */
struct front_sess {
    CK_SESSION_HANDLE h;
    struct front_sess *next; /* bucket chain */
    atomic_int lent;         /* lent to libhaext right now */
    atomic_int closing;      /* the host is closing it: lend no more */
    struct front_slot *slot;
    struct front_sess *snext, *sprev; /* the slot's list */
    struct front_sess *fnext;         /* free or zombie list */
    int linked;                       /* in the table */
};

/* The table's lock: the functions below marked "locked" need it held. */
void front_table_lock(void);
void front_table_unlock(void);

/* Locked: the slot with this id, created when create is set (NULL: none,
 * or no room). */
struct front_slot *front_table_slot(CK_SLOT_ID id, int create);
/* Locked: the entry of h, or NULL. */
struct front_sess *front_table_find(CK_SESSION_HANDLE h);
/* Locked: marks every session of s closing (lend none), or not. */
void front_table_mark_closing(struct front_slot *s, int closing);
/* Locked: takes every session of s out of the table. */
void front_table_clear_slot(struct front_slot *s);

/* Records the host's new session h on slot id (a handle the module reused
 * replaces the old session). Out of memory: not recorded. */
void front_table_add(CK_SLOT_ID id, CK_SESSION_HANDLE h);
/* Takes entry e out of the table if it still holds session h: its slot,
 * and in *last whether it was the host's last session there; else NULL. */
struct front_slot *front_table_take(struct front_sess *e, CK_SESSION_HANDLE h, int *last);
/* Forgets every session of the host's (its C_Finalize). */
void front_table_forget_all(void);
/* The FRONT_MAX_SLOTS slots (see used), for front_own_forget_all. */
struct front_slot *front_table_slots(void);
/* The host's sessions in the table. */
long front_table_count(void);
/* The fork child: no sessions. */
void front_table_reset(void);

/* --- loans.c: the loans and their lock --------------------------------- */

/* Host sessions lent right now, counted per bucket of their handle: the
 * host's half of the handshake (state.h) reads only its session's bucket,
 * a line that only loans write. */
#define FRONT_LENT_BUCKETS 64 /* power of two */
extern atomic_uint front_loans_buckets[FRONT_LENT_BUCKETS] FRONT_HIDDEN;

static inline unsigned front_loans_bucket(CK_SESSION_HANDLE h)
{
    return (unsigned)(((unsigned long long)h * 0x9E3779B97F4A7C15ULL) >> 58); /* 64 - log2(64) */
}

/* A session lent for one call. */
struct front_loan {
    int used;
    CK_SESSION_HANDLE h;
    struct front_sess *e; /* a host session, or NULL: the slot's own */
    struct front_slot *s;
    unsigned long tag; /* the own session's own_tag when it was lent */
};

/* The states of a slot's own session (own.c's, under the loans' lock). */
enum { FRONT_OWN_NONE, FRONT_OWN_OPENING, FRONT_OWN_OPEN, FRONT_OWN_CLOSING };

/* The loans' lock, which also guards the own sessions (own.c); taken
 * inside the table's lock, never the other way round, and never held
 * across a vendor call. The functions below marked "locked" need it. */
void front_loans_lock(void);
void front_loans_unlock(void);
/* Locked: wakes every waiter. */
void front_loans_broadcast(void);
/* Locked: waits until woken or the deadline *dl passed (a zero *dl is set
 * to FRONT_WAIT_MS from now): 0 when it passed. */
int front_loans_wait(struct timespec *dl);
/* Locked: records a loan of slot s's own session h (tag: its own_tag);
 * NULL when too many are out. */
struct front_loan *front_loans_add_own(CK_SESSION_HANDLE h, struct front_slot *s, unsigned long tag);
/* Locked: lends host session e, published before the caller reads the
 * threads' records (state.h); NULL when too many are out. */
struct front_loan *front_loans_add_host(struct front_sess *e);
/* Locked: ends loan l (a host session's: the host calls waiting for it
 * wake up); *l stays readable until the next front_loans_add_*. */
void front_loans_end(struct front_loan *l);
/* Locked: the loan of session h, or NULL. */
struct front_loan *front_loans_find(CK_SESSION_HANDLE h);
/* Waits (bounded) until no loan of e, or (e NULL) of any session on s, is
 * out, nor s's own session being opened or closed. */
void front_loans_wait_returned(struct front_sess *e, struct front_slot *s);

/* The slow path of front_busy_begin (state.h): a host session in h's
 * bucket is lent. Waits until h (if it is the one) is given back. */
void front_loans_wait_host(CK_SESSION_HANDLE h, CK_SESSION_HANDLE prev) FRONT_HIDDEN;

/* Counters, for tests and the bench: own sessions opened and closed by the
 * front, loans made, loans of host sessions taken back because a host call
 * had just started on them (backoffs), host calls that waited for a loan
 * to be given back, host sessions in the table. Each file fills in its
 * own. */
struct front_stats {
    unsigned long own_opened;
    unsigned long own_closed;
    unsigned long loans_host;
    unsigned long loans_own;
    unsigned long backoffs;
    unsigned long host_waits;
    long host_sessions;
};
void front_loans_stats(struct front_stats *st);

void front_loans_init(void);
/* The fork child: no loans. */
void front_loans_reset(void);

/* --- own.c: the front's own read-only sessions ------------------------- */

/* Lends slot s's own session, opened on demand: CKR_OK and *out, or
 * CKR_FUNCTION_REJECTED (being opened or closed by another thread, or a
 * stop holds), CKR_HOST_MEMORY, or C_OpenSession's CK_RV. */
CK_RV front_own_lend(struct front_slot *s, CK_SESSION_HANDLE *out);
/* Locked: loan l of an own session came back with rv. */
void front_own_returned(const struct front_loan *l, CK_RV rv);
/* Closes slot s's own session now if nobody uses it, else as soon as the
 * last user gives it back (bounded wait). stop: also open none on s until
 * front_own_resume (an SO login or C_InitToken follows). */
void front_own_close(struct front_slot *s, int stop);
/* Opens no own session on s until front_own_resume. */
void front_own_stop(struct front_slot *s);
/* Ends a front_own_stop or a front_own_close(s, 1); forget: the module
 * closed the own session (C_CloseAllSessions). */
void front_own_resume(struct front_slot *s, int forget);
/* Forgets every own session (the host's C_Finalize). */
void front_own_forget_all(void);
void front_own_stats(struct front_stats *st);
/* The fork child: sessions still being opened are not kept. */
void front_own_reset(void);

/* --- lend.c: borrow and give_back ---------------------------------------- */

/* The hooks of struct haext_vendor (hostapi.h). */
CK_RV front_lend_borrow(CK_SLOT_ID slot, CK_SESSION_HANDLE *session);
void front_lend_give_back(CK_SESSION_HANDLE session, CK_RV rv);
void front_lend_stats(struct front_stats *st);

/* --- gate.c: libhaext's calls against the host's C_Finalize --------------- */

/* The hooks of struct haext_vendor. */
int front_gate_enter(void);
void front_gate_leave(void);
/* Opens the gate (the host's C_Initialize); returns whether it was open. */
int front_gate_open(void);
/* Closes the gate and waits, at most ms, for the calls inside it; returns
 * whether it was open. */
int front_gate_close(long ms);
/* Puts the gate back as front_gate_close found it (C_Finalize failed). */
void front_gate_restore(int was_open);
void front_gate_init(void);
/* The fork child: closed, nobody inside. */
void front_gate_reset(void);

/* --- events.c: what the host did, for the engine ------------------------ */

/* Queues an event (hostapi.h's kinds). Host errors on one slot coalesce
 * while unread (the newest CK_RV wins), so the queue stays small. */
/* How many events are queued (an overflow counts as one); written with
 * atomic stores under the queue's lock, read without it (struct
 * haext_front). */
extern int front_events_pending;
void front_events_push(int kind, CK_SLOT_ID slot, CK_RV rv);
/* Blocks until an event is queued, without taking it; returns how many
 * are. */
int front_events_wait(void);
/* Takes an event if one is queued: 1, else 0. */
int front_events_poll(struct haext_front_event *ev);
/* The fork child: no events. */
void front_events_reset(void);

/* --- slotlist.c: the host's last C_GetSlotList answer --------------------- */

void front_slotlist_remember(const CK_SLOT_ID *list, CK_ULONG count);
void front_slotlist_forget(void);
/* The host_slots hook of struct haext_vendor. */
CK_RV front_slotlist_lend(CK_SLOT_ID *list, CK_ULONG *count);
void front_slotlist_reset(void);

/* --- setup.c ------------------------------------------------------------- */

/* Sets the front up once (locks, the fork child handler), then loads the
 * vendor (front_vendor_load). Every path that loads the vendor takes it. */
int front_setup_load(void);

/* --- host.c, session.c: the host's calls with side effects ---------------- */

/* Whether the host's C_Initialize forbade the library threads
 * (CKF_LIBRARY_CANT_CREATE_OS_THREADS): libhaext then starts none. */
int front_host_threads_forbidden(void);

/* A host call on session h failed with rv: record the host error, and
 * forget a session the module dropped. */
void front_session_failed(CK_SESSION_HANDLE h, CK_RV rv);
/* 3.0's C_LoginUser, through the vendor's login_user, as C_Login. */
CK_RV front_session_login_user(CK_C_LoginUser login_user, CK_SESSION_HANDLE h, CK_USER_TYPE user,
                               CK_UTF8CHAR_PTR pin, CK_ULONG len, CK_UTF8CHAR_PTR name, CK_ULONG name_len);

/* --- front.c, iface.c: the lists ------------------------------------------ */

/* The front's 2.40 list (front.c). */
extern CK_FUNCTION_LIST front_function_list;
/* The front's 3.0 list (iface.c), offered when the vendor offers 3.0. */
extern CK_FUNCTION_LIST_3_0 front_iface_list3 FRONT_HIDDEN;
CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion, CK_INTERFACE_PTR_PTR ppInterface,
                     CK_FLAGS flags);

/* --- attach.c: what libhaext.so gets -------------------------------------- */

/* Loads the vendor if need be; the host's instance with the hooks (the
 * same pointer every time), or NULL when the vendor cannot be loaded
 * (front_vendor_error says why). */
const struct haext_vendor *front_attach_vendor(void);
/* The same, with the event queue: what CA_HAExtAttachFront gets. */
const struct haext_front *front_attach(void);
void front_attach_stats(struct front_stats *st);

#endif
