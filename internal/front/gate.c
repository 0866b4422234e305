/*
 * gate.c - libhaext's vendor calls against the host's C_Finalize: struct
 * haext_vendor's enter and leave (hostapi.h).
 *
 * enter() succeeds while the module is initialized by the host and no
 * C_Finalize has begun. The host's C_Finalize (host.c) closes the gate,
 * waits for the calls inside it (at most FRONT_WAIT_MS), then forwards; its
 * C_Initialize opens it after the vendor's CKR_OK or
 * CKR_CRYPTOKI_ALREADY_INITIALIZED. The lock is never held across a vendor
 * call.
 */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "front.h"

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv; /* CLOCK_MONOTONIC: front_gate_init */
static int gate_open, gate_inside;

void front_gate_init(void)
{
    front_cond_init(&gate_cv);
}

int front_gate_enter(void)
{
    int ok;
    pthread_mutex_lock(&gate_mu);
    ok = gate_open;
    if (ok)
        gate_inside++;
    pthread_mutex_unlock(&gate_mu);
    return ok;
}

void front_gate_leave(void)
{
    pthread_mutex_lock(&gate_mu);
    if (gate_inside > 0)
        gate_inside--;
    if (gate_inside == 0)
        pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

int front_gate_open(void)
{
    int was;
    pthread_mutex_lock(&gate_mu);
    was = gate_open;
    gate_open = 1;
    pthread_mutex_unlock(&gate_mu);
    return was;
}

int front_gate_close(long ms)
{
    struct timespec dl;
    int was;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&gate_mu);
    was = gate_open;
    gate_open = 0;
    while (gate_inside > 0)
        if (pthread_cond_timedwait(&gate_cv, &gate_mu, &dl) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&gate_mu);
    return was;
}

void front_gate_restore(int was_open)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = was_open;
    pthread_mutex_unlock(&gate_mu);
}

/* The fork child: the child's host must call C_Initialize. */
void front_gate_reset(void)
{
    pthread_mutex_init(&gate_mu, NULL);
    front_cond_init(&gate_cv);
    gate_open = gate_inside = 0;
}
