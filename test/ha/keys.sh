#!/usr/bin/env bash
# keys.sh - provisions identical keys on every member of a lab (lab.sh),
# as an operator provisions an HA group: one RSA-2048 and one EC P-256 key
# pair, made once with openssl and imported into each member with the same
# CKA_ID and CKA_LABEL (pkcs11-tool --write-object). The public keys stay
# in DIR/hakeys for verification.
#
#   bash test/ha/keys.sh DIR [--skip IDX]   (--skip: leave member IDX without
#                                            the EC key, for the drift test)
set -euo pipefail

dir=$1
shift
skip=""
[ "${1:-}" = --skip ] && skip=$2
# shellcheck source=/dev/null
. "$dir/env"
k=$dir/hakeys
mkdir -p "$k"
if [ ! -f "$k/rsa.der" ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$k/rsa.pem" 2>/dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$k/ec.pem" 2>/dev/null
    for t in rsa ec; do
        openssl pkey -in "$k/$t.pem" -outform DER -out "$k/$t.der"
        openssl pkey -in "$k/$t.pem" -pubout -out "$k/$t.pub.pem"
        openssl pkey -in "$k/$t.pem" -pubout -outform DER -out "$k/$t.pub.der"
    done
fi
# Each member's own SoftHSM2 store, written with SoftHSM2 itself (the
# member's server, if any, reads the new objects from its store).
softhsm=$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null | head -n 1)
for i in $(seq 0 $((HALAB_MEMBERS - 1))); do
    tok=$(printf 'm%02d' "$i")
    conf=$dir/members/$tok/softhsm2.conf
    [ -f "$conf" ] || conf=$dir/softhsm2.conf
    p11() {
        local out
        out=$(SOFTHSM2_CONF=$conf pkcs11-tool --module "$softhsm" --token-label "$tok" --login --pin 1234 "$@" 2>&1) ||
            { echo "keys.sh: $tok: pkcs11-tool $*: $out" >&2; return 1; }
    }
    p11 --write-object "$k/rsa.der" --type privkey --id 01 --label ha-rsa --usage-sign --usage-decrypt
    p11 --write-object "$k/rsa.pub.der" --type pubkey --id 01 --label ha-rsa
    if [ "$i" != "$skip" ]; then
        p11 --write-object "$k/ec.der" --type privkey --id 02 --label ha-ec --usage-sign
        p11 --write-object "$k/ec.pub.der" --type pubkey --id 02 --label ha-ec
    fi
done
