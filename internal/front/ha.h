/*
 * ha.h - the HA slot: each configured group (VirtualTokenNN) as one slot of
 * the front's, over the group's members. Plain C on the host's threads: an
 * operation goes to the usable member holding its key with the fewest calls
 * in flight, and one whose member is lost (a connection-class answer) is
 * issued again, its Init included, on the next one.
 *
 * Its files, lowest first, are front.h's layers haconf.c to hakeys.c.
 */
#ifndef HAEXT_FRONT_HA_H
#define HAEXT_FRONT_HA_H

#include <pthread.h>
#include <stdatomic.h>

#include "call.h"
#include "front.h"

/* --- haconf.c: the configuration ------------------------------------------ */

#define FRONT_HA_MAX_GROUPS 100
#define FRONT_HA_MAX_MEMBERS 32 /* at most: a member is a bit of an unsigned (front_ha_op's skip) */
/* An HA slot's ID: the base plus the group's NN. It does not depend on the
 * members, their slots or their health, and is the same in every run with
 * the same configuration. */
#define FRONT_HA_SLOT_BASE 0x48410000UL

struct front_ha_group {
    int nn;
    char label[33];   /* VirtualTokenNNLabel, at most 32 bytes */
    char serial[17];  /* VirtualTokenNNSN as written, at most 16 bytes */
    int nmembers;
    unsigned long long member[FRONT_HA_MAX_MEMBERS]; /* serials, parsed as pkg/conf does */
    unsigned char standby[FRONT_HA_MAX_MEMBERS];     /* VirtualTokenNNLibHAExtStandby */
    char text[FRONT_HA_MAX_MEMBERS][24];             /* the serials as written */
    long op_timeout_ms;                              /* VirtualTokenNNLibHAExtOpTimeout; 0: off */
};

struct front_ha_conf {
    int enabled;           /* HAConfiguration/LibHAExtHASlot (default 1) and a group */
    int ha_only;           /* HAConfiguration/HAOnly */
    int keep_pin;          /* HAConfiguration/LibHAExtKeepPIN (default 1) */
    unsigned long replay;  /* HAConfiguration/LibHAExtReplayLimit, bytes (default 1 MiB) */
    char log_dir[512];     /* HAConfiguration/haLogPath when haLogStatus = enabled, else "" */
    int ngroups;
    struct front_ha_group group[FRONT_HA_MAX_GROUPS];
    char why[256]; /* the first key ignored, and why; "" when none */
};

/* Builds the HA configuration from the parsed keys. */
void front_haconf_build(const struct front_conf_keys *keys, struct front_ha_conf *c);
/* Reads the configuration file once (front_conf_locate); NULL when it has
 * no group or the HA slot is off. */
const struct front_ha_conf *front_haconf(void);
/* Whether front_haconf has read the file (nothing of the HA slot exists
 * before: the host's C_Finalize and a fork child have nothing to forget). */
int front_haconf_loaded(void);
/* A token serial (CK_TOKEN_INFO's, blank-padded) parsed as pkg/conf's
 * ParseSerial; -1 when it is not one. */
int front_haconf_serial(const unsigned char *text, size_t n, unsigned long long *out);

/* --- hamember.c: members -------------------------------------------------- */

#define FRONT_HA_POOL 64 /* idle sessions kept per member, under the lock */
#define FRONT_HA_FAST 8  /* and without it */

/* A member: what every operation reads in its first line, its fast idle
 * sessions in the next (front.h, FRONT_HOT: each line touched may miss). */
struct front_ha_member {
    atomic_int up;          /* gets work */
    atomic_int stuck;       /* a call of its worker outlived the timeout */
    atomic_int inflight;    /* operations on it right now */
    int standby;
    int logged_in;          /* under the group's lock */
    atomic_ulong gen;       /* changes whenever it comes back: objects are matched again */
    atomic_long busy_since; /* ms of the monotonic clock when its oldest unanswered call started;
                             * 0: none; FRONT_HA_BUSY_UNSTAMPED: not known yet */
    atomic_ulong ops;       /* operations done */
    _Alignas(64) _Atomic CK_SESSION_HANDLE fast[FRONT_HA_FAST]; /* idle sessions (0: an empty place) */
    _Alignas(64) unsigned long long serial;
    CK_SLOT_ID slot;
    int resolved;           /* slot is the member's (under the group's lock) */
    int recovering;         /* a recovery thread runs for it */
    atomic_ulong lost;      /* times lost */
    int nidle;
    CK_SESSION_HANDLE idle[FRONT_HA_POOL];
    CK_SESSION_HANDLE anchor; /* the session that holds its login: never used, closed when idle */
    long open; /* sessions of ours open on it (the idle ones included) */
    CK_TOKEN_INFO ti; /* its token, as last seen (resolution, recovery) */
    struct front_ha_worker *worker; /* with an operation timeout (hawork.c) */
};

/* busy_since of a member with calls in flight, their oldest start not known:
 * stamped by the next pick (no clock read on a lone thread's path). */
#define FRONT_HA_BUSY_UNSTAMPED (-1L)

struct front_ha_slot;

/* One group's state; its first line is what every operation reads. */
struct front_ha_slot {
    const struct front_ha_group *g;
    struct front_ha_objtab *objs;
    long op_timeout_ms; /* g's, here to spare a line */
    int nmembers;
    int logged_in;      /* the host logged in (CKU_USER) */
    atomic_long sessions; /* HA sessions open */
    CK_SLOT_ID id;
    int index;          /* its place among the slots */
    pthread_mutex_t mu;
    struct front_ha_member m[FRONT_HA_MAX_MEMBERS];
};

/* The group of HA slot id, or NULL. */
struct front_ha_slot *front_hamember_slot(CK_SLOT_ID id);
/* The groups, for the host's slot list: their count, and slot i. */
int front_hamember_count(void);
struct front_ha_slot *front_hamember_at(int i);
/* Whether the host's calls on HA slots need the SIGPIPE guard (call.h):
 * set at a resolution once a socket is open in the process (a networked
 * vendor; without one, the guard's three system calls are spared). */
extern atomic_int front_hamember_sockets FRONT_HIDDEN;

/* An HA call of the host's, inside the SIGPIPE guard when needed: a member
 * that dies mid-call must not take the host with it. */
#define FRONT_HA_GUARDED(rvar, call) \
    do { \
        if (atomic_load_explicit(&front_hamember_sockets, memory_order_relaxed)) { \
            struct hx_guard g_; \
            hx_guard_begin(&g_); \
            rvar = (call); \
            hx_guard_end(&g_); \
        } else { \
            rvar = (call); \
        } \
    } while (0)

/* Finds every member's slot the group does not know yet (C_GetSlotList,
 * C_GetTokenInfo), on the host's thread. */
void front_hamember_resolve(struct front_ha_slot *s);
/* The usable member for new work holding what has (NULL: any), with the
 * fewest operations in flight, none of skip's (bit m: member m): active
 * members first, standby ones when no active one is usable. Its inflight
 * is counted; -1 when none. */
typedef int (*front_ha_has)(struct front_ha_slot *s, int m, void *arg);
int front_hamember_pick(struct front_ha_slot *s, front_ha_has has, void *arg, unsigned skip);
/* Picks member m if it is an active, usable member with no operation in
 * flight (then none is less busy): 1, its inflight counted, or 0. */
int front_hamember_take(struct front_ha_slot *s, int m);
/* The operation picked on m is over. */
void front_hamember_done(struct front_ha_slot *s, int m);
/* A session of ours on member m (opened when none is idle): CKR_OK, or
 * the vendor's answer. */
CK_RV front_hamember_session(struct front_ha_slot *s, int m, CK_SESSION_HANDLE *out);
/* Gives session h of member m back; failed: it is closed, not kept. */
void front_hamember_release(struct front_ha_slot *s, int m, CK_SESSION_HANDLE h, int failed);
/* Takes member m's idle sessions out of the pool into out (room for
 * FRONT_HA_IDLE_MAX); returns how many. */
#define FRONT_HA_IDLE_MAX (FRONT_HA_POOL + FRONT_HA_FAST)
int front_hamember_drain(struct front_ha_slot *s, int m, CK_SESSION_HANDLE *out);

/* --- hanote.c: the HA log's lines of the HA slot ------------------------- */

/* Appends one line to the HA log (haLogPath/haErrorLog.txt, as the engine
 * writes it: time first), when the configuration enables it; printf-like.
 * Nothing goes to standard output or error. */
void front_hanote(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Keeps a drift note (haobj.c: an object missing on a member) for
 * CA_HAExtGetHASlotReport: their count, and the i-th (the last 32 are kept;
 * NULL for one not kept). */
void front_hanote_drift(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
unsigned long front_hanote_drift_count(void);
const char *front_hanote_drift_note(unsigned i);

/* --- hapin.c: the PIN, kept for members that come back -------------------- */

/* Keeps a copy of slot i's pin (i: the slot's place, front_hamember_at) in
 * memory that is locked (never swapped), left out of core dumps and zeroed
 * when dropped: 0, or -1 (too long, no memory). */
int front_hapin_keep(int i, const CK_UTF8CHAR *pin, CK_ULONG len);
/* Copies slot i's kept PIN into buf (room for 256): its length, or -1 when
 * none is kept. */
long front_hapin_get(int i, CK_UTF8CHAR *buf);
/* Zeroes slot i's kept PIN (every one: i < 0). */
void front_hapin_drop(int i);
void front_hapin_reset(void);

/* --- harec.c: the recovery threads ---------------------------------------- */

/* Runs fn(s, m) on a thread of the front's, every signal blocked, once per
 * interval until it returns nonzero; at most one thread per member. The
 * vendor calls fn makes must be inside front_harec_enter/leave (the host's
 * C_Finalize and exit() wait for them). 0, or -1: no thread. */
typedef int (*front_harec_fn)(struct front_ha_slot *s, int m);
int front_harec_start(struct front_ha_slot *s, int m, front_harec_fn fn);
int front_harec_enter(void);
void front_harec_leave(void);
void front_harec_reset(void);

/* --- hawork.c: the operation timeout ------------------------------------- */

/* What a call left to its worker answers the host's thread: never returned
 * to the host (a vendor-defined value). */
#define FRONT_HA_TIMED_OUT ((CK_RV)0x8F000001UL)

/* Runs fn(arg) on member m's worker and waits for it at most the group's
 * operation timeout: 0 and fn's answer in *rv; -1 when it did not answer
 * in time: the member is stuck until it does, and its worker then calls
 * orphan(arg, answer), which owns arg. */
typedef CK_RV (*front_hawork_fn)(void *arg);
typedef void (*front_hawork_orphan)(void *arg, CK_RV rv);
int front_hawork_run(struct front_ha_slot *s, int m, front_hawork_fn fn, front_hawork_orphan orphan, void *arg,
                     CK_RV *rv);
void front_hawork_reset(struct front_ha_member *x);

/* --- halogin.c: login, loss and recovery ----------------------------------- */

/* Member m answered rv, a connection-class answer: it gets no work until
 * its recovery (a thread of the front's) finds it back. fn names the call. */
void front_halogin_lost(struct front_ha_slot *s, int m, const char *fn, CK_RV rv);
/* C_Login on every member: see hamember.c. */
CK_RV front_halogin_login(struct front_ha_slot *s, CK_UTF8CHAR_PTR pin, CK_ULONG len);
/* C_Logout: every member, the PIN zeroed. */
CK_RV front_halogin_logout(struct front_ha_slot *s);
/* Starts the recovery of every member of s that is not up. */
void front_halogin_recover_all(struct front_ha_slot *s);
/* The host closed the slot's last HA session: every session of ours on the
 * members closed (which logs them out), the PIN zeroed. */
void front_halogin_idle(struct front_ha_slot *s);
/* The host's C_Finalize: everything forgotten (the module closed it). */
void front_halogin_forget(void);
/* The fork child. */
void front_halogin_reset(void);
/* The host's calls in flight through the HA slots, and the failovers. */

extern atomic_ulong front_ha_failovers;

/* --- haobj.c: the object table -------------------------------------------- */

#define FRONT_HA_OBJ_TAG 0x4F000000UL

/* The front's handle of an object, and where it lives: a token object is
 * matched on each member by its class, key type, ID and label; a session
 * object lives on the member that made it (owner). */
struct front_ha_obj;

/* The member a session object lives on, -1 for a token object, -2 when o
 * is not an object of s. */
int front_haobj_owner(struct front_ha_slot *s, CK_OBJECT_HANDLE o);
/* Object o of s, for the calls below (NULL: o is not an object of s; an
 * object lives until the slot's last HA session closes). x_on: x on member
 * m: CKR_OK and its handle there, or CKR_KEY_HANDLE_INVALID when it is not
 * on that member (missing or ambiguous: reported once); h is a session of
 * ours on m for the search. x_may_have: whether x may be on member m (not
 * known to be missing there). */
struct front_ha_obj *front_haobj_get(struct front_ha_slot *s, CK_OBJECT_HANDLE o);
CK_RV front_haobj_x_on(struct front_ha_slot *s, struct front_ha_obj *x, int m, CK_SESSION_HANDLE h,
                       CK_OBJECT_HANDLE *out);
int front_haobj_x_may_have(struct front_ha_slot *s, const struct front_ha_obj *x, int m);
/* C_FindObjectsInit's search on every usable member: the front's handles
 * (malloc'd) in *out. */
CK_RV front_haobj_find(struct front_ha_slot *s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE **out,
                       CK_ULONG *count);
/* Records a session object member m made (handle real): the front's. */
CK_OBJECT_HANDLE front_haobj_add_session(struct front_ha_slot *s, int m, CK_OBJECT_HANDLE real);
/* Forgets the session objects (all 0: the last HA session closed), or all
 * (1: the host's C_Finalize; 2: the same in a fork child). */
void front_haobj_forget(struct front_ha_slot *s, int all);


/* --- haop.c: operations ----------------------------------------------------- */

/* An HA session's operation in progress: what is needed to issue it again
 * on another member (the mechanism, the key, the data of the updates so
 * far, up to LibHAExtReplayLimit bytes), and where it runs now. */
struct front_ha_op {
    int kind;               /* FRONT_HA_OP_*, 0: none */
    int m;                  /* the member it runs on */
    CK_SESSION_HANDLE real; /* our session there */
    CK_OBJECT_HANDLE key;   /* the front's handle (0: none, C_DigestInit) */
    CK_MECHANISM mech;
    unsigned skip;          /* members lost during it (bit m) */
    int pinned;             /* it cannot move: a member lost ends it */
    int updates;            /* updates so far */
    unsigned char *buf;     /* their data, while not pinned */
    CK_ULONG blen, bcap;
};

enum {
    FRONT_HA_OP_SIGN = 1,
    FRONT_HA_OP_VERIFY,
    FRONT_HA_OP_ENCRYPT,
    FRONT_HA_OP_DECRYPT,
    FRONT_HA_OP_DIGEST,
    FRONT_HA_OP_SIGNREC,
    FRONT_HA_OP_VERIFYREC
};

/* The vendor calls of an operation after its Init. */
enum {
    FRONT_HA_SINGLE, /* C_Sign, C_Verify, C_Encrypt, ..., C_SignRecover */
    FRONT_HA_UPDATE,
    FRONT_HA_FINAL
};

/* Arguments of one of them. */
struct front_ha_args {
    CK_BYTE_PTR in;
    CK_ULONG inlen;
    CK_BYTE_PTR out;
    CK_ULONG_PTR outlen;
};

/* The key an HA session last started an operation with, and its object
 * (front_haobj_get's, valid while the session is open): looked up once. */
struct front_ha_key {
    CK_OBJECT_HANDLE h;
    struct front_ha_obj *x;
    int m1; /* the member it ran on, plus one (0: none) */
};

/* Starts an operation of kind on the HA slot's session op (Init) with key
 * (one of the slot's objects: CKR_KEY_HANDLE_INVALID when not; none for a
 * digest), last: the session's key cache. */
CK_RV front_haop_init(struct front_ha_slot *s, struct front_ha_op *op, struct front_ha_key *last, int kind,
                      CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key);
/* Ends the operation in progress, if any (its session closed). */
void front_haop_end(struct front_ha_slot *s, struct front_ha_op *op);
/* Binds op, whose member was lost, to the next member (its Init again):
 * CKR_OK or why not. */
CK_RV front_haop_bind(struct front_ha_slot *s, struct front_ha_op *op, const char *fn);
/* Forgets op (what it allocated freed). */
void front_haop_clear(struct front_ha_op *op);

/* --- hacall.c: an operation's calls after its Init ----------------------- */

/* One call of the operation in progress (stage FRONT_HA_*), issued again
 * on another member when its member is lost. */
CK_RV front_haop_call(struct front_ha_slot *s, struct front_ha_op *op, int kind, int stage, struct front_ha_args *a);
/* A call of hakeys.c: fn(session, the keys' handles there, arg). */
typedef CK_RV (*front_haop_fn)(CK_SESSION_HANDLE h, const CK_OBJECT_HANDLE *real, void *arg);

/* --- haslot.c: the slots and the HA sessions ------------------------------- */

/* Whether h may be an HA session handle: the cheap test on every call. */
#define FRONT_HA_SESSION_TAG 0x48000000UL
#define FRONT_HA_TAGGED(h) (((h) >> 24) == (FRONT_HA_SESSION_TAG >> 24))

/* An HA session: the front's, on an HA slot. */
struct front_ha_sess {
    CK_SESSION_HANDLE h; /* what an operation reads first: h, used, s, key, op */
    int used;
    struct front_ha_slot *s;
    struct front_ha_key key;
    struct front_ha_op op;
    CK_FLAGS flags;
    CK_OBJECT_HANDLE *found; /* C_FindObjectsInit's result */
    CK_ULONG nfound, pos;
    int finding;
};

/* The HA session h, or NULL. */
struct front_ha_sess *front_haslot_session(CK_SESSION_HANDLE h);
/* The HA slot id, or NULL (also when the HA slot is off). */
struct front_ha_slot *front_haslot_get(CK_SLOT_ID id);
/* Refuses a call: records why for CA_GetHAExtLastError, returns rv. */
CK_RV front_haslot_refuse(CK_RV rv, const char *why);
/* The calling thread's last refusal, or NULL, until cleared (by the
 * thread's next CA_* call). */
const char *front_haslot_why(void);
void front_haslot_why_clear(void);
/* For CA_GetCurrentHAState: a slot of HA slot id's group (a member's
 * slot: the engine names the group by it), or id itself. */
CK_SLOT_ID front_haslot_member_slot(CK_SLOT_ID id);
/* The HA slots' IDs, for the host's C_GetSlotList (ids: room for
 * FRONT_HA_MAX_GROUPS): how many, 0 when the HA slot is off; *only: the
 * vendor's slots are hidden (HAOnly). */
int front_haslot_ids(CK_SLOT_ID *ids, int *only);
/* The host's calls on an HA slot. */
CK_RV front_haslot_C_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info);
CK_RV front_haslot_C_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info);
CK_RV front_haslot_C_GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR n);
CK_RV front_haslot_C_GetMechanismInfo(CK_SLOT_ID id, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info);
CK_RV front_haslot_open(CK_SLOT_ID id, CK_FLAGS flags, CK_SESSION_HANDLE_PTR out);
CK_RV front_haslot_close(CK_SESSION_HANDLE h);
CK_RV front_haslot_close_all(CK_SLOT_ID id);
/* The host's C_Finalize (after the vendor's), and the fork child. */
void front_haslot_finalized(void);
void front_haslot_reset(void);

/* --- hasess.c: the host's calls on HA sessions ------------------------------ */

/* front_ha_<name>: the host's call <name> on an HA session (hasess.c,
 * hakeys.c), for every
 * 2.40 function that takes a session (functions.h). */
#define FRONT_HASESS_DECL(name, params, args) CK_RV front_ha_##name params;
#include "functions.h"
FRONT_SESSION_FUNCTIONS(FRONT_HASESS_DECL)
CK_RV front_ha_C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len);

#endif
