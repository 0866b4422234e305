/*
 * test_net.c - CA_GetCurrentHAState with members across a network: SoftHSM2
 * tokens served by Caml Crush's pkcs11proxyd over TCP (and TLS) inside the
 * lab's own network namespace (test/lab/lab.sh --mode tcp|tls|mixed). Faults
 * are real: the server is SIGKILLed, the link is cut with iptables DROP
 * inside the namespace, or both.
 *
 *   test_net SCENARIO     killed | partition | halfopen | missing | tls | wrongca |
 *                         mixed
 *
 * Environment (from test/c/net.sh): LIBHAEXT, HALAB_MODULE, HALAB_DIR,
 * HALAB_SERIALS, HALAB_LAB_SH, HALAB_TIMEOUT_MS, HALAB_TCP_PORT,
 * HALAB_TCP_MEMBERS (indexes of the members behind Caml Crush);
 * HAEXT_HALOG_DIR (halfopen: the HA log's directory); HALAB_WRONG_CA_FILE
 * (wrongca); HALAB_MISSING_SERIAL (missing: a member configured last that
 * no token has). Runs inside the lab's namespace (lab.sh exec), so
 * /proc/net/tcp shows the lab's connections. The process keeps SIGPIPE at
 * its default action: a SIGPIPE the library let through would kill it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define MAX 32

/* TCP states as /proc/net/tcp writes them (include/net/tcp_states.h). */
#define TCP_ESTABLISHED_ 0x01
#define TCP_CLOSE_WAIT_ 0x08
#define NO_CONNECTION (-1)

static struct host host;
static int nmembers;
static char serial_text[MAX][32];
static CK_ULONG serials[MAX];
static CK_SLOT_ID slots[MAX];
static int over_tcp[MAX]; /* member i is behind Caml Crush */
static int missing = -1;  /* index of the configured member no token has */
static double timeout_ms;
static int port;


/* call makes one status call on the group; it returns its CK_RV and its
 * duration. */
static CK_RV call(CK_HA_STATUS *st, double *ms)
{
    return timed_state(&host, slots[0], st, ms);
}

static void show(const char *what, const CK_HA_STATUS *st, double ms)
{
    char line[512];
    int i, n = snprintf(line, sizeof line, "%s (%.1f ms):", what, ms);
    for (i = 0; i < (int)st->listSize && i < MAX && n < (int)sizeof line; i++) {
        n += snprintf(line + n, sizeof line - n, " %s%s", i == missing ? "missing:" : over_tcp[i] ? "tcp:" : "unix:",
                      status_name(st->memberList[i].memberStatus));
    }
    note("%s", line);
}

/* is: the report lists every member in order; members over TCP have
 * tcp_want, the others other_want. */
static int is(CK_RV rv, const CK_HA_STATUS *st, CK_RV tcp_want, CK_RV other_want)
{
    int i;
    if (rv != CKR_OK || st->listSize != (CK_ULONG)nmembers) {
        return 0;
    }
    for (i = 0; i < nmembers; i++) {
        if (st->memberList[i].memberSerial != serials[i] ||
            st->memberList[i].memberStatus != (over_tcp[i] ? tcp_want : other_want)) {
            return 0;
        }
    }
    return 1;
}

/* wait_for polls until the report is as wanted; it returns how long that
 * took in ms, or -1 after limit_ms. */
static double wait_for(CK_RV tcp_want, CK_RV other_want, double limit_ms)
{
    CK_HA_STATUS st;
    double t0 = now_ms(), ms = 0;
    CK_RV rv = CKR_GENERAL_ERROR;
    while (now_ms() - t0 < limit_ms) {
        rv = call(&st, &ms);
        if (is(rv, &st, tcp_want, other_want)) {
            return now_ms() - t0;
        }
        sleep_ms(10);
    }
    show("not yet as expected", &st, ms);
    return -1;
}

static void start_healthy(void)
{
    CK_HA_STATUS st;
    double ms;
    CK_RV rv = call(&st, &ms);
    show("first call", &st, ms);
    check(is(rv, &st, CKR_OK, CKR_OK), "healthy group: all %d members CKR_OK", nmembers);
}

/* conn_state: the TCP state of this process's connection to the Caml Crush
 * server, from /proc/net/tcp (the lab's namespace) matched by socket inode
 * with /proc/self/fd; NO_CONNECTION when the process has none listed (a
 * socket that was reset is in CLOSE and no longer listed). */
static int conn_state(void)
{
    unsigned long inodes[256];
    int ninodes = 0, state = NO_CONNECTION;
    char path[300], link[64], line[512];
    struct dirent *e;
    DIR *d = opendir("/proc/self/fd");
    FILE *f;
    if (!d) {
        return NO_CONNECTION;
    }
    while ((e = readdir(d)) && ninodes < 256) {
        ssize_t n;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        n = readlink(path, link, sizeof link - 1);
        if (n > 0) {
            link[n] = 0;
            if (sscanf(link, "socket:[%lu]", &inodes[ninodes]) == 1) {
                ninodes++;
            }
        }
    }
    closedir(d);
    f = fopen("/proc/net/tcp", "r");
    if (!f) {
        return NO_CONNECTION;
    }
    while (fgets(line, sizeof line, f)) {
        unsigned rport, st;
        unsigned long inode;
        int i;
        /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line, " %*d: %*x:%*x %*x:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &rport, &st, &inode) != 3 ||
            (int)rport != port) {
            continue;
        }
        for (i = 0; i < ninodes; i++) {
            if (inodes[i] == inode) {
                state = (int)st;
            }
        }
    }
    fclose(f);
    return state;
}

static const char *state_name(int st)
{
    switch (st) {
    case TCP_ESTABLISHED_: return "ESTABLISHED";
    case TCP_CLOSE_WAIT_: return "CLOSE_WAIT";
    case NO_CONNECTION: return "none (reset or closed)";
    }
    return "other";
}

/* proxy_pids: pkcs11proxyd's processes, from `lab.sh proxy-pid`. */
static int proxy_pids(pid_t *out, int max)
{
    char cmd[2048], line[64];
    int n = 0;
    FILE *p;
    snprintf(cmd, sizeof cmd, "bash '%s' proxy-pid --dir '%s'", need_env("HALAB_LAB_SH"), need_env("HALAB_DIR"));
    p = popen(cmd, "r");
    if (!p) {
        return 0;
    }
    while (n < max && fgets(line, sizeof line, p)) {
        long v = strtol(line, NULL, 10);
        if (v > 1) {
            out[n++] = (pid_t)v;
        }
    }
    pclose(p);
    return n;
}

/* first_tcp: the index of the first member behind Caml Crush. */
static int first_tcp(void)
{
    int i;
    for (i = 0; i < nmembers; i++) {
        if (over_tcp[i]) {
            return i;
        }
    }
    return 0;
}

/* killed_now: after a kill, the first call and the next ten report every
 * member over TCP CKR_HA_SOCKET_DOWN (others other_want), at once. */
static void killed_now(const char *what, CK_RV other_want)
{
    CK_HA_STATUS st;
    double ms, first, worst = 0;
    int i, all = 1;
    CK_RV rv = call(&st, &first);
    show(what, &st, first);
    check(is(rv, &st, CKR_HA_SOCKET_DOWN, other_want), "%s: the first call reports CKR_HA_SOCKET_DOWN", what);
    check(first < timeout_ms / 4, "%s: reported in %.1f ms, no waiting for the dead server", what, first);
    for (i = 0; i < 10; i++) {
        rv = call(&st, &ms);
        all &= is(rv, &st, CKR_HA_SOCKET_DOWN, other_want);
        worst = ms > worst ? ms : worst;
    }
    check(all, "%s: 10 more calls agree (worst %.1f ms)", what, worst);
}

/* cut_now: after the link is cut, the first call reports every member over
 * TCP CKR_HA_TIMEOUT at statusTimeout, and ten more at once. */
static void cut_now(const char *what, CK_RV other_want)
{
    CK_HA_STATUS st;
    double ms, worst = 0;
    int i, bad = 0;
    CK_RV rv = call(&st, &ms);
    show(what, &st, ms);
    check(is(rv, &st, CKR_HA_TIMEOUT, other_want), "%s: CKR_HA_TIMEOUT", what);
    check(ms >= timeout_ms - 50 && ms <= timeout_ms + 200, "%s: reported at statusTimeout (%.0f ms, timeout %.0f)",
          what, ms, timeout_ms);
    for (i = 0; i < 10; i++) {
        rv = call(&st, &ms);
        bad += !is(rv, &st, CKR_HA_TIMEOUT, other_want);
        worst = ms > worst ? ms : worst;
    }
    check(bad == 0 && worst < 100, "%s: 10 more calls, CKR_HA_TIMEOUT at once (worst %.1f ms)", what, worst);
}

/* The server dies: the kernel closes its sockets, the FIN reaches this
 * process at once, and stage 2 sees CLOSE_WAIT. The host's own next call
 * then meets an RST. */
static void scenario_killed(void)
{
    CK_HA_STATUS st;
    CK_SESSION_HANDLE hs;
    CK_SESSION_INFO si;
    double t0, seen;
    pid_t pids[16];
    int i, n, calls_between = 0, st_after;
    sigset_t set, pending;
    struct timespec zero = {0, 0};
    CK_RV rv;

    start_healthy();
    check(conn_state() == TCP_ESTABLISHED_, "the module's connection is ESTABLISHED (%s)", state_name(conn_state()));
    check(host.p11->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &hs) == CKR_OK,
          "the host opens a session of its own");
    /* SIGKILL every pkcs11proxyd process, then ask until the report says
     * so: the time from the kill to the verdict. */
    n = proxy_pids(pids, 16);
    check(n >= 2, "pkcs11proxyd runs as a controller and a worker for this connection (%d processes)", n);
    t0 = now_ms();
    for (i = 0; i < n; i++) {
        kill(pids[i], SIGKILL);
    }
    seen = -1;
    while (now_ms() - t0 < 2000) {
        CK_RV rv = call(&st, NULL);
        if (is(rv, &st, CKR_HA_SOCKET_DOWN, CKR_HA_SOCKET_DOWN)) {
            seen = now_ms() - t0;
            break;
        }
        if (calls_between++ == 0 || rv != CKR_OK || st.memberList[0].memberStatus != CKR_OK) {
            show("while the server dies", &st, now_ms() - t0);
        }
    }
    check(seen >= 0 && seen < timeout_ms / 4,
          "server killed: every member CKR_HA_SOCKET_DOWN %.1f ms after SIGKILL (%d calls before)", seen,
          calls_between);
    killed_now("server killed", CKR_HA_SOCKET_DOWN);
    /* A dying server closes its socket with FIN, or with RST when a
     * request of a status call in that window was left unread in it. */
    st_after = conn_state();
    check(st_after == TCP_CLOSE_WAIT_ || st_after == NO_CONNECTION,
          "the server closed the connection: %s", st_after == TCP_CLOSE_WAIT_
                                                      ? "CLOSE_WAIT, its FIN arrived"
                                                      : "reset, a request met the dying server");

    /* The host's own call writes to the dead server: its guard is the
     * host's business (SIGPIPE blocked, then drained). */
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    rv = host.p11->C_GetSessionInfo(hs, &si);
    sleep_ms(50);
    rv = host.p11->C_GetSessionInfo(hs, &si);
    sigpending(&pending);
    while (sigtimedwait(&set, NULL, &zero) == SIGPIPE) {
    }
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    note("the host's own calls to the dead server: 0x%lx; SIGPIPE %s", rv,
         sigismember(&pending, SIGPIPE) ? "raised (drained by the host)" : "not raised");
    check(rv != CKR_OK, "the host's own call fails too (0x%lx)", rv);
    check(conn_state() == NO_CONNECTION, "after the host's write no connection is left (%s)",
          state_name(conn_state()));
    killed_now("connection reset", CKR_HA_SOCKET_DOWN);

    /* Caml Crush's client connects once, when the module is loaded: a
     * restarted server is not reconnected to, and libhaext never reports a
     * member without a connection as alive. */
    lab_do("restart-proxy", first_tcp());
    sleep_ms(500);
    rv = call(&st, NULL);
    check(is(rv, &st, CKR_HA_SOCKET_DOWN, CKR_HA_SOCKET_DOWN),
          "server restarted: still CKR_HA_SOCKET_DOWN, Caml Crush's client does not reconnect by itself");
}

/* A partition: packets are dropped both ways; the connection stays
 * ESTABLISHED and the lightweight call gets no answer. */
static void scenario_partition(void)
{
    double back;
    start_healthy();
    lab_do("partition", first_tcp());
    cut_now("partition", CKR_HA_TIMEOUT);
    check(conn_state() == TCP_ESTABLISHED_, "the connection stays ESTABLISHED during the partition (%s)",
          state_name(conn_state()));
    lab_do("heal", first_tcp());
    back = wait_for(CKR_OK, CKR_OK, 30000);
    check(back >= 0, "healed: every member CKR_OK again (%.0f ms after the heal; TCP retransmits with backoff)",
          back);
}

/* haLog_has: the HA log has a line for the member with the new status and
 * reason. The log is written off the status path: wait up to a second. */
static int halog_has(const char *member_hex, const char *status, const char *reason)
{
    char path[PATH_MAX], line[1024], m[64], n[64], r[64];
    double t0 = now_ms();
    snprintf(path, sizeof path, "%s/haErrorLog.txt", need_env("HAEXT_HALOG_DIR"));
    snprintf(m, sizeof m, "member_hex=%s ", member_hex);
    snprintf(n, sizeof n, " new=%s ", status);
    snprintf(r, sizeof r, "reason=\"%s\"", reason);
    while (now_ms() - t0 < 1000) {
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f)) {
            if (strstr(line, m) && strstr(line, n) && strstr(line, r)) {
                fclose(f);
                return 1;
            }
        }
        if (f) {
            fclose(f);
        }
        sleep_ms(50);
    }
    return 0;
}

/* A half-open peer: the link is cut, then the server dies; its FIN and RST
 * are lost, so this side still sees an ESTABLISHED connection until the
 * link comes back and the next retransmission meets the RST. */
static void scenario_halfopen(void)
{
    double gone;
    start_healthy();
    lab_do("partition", first_tcp());
    lab_do("kill-proxy", first_tcp());
    cut_now("half-open (partition, then the server killed)", CKR_HA_TIMEOUT);
    check(conn_state() == TCP_ESTABLISHED_,
          "half-open: this side still holds an ESTABLISHED connection to the dead server (%s)",
          state_name(conn_state()));
    check(halog_has(serial_text[first_tcp()], "CKR_HA_TIMEOUT", "timeout"),
          "the HA log gives the reason: %s new=CKR_HA_TIMEOUT reason=\"timeout\"", serial_text[first_tcp()]);
    lab_do("heal", first_tcp());
    gone = wait_for(CKR_HA_SOCKET_DOWN, CKR_HA_SOCKET_DOWN, 30000);
    check(gone >= 0, "link back: the retransmission meets the RST, every member CKR_HA_SOCKET_DOWN (%.0f ms after "
                     "the heal)", gone);
    check(conn_state() != TCP_ESTABLISHED_, "the connection is gone (%s)", state_name(conn_state()));
    check(halog_has(serial_text[first_tcp()], "CKR_HA_SOCKET_DOWN", "socket down"),
          "the HA log gives the reason: new=CKR_HA_SOCKET_DOWN reason=\"socket down\"");
}

/* A partition while one configured member is missing from the module (out
 * of service, say): that member fails stage 1, which must not make the call
 * wait on the cut link. Every call still returns at statusTimeout. */
static void scenario_missing(void)
{
    CK_HA_STATUS st;
    double ms, back;
    CK_RV rv = call(&st, &ms);
    show("first call", &st, ms);
    check(is(rv, &st, CKR_OK, CKR_HA_NO_INSTANCE), "members over TCP CKR_OK, the missing one CKR_HA_NO_INSTANCE");
    lab_do("partition", first_tcp());
    cut_now("partition, a member missing", CKR_HA_NO_INSTANCE);
    lab_do("heal", first_tcp());
    back = wait_for(CKR_OK, CKR_HA_NO_INSTANCE, 30000);
    check(back >= 0, "healed: the members over TCP CKR_OK again (%.0f ms)", back);
}

/* TLS: stage 2 judges the TCP connection under the TLS session. */
static void scenario_tls(void)
{
    double back;
    start_healthy();
    check(conn_state() == TCP_ESTABLISHED_, "the TLS session runs over an ESTABLISHED TCP connection");
    lab_do("partition", first_tcp());
    cut_now("TLS, partition", CKR_HA_TIMEOUT);
    lab_do("heal", first_tcp());
    back = wait_for(CKR_OK, CKR_OK, 30000);
    check(back >= 0, "TLS, healed: CKR_OK again (%.0f ms after the heal)", back);
    lab_do("kill-proxy", first_tcp());
    killed_now("TLS, server killed", CKR_HA_SOCKET_DOWN);
}

/* The TLS client holding the wrong CA: Caml Crush's client connects in its
 * library constructor and calls exit(-1) when the server's certificate does
 * not verify, so whatever process loads it dies in dlopen, before any
 * PKCS#11 call (hastatus reports it; see test/c/net.sh). */
static void scenario_wrongca(void)
{
    int fd[2], status = 0;
    char out[4096];
    ssize_t n, got = 0;
    pid_t pid;
    if (pipe(fd) != 0) {
        check(0, "pipe");
        return;
    }
    pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        setenv("PKCS11PROXY_CA_FILE", need_env("HALAB_WRONG_CA_FILE"), 1);
        dlopen(need_env("HALAB_MODULE"), RTLD_NOW | RTLD_LOCAL);
        _exit(0);
    }
    close(fd[1]);
    while (got < (ssize_t)sizeof out - 1 && (n = read(fd[0], out + got, sizeof out - 1 - got)) > 0) {
        got += n;
    }
    out[got] = 0;
    close(fd[0]);
    waitpid(pid, &status, 0);
    note("the module said: %s", strtok(out, "\n") ? out : "(nothing)");
    check(WIFEXITED(status) && WEXITSTATUS(status) == 255,
          "a process that loads Caml Crush's TLS client with the wrong CA dies in dlopen (exit status %d)",
          WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    check(strstr(out, "verify result") != NULL, "after printing the verification failure");
}

/* One group across transports: members over p11-kit's unix sockets and one
 * over Caml Crush's TCP, all through p11-kit-proxy in one process. */
static void scenario_mixed(void)
{
    double back;
    int tcp = first_tcp();
    start_healthy();
    check(conn_state() == TCP_ESTABLISHED_, "the process holds unix connections and one TCP connection (%s)",
          state_name(conn_state()));
    lab_do("partition", tcp);
    cut_now("TCP member cut off", CKR_OK);
    lab_do("heal", tcp);
    back = wait_for(CKR_OK, CKR_OK, 30000);
    check(back >= 0, "healed: all CKR_OK again (%.0f ms)", back);

    lab_do("kill", 0); /* member 0's p11-kit-remote */
    {
        CK_HA_STATUS st;
        double ms;
        CK_RV rv;
        sleep_ms(100);
        rv = call(&st, &ms);
        show("unix member 0 killed", &st, ms);
        check(rv == CKR_OK && st.memberList[0].memberStatus == CKR_HA_SOCKET_DOWN &&
                  st.memberList[tcp].memberStatus == CKR_OK,
              "unix member 0 CKR_HA_SOCKET_DOWN, the TCP member CKR_OK (%.1f ms)", ms);
    }
    lab_do("kill-proxy", tcp);
    {
        CK_HA_STATUS st;
        double ms;
        CK_RV rv = call(&st, &ms);
        int i, others = 1;
        show("and the TCP member's server killed", &st, ms);
        for (i = 1; i < tcp; i++) {
            others &= st.memberList[i].memberStatus == CKR_OK;
        }
        check(rv == CKR_OK && st.memberList[0].memberStatus == CKR_HA_SOCKET_DOWN &&
                  st.memberList[tcp].memberStatus == CKR_HA_SOCKET_DOWN && others,
              "both dead members CKR_HA_SOCKET_DOWN, the others CKR_OK (%.1f ms)", ms);
        check(ms < timeout_ms / 4, "at once: stage 2 judged a unix and a TCP endpoint in one group");
    }
}

int main(int argc, char **argv)
{
    char *list, *tok, *save = NULL;
    const char *scenario = argc > 1 ? argv[1] : "";
    int i;

    setvbuf(stdout, NULL, _IOLBF, 0);
    nmembers = lab_members(serial_text, serials, MAX);
    list = strdup(need_env("HALAB_TCP_MEMBERS"));
    for (tok = strtok_r(list, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        i = atoi(tok);
        if (i >= 0 && i < MAX) {
            over_tcp[i] = 1;
        }
    }
    free(list);
    if (getenv("HALAB_MISSING_SERIAL") && nmembers < MAX) {
        missing = nmembers;
        snprintf(serial_text[nmembers], sizeof serial_text[0], "%s", getenv("HALAB_MISSING_SERIAL"));
        serials[nmembers++] = parse_serial(serial_text[missing]);
    }
    timeout_ms = atof(need_env("HALAB_TIMEOUT_MS"));
    port = atoi(need_env("HALAB_TCP_PORT"));

    if (strcmp(scenario, "wrongca") == 0) {
        scenario_wrongca();
        return done();
    }
    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    signal(SIGPIPE, SIG_DFL); /* after loading: replaces the Go runtime's handler */
    lab_slots(&host, serial_text, missing >= 0 ? missing : nmembers, slots); /* the missing one is last */
    if (strcmp(scenario, "killed") == 0) {
        scenario_killed();
    } else if (strcmp(scenario, "partition") == 0) {
        scenario_partition();
    } else if (strcmp(scenario, "halfopen") == 0) {
        scenario_halfopen();
    } else if (strcmp(scenario, "missing") == 0) {
        scenario_missing();
    } else if (strcmp(scenario, "tls") == 0) {
        scenario_tls();
    } else if (strcmp(scenario, "mixed") == 0) {
        scenario_mixed();
    } else {
        fprintf(stderr, "usage: %s killed|partition|halfopen|missing|tls|wrongca|mixed\n", argv[0]);
        return 2;
    }
    return done();
}
