#!/usr/bin/env bash
# The front module (build/libhaext-pkcs11.so) with real consumers, side by
# side with the vendor's module alone (`make test-front`, part of make test):
#
#  0. layers.sh: internal/front's files call only the layers below them.
#  1. test_front.c: the front's C state (gate, session table, borrow, SO
#     login, last close, fork, events) against SoftHSM2 behind pkcs11-spy,
#     then the host's C_Finalize/C_Initialize loop under 4 probe threads
#     against SoftHSM2 directly for 10 s; then the 3.0 list's trampolines
#     (busy marker, failures, C_LoginUser as C_Login) over
#     test/shim/v3shim.c, a 3.0 vendor.
#  2. PyKCS11 (pykcs11_host.py) and OpenSSL's pkcs11 engine (engine_host.c)
#     run every scenario twice, with the vendor's module and with the front,
#     on SoftHSM2 and on the p11-kit lab (test/lab/lab.sh --mode net); the
#     outputs must be identical. Where marked, CA_GetCurrentHAState runs in
#     the same process meanwhile.
#  3. pkcs11-spy between the front and SoftHSM2 logs the same calls as
#     between the host and SoftHSM2: without a CA_* call, the front makes
#     none of its own.
#  4. The exports (the 2.40 list by name, and C_GetInterface's lists), and
#     the vendor key: LibHAExtVendor over LibUNIX64, and a configuration
#     that names the front itself is refused. test_iface.c: a 3.0 host
#     (C_GetInterface first) over SoftHSM2 (2.40: 3.0 is refused) and over
#     test/shim/v3shim.c (a 3.0 vendor: the front's list stays 2.40, its 3.0
#     list forwards to the vendor's 3.0 functions).
#  5. A killed member of the p11-kit lab; the consumers there.
#  6. Lending (lend_host.c), on SoftHSM2 and on the p11-kit lab: a session
#     watch between the front and the vendor (test/shim/watchshim.c) counts
#     0 overlapping calls on one session in a 16-thread storm with
#     CA_GetCurrentHAState running (and 0 with the vendor alone, the
#     control); every verdict is the member's answer or a CKR_HA_* code
#     while the host calls C_CloseAllSessions in a loop, or keeps its only
#     session, logged in as SO, busy.
#
# Prints ok/not ok lines and a closing "N passed, N failed".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${BUILD:-$top/build}
front=$build/libhaext-pkcs11.so
shim=$build/v3shim.so
lab=$top/test/lab/lab.sh
py=/usr/bin/python3
host_py=$here/pykcs11_host.py
cc=${CC:-cc}
stress_s=${FRONT_STRESS_S:-10}
# shellcheck source=test/lib.sh
. "$top/test/lib.sh"
t_setup front

spy=$(ls /usr/lib/*/pkcs11/pkcs11-spy.so /usr/lib/pkcs11/pkcs11-spy.so 2>/dev/null | head -n 1 || true)
engine_so=$(ls /usr/lib/*/engines-3/pkcs11.so /usr/lib/*/engines-1.1/pkcs11.so 2>/dev/null | head -n 1 || true)
[ -f "$front" ] || { notok "$front is missing (make build/libhaext-pkcs11.so)"; echo "$passed passed, $failed failed"; exit 1; }
[ -f "$shim" ] || notok "$shim is missing (make build/v3shim.so): the PKCS#11 3.0 tests do not run"
[ -n "$spy" ] || notok "pkcs11-spy.so not found (opensc-pkcs11)"
[ -n "$engine_so" ] || notok "OpenSSL's pkcs11 engine not found (libengine-pkcs11-openssl)"
"$py" -c 'import PyKCS11' 2>/dev/null || notok "PyKCS11 not importable by $py (python3-pykcs11)"

# Build the C programs.
mkdir -p "$build/consumers"
p11=$(pkg-config --cflags p11-kit-1)
# test_front links every file of the front but ca.c (it is the host: no CA_* of its own).
front_c=$(ls "$top"/internal/front/*.c | grep -v '/ca\.c$')
# shellcheck disable=SC2086
"$cc" -std=gnu11 -O2 -g -Wall -Wextra -Werror -DFRONT_WAIT_MS=1000 $p11 -I"$top/include" \
    -I"$top/internal/hostapi" -I"$top/internal/front" -I"$top/test/c" -o "$build/consumers/test_front" \
    "$here/test_front.c" $front_c "$top/test/c/harness.c" -ldl -lpthread
# shellcheck disable=SC2086
"$cc" -std=c99 -O2 -g -Wall -Wextra -Werror $p11 -I"$top/include" -I"$top/internal/front" -I"$top/test/c" \
    -o "$build/consumers/test_iface" "$here/test_iface.c" "$top/test/c/harness.c" -ldl -lpthread
# shellcheck disable=SC2086
"$cc" -std=c99 -O2 -g -Wall -Wextra -Werror $p11 -I"$top/include" -o "$build/consumers/engine_host" \
    "$here/engine_host.c" -ldl -lpthread -lcrypto
# shellcheck disable=SC2086
"$cc" -std=gnu11 -O2 -g -Wall -Wextra -Werror $p11 -I"$top/include" -I"$top/test/c" -o "$build/consumers/lend_host" \
    "$here/lend_host.c" "$top/test/c/harness.c" -ldl -lpthread
# The session watch: one recipe, the Makefile's.
watch=$build/watchshim.so
make -s -C "$top" BUILD="$build" "$watch"

# 0. The front's shape: its files in layers (front.h), none over 400
#    lines, no function over 60.
check "internal/front: each file calls only the layers below it; files <= 400 lines, functions <= 60" \
    bash "$here/layers.sh"

# run_c NAME LABDIR CMD...: a C test program; adds its counts.
run_c() {
    local name=$1 dir=$2 log=$work/$1.log rc=0 counts
    shift 2
    echo "== $name"
    timeout 300 bash -c 'bash "$0" exec --dir "$1" -- "${@:2}"' "$lab" "$dir" "$@" >"$log" 2>&1 || rc=$?
    sed 's/^/   /' "$log"
    counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)
    if [ -z "$counts" ]; then
        notok "$name exited $rc without a result line"
        return
    fi
    passed=$((passed + $(echo "$counts" | cut -d' ' -f1)))
    failed=$((failed + $(echo "$counts" | cut -d' ' -f3)))
    [ "$rc" -eq 0 ] || [ "$(echo "$counts" | cut -d' ' -f3)" != 0 ] || notok "$name exited $rc"
}

# side NAME LABDIR VENDOR CA HOSTCMD...: runs HOSTCMD with @MODULE@ replaced
# by the vendor's module, then by the front (and, when CA is "ca", with @CA@
# replaced by the front so that CA_GetCurrentHAState runs meanwhile; else
# @CA@ arguments are dropped); the two outputs must be identical.
side() {
    local name=$1 dir=$2 vendor=$3 ca=$4 a args_v=() args_f=() rc=0
    shift 4
    for a in "$@"; do
        case $a in
        @MODULE@) args_v+=("$vendor"); args_f+=("$front") ;;
        @CA@) [ "$ca" = ca ] && args_f+=("$front") ;;
        @CA_FLAG@) [ "$ca" = ca ] && args_f+=(--ca "$front") ;;
        *) args_v+=("$a"); args_f+=("$a") ;;
        esac
    done
    in_lab "$dir" "${args_v[@]}" >"$work/$name.vendor" 2>"$work/$name.vendor.err" || rc=$?
    in_lab "$dir" "${args_f[@]}" >"$work/$name.front" 2>"$work/$name.front.err" || rc=$((rc + $?))
    if [ "$rc" -eq 0 ] && grep -qx done "$work/$name.front" && cmp -s "$work/$name.vendor" "$work/$name.front"; then
        ok "$name: the same $(grep -cv '^done$' "$work/$name.front") result lines with and without the front"
    else
        notok "$name: results differ with the front (exit status sum $rc)"
        diff "$work/$name.vendor" "$work/$name.front" | sed 's/^/    /' | head -n 30
        sed 's/^/    vendor stderr: /' "$work/$name.vendor.err" | tail -n 5
        sed 's/^/    front stderr: /' "$work/$name.front.err" | tail -n 5
    fi
    if [ "$ca" = ca ]; then
        local tally
        tally=$(grep '^ca: ' "$work/$name.front.err" | tail -n 1 || true)
        # Every call produced a report (one CK_RV, CKR_OK); members may be
        # down meanwhile where the scenario kills one or re-initializes.
        if echo "$tally" | grep -qE '^ca: calls=[1-9][0-9]* (rv=0x0:[0-9]+ |ok=)' &&
            ! echo "$tally" | grep -qE 'rv=[^ ]*,|ok=0$'; then
            ok "$name: CA_GetCurrentHAState ran meanwhile in the same process, every call CKR_OK ($tally)"
        else
            notok "$name: CA_GetCurrentHAState meanwhile: ${tally:-no tally}"
        fi
    fi
}

# Every consumer scenario runs CA_GetCurrentHAState in the same process:
# the engine uses the host's own instance through the front (front.Host()),
# its sessions and its lifecycle, and the consumer sees exactly what it sees
# without the front.

# --- 1. the front's C state --------------------------------------------------
dir=$work/lab-state
bash "$lab" up --dir "$dir" --mode direct --members 2 --ha-slot 0 >/dev/null
conf_set "$dir" LibHAExtVendor "$spy"
src=$(. "$dir/env" && echo "$HALAB_MODULE")
run_c state "$dir" env PKCS11SPY="$src" PKCS11SPY_OUTPUT="$work/state.spy.log" FRONT_SPY_LOG="$work/state.spy.log" \
    FRONT_STRESS_S=3 "$build/consumers/test_front"
sed -i "/^ *LibHAExtVendor = /d" "$dir/Chrystoki.conf"
run_c finalize-loop "$dir" env FRONT_STRESS_S="$stress_s" "$build/consumers/test_front" finalize-loop
if [ -f "$shim" ]; then
    conf_set "$dir" LibHAExtVendor "$shim"
    run_c state-v3 "$dir" env V3SHIM_MODULE="$src" V3SHIM_CANCEL_MS=300 "$build/consumers/test_front" v3
    sed -i "/^ *LibHAExtVendor = /d" "$dir/Chrystoki.conf"
fi
bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true

# --- 2. consumers on SoftHSM2 -------------------------------------------------
echo "== consumers, SoftHSM2"
dir=$work/lab-direct
bash "$lab" up --dir "$dir" --mode direct --members 2 --ha-slot 0 >/dev/null
vendor=$(. "$dir/env" && echo "$HALAB_MODULE")
in_lab "$dir" "$py" "$host_py" --module "$vendor" setup >/dev/null
m00=$(in_lab "$dir" "$py" -c 'import PyKCS11,sys; p=PyKCS11.PyKCS11Lib(); p.load(sys.argv[1]); print([s for s in p.getSlotList(True) if p.getTokenInfo(s).label.strip()=="m00"][0])' "$vendor")
export ENGINE_PKCS11_SO=$engine_so ENGINE_TOKENS=2 ENGINE_CA_SLOT=$m00
side pykcs11-sign "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ --loops 50 sign
side pykcs11-so-login "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ --loops 5 so-login
side pykcs11-last-close "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ --loops 5 last-close
side pykcs11-reinit "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ --loops 10 reinit
# The host finalizes and initializes SoftHSM2 for 10 s while 4 threads call
# CA_GetCurrentHAState: the front's gate keeps libhaext's calls out of the
# vendor's C_Finalize (SoftHSM2 crashes on a call during it).
side pykcs11-reinit-loop "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ --ca-threads 4 \
    --seconds "$stress_s" reinit-loop
side pykcs11-fork "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ fork
side engine-sign "$dir" "$vendor" ca "$build/consumers/engine_host" @MODULE@ sign 30 @CA@
side engine-fork "$dir" "$vendor" ca "$build/consumers/engine_host" @MODULE@ fork 10 @CA@

# --- 3. pkcs11-spy: the front makes the host's calls and no others -----------
calls() { sed -n 's/^[0-9][0-9]*: \(C_[A-Za-z]*\)$/\1/p' "$1"; }
in_lab "$dir" env PKCS11SPY="$vendor" PKCS11SPY_OUTPUT="$work/spy.vendor.log" \
    "$py" "$host_py" --module "$spy" --loops 5 sign >/dev/null 2>&1 || true
conf_set "$dir" LibHAExtVendor "$spy"
in_lab "$dir" env PKCS11SPY="$vendor" PKCS11SPY_OUTPUT="$work/spy.front.log" \
    "$py" "$host_py" --module "$front" --loops 5 sign >/dev/null 2>&1 || true
sed -i "/^ *LibHAExtVendor = /d" "$dir/Chrystoki.conf"
# A host that never calls CA_* gets no call of libhaext's: the engine starts
# on the first CA_* call, not on the host's C_Initialize. The two sequences
# must be the same, call for call.
n=$(calls "$work/spy.vendor.log" | wc -l)
check "pkcs11-spy: the front forwards exactly the host's $n calls, in order, and makes none of its own" \
    bash -c '[ "$0" -gt 20 ] && diff <(sed -n "s/^[0-9][0-9]*: \(C_[A-Za-z]*\)$/\1/p" "$1") \
        <(sed -n "s/^[0-9][0-9]*: \(C_[A-Za-z]*\)$/\1/p" "$2")' \
    "$n" "$work/spy.vendor.log" "$work/spy.front.log"

# --- 4. exports and the vendor key -------------------------------------------
# exports.py FRONT 2.40|3.0: the 2.40 list's entries are the functions of
# those names (dlsym); C_GetInterface's lists have the same 68, and the 3.0
# one (a 3.0 vendor) the exported C_GetInterfaceList/C_GetInterface and 22
# more; a 2.40 vendor gets no 3.0 interface.
cat >"$work/exports.py" <<'EOF'
import ctypes, sys
names = """Initialize Finalize GetInfo GetFunctionList GetSlotList GetSlotInfo GetTokenInfo GetMechanismList
GetMechanismInfo InitToken InitPIN SetPIN OpenSession CloseSession CloseAllSessions GetSessionInfo
GetOperationState SetOperationState Login Logout CreateObject CopyObject DestroyObject GetObjectSize
GetAttributeValue SetAttributeValue FindObjectsInit FindObjects FindObjectsFinal EncryptInit Encrypt
EncryptUpdate EncryptFinal DecryptInit Decrypt DecryptUpdate DecryptFinal DigestInit Digest DigestUpdate
DigestKey DigestFinal SignInit Sign SignUpdate SignFinal SignRecoverInit SignRecover VerifyInit Verify
VerifyUpdate VerifyFinal VerifyRecoverInit VerifyRecover DigestEncryptUpdate DecryptDigestUpdate
SignEncryptUpdate DecryptVerifyUpdate GenerateKey GenerateKeyPair WrapKey UnwrapKey DeriveKey SeedRandom
GenerateRandom GetFunctionStatus CancelFunction WaitForSlotEvent""".split()
assert len(names) == 68
lib = ctypes.CDLL(sys.argv[1])
mode = sys.argv[2]
sym = lambda n: ctypes.cast(getattr(lib, "C_" + n), ctypes.c_void_p).value
version = lambda addr: tuple(ctypes.string_at(addr, 2))
table = lambda addr: ctypes.cast(addr + 8, ctypes.POINTER(ctypes.c_void_p))  # after CK_VERSION (padded to 8)
lst = ctypes.c_void_p()
rv = lib.C_GetFunctionList(ctypes.byref(lst))
assert rv == 0, "C_GetFunctionList: %d" % rv
assert version(lst.value) == (2, 40), "C_GetFunctionList's list is version %s, not 2.40" % (version(lst.value),)
for i, n in enumerate(names):
    assert sym(n) == table(lst.value)[i], "C_%s: dlsym %x, list %x" % (n, sym(n), table(lst.value)[i])
print("68 functions")


class CK_INTERFACE(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("list", ctypes.c_void_p), ("flags", ctypes.c_ulong)]


count = ctypes.c_ulong()
assert lib.C_GetInterfaceList(None, ctypes.byref(count)) == 0
offered = (CK_INTERFACE * count.value)()
assert lib.C_GetInterfaceList(offered, ctypes.byref(count)) == 0
want = [(2, 40)] if mode == "2.40" else [(2, 40), (3, 0)]
assert sorted(version(i.list) for i in offered) == want, [version(i.list) for i in offered]
assert all(i.name == b"PKCS 11" for i in offered)
for v in [(2, 40), (3, 0)]:
    p = ctypes.POINTER(CK_INTERFACE)()
    rv = lib.C_GetInterface(b"PKCS 11", (ctypes.c_ubyte * 2)(*v), ctypes.byref(p), ctypes.c_ulong(0))
    if v not in want:
        assert rv == 7, "C_GetInterface %s: %d, not CKR_ARGUMENTS_BAD" % (v, rv)
        print("no %d.%d interface" % v)
        continue
    assert rv == 0, "C_GetInterface %s: %d" % (v, rv)
    addr = p.contents.list
    assert version(addr) == v
    t = table(addr)
    for i, n in enumerate(names):
        assert sym(n) == t[i], "%s list: C_%s: dlsym %x, list %x" % (v, n, sym(n), t[i])
    if v == (2, 40):
        assert addr == lst.value, "the 2.40 interface is not C_GetFunctionList's list"
    else:
        assert t[68] == sym("GetInterfaceList") and t[69] == sym("GetInterface")
        assert all(t[k] for k in range(70, 92)), "a NULL 3.0 entry"
    print("%d.%d interface: its entries match" % v)
EOF
check "every C_* of the 2.40 list resolves by name (dlsym) to the entry of the front's list; C_GetInterface: that list as 2.40, no 3.0 (2.40 vendor)" \
    in_lab "$dir" "$py" "$work/exports.py" "$front" 2.40
conf_set "$dir" LibUNIX64 "$front"
check "LibUNIX64 naming the front itself: C_GetFunctionList is CKR_GENERAL_ERROR, with the reason on stderr" \
    in_lab "$dir" bash -c 'out=$("$0" -c "import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); p=ctypes.c_void_p(); print(l.C_GetFunctionList(ctypes.byref(p)))" "$1" 2>&1); echo "$out"; echo "$out" | grep -qx 5 && echo "$out" | grep -q "LibUNIX64 names .*libhaext-pkcs11.so, which is libhaext-pkcs11 itself"' \
    "$py" "$front"
check "LibUNIX64 naming the front itself: C_GetInterfaceList and C_GetInterface are CKR_GENERAL_ERROR too" \
    in_lab "$dir" "$py" -c 'import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); n=ctypes.c_ulong(); p=ctypes.c_void_p(); r=(l.C_GetInterfaceList(None, ctypes.byref(n)), l.C_GetInterface(None, None, ctypes.byref(p), ctypes.c_ulong(0))); print(r); sys.exit(r != (5, 5))' "$front"
conf_set "$dir" LibHAExtVendor "$vendor"
side pykcs11-vendor-key "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ --loops 5 sign
# PKCS#11 3.0: a 3.0 host (C_GetInterface first) over a 2.40 vendor
# (SoftHSM2), then over a 3.0 one (test/shim/v3shim.c over SoftHSM2).
if [ -f "$shim" ]; then
    run_c iface-v240 "$dir" "$build/consumers/test_iface" "$front" v240
    conf_set "$dir" LibHAExtVendor "$shim"
    check "a 3.0 vendor: C_GetFunctionList's list is still 2.40; C_GetInterface's 2.40 and 3.0 lists have its entries" \
        in_lab "$dir" env V3SHIM_MODULE="$vendor" "$py" "$work/exports.py" "$front" 3.0
    run_c iface-v3 "$dir" env V3SHIM_MODULE="$vendor" V3SHIM_PATH="$shim" "$build/consumers/test_iface" "$front" v3
    run_c iface-v3-fork-safe "$dir" env V3SHIM_MODULE="$vendor" V3SHIM_PATH="$shim" V3SHIM_FORK_SAFE=1 \
        "$build/consumers/test_iface" "$front" v3
fi
bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true

# --- 5. consumers on the p11-kit lab -----------------------------------------
dir=$work/lab-events
bash "$lab" up --dir "$dir" --mode net --members 2 --timeout 2 --ha-slot 0 >/dev/null
run_c net-events "$dir" env HALAB_LAB_SH="$lab" "$build/consumers/test_front" net-events
bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true

echo "== consumers, p11-kit lab (net)"
dir=$work/lab-net
bash "$lab" up --dir "$dir" --mode net --members 3 --timeout 2 --ha-slot 0 >/dev/null
vendor=$(. "$dir/env" && echo "$HALAB_MODULE")
in_lab "$dir" "$py" "$host_py" --module "$vendor" setup >/dev/null
m00=$(in_lab "$dir" "$py" -c 'import PyKCS11,sys; p=PyKCS11.PyKCS11Lib(); p.load(sys.argv[1]); print([s for s in p.getSlotList(True) if p.getTokenInfo(s).label.strip()=="m00"][0])' "$vendor")
export ENGINE_TOKENS=3 ENGINE_CA_SLOT=$m00
side net-pykcs11-sign "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ --loops 20 sign
side net-pykcs11-reinit "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ --loops 3 reinit
side net-pykcs11-killed "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ killed
side net-pykcs11-fork "$dir" "$vendor" ca "$py" "$host_py" --module @MODULE@ @CA_FLAG@ fork
side net-engine-sign "$dir" "$vendor" ca "$build/consumers/engine_host" @MODULE@ sign 20 @CA@
bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true

# --- 6. lending: a session watch between the front and the vendor ---------
for mode in direct net; do
    dir=$work/lab-lend-$mode
    bash "$lab" up --dir "$dir" --mode "$mode" --members 2 --timeout 2 --ha-slot 0 >/dev/null
    vendor=$(. "$dir/env" && echo "$HALAB_MODULE")
    conf_set "$dir" LibHAExtVendor "$watch"
    run_c "lend-$mode-control" "$dir" env WATCHSHIM_MODULE="$vendor" LEND_STORM_S=3 \
        "$build/consumers/lend_host" - "$watch" storm
    run_c "lend-$mode" "$dir" env WATCHSHIM_MODULE="$vendor" "$build/consumers/lend_host" "$front" "$watch"
    bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true
done

t_done
