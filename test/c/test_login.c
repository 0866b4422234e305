/*
 * test_login.c - the host's login state beside libhaext (issue 9, item 8).
 *
 * Sessions of one application share its login state. With its monitor
 * sessions (the default), libhaext's read-only session on a token makes
 * the host's C_Login(CKU_SO) fail with CKR_SESSION_READ_ONLY_EXISTS, and
 * keeps the user logged in after the host closed its last session. With
 * haExtMonitorSession = disabled the library holds no session, and the host
 * behaves exactly as without libhaext.
 *
 *   test_login default|nosession
 *
 * Runs under `lab.sh exec` on a direct SoftHSM2 lab. Environment: LIBHAEXT,
 * HALAB_MODULE, HALAB_SERIALS.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static struct host host;
static CK_SLOT_ID slot0;

static CK_RV login(CK_SESSION_HANDLE s, CK_USER_TYPE who, const char *pin)
{
    return host.p11->C_Login(s, who, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
}

/* SO login on a token the library checks. */
static CK_RV so_login(void)
{
    CK_SESSION_HANDLE s;
    CK_RV rv = host.p11->C_OpenSession(slot0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        return rv;
    }
    rv = login(s, CKU_SO, "12345678");
    if (rv == CKR_OK) {
        host.p11->C_Logout(s);
    }
    host.p11->C_CloseSession(s);
    return rv;
}

/* The user logs in, the host closes its last session: the next login in a
 * new session must find the user logged out (CKR_OK). */
static CK_RV relogin_after_last_close(void)
{
    CK_SESSION_HANDLE s;
    CK_RV rv;
    if (host.p11->C_OpenSession(slot0, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK ||
        login(s, CKU_USER, "1234") != CKR_OK) {
        return CKR_GENERAL_ERROR;
    }
    host.p11->C_CloseSession(s);
    if (host.p11->C_OpenSession(slot0, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK) {
        return CKR_GENERAL_ERROR;
    }
    rv = login(s, CKU_USER, "1234");
    if (rv == CKR_OK) {
        host.p11->C_Logout(s);
    }
    host.p11->C_CloseSession(s);
    return rv;
}

int main(int argc, char **argv)
{
    char serial[32];
    const char *serials;
    CK_HA_STATUS st;
    CK_ULONG i;
    CK_RV rv, so, re;
    int nosession;

    if (argc != 2 || (strcmp(argv[1], "default") != 0 && strcmp(argv[1], "nosession") != 0)) {
        fprintf(stderr, "usage: %s default|nosession\n", argv[0]);
        return 2;
    }
    nosession = strcmp(argv[1], "nosession") == 0;
    serials = need_env("HALAB_SERIALS");
    snprintf(serial, sizeof serial, "%.*s", (int)strcspn(serials, " "), serials);

    /* The reference: libhaext is loaded but has not been called, so it has
     * done nothing yet (it starts on first use). */
    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    slot0 = slot_of_serial(&host, serial);
    so = so_login();
    re = relogin_after_last_close();
    check(so == CKR_OK && re == CKR_OK, "before libhaext's first call: SO login %s, login after the last close %s",
          status_name(so), status_name(re));

    /* With libhaext checking the group. */
    rv = host.get_state(slot0, &st);
    for (i = 0; rv == CKR_OK && i < st.listSize; i++) {
        rv = st.memberList[i].memberStatus;
    }
    check(rv == CKR_OK, "%s: every member CKR_OK (%s)", argv[1], status_name(rv));
    so = so_login();
    re = relogin_after_last_close();
    rv = host.get_state(slot0, &st);
    check(rv == CKR_OK && st.listSize > 0 && st.memberList[0].memberStatus == CKR_OK,
          "%s: the group is still checked after the logins", argv[1]);
    if (nosession) {
        check(so == CKR_OK, "no monitor session: the host's SO login succeeds as without libhaext (%s)",
              status_name(so));
        check(re == CKR_OK, "no monitor session: closing the last session logs the user out as without "
                            "libhaext (%s)", status_name(re));
    } else {
        /* What docs/API.md ("Login state") documents for the default. */
        check(so == CKR_SESSION_READ_ONLY_EXISTS, "monitor session: the host's SO login fails with "
                                                  "CKR_SESSION_READ_ONLY_EXISTS (%s), as documented",
              status_name(so));
        check(re == CKR_USER_ALREADY_LOGGED_IN, "monitor session: after the last close the user is still "
                                                "logged in (%s), as documented", status_name(re));
    }
    return done();
}
