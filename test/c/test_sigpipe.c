/*
 * test_sigpipe.c - the HA log to a standard output nobody reads (issue 9,
 * item 1). A host whose stdout is a pipe with no reader, loading libhaext
 * with haLogToStdout = enabled, must survive libhaext's writes whatever it
 * did with SIGPIPE: kept the default action, ignored it, or installed a
 * handler of its own; and that handler must not run because of libhaext.
 * Each is tried before libhaext is loaded (the Go runtime then installs its
 * own handler and forwards to the host's) and after (the host's disposition
 * replaces the Go runtime's handler).
 *
 * Every variant runs in a child process that loads both libraries itself
 * (the parent never loads libhaext: the Go runtime does not survive a
 * fork). The child's HA log also goes to a file, after standard output: once
 * the file holds a member's line, libhaext has written that line to the
 * broken pipe. A control variant has a reader on the pipe and checks that
 * the lines do reach standard output.
 *
 * Environment (from test/c/run.sh): LIBHAEXT, HALAB_MODULE, HALAB_DIR (holds
 * the lab's Chrystoki.conf), HALAB_SERIALS, HALAB_SCRATCH.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* Exit statuses of a child. */
enum {
    CHILD_OK = 0,          /* survived, own handler not run */
    CHILD_SETUP = 2,       /* could not set itself up */
    CHILD_HANDLER_RAN = 3, /* survived, but its SIGPIPE handler ran */
    CHILD_NO_LOG = 4,      /* the HA log never showed the members */
};

enum variant { V_READER, V_DEFAULT, V_IGNORED, V_HANDLER };
static const char *variant_name[] = {"a reader on the pipe", "SIGPIPE default", "SIGPIPE ignored",
                                     "own SIGPIPE handler"};
static const char *when_name[] = {"set before loading libhaext", "set after loading libhaext"};

static volatile sig_atomic_t handler_runs;

static void on_sigpipe(int sig)
{
    (void)sig;
    handler_runs++;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static int count(const char *text, const char *needle)
{
    int n = 0;
    for (; text && (text = strstr(text, needle)) != NULL; text++) {
        n++;
    }
    return n;
}

/* write_conf writes dir/Chrystoki.conf: the lab's file with the HA log to
 * dir and to standard output. */
static int write_conf(const char *dir)
{
    char path[1100], *lab, *at;
    FILE *f;
    const char *head = "HAConfiguration = {\n";
    snprintf(path, sizeof path, "%s/Chrystoki.conf", need_env("HALAB_DIR"));
    if (!(lab = read_file(path)) || !(at = strstr(lab, head))) {
        fprintf(stderr, "no %s in %s\n", head, path);
        return -1;
    }
    at += strlen(head);
    snprintf(path, sizeof path, "%s/Chrystoki.conf", dir);
    if (!(f = fopen(path, "w"))) {
        return -1;
    }
    fprintf(f, "%.*s   haLogStatus = enabled;\n   haLogPath = %s;\n   haLogToStdout = enabled;\n%s",
            (int)(at - lab), lab, dir, at);
    free(lab);
    return fclose(f);
}

static int set_sigpipe(enum variant v)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = v == V_IGNORED ? SIG_IGN : v == V_HANDLER ? on_sigpipe : SIG_DFL;
    sa.sa_flags = SA_RESTART;
    return sigaction(SIGPIPE, &sa, NULL);
}

/* child runs one variant with out as its standard output, setting its
 * SIGPIPE disposition before (after == 0) or after loading libhaext; it
 * never returns. */
static void child(enum variant v, int after, int out, const char *dir, const char *serial, int nmembers)
{
    struct host host;
    char log[1100];
    CK_SLOT_ID slot;
    int i, seen = 0;

    if ((!after && set_sigpipe(v) != 0) || dup2(out, 1) != 1 || write_conf(dir) != 0 ||
        setenv("ChrystokiConfigurationPath", dir, 1) != 0) {
        _exit(CHILD_SETUP);
    }
    close(out);
    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    if (after && set_sigpipe(v) != 0) {
        _exit(CHILD_SETUP);
    }
    if ((slot = slot_of_serial(&host, serial)) == (CK_SLOT_ID)-1) {
        fprintf(stderr, "member %s not found\n", serial);
        _exit(CHILD_SETUP);
    }
    snprintf(log, sizeof log, "%s/haErrorLog.txt", dir);
    /* Each member's first verdict is one line: on stdout, then in the file. */
    for (i = 0; i < 200 && seen < nmembers; i++) {
        CK_HA_STATUS st;
        char *text;
        host.get_state(slot, &st);
        text = read_file(log);
        seen = count(text, "old=none");
        free(text);
        sleep_ms(50);
    }
    if (seen < nmembers) {
        fprintf(stderr, "variant %d: the HA log shows %d of %d members\n", (int)v, seen, nmembers);
        _exit(CHILD_NO_LOG);
    }
    sleep_ms(200);
    _exit(handler_runs ? CHILD_HANDLER_RAN : CHILD_OK);
}

static void run_variant(enum variant v, int after, const char *serial, int nmembers)
{
    char dir[1024], out[8192], name[128];
    int p[2], status;
    size_t got = 0;
    ssize_t n;
    pid_t pid;

    snprintf(dir, sizeof dir, "%s/v%d-%d", need_env("HALAB_SCRATCH"), (int)v, after);
    snprintf(name, sizeof name, "%s%s%s", variant_name[v], v == V_READER ? "" : ", ",
             v == V_READER ? "" : when_name[after]);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "mkdir %s: %s\n", dir, strerror(errno));
        exit(2);
    }
    if (pipe(p) != 0) {
        exit(2);
    }
    fflush(NULL);
    if ((pid = fork()) < 0) {
        exit(2);
    }
    if (pid == 0) {
        if (v != V_READER) {
            close(p[0]); /* nobody will ever read the pipe */
        }
        child(v, after, p[1], dir, serial, nmembers);
    }
    close(p[1]);
    if (v == V_READER) {
        while ((n = read(p[0], out + got, sizeof out - 1 - got)) > 0 || (n < 0 && errno == EINTR)) {
            got += n > 0 ? (size_t)n : 0;
        }
    }
    out[got] = 0;
    close(p[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status)) {
        check(0, "%s: the host survives libhaext's writes (killed by signal %d, %s)", name,
              WTERMSIG(status), strsignal(WTERMSIG(status)));
        return;
    }
    check(WEXITSTATUS(status) == CHILD_OK || WEXITSTATUS(status) == CHILD_HANDLER_RAN,
          "%s: the host survives libhaext's writes (exit %d)", name, WEXITSTATUS(status));
    if (v == V_HANDLER) {
        check(WEXITSTATUS(status) == CHILD_OK, "%s: the host's handler did not run", name);
    }
    if (v == V_READER) {
        check(count(out, "old=none") == nmembers,
              "%s: haLogToStdout writes each member's first verdict to standard output (%d of %d)",
              name, count(out, "old=none"), nmembers);
    }
}

int main(void)
{
    char *list = strdup(need_env("HALAB_SERIALS")), *first, *save = NULL, *tok;
    int nmembers = 0, after;

    setvbuf(stdout, NULL, _IOLBF, 0);
    first = strtok_r(list, " ", &save);
    for (tok = first; tok; tok = strtok_r(NULL, " ", &save)) {
        nmembers++;
    }
    if (!first || mkdir(need_env("HALAB_SCRATCH"), 0700) != 0) {
        if (!first || errno != EEXIST) {
            fprintf(stderr, "no members or no scratch directory\n");
            return 2;
        }
    }
    run_variant(V_READER, 0, first, nmembers);
    for (after = 0; after < 2; after++) {
        run_variant(V_DEFAULT, after, first, nmembers);
        run_variant(V_IGNORED, after, first, nmembers);
        run_variant(V_HANDLER, after, first, nmembers);
    }
    free(list);
    return done();
}
