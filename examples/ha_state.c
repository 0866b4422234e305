/*
 * ha_state.c - print the state of the HA group a slot names.
 *
 *   cc ha_state.c $(pkg-config --cflags --libs haext) -o ha_state
 *   ChrystokiConfigurationPath=/etc/hsm ./ha_state 1
 *
 * Built with -DLIBHAEXT_HA_LAYOUT_SA6 it uses the SA6 / Luna 7 layout of
 * CK_HA_STATUS (text serials) instead of the classic one (numeric serials);
 * the source is otherwise the same. An application that includes a vendor's
 * cryptoki_v2.h includes it before cryptoki_ha.h.
 *
 * The library reads Chrystoki.conf (or crystoki.ini) from the directory in
 * ChrystokiConfigurationPath, else /etc/Chrystoki.conf, and loads the vendor
 * module it names. Exit status: 0 all members alive, 1 some down, 2 all
 * down, 3 the call failed.
 */
#include <stdio.h>
#include <stdlib.h>

#include <cryptoki_ha.h>

static const char *describe(CK_RV rv)
{
    static char other[40];
    switch (rv) {
    case CKR_OK: return "alive";
    case CKR_HA_NO_INSTANCE: return "down (no instance)";
    case CKR_HA_SOCKET_DOWN: return "down (socket down)";
    case CKR_HA_TIMEOUT: return "down (timeout)";
    }
    snprintf(other, sizeof other, "down (CK_RV 0x%08lx)", rv);
    return other;
}

int main(int argc, char **argv)
{
    CK_HA_STATUS state;
    CK_SLOT_ID slot;
    CK_RV rv;
    CK_ULONG i, alive = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s SLOT_ID\n", argv[0]);
        return 3;
    }
    slot = strtoul(argv[1], NULL, 0);
    rv = CA_GetCurrentHAState(slot, &state);
    if (rv != CKR_OK) {
        /* The reason of this thread's last failed call. */
        char reason[512];
        CA_GetHAExtLastError(reason, sizeof reason);
        fprintf(stderr, "CA_GetCurrentHAState(%lu): CK_RV 0x%08lx: %s\n", slot, rv, reason);
        return 3;
    }
#ifdef LIBHAEXT_HA_LAYOUT_SA6
    printf("HA group %.20s: %lu members\n", (const char *)state.groupSerial, state.listSize);
#else
    printf("HA group %lu: %lu members\n", state.groupSerial, (CK_ULONG)state.listSize);
#endif
    for (i = 0; i < state.listSize; i++) {
        const CK_HA_MEMBER *m = &state.memberList[i];
        alive += m->memberStatus == CKR_OK;
#ifdef LIBHAEXT_HA_LAYOUT_SA6
        printf("  member %-20.20s  %s\n", (const char *)m->memberSerial, describe(m->memberStatus));
#else
        printf("  member %-20lu (0x%016lx)  %s\n", m->memberSerial, m->memberSerial, describe(m->memberStatus));
#endif
    }
    return alive == state.listSize ? 0 : alive == 0 ? 2 : 1;
}
