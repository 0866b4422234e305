/*
 * hanote.c - the HA slot's lines in the HA log: a member lost (with the
 * function and the code), back, an object missing on a member. Written by
 * the thread that saw it, with the engine's rules (CONFIGURATION.md, "The
 * HA log"): haLogPath must be absolute with no symbolic link on the way
 * (openat2 RESOLVE_NO_SYMLINKS), haErrorLog.txt is opened with O_NOFOLLOW
 * and used only when it is a regular file of the process's user with one
 * link; a line that cannot be written is dropped. The front appends; the
 * engine's writer rotates.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ha.h"

static int open_log(const char *dir)
{
    struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC, .resolve = RESOLVE_NO_SYMLINKS};
    struct stat st;
    int d, fd;
    if (dir[0] != '/')
        return -1;
    d = (int)syscall(SYS_openat2, AT_FDCWD, dir, &how, sizeof how);
    if (d < 0)
        return -1;
    fd = openat(d, "haErrorLog.txt", O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY,
                0600);
    close(d);
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || st.st_nlink != 1)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

void front_hanote(const char *fmt, ...)
{
    const struct front_ha_conf *c = front_haconf();
    char line[512];
    struct timespec now;
    struct tm tm;
    va_list ap;
    size_t n;
    int fd;
    if (c == NULL || c->log_dir[0] == '\0' || (fd = open_log(c->log_dir)) < 0)
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ ", now.tv_nsec / 1000000);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    n = strlen(line);
    line[n++] = '\n';
    if (write(fd, line, n) < 0) {
        /* dropped */
    }
    close(fd);
}

static atomic_ulong drift;
static char notes[32][160]; /* the last 32 drift notes */

void front_hanote_drift(const char *fmt, ...)
{
    unsigned long i = atomic_fetch_add(&drift, 1);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(notes[i % 32], sizeof notes[0], fmt, ap);
    va_end(ap);
}

unsigned long front_hanote_drift_count(void) { return atomic_load(&drift); }

const char *front_hanote_drift_note(unsigned i)
{
    unsigned long n = atomic_load(&drift);
    return i < n && i + 32 >= n ? notes[i % 32] : NULL;
}
