#!/usr/bin/env bash
# run.sh - the HA slot (issue 19) on real components: the front module
# (libhaext-pkcs11.so) in front of p11-kit-proxy with a p11-kit lab of 3
# members (test/lab/lab.sh --mode net) and in front of SoftHSM2 directly,
# every member holding the same RSA and EC key pairs (test/ha/keys.sh).
#
#   bash test/ha/run.sh          (after make build/libhaext-pkcs11.so build/libhaext.so)
#
# Real consumers on the HA slot (pkcs11-tool, PyKCS11, OpenSSL with
# pkcs11-provider), 8 signing threads while members are killed, stopped and
# resumed (ha_host.c: every signature verified with the public key), an
# operation in flight whose member is killed, a wrong PIN, a member missing
# a key, and fork / re-initialization / dlclose with HA sessions open.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${BUILD:-$top/build}
lab=$top/test/lab/lab.sh
front=$build/libhaext-pkcs11.so
# shellcheck source=../lib.sh
. "$top/test/lib.sh"
t_setup ha
HA=0x48410000 # VirtualToken00's HA slot: FRONT_HA_SLOT_BASE + 00

for f in "$front" "$build/libhaext.so"; do
    [ -f "$f" ] || { echo "run.sh: $f is missing: make build/libhaext-pkcs11.so build/libhaext.so" >&2; exit 1; }
done
mkdir -p "$build/ha"
# shellcheck disable=SC2046
cc -std=gnu11 -O2 -g -Wall -Wextra -Werror -Wno-deprecated-declarations $(pkg-config --cflags p11-kit-1) \
    -o "$build/ha/ha_host" "$here/ha_host.c" -ldl -lpthread -lcrypto || exit 1
host=$build/ha/ha_host

# A lab of 3 with the keys: DIR MODE [keys.sh options].
lab_with_keys() {
    local dir=$1 mode=$2
    shift 2
    bash "$lab" up --dir "$dir" --mode "$mode" --members 3 >/dev/null &&
        bash "$here/keys.sh" "$dir" "$@"
}

net=$work/lab-net
lab_with_keys "$net" net || { notok "lab: net lab with keys"; t_done; exit 1; }
# shellcheck source=/dev/null
vendor=$(. "$net/env" && echo "$HALAB_MODULE")
keys=$net/hakeys

# 1. The slot as consumers see it.
echo "== the slot"
in_lab "$net" pkcs11-tool --module "$front" -L >"$work/L" 2>&1
check "pkcs11-tool -L: the HA slot $HA after the vendor's 3, label and serial of VirtualToken00" \
    grep -A8 "Slot 3 ($HA): libhaext HA slot halab" "$work/L"
check "the HA slot's token: label halab, serial 1000001, never write-protected" \
    bash -c "grep -A9 '($HA)' '$work/L' | grep -q 'token label *: halab' &&
             grep -A9 '($HA)' '$work/L' | grep -q 'serial num *: 1000001' &&
             ! grep -A9 '($HA)' '$work/L' | grep -q 'write protected'"
in_lab "$net" pkcs11-tool --module "$front" --slot "$HA" --login --pin 1234 -O >"$work/O" 2>&1
check "pkcs11-tool --list-objects on the HA slot: each of the 4 objects once" \
    test "$(grep -c 'Object;' "$work/O")" = 4
in_lab "$net" pkcs11-tool --module "$front" --slot "$HA" -M >"$work/M.ha" 2>&1
in_lab "$net" pkcs11-tool --module "$vendor" --slot 0x11 -M >"$work/M.m0" 2>&1
check "the HA slot's mechanisms: those every member has (the same members: the same list)" \
    cmp "$work/M.ha" "$work/M.m0"
echo hello >"$work/data"
in_lab "$net" pkcs11-tool --module "$front" --slot "$HA" --login --pin 1234 --sign --id 01 \
    -m SHA256-RSA-PKCS -i "$work/data" -o "$work/sig" >"$work/sign.log" 2>&1
check "pkcs11-tool --sign on the HA slot; openssl verifies it with the public key" \
    bash -c "openssl dgst -sha256 -verify '$keys/rsa.pub.pem' -signature '$work/sig' '$work/data' || cat '$work/sign.log'"
norm() { sed -e '/^Using slot/d' -e '/Slot /d' -e 's/0x[0-9a-f]*//g' "$1"; }
in_lab "$net" pkcs11-tool --module "$front" --slot "$HA" --login --pin 1234 --test >"$work/T.ha" 2>&1
in_lab "$net" pkcs11-tool --module "$vendor" --slot 0x11 --login --pin 1234 --test >"$work/T.m0" 2>&1
check "pkcs11-tool --test on the HA slot: the same report as on a member's own slot" \
    diff <(norm "$work/T.ha") <(norm "$work/T.m0")

# PyKCS11 (Debian's python3-pykcs11): the HA slot found by its token label.
cat >"$work/py_sign.py" <<'PY'
import sys, PyKCS11
lib = PyKCS11.PyKCS11Lib(); lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == "halab"][0]
s = lib.openSession(slot); s.login("1234")
key = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_LABEL, "ha-rsa")])[0]
sig = s.sign(key, open(sys.argv[2], "rb").read(), PyKCS11.Mechanism(PyKCS11.CKM_SHA256_RSA_PKCS))
open(sys.argv[3], "wb").write(bytes(sig)); s.logout(); s.closeSession()
print("slot", hex(slot))
PY
in_lab "$net" /usr/bin/python3 "$work/py_sign.py" "$front" "$work/data" "$work/sig.py" >"$work/py.out" 2>&1
check "PyKCS11 finds the HA slot by its label ($(cat "$work/py.out" | head -c 40)), signs; openssl verifies" \
    openssl dgst -sha256 -verify "$keys/rsa.pub.pem" -signature "$work/sig.py" "$work/data"
provider=$(ls /usr/lib/*/ossl-modules/pkcs11.so 2>/dev/null | head -n 1)
cat >"$work/ossl.cnf" <<CNF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = $provider
pkcs11-module-path = $front
pkcs11-module-token-pin = 1234
activate = 1
CNF
for k in rsa ec; do
    in_lab "$net" env OPENSSL_CONF="$work/ossl.cnf" openssl dgst -sha256 \
        -sign "pkcs11:token=halab;object=ha-$k;type=private" -out "$work/sig.ossl.$k" "$work/data" >"$work/ossl.log" 2>&1
    check "OpenSSL with pkcs11-provider signs with pkcs11:token=halab;object=ha-$k; openssl verifies it" \
        openssl dgst -sha256 -verify "$keys/$k.pub.pem" -signature "$work/sig.ossl.$k" "$work/data"
done

# 2. 8 signing threads for 20 s while members are killed, stopped, resumed
#    and restarted (never all at once). A killed member stays dead for the
#    process (p11-kit's client never reconnects within it); a stopped one
#    comes back.
echo "== 8 signing threads, members failing"
storm_lab=$work/lab-storm
lab_with_keys "$storm_lab" net || notok "lab: storm lab"
# p11-kit's client can leave the callers it had in flight on a connection
# that died waiting forever: the operation timeout moves them on.
sed -i 's/^   VirtualToken00Members = .*/&\n   VirtualToken00LibHAExtOpTimeout = 500;/' "$storm_lab/Chrystoki.conf"
in_lab "$storm_lab" "$host" "$front" "$HA" "$storm_lab/hakeys" storm 20 8 >"$work/storm" 2>&1 &
spid=$!
faults() {
    local l="bash $lab" d="--dir $storm_lab"
    sleep 4; $l stop $d 1; sleep 2; $l cont $d 1
    sleep 2; $l kill $d 0
    sleep 3; $l stop $d 2; sleep 2; $l cont $d 2
    sleep 2; $l kill-server $d 0; $l restart-server $d 0
}
faults >"$work/faults.log" 2>&1
wait "$spid"
sed 's/^/    /' "$work/storm" | grep -v '^    second' | tail -n 8
check "20 s, 8 threads, members killed/stopped/resumed/restarted: 0 errors returned to the host, every signature verifies" \
    grep -qE '^ops [1-9][0-9]* errors 0 bad 0 ' "$work/storm"
worst=$(awk '$1 == "second" {print $8}' "$work/storm" | sort -n | tail -n 1)
check "with the operation timeout at 500 ms, no signature took longer than 500 ms + one operation (worst: $worst ms)" \
    awk -v w="$worst" 'BEGIN {exit !(w < 750)}'
# The load went to every member before the kill, and away from the killed one.
ops_of() { awk -v s="$1" '$1 == "member" && $2 == s {print $5}' "$work/storm"; }
read -r -a ser <<<"$(. "$storm_lab/env" && echo "$HALAB_SERIALS")"
check "the load was spread (each member did some) and moved: the killed member m00 is down, m01 and m02 up" \
    bash -c "[ '$(ops_of "${ser[0]}")' -gt 0 ] && [ '$(ops_of "${ser[1]}")' -gt 0 ] && [ '$(ops_of "${ser[2]}")' -gt 0 ] &&
             grep -q '^member ${ser[0]} down' '$work/storm' && grep -q '^member ${ser[1]} up' '$work/storm' &&
             grep -q '^member ${ser[2]} up' '$work/storm'"

# 3. An operation in flight whose member is killed completes on another:
#    a single-part signature after its C_SignInit, and a multi-part one
#    after two C_SignUpdate (its data kept, replayed on the next member).
hold_lab=$work/lab-hold
lab_with_keys "$hold_lab" net || notok "lab: hold lab"
mkdir -p "$hold_lab/halog"
sed -i "s#^   statusTimeout = .*#&\n   haLogStatus = enabled;\n   haLogPath = $hold_lab/halog;#" "$hold_lab/Chrystoki.conf"
for how in single multi; do
    d=$hold_lab
    mkfifo "$work/go-$how"
    in_lab "$d" "$host" "$front" "$HA" "$d/hakeys" hold "$how" <"$work/go-$how" >"$work/hold-$how" 2>&1 &
    hpid=$!
    exec 9>"$work/go-$how"
    for _ in $(seq 100); do grep -q '^member .* inflight 1' "$work/hold-$how" && break; sleep 0.1; done
    busy=$(awk '$1 == "member" && $NF == 1 {print $2}' "$work/hold-$how")
    read -r -a ser <<<"$(. "$d/env" && echo "$HALAB_SERIALS")"
    for i in 0 1 2; do [ "${ser[$i]}" = "$busy" ] && bash "$lab" kill --dir "$d" "$i" >/dev/null; done
    echo >&9
    exec 9>&-
    wait "$hpid"
    check "a $how-part signature whose member ($busy) is killed meanwhile completes on another and verifies" \
        bash -c "grep -q '^done rv 0x0 ok' '$work/hold-$how' && grep -qE '^slot .* failovers [1-9]' '$work/hold-$how' &&
                 grep -q '^member $busy down' '$work/hold-$how'"
done

check "the HA log records each failover: member, function, code (event=lost function=operation rv=0x30)" \
    bash -c "[ \$(grep -c 'event=lost function=operation rv=0x30 ' '$hold_lab/halog/haErrorLog.txt') = 2 ]"
sed 's/^/    /' "$hold_lab/halog/haErrorLog.txt"

# 4. A wrong PIN: one C_Login on one member, never one per member (a PIN
#    lockout is not multiplied). pkcs11-spy between the front and the
#    vendor counts the calls.
spy=$(ls /usr/lib/*/pkcs11/pkcs11-spy.so | head -n 1)
conf_set "$net" LibHAExtVendor "$spy"
in_lab "$net" env PKCS11SPY="$vendor" PKCS11SPY_OUTPUT="$work/spy.log" \
    "$host" "$front" "$HA" "$keys" login 9999 >"$work/wrongpin" 2>&1
conf_unset "$net" LibHAExtVendor
check "a wrong PIN on the HA slot: CKR_PIN_INCORRECT after exactly one C_Login on one member" \
    bash -c "grep -q '^login rv 0xa0' '$work/wrongpin' && [ \$(grep -c 'C_Login' '$work/spy.log') = 1 ]"

# 4b. A standby member: logged in and ready, no work while an active member
#     is usable; all the work once none is.
sb=$work/lab-standby
lab_with_keys "$sb" net || notok "lab: standby lab"
read -r -a ser <<<"$(. "$sb/env" && echo "$HALAB_SERIALS")"
sed -i "s/^   VirtualToken00Members = .*/&\n   VirtualToken00LibHAExtStandby = ${ser[2]};\n   VirtualToken00LibHAExtOpTimeout = 500;/" \
    "$sb/Chrystoki.conf"
in_lab "$sb" "$host" "$front" "$HA" "$sb/hakeys" storm 3 4 >"$work/sb1" 2>&1
check "a standby member (${ser[2]}) gets no work while the active members are usable" \
    bash -c "grep -qE '^ops [1-9][0-9]* errors 0 bad 0 ' '$work/sb1' && grep -q '^member ${ser[2]} up standby ops 0 ' '$work/sb1'"
in_lab "$sb" "$host" "$front" "$HA" "$sb/hakeys" storm 6 4 >"$work/sb2" 2>&1 &
spid=$!
sleep 2
bash "$lab" kill --dir "$sb" 0 >/dev/null
bash "$lab" kill --dir "$sb" 1 >/dev/null
wait "$spid"
grep -v '^second' "$work/sb2" | sed 's/^/    /'
check "both active members killed: the standby member takes the work, 0 errors, every signature verifies" \
    bash -c "grep -qE '^ops [1-9][0-9]* errors 0 bad 0 ' '$work/sb2' &&
             awk '\$1 == \"member\" && \$2 == \"${ser[2]}\" && \$6 > 0 {f=1} END {exit !f}' '$work/sb2'"

# 5. A member missing a key (m02 has no EC key): that key's operations go
#    to the others only, and the drift is reported, naming member and key.
echo "== a member without one key, SoftHSM2 directly"
drift=$work/lab-drift
lab_with_keys "$drift" direct --skip 2 || notok "lab: drift lab"
in_lab "$drift" "$host" "$front" "$HA" "$drift/hakeys" storm 3 4 >"$work/drift" 2>&1
m02=$(. "$drift/env" && echo "$HALAB_SERIALS" | cut -d' ' -f3)
sed 's/^/    /' "$work/drift" | grep -v '^    second'
check "SoftHSM2 directly, m02 without the EC key: 0 errors, every signature verifies, m02 still signs with RSA" \
    bash -c "grep -qE '^ops [1-9][0-9]* errors 0 bad 0 ' '$work/drift' &&
             awk '\$1 == \"member\" && \$2 == \"$m02\" && \$5 > 0 {f=1} END {exit !f}' '$work/drift'"
check "the drift is reported once: member $m02, the EC key (label ha-ec) missing there" \
    bash -c "[ \$(grep -c \"^drift .*member $m02: object class 0x3 label \\\"ha-ec\\\" is missing\" '$work/drift') = 1 ]"

# 6. Fork, C_Finalize/C_Initialize and dlclose/dlopen with HA sessions
#    open: no crash, no signature lost, no fd or thread left behind.
in_lab "$drift" "$host" "$front" "$HA" "$drift/hakeys" lifecycle 5 nofork >"$work/life" 2>&1
sed 's/^/    /' "$work/life" | grep '^    lifecycle'
check "SoftHSM2: 5 rounds of re-initialization and dlclose with HA sessions open: no failure, fds and threads as before" \
    bash -c "awk '\$1 == \"lifecycle\" && \$5 == 0 && \$7 == \$8 && \$10 == \$11 {f=1} END {exit !f}' '$work/life'"
in_lab "$net" "$host" "$front" "$HA" "$keys" lifecycle 3 >"$work/life-net" 2>&1
check "p11-kit-proxy: 3 rounds of re-initialization, fork and dlclose with HA sessions open: the same" \
    bash -c "awk '\$1 == \"lifecycle\" && \$5 == 0 && \$7 == \$8 && \$10 == \$11 {f=1} END {exit !f}' '$work/life-net'"
sed 's/^/    /' "$work/life-net" | grep '^    lifecycle'
conf_set "$net" LibHAExtVendor "$spy"
in_lab "$net" env PKCS11SPY="$vendor" PKCS11SPY_OUTPUT="$work/spy-life.log" \
    "$host" "$front" "$HA" "$keys" lifecycle 3 nofork >"$work/life-spy" 2>&1
conf_unset "$net" LibHAExtVendor
# After the host's last C_Finalize: as many sessions closed as opened.
opened=$(awk '/C_Finalize/ {n = 0} /^[0-9]+: C_OpenSession/ {n++} END {print n + 0}' "$work/spy-life.log")
closed=$(awk '/C_Finalize/ {n = 0} /^[0-9]+: C_CloseSession/ {n++} END {print n + 0}' "$work/spy-life.log")
check "pkcs11-spy: after re-initializations with HA sessions open, the members' sessions the front opened are all closed with the host's ($opened opened, $closed closed)" \
    bash -c "grep -q 'fails 0' '$work/life-spy' && [ '$opened' -gt 0 ] && [ '$opened' = '$closed' ]"

t_done
