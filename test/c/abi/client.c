/*
 * client.c - an application of the HA status call, built the ways real ones
 * are: against a Luna-style vendor header (test/c/abi/luna5 or luna7, written
 * from the published definitions) or against cryptoki_ha.h alone, in either
 * layout, as C99, C11 or C++. test/c/abi.sh compiles it with -Werror and runs
 * it against a SoftHSM2 group; it links libhaext.so at build time, so the
 * prototypes it sees are the ones it calls through.
 *
 *   CLIENT_ORDER 1: the vendor's cryptoki_v2.h, then cryptoki_ha.h
 *                2: p11-kit's pkcs11.h, then cryptoki_ha.h
 *                3: cryptoki_ha.h, then p11-kit's pkcs11.h
 *                4: cryptoki_ha.h, then the vendor's header (cannot work)
 *                5: the vendor's header alone (it declares the prototypes)
 *   LIBHAEXT_HA_LAYOUT_SA6: the application's CK_HA_STATUS has text serials.
 *
 * Environment (test/c/run.sh and the lab): HALAB_MODULE, HALAB_SERIALS,
 * HALAB_GROUP_SERIAL, ChrystokiConfigurationPath. Prints one line per check
 * and "N passed, N failed".
 */
#if !defined(__cplusplus) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* strdup, strtok_r under -std=c99 */
#endif
#if CLIENT_ORDER == 1
#include "cryptoki_v2.h"
#include <cryptoki_ha.h>
#elif CLIENT_ORDER == 2
#include <p11-kit/pkcs11.h>
#include <cryptoki_ha.h>
#elif CLIENT_ORDER == 3
#include <cryptoki_ha.h>
#include <p11-kit/pkcs11.h>
#elif CLIENT_ORDER == 4
#include <cryptoki_ha.h>
#include "cryptoki_v2.h"
#elif CLIENT_ORDER == 5
#include "cryptoki_v2.h"
#else
#error "define CLIENT_ORDER"
#endif

#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXM 32

#ifdef LIBHAEXT_HA_LAYOUT_SA6
#define LAYOUT "SA6"
#define WANT_SIZE 1056u
#define WANT_LISTSIZE_AT 1048u
#else
#define LAYOUT "classic"
#define WANT_SIZE 528u
#define WANT_LISTSIZE_AT 520u
#endif

static int passed, failed;

static void check(int ok, const char *what, const char *detail)
{
    if (ok) {
        passed++;
    } else {
        failed++;
    }
    printf("%s %d - %s%s%s\n", ok ? "ok" : "not ok", passed + failed, what, detail[0] ? ": " : "", detail);
}

static const char *need(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "client: %s is not set\n", name);
        exit(2);
    }
    return v;
}

#ifndef LIBHAEXT_HA_LAYOUT_SA6
/* A serial as the library reads one: decimal when all digits, else hex. */
static CK_ULONG parse_serial(const char *text)
{
    const char *p;
    int digits = 1;
    for (p = text; *p; p++) {
        digits &= *p >= '0' && *p <= '9';
    }
    return strtoul(text, NULL, digits ? 10 : 16);
}
#else

/* A 20-byte SA6 serial field equals text, NUL-padded. */
static int text_field_is(const CK_CHAR *field, const char *text)
{
    size_t n = strlen(text), i;
    if (n > 20 || memcmp(field, text, n) != 0) {
        return 0;
    }
    for (i = n; i < 20; i++) {
        if (field[i] != 0) {
            return 0;
        }
    }
    return 1;
}
#endif

static CK_FUNCTION_LIST_PTR p11;
static int nmembers;
static CK_SLOT_ID slots[MAXM];
static char token_serial[MAXM][17]; /* as the token reports it, trimmed */

/* Loads and initializes the vendor module, as the host does first, and
 * finds each member's slot and its serial as the token reports it. */
static void load_vendor(void)
{
    CK_C_GetFunctionList gfl;
    CK_C_INITIALIZE_ARGS args;
    CK_SLOT_ID all[64];
    CK_ULONG n = 64, i;
    char *list, *tok, *save = NULL;
    void *sym, *h = dlopen(need("HALAB_MODULE"), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "client: dlopen: %s\n", dlerror());
        exit(2);
    }
    sym = dlsym(h, "C_GetFunctionList");
    memcpy(&gfl, &sym, sizeof gfl);
    if (!gfl || gfl(&p11) != CKR_OK) {
        fprintf(stderr, "client: C_GetFunctionList failed\n");
        exit(2);
    }
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    if (p11->C_Initialize(&args) != CKR_OK || p11->C_GetSlotList(CK_TRUE, all, &n) != CKR_OK) {
        fprintf(stderr, "client: the vendor module does not start\n");
        exit(2);
    }
    list = strdup(need("HALAB_SERIALS"));
    for (tok = strtok_r(list, " ", &save); tok && nmembers < MAXM; tok = strtok_r(NULL, " ", &save)) {
        slots[nmembers] = (CK_SLOT_ID)-1;
        for (i = 0; i < n; i++) {
            CK_TOKEN_INFO ti;
            size_t k = sizeof ti.serialNumber;
            if (p11->C_GetTokenInfo(all[i], &ti) != CKR_OK) {
                continue;
            }
            while (k > 0 && ti.serialNumber[k - 1] == ' ') {
                k--;
            }
            if (k == strlen(tok) && memcmp(ti.serialNumber, tok, k) == 0) {
                slots[nmembers] = all[i];
                memcpy(token_serial[nmembers], ti.serialNumber, k);
                token_serial[nmembers][k] = 0;
            }
        }
        if (slots[nmembers] == (CK_SLOT_ID)-1) {
            fprintf(stderr, "client: member %s not found\n", tok);
            exit(2);
        }
        nmembers++;
    }
    free(list);
}

typedef CK_RV (*status_fn)(CK_SLOT_ID, CK_HA_STATE_PTR);

int main(void)
{
    /* The struct with 64 guard bytes after it: the library must not write
     * past the layout's size. */
    union {
        CK_HA_STATUS st;
        unsigned char bytes[sizeof(CK_HA_STATUS) + 64];
    } a, b;
    const char *group = need("HALAB_GROUP_SERIAL");
    char detail[256], reason[512];
    status_fn by_pointer = CA_GetCurrentHAState; /* the macro maps it too */
    CK_RV rv;
    size_t k;
    int i, ok;

    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(detail, sizeof detail, "%u, listSize at %u", (unsigned)sizeof(CK_HA_STATUS),
             (unsigned)offsetof(CK_HA_STATUS, listSize));
    check(sizeof(CK_HA_STATUS) == WANT_SIZE && offsetof(CK_HA_STATUS, listSize) == WANT_LISTSIZE_AT,
          "sizeof(CK_HA_STATUS) is the published " LAYOUT " size", detail);
    load_vendor();

    memset(a.bytes, 0xA5, sizeof a.bytes);
    rv = CA_GetCurrentHAState(slots[0], &a.st);
    snprintf(detail, sizeof detail, "0x%lx", (unsigned long)rv);
    check(rv == CKR_OK, "CA_GetCurrentHAState -> CKR_OK", detail);
    snprintf(detail, sizeof detail, "%lu of %d", (unsigned long)a.st.listSize, nmembers);
    check(a.st.listSize == (CK_ULONG)nmembers, "listSize is the group's member count", detail);

#ifdef LIBHAEXT_HA_LAYOUT_SA6
    snprintf(detail, sizeof detail, "\"%.20s\"", (const char *)a.st.groupSerial);
    check(text_field_is(a.st.groupSerial, group), "groupSerial is the group serial's text, NUL-padded in 20 bytes",
          detail);
    ok = 1;
    for (i = 0; i < nmembers; i++) {
        if (!text_field_is(a.st.memberList[i].memberSerial, token_serial[i])) {
            snprintf(detail, sizeof detail, "member %d: \"%.20s\", token says \"%.16s\"", i,
                     (const char *)a.st.memberList[i].memberSerial, token_serial[i]);
            ok = 0;
        }
    }
    if (ok) {
        snprintf(detail, sizeof detail, "e.g. \"%.16s\"", token_serial[0]);
    }
    check(ok, "each memberSerial is the serial the token reports, NUL-padded in 20 bytes", detail);
#else
    snprintf(detail, sizeof detail, "%lu", (unsigned long)a.st.groupSerial);
    check(a.st.groupSerial == parse_serial(group), "groupSerial is the group serial", detail);
    ok = 1;
    for (i = 0; i < nmembers; i++) {
        if (a.st.memberList[i].memberSerial != parse_serial(token_serial[i])) {
            snprintf(detail, sizeof detail, "member %d: %lu, token says %.16s", i,
                     (unsigned long)a.st.memberList[i].memberSerial, token_serial[i]);
            ok = 0;
        }
    }
    if (ok) {
        snprintf(detail, sizeof detail, "e.g. %lu (\"%.16s\")", (unsigned long)a.st.memberList[0].memberSerial,
                 token_serial[0]);
    }
    check(ok, "each memberSerial is the token's serial, read as the library reads it", detail);
#endif
    ok = 1;
    for (i = 0; i < nmembers; i++) {
        ok &= a.st.memberList[i].memberStatus == CKR_OK;
    }
    check(ok, "every member CKR_OK", "");

    ok = 1;
    for (k = offsetof(CK_HA_STATUS, memberList) + (size_t)nmembers * sizeof(CK_HA_MEMBER);
         k < offsetof(CK_HA_STATUS, listSize); k++) {
        ok &= a.bytes[k] == 0;
    }
    check(ok, "unused members are zeroed over garbage", "");
    ok = 1;
    for (k = sizeof(CK_HA_STATUS); k < sizeof a.bytes; k++) {
        ok &= a.bytes[k] == 0xA5;
    }
    snprintf(detail, sizeof detail, "bytes %u..%u", (unsigned)sizeof(CK_HA_STATUS), (unsigned)sizeof a.bytes - 1);
    check(ok, "nothing written past the struct", detail);

    memset(b.bytes, 0x5A, sizeof b.bytes);
    rv = CA_GetHAState(slots[nmembers - 1], &b.st);
    check(rv == CKR_OK && memcmp(a.bytes, b.bytes, sizeof(CK_HA_STATUS)) == 0,
          "CA_GetHAState writes the same report, by another member's slot", "");
    memset(b.bytes, 0x5A, sizeof b.bytes);
    rv = by_pointer(slots[0], &b.st);
    check(rv == CKR_OK && memcmp(a.bytes, b.bytes, sizeof(CK_HA_STATUS)) == 0,
          "a function pointer to CA_GetCurrentHAState does the same", "");

    check(CA_GetCurrentHAState(0x7fff1234, &b.st) == CKR_SLOT_ID_INVALID, "unknown slot -> CKR_SLOT_ID_INVALID",
          "");
#ifdef LIBHAEXT_CRYPTOKI_HA_H /* libhaext's own addition */
    check(CA_GetCurrentHAState(slots[0], NULL) == CKR_ARGUMENTS_BAD && CA_GetHAExtLastError(reason, sizeof reason) > 0,
          "NULL pState -> CKR_ARGUMENTS_BAD, with a reason", reason);
    rv = CA_GetCurrentHAState(slots[0], &b.st);
    check(rv == CKR_OK && CA_GetHAExtLastError(reason, sizeof reason) == 0 && reason[0] == 0,
          "a call that succeeds clears the last error", "");
#else
    check(CA_GetCurrentHAState(slots[0], NULL) == CKR_ARGUMENTS_BAD, "NULL pState -> CKR_ARGUMENTS_BAD", "");
    (void)reason;
#endif

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
