/*
 * test_sigwait.c - a host that blocks every signal and collects them in one
 * thread with sigtimedwait, with libhaext.so loaded and CA_* calls running
 * on two other threads, under a burst of queued real-time signals from
 * another process (docs/ARCHITECTURE.md, "Signal masks").
 *
 * Each scenario runs in its own process ("test_sigwait host SCENARIO"), so
 * that one the burst kills is observed from outside:
 *
 *   rt1        the host blocks everything after loading the library; a
 *              burst of SIGRTMIN+1: collected, every one (libhaext starts
 *              the Go runtime's threads with every signal blocked that a C
 *              library may block);
 *   rtmin      the same with SIGRTMIN (signal 34), which the Go runtime
 *              unblocks on each of its threads whatever the mask: the burst
 *              kills the host. This is the limit docs/ARCHITECTURE.md documents;
 *   redirect   the same with the remedy of docs/ARCHITECTURE.md: a handler for SIGRTMIN
 *              that sends each one on to the collecting thread with
 *              rt_tgsigqueueinfo: the host survives and collects every one;
 *   urg        whether every thread but the host's blocks SIGURG, the Go
 *              runtime's preemption signal: only when the process starts
 *              with GODEBUG=asyncpreemptoff=1 (the remedy of docs/ARCHITECTURE.md).
 *
 * Environment (test/c/run.sh and the lab): LIBHAEXT, HALAB_MODULE,
 * HALAB_SERIALS, ChrystokiConfigurationPath.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define BURST 2000

/* ---- the host ---------------------------------------------------------- */

static struct host host;
static CK_SLOT_ID slot;
static pid_t collector;
static volatile int stop;

/* The remedy of docs/ARCHITECTURE.md: a signal that lands on a thread other than the
 * collector (one of the Go runtime's) goes on to the collector, with its
 * siginfo, where it waits blocked until sigtimedwait takes it. */
static void redirect(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    syscall(SYS_rt_tgsigqueueinfo, getpid(), collector, sig, info);
}

struct worker {
    pthread_t t;
    long calls, bad;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    while (!stop) {
        CK_HA_STATUS st;
        w->calls++;
        if (host.get_state(slot, &st) != CKR_OK) {
            w->bad++;
        }
    }
    return NULL;
}

/* A child that sends BURST queued signals, values 0..BURST-1, to parent.
 * It never outlives the parent (PR_SET_PDEATHSIG) and checks before every
 * signal that the parent is still its parent: once the parent is gone its
 * pid may belong to another process, which must never get the burst. */
static pid_t start_burst(int sig)
{
    pid_t parent = getpid(), pid = fork();
    if (pid == 0) {
        int i;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (i = 0; i < BURST; i++) {
            union sigval v;
            v.sival_int = i;
            for (;;) {
                if (getppid() != parent) {
                    _exit(1);
                }
                if (sigqueue(parent, sig, v) == 0) {
                    break;
                }
                if (errno != EAGAIN) {
                    _exit(1);
                }
                usleep(100);
            }
        }
        _exit(0);
    }
    return pid;
}

/* Exit 0 when every thread but this one blocks SIGURG. */
static int urg_main(void)
{
    char path[300], line[256];
    struct dirent *e;
    DIR *d;
    CK_HA_STATUS st;
    int threads = 0, accept = 0;
    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    {
        char *list = strdup(need_env("HALAB_SERIALS")), *save = NULL;
        slot = slot_of_serial(&host, strtok_r(list, " ", &save));
        free(list);
    }
    host.get_state(slot, &st);
    d = opendir("/proc/self/task");
    while (d && (e = readdir(d))) {
        FILE *f;
        if (e->d_name[0] == '.' || atoi(e->d_name) == gettid()) {
            continue;
        }
        snprintf(path, sizeof path, "/proc/self/task/%.32s/status", e->d_name);
        if (!(f = fopen(path, "r"))) {
            continue;
        }
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "SigBlk:", 7) == 0) {
                threads++;
                accept += !(strtoull(line + 7, NULL, 16) >> (SIGURG - 1) & 1);
            }
        }
        fclose(f);
    }
    if (d) {
        closedir(d);
    }
    printf("%d of the library's %d threads accept SIGURG\n", accept, threads);
    return threads > 0 && accept == 0 ? 0 : 1;
}

static int host_main(const char *scenario)
{
    int sig = strcmp(scenario, "rt1") == 0 ? SIGRTMIN + 1 : SIGRTMIN;
    static unsigned char seen[BURST];
    struct worker w[2];
    sigset_t all, wait_for;
    int i, got = 0, dups = 0, idle = 0;
    long calls = 0, bad = 0;
    CK_HA_STATUS st;
    pid_t sender;

    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    {
        char *list = strdup(need_env("HALAB_SERIALS")), *save = NULL;
        slot = slot_of_serial(&host, strtok_r(list, " ", &save));
        free(list);
    }
    if (host.get_state(slot, &st) != CKR_OK) {
        printf("the first status call failed\n");
        return 2;
    }
    collector = gettid();
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, NULL); /* inherited by the workers */
    if (strcmp(scenario, "redirect") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = redirect;
        sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK; /* it may run on a Go thread: its signal stack */
        sigfillset(&sa.sa_mask);
        sigaction(sig, &sa, NULL);
    }
    for (i = 0; i < 2; i++) {
        w[i].calls = w[i].bad = 0;
        pthread_create(&w[i].t, NULL, worker_main, &w[i]);
    }
    sender = start_burst(sig);

    sigemptyset(&wait_for);
    sigaddset(&wait_for, sig);
    while (got < BURST && idle < 5) {
        struct timespec second = {1, 0};
        siginfo_t si;
        int s = sigtimedwait(&wait_for, &si, &second);
        if (s < 0) {
            /* EINTR: woken for a signal another thread took first. */
            idle += errno == EAGAIN;
            continue;
        }
        idle = 0;
        if (si.si_value.sival_int < 0 || si.si_value.sival_int >= BURST || seen[si.si_value.sival_int]) {
            dups++;
            continue;
        }
        seen[si.si_value.sival_int] = 1;
        got++;
    }
    stop = 1;
    for (i = 0; i < 2; i++) {
        pthread_join(w[i].t, NULL);
        calls += w[i].calls;
        bad += w[i].bad;
    }
    waitpid(sender, NULL, 0);
    printf("collected %d of %d, %d duplicates; workers: %ld calls, %ld failed\n", got, BURST, dups, calls, bad);
    return got == BURST && dups == 0 && bad == 0 && calls > 0 ? 0 : 1;
}

/* ---- the driver -------------------------------------------------------- */

/* Runs "self host SCENARIO"; returns its wait status and its line. */
static int run_host(const char *scenario, char *line, size_t size)
{
    int fds[2], status = 0;
    ssize_t n;
    size_t len = 0;
    pid_t pid;
    double t0 = now_ms();
    if (pipe(fds) != 0) {
        snprintf(line, size, "pipe: %s", strerror(errno));
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl("/proc/self/exe", "test_sigwait", "host", scenario, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    line[0] = 0;
    while (len + 1 < size && (n = read(fds[0], line + len, size - 1 - len)) > 0) {
        len += (size_t)n;
    }
    line[len] = 0;
    if (len > 0 && line[len - 1] == '\n') {
        line[len - 1] = 0;
    }
    close(fds[0]);
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_ms() - t0 > 60000) {
            kill(pid, SIGKILL);
        }
        sleep_ms(10);
    }
    return status;
}

static const char *how(int status, char *buf, size_t size)
{
    if (WIFSIGNALED(status)) {
        snprintf(buf, size, "killed by signal %d", WTERMSIG(status));
    } else {
        snprintf(buf, size, "exit %d", WEXITSTATUS(status));
    }
    return buf;
}

int main(int argc, char **argv)
{
    char line[512], h[64];
    int status;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "host") == 0) {
        return strcmp(argv[2], "urg") == 0 ? urg_main() : host_main(argv[2]);
    }

    status = run_host("rt1", line, sizeof line);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a host that blocks every signal after loading the library collects a burst of %d SIGRTMIN+1 "
          "(%s: %s)",
          BURST, how(status, h, sizeof h), line);

    status = run_host("rtmin", line, sizeof line);
    check(WIFSIGNALED(status) && WTERMSIG(status) == SIGRTMIN,
          "the same host is killed by a burst of SIGRTMIN (signal %d), which the Go runtime unblocks on its "
          "threads (%s%s%s)",
          SIGRTMIN, how(status, h, sizeof h), line[0] ? ": " : "", line);

    status = run_host("redirect", line, sizeof line);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "with the documented handler sending SIGRTMIN on to the collecting thread, it survives and collects "
          "every one (%s: %s)",
          how(status, h, sizeof h), line);

    /* GODEBUG is read from the environment the process starts with. */
    unsetenv("GODEBUG");
    status = run_host("urg", line, sizeof line);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 1,
          "without GODEBUG the Go runtime's threads accept SIGURG, its preemption signal (%s)", line);
    setenv("GODEBUG", "asyncpreemptoff=1", 1);
    status = run_host("urg", line, sizeof line);
    unsetenv("GODEBUG");
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "with GODEBUG=asyncpreemptoff=1 they keep SIGURG blocked (%s)", line);
    return done();
}
