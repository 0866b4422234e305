/*
 * lanes.h - stage 3 on C threads: one lane (a parked pthread) per member,
 * released by one broadcast, making the member's lightweight call from C.
 *
 * A status call starts or joins the rounds of its members and waits for
 * them in one call (hx_lanes_check); the Go engine only orchestrates. At
 * most one call per member is in flight: a caller that finds a round
 * running joins it, and one that finds a round older than the stuck limit
 * reports CKR_HA_TIMEOUT at once, so a hung member pins exactly its lane.
 *
 * The head start (hx_head_start): a status call's C entry point starts the
 * rounds of the members that answered CKR_OK the last time the host asked
 * about the same slot, before it enters Go, so that the lanes work while Go
 * runs stages 1 and 2. It also makes stage 2's poll, for Go and for itself:
 * a member whose connection shows a hang-up is not started. What it did is
 * a struct hx_head in the entry point's stack frame, handed through Go to
 * the check (hx_lanes_check) and back to hx_head_end. The engine disarms a
 * member whenever its instance changes.
 */
#ifndef HAEXT_LANES_H
#define HAEXT_LANES_H

#include <stdint.h>

#include "call.h"

/* The most members one status call checks (CK_HA_MAX_MEMBERS). */
#define HX_MAX_LANES_PER_CALL 32
/* The most endpoints whose descriptors a head start polls (stage 2's
 * table); a member whose endpoint is past them is not started ahead. */
#define HX_MAX_POLL 64

/* How a lane makes its lightweight call. */
enum hx_mode {
    HX_MODE_SESSION = 0, /* C_GetSessionInfo on the engine's own session */
    HX_MODE_BORROW = 1,  /* C_GetSessionInfo on a session the host lends, else C_GetTokenInfo */
    HX_MODE_TOKEN = 2,   /* C_GetTokenInfo on the member's slot: no session */
};

/* Results besides a CK_RV. */
#define HX_RV_TIMEOUT ((CK_RV)-1) /* no result before the deadline */
#define HX_RV_STUCK ((CK_RV)-2)   /* the member's running call is older than the stuck limit */
#define HX_RV_GATE ((CK_RV)-3)    /* the host's gate is closed (C_Finalize) */

struct hx_req {
    int lane;
    int mode;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE session;
    uint64_t epoch; /* of the member's instance the request was made from */
    int ep;         /* the member's endpoint in stage 2's table (hx_lanes_fds), or -1 */
};

struct hx_res {
    CK_RV rv;
    int64_t took_ns;           /* from the start of hx_lanes_check to the result */
    CK_SESSION_HANDLE session; /* the session of the round that answered */
};

struct hx_lanes;

/* The head start of one status call: what hx_head_start did, in the stack
 * frame of the call's C entry point, until hx_head_end. */
struct hx_head {
    CK_SLOT_ID key;       /* the slot the host asked about */
    struct hx_lanes *p;   /* the pool of the rounds started, held; NULL: none */
    int64_t started_ns;   /* when they were */
    int n;                /* rounds started: lane[k], round gen[k] */
    int lane[HX_MAX_LANES_PER_CALL];
    uint64_t gen[HX_MAX_LANES_PER_CALL];
    int polled;           /* stage 2's poll: per endpoint j < polled, */
    int fd[HX_MAX_POLL];  /* the descriptor polled (-1: none), */
    unsigned char down[HX_MAX_POLL]; /* and whether it showed a hang-up or an error */
};

/* Starts n lanes over host (which must outlive them), with a table of nfd
 * endpoints for stage 2. A round running for stuck_ns or longer is not
 * joined. Returns NULL when a thread could not be created. */
struct hx_lanes *hx_lanes_new(struct haext_vendor *host, int n, int nfd, int64_t stuck_ns);
/* Stage 2's table: per endpoint, the descriptor that last proved it
 * healthy, or -1; *n entries. Go writes it (atomic stores) and the head
 * start polls it. */
int *hx_lanes_fds(struct hx_lanes *p, int *n);
/* Runs one round on each requested lane (starting it, or joining the one
 * running) and waits at most wait_ns for all of them. A joined round is
 * waited for only until it is stuck_ns old: from then on it is stuck, and
 * reported as such at once, so no caller waits on it longer than that.
 * For a status call (h, else NULL) it takes the results of the rounds its
 * head start began, and afterwards arms the members that answered CKR_OK
 * (from a request whose epoch is current) for the next head start about
 * h->key. */
void hx_lanes_check(struct hx_lanes *p, const struct hx_req *req, int n, int64_t wait_ns, struct hx_res *res,
                    const struct hx_head *h);
/* The member on lane changed its instance (its epoch is now epoch): it is
 * not started ahead again until a request made at that epoch or later
 * answers CKR_OK. */
void hx_lanes_disarm(struct hx_lanes *p, int lane, uint64_t epoch);
/* Makes p the pool hx_head_start uses, holding it; NULL clears. */
void hx_head_set(struct hx_lanes *p);
/* Clears the pool hx_head_start uses if it is p. */
void hx_head_unset(struct hx_lanes *p);
/* A status call about slot key begins: polls stage 2's table (one poll for
 * all) and starts the armed members of the last check of key whose
 * connection shows no hang-up, all recorded in *h. No Go, no vendor call:
 * only the pool's lock, one poll and one broadcast. */
void hx_head_start(struct hx_head *h, CK_SLOT_ID key);
/* The status call is about to return: waits for the rounds its head start
 * began that are still in flight (Go did not ask for every one), at most
 * until they are stuck, so that no round the call started outlives it. */
void hx_head_end(struct hx_head *h);
/* Stops the lanes: idle ones exit now, one inside a vendor call when the
 * call returns. */
void hx_lanes_stop(struct hx_lanes *p);
/* Waits at most wait_ns for every lane to be out of its vendor call;
 * returns how many are still inside one. */
int hx_lanes_wait_idle(struct hx_lanes *p, int64_t wait_ns);
/* Drops the owner's hold: the last of the owner and the lane threads frees
 * the pool. The pool must not be used afterwards. */
void hx_lanes_release(struct hx_lanes *p);
/* Lanes inside a call older than the stuck limit. */
int hx_lanes_stuck(struct hx_lanes *p);

/* Stage 2's poll (sockstate.go), the one poll of the library: polls the
 * n descriptors fd (-1: none) at once with a zero timeout, retried on
 * EINTR, and sets down[i] when fd[i] shows a hang-up or an error or is not
 * open. Returns -1 when poll failed, else 0. */
int hx_poll_down(const int *fd, int n, unsigned char *down);

#endif
