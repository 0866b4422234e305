/*
 * ha_state.c - print the state of the HA group a slot names.
 *
 *   cc ha_state.c $(pkg-config --cflags --libs haext) -o ha_state
 *   ChrystokiConfigurationPath=/etc/hsm ./ha_state 1
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
    CK_USHORT i, alive = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s SLOT_ID\n", argv[0]);
        return 3;
    }
    slot = strtoul(argv[1], NULL, 0);
    rv = CA_GetCurrentHAState(slot, &state);
    if (rv != CKR_OK) {
        char reason[512];
        CA_GetHAExtLastError(reason, sizeof reason);
        fprintf(stderr, "CA_GetCurrentHAState(%lu): CK_RV 0x%08lx%s%s\n", slot, rv, reason[0] ? ": " : "",
                reason);
        return 3;
    }
    printf("HA group %lu: %u members\n", state.groupSerial, (unsigned)state.listSize);
    for (i = 0; i < state.listSize; i++) {
        const CK_HA_MEMBER *m = &state.memberList[i];
        alive += m->memberStatus == CKR_OK;
        printf("  member %-20lu (0x%016lx)  %s\n", m->memberSerial, m->memberSerial, describe(m->memberStatus));
    }
    return alive == state.listSize ? 0 : alive == 0 ? 2 : 1;
}
