/*
 * test_core.c - CA_GetCurrentHAState as an application meets it: a healthy
 * SoftHSM2 group, bad input, broken configurations, a missing module, the
 * ABI layout, and many threads at once.
 *
 * Environment (set by test/c/run.sh from the lab): LIBHAEXT, HALAB_MODULE,
 * HALAB_DIR (holds the lab's Chrystoki.conf), HALAB_SERIALS, HALAB_GROUP_SERIAL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#define MAX 32

static struct host host;
static int nmembers;
static char serial_text[MAX][32];
static CK_ULONG serials[MAX];
static CK_SLOT_ID slots[MAX];
static CK_ULONG group_serial;

/* A CK_HA_STATUS as Luna's cryptoki_v2.h lays it out (CK_USHORT is
 * unsigned long there, as in cryptoki_ha.h). */
typedef struct {
    CK_ULONG groupSerial;
    CK_HA_MEMBER memberList[CK_HA_MAX_MEMBERS];
    unsigned long listSize;
} luna_ha_status;

/* The same from a header that types CK_USHORT as unsigned short (as
 * cryptoki_ha.h did before 1.1). */
typedef struct {
    CK_ULONG groupSerial;
    CK_HA_MEMBER memberList[CK_HA_MAX_MEMBERS];
    unsigned short listSize;
} short_ha_status;

static void test_layout(void)
{
    check(sizeof(CK_HA_MEMBER) == 16, "sizeof(CK_HA_MEMBER) == 16 (%zu)", sizeof(CK_HA_MEMBER));
    check(offsetof(CK_HA_STATUS, memberList) == 8, "memberList at offset 8");
    check(offsetof(CK_HA_STATUS, listSize) == 520, "listSize at offset 520 (%zu)",
          offsetof(CK_HA_STATUS, listSize));
    check(sizeof(CK_HA_STATUS) == 528, "sizeof(CK_HA_STATUS) == 528 (%zu)", sizeof(CK_HA_STATUS));
    check(sizeof(luna_ha_status) == 528, "Luna-width CK_HA_STATUS is 528 bytes too");
    check(CKR_HA_NO_INSTANCE == 0xC8410001UL && CKR_HA_SOCKET_DOWN == 0xC8410002UL &&
              CKR_HA_TIMEOUT == 0xC8410003UL,
          "CKR_HA_* values are CKR_VENDOR_DEFINED | 0x4841000n");
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(2);
    }
}

static int last_error_contains(const char *needle)
{
    char buf[1024];
    CK_ULONG n = host.last_error(buf, sizeof buf);
    int ok = n > 0 && strstr(buf, needle) != NULL;
    if (!ok) {
        note("last error was: \"%s\"", buf);
    }
    return ok;
}

/* Bad input before any configuration works: the library must refuse each
 * case with a clear CK_RV and reason, and recover once the file is fixed. */
static void test_bad_input(const char *scratch)
{
    CK_HA_STATUS st;
    char dir[512], path[600], text[2048];
    CK_RV rv;
    char small[8];
    CK_ULONG n;

    check(host.get_state(0, NULL) == CKR_ARGUMENTS_BAD, "NULL pState -> CKR_ARGUMENTS_BAD");
    check(host.last_error(NULL, 0) < 1u << 20, "CA_GetHAExtLastError accepts a NULL buffer");

    /* No file in the named directory. */
    snprintf(dir, sizeof dir, "%s/empty", scratch);
    mkdir(dir, 0700);
    setenv("ChrystokiConfigurationPath", dir, 1); /* after libhaext.so was loaded */
    rv = host.get_state(slots[0], &st);
    check(rv == CKR_GENERAL_ERROR, "no configuration file -> CKR_GENERAL_ERROR (%s)", status_name(rv));
    check(last_error_contains("Chrystoki.conf"), "reason names the file looked for");
    n = host.last_error(small, sizeof small);
    check(n > sizeof small && small[sizeof small - 1] == 0 && strlen(small) == sizeof small - 1,
          "CA_GetHAExtLastError truncates to the buffer and NUL-terminates");

    /* Broken brace syntax. */
    snprintf(dir, sizeof dir, "%s/broken", scratch);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/Chrystoki.conf", dir);
    write_file(path, "Chrystoki2 = {\n   LibUNIX64 = /x.so;\nVirtualToken = {\n");
    setenv("ChrystokiConfigurationPath", dir, 1);
    sleep_ms(1100); /* failures are retried at most once a second */
    rv = host.get_state(slots[0], &st);
    check(rv == CKR_GENERAL_ERROR, "broken brace file -> CKR_GENERAL_ERROR (%s)", status_name(rv));
    check(last_error_contains(path), "reason names the broken file");

    /* Too many members in a group. */
    {
        char members[1024] = "";
        int i;
        for (i = 0; i < 33; i++) {
            char one[24];
            snprintf(one, sizeof one, "%s%d", i ? "," : "", 1000 + i);
            strcat(members, one);
        }
        snprintf(text, sizeof text,
                 "Chrystoki2 = {\n LibUNIX64 = %s;\n}\nVirtualToken = {\n VirtualToken00Label = big;\n"
                 " VirtualToken00SN = 77;\n VirtualToken00Members = %s;\n}\n",
                 getenv("HALAB_MODULE"), members);
        write_file(path, text);
        sleep_ms(1100);
        rv = host.get_state(slots[0], &st);
        check(rv == CKR_GENERAL_ERROR, "33 members -> CKR_GENERAL_ERROR (%s)", status_name(rv));
        check(last_error_contains("VirtualToken00Members"), "reason names the key of the oversized group");
    }

    /* A module that does not exist. */
    snprintf(text, sizeof text,
             "Chrystoki2 = {\n LibUNIX64 = %s/no-such-module.so;\n}\nVirtualToken = {\n"
             " VirtualToken00Label = g;\n VirtualToken00SN = 77;\n VirtualToken00Members = %s;\n}\n",
             scratch, serial_text[0]);
    write_file(path, text);
    sleep_ms(1100);
    rv = host.get_state(slots[0], &st);
    check(rv == CKR_GENERAL_ERROR, "missing vendor module -> CKR_GENERAL_ERROR (%s)", status_name(rv));
    check(last_error_contains("no-such-module.so"), "reason names the missing module");

    /* A failure is remembered for a second, not re-read on every call. */
    rv = host.get_state(slots[0], &st);
    check(rv == CKR_GENERAL_ERROR, "failure is cached between retries");
}

static int report_is_group(const CK_HA_STATUS *st, CK_RV want, const char *what)
{
    int i, ok = st->groupSerial == group_serial && st->listSize == (CK_ULONG)nmembers;
    for (i = 0; ok && i < nmembers; i++) {
        ok = st->memberList[i].memberSerial == serials[i] && st->memberList[i].memberStatus == want;
    }
    if (!ok) {
        note("%s: groupSerial %lu listSize %u", what, st->groupSerial, (unsigned)st->listSize);
        for (i = 0; i < (int)st->listSize && i < CK_HA_MAX_MEMBERS; i++) {
            note("  member %lu %s", st->memberList[i].memberSerial, status_name(st->memberList[i].memberStatus));
        }
    }
    return ok;
}

static void test_healthy(void)
{
    CK_HA_STATUS st;
    luna_ha_status luna;
    short_ha_status shortst;
    int i;
    double t0, worst = 0;
    CK_RV rv;

    setenv("ChrystokiConfigurationPath", need_env("HALAB_DIR"), 1);
    sleep_ms(1100);
    t0 = now_ms();
    rv = host.get_state(slots[0], &st);
    note("first call (loads configuration and module, opens monitor sessions): %.1f ms", now_ms() - t0);
    check(rv == CKR_OK, "first call on the lab configuration -> CKR_OK (%s)", status_name(rv));
    check(report_is_group(&st, CKR_OK, "first call"), "first call reports all %d members CKR_OK", nmembers);

    for (i = 0; i < nmembers; i++) {
        memset(&st, 0xA5, sizeof st);
        rv = host.get_state(slots[i], &st);
        check(rv == CKR_OK && report_is_group(&st, CKR_OK, "by member slot"),
              "slot %lu of member %d names the group, every member CKR_OK", slots[i], i);
    }

    memset(&luna, 0xA5, sizeof luna);
    rv = host.get_state(slots[0], (CK_HA_STATE_PTR)(void *)&luna);
    check(rv == CKR_OK && luna.listSize == (unsigned long)nmembers,
          "listSize reads right through Luna's unsigned long CK_USHORT (%lu)", luna.listSize);
    memset(&shortst, 0xA5, sizeof shortst);
    host.get_state(slots[0], (CK_HA_STATE_PTR)(void *)&shortst);
    check(shortst.listSize == nmembers, "listSize reads right through unsigned short (%u)",
          (unsigned)shortst.listSize);
    {
        int tail_zero = 1;
        unsigned char *p = (unsigned char *)&shortst;
        size_t k;
        for (k = 8 + 16 * (size_t)nmembers; k < 520; k++) {
            tail_zero &= p[k] == 0;
        }
        for (k = 522; k < sizeof shortst; k++) {
            tail_zero &= p[k] == 0;
        }
        check(tail_zero, "unused members and padding are zeroed over garbage");
    }

    for (i = 0; i < 200; i++) {
        double t = now_ms();
        host.get_state(slots[i % nmembers], &st);
        t = now_ms() - t;
        if (t > worst) {
            worst = t;
        }
    }
    note("200 calls on a healthy group: worst %.2f ms", worst);
    check(worst < 1000, "a healthy group answers far below statusTimeout (worst %.2f ms)", worst);
}

static void test_unknown_slots(void)
{
    CK_HA_STATUS st;
    CK_SLOT_ID all[64];
    CK_ULONG n = 64, i;
    CK_RV rv = host.get_state(0x7fff1234, &st);
    check(rv == CKR_SLOT_ID_INVALID, "unknown slot -> CKR_SLOT_ID_INVALID (%s)", status_name(rv));
    /* SoftHSM2 always shows one extra slot with no initialized token. */
    if (host.p11->C_GetSlotList(CK_FALSE, all, &n) == CKR_OK) {
        for (i = 0; i < n; i++) {
            int member = 0, j;
            for (j = 0; j < nmembers; j++) {
                member |= all[i] == slots[j];
            }
            if (!member) {
                rv = host.get_state(all[i], &st);
                check(rv == CKR_SLOT_ID_INVALID, "slot %lu outside the group -> CKR_SLOT_ID_INVALID (%s)",
                      all[i], status_name(rv));
            }
        }
    }
}

static void test_no_session_churn(void)
{
    CK_HA_STATUS st;
    CK_SESSION_HANDLE first, last;
    long n;
    int i, one_each = 1;

    first = session_marker(&host, slots[0]);
    for (i = 0; i < 500; i++) {
        host.get_state(slots[i % nmembers], &st);
    }
    last = session_marker(&host, slots[0]);
    note("host session handles around 500 calls: %lu and %lu", first, last);
    check(first != 0 && last == first + 1, "500 status calls open no session (handles %lu -> %lu)", first, last);
    for (i = 0; i < nmembers; i++) {
        n = sessions_on_slot(&host, slots[i], last);
        if (n != 1) {
            note("member %d: %ld sessions open", i, n);
            one_each = 0;
        }
    }
    check(one_each, "each member holds exactly one session: the library's monitor session");
}

static void test_legacy(void)
{
    CK_HA_STATUS cur, old;
    CK_RV rv;
    check(host.get_state_legacy != NULL, "libhaext.so exports the legacy CA_GetHAState");
    if (!host.get_state_legacy) {
        return;
    }
    memset(&old, 0xA5, sizeof old);
    rv = host.get_state_legacy(slots[1], &old);
    host.get_state(slots[1], &cur);
    check(rv == CKR_OK && report_is_group(&old, CKR_OK, "legacy") &&
              memcmp(&old, &cur, offsetof(CK_HA_STATUS, listSize) + sizeof cur.listSize) == 0,
          "CA_GetHAState gives the same report as CA_GetCurrentHAState");
    check(host.get_state_legacy(slots[1], NULL) == CKR_ARGUMENTS_BAD, "CA_GetHAState(NULL) -> CKR_ARGUMENTS_BAD");
}

/* The HA log (haLogStatus/haLogPath set by run.sh): one line per member's
 * first state. */
static void test_halog(void)
{
    const char *dir = getenv("HAEXT_HALOG_DIR");
    char path[600], line[1024];
    int lines = 0, ok_lines = 0;
    FILE *f;
    if (!dir) {
        return;
    }
    snprintf(path, sizeof path, "%s/haErrorLog.txt", dir);
    sleep_ms(200); /* the log is written on the library's own goroutine */
    f = fopen(path, "r");
    check(f != NULL, "the HA log %s exists", path);
    if (!f) {
        return;
    }
    while (fgets(line, sizeof line, f)) {
        lines++;
        ok_lines += strstr(line, "old=none new=CKR_OK") != NULL;
    }
    fclose(f);
    check(ok_lines == nmembers && lines == nmembers,
          "the HA log has one line per member's first state and nothing else (%d of %d lines)", ok_lines, lines);
}

struct worker {
    pthread_t t;
    int calls, bad;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int i;
    for (i = 0; i < w->calls; i++) {
        CK_HA_STATUS st;
        memset(&st, 0x5A, sizeof st);
        if (host.get_state(slots[i % nmembers], &st) != CKR_OK || !report_is_group(&st, CKR_OK, "thread")) {
            w->bad++;
        }
    }
    return NULL;
}

static void test_threads(void)
{
    struct worker w[16];
    int i, bad = 0, before = thread_count(), after;
    double t0 = now_ms();
    for (i = 0; i < 16; i++) {
        w[i].calls = 300;
        w[i].bad = 0;
        pthread_create(&w[i].t, NULL, worker_main, &w[i]);
    }
    for (i = 0; i < 16; i++) {
        pthread_join(w[i].t, NULL);
        bad += w[i].bad;
    }
    after = thread_count();
    note("16 threads x 300 calls in %.0f ms; threads %d before, %d after", now_ms() - t0, before, after);
    check(bad == 0, "16 threads x 300 concurrent calls: every report well-formed and CKR_OK (%d bad)", bad);
    check(after <= before + 8, "no thread pile-up (%d -> %d)", before, after);
}

int main(void)
{
    const char *scratch = need_env("HALAB_SCRATCH");

    setvbuf(stdout, NULL, _IOLBF, 0);
    nmembers = lab_members(serial_text, serials, MAX);
    group_serial = parse_serial(need_env("HALAB_GROUP_SERIAL"));
    unsetenv("ChrystokiConfigurationPath");

    test_layout();
    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    lab_slots(&host, serial_text, nmembers, slots);
    test_bad_input(scratch);
    test_healthy();
    test_unknown_slots();
    test_no_session_churn();
    test_threads();
    test_legacy();
    test_halog();
    return done();
}
