#!/usr/bin/env bash
# Do no harm inside the host (make test-front, part of make test): what a
# host that never calls CA_* sees of the front, and what any host sees when
# it exits, forks its privileges or forbids threads. Each check runs on
# SoftHSM2 (direct) and on the p11-kit lab (p11-kit-proxy, net).
#
#  1. Exit without C_Finalize, HARM_EXITS times each (default 2000): a
#     minimal host (dlopen, C_Initialize, 0-25 ms of its own work, exit)
#     and `openssl dgst -sign` through pkcs11-provider (no-deinit) load
#     the front: no process ends by a signal.
#  2. exit() while libhaext's calls are inside the vendor (the delay shim
#     holds each 200 ms): the vendor's exit handlers find none of them
#     there, beside and in front.
#  3. C_Initialize, CA_GetCurrentHAState, C_Finalize, C_Initialize: the
#     first status call after is right for healthy members, and the host's
#     exit right after its C_Initialize finds no call of libhaext's in the
#     vendor; pkcs11-spy shows no call of libhaext's after the host's
#     C_Initialize, and no C_GetSlotList of libhaext's where the host made
#     one.
#  4. A setuid host ignores ChrystokiConfigurationPath (secure_getenv).
#  5. A host that initializes with CKF_LIBRARY_CANT_CREATE_OS_THREADS.
#  6. fork() while 8 host threads are in calls (and, through the front,
#     CA_GetCurrentHAState too): children hang no more often than with the
#     vendor alone, over 100 forks each.
#
# Prints ok/not ok lines and a closing "N passed, N failed".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${BUILD:-$top/build}
front=$build/libhaext-pkcs11.so
beside=$build/libhaext.so
shim=$build/delayshim.so
lab=$top/test/lab/lab.sh
py=/usr/bin/python3
host_py=$here/pykcs11_host.py
host=$build/consumers/harm_host
exits=${HARM_EXITS:-2000}
# shellcheck source=test/lib.sh
. "$top/test/lib.sh"
t_setup harm
chmod 0755 "$work" # the setuid host (nobody) reads its configuration here

for f in "$front" "$beside" "$shim"; do
    [ -f "$f" ] || { notok "$f is missing (make)"; echo "$passed passed, $failed failed"; exit 1; }
done
spy=$(ls /usr/lib/*/pkcs11/pkcs11-spy.so 2>/dev/null | head -n 1 || true)
provider=$(ls /usr/lib/*/ossl-modules/pkcs11.so 2>/dev/null | head -n 1 || true)
[ -n "$spy" ] || notok "pkcs11-spy.so not found (opensc-pkcs11)"
[ -n "$provider" ] || notok "pkcs11-provider not found (Debian's pkcs11-provider)"

mkdir -p "$build/consumers"
# shellcheck disable=SC2046
${CC:-cc} -std=gnu11 -O2 -g -Wall -Wextra -Werror $(pkg-config --cflags p11-kit-1) -I"$top/include" \
    -o "$host" "$here/harm_host.c" -ldl -lpthread

# slot_of DIR VENDOR LABEL: the slot of the token LABEL.
slot_of() {
    in_lab "$1" "$py" -c 'import PyKCS11,sys; p=PyKCS11.PyKCS11Lib(); p.load(sys.argv[1]); print([s for s in p.getSlotList(True) if p.getTokenInfo(s).label.strip()==sys.argv[2]][0])' "$2" "$3"
}

# The loop of check 1, run inside the lab: RUNS CMD... with @US@ replaced by
# 5-25 ms that differ run by run. Prints "crashes=N failures=N first=RC".
cat >"$work/loop.sh" <<'EOF'
runs=$1; shift
crash=0; fail=0; first=
for i in $(seq "$runs"); do
    args=()
    for a in "$@"; do [ "$a" = @US@ ] && args+=($(( 5000 + (i * 7919) % 20000 ))) || args+=("$a"); done
    rc=0; "${args[@]}" >/dev/null 2>&1 || rc=$?
    if [ "$rc" -ge 128 ]; then crash=$((crash + 1)); elif [ "$rc" -ne 0 ]; then fail=$((fail + 1)); fi
    [ "$rc" -ne 0 ] && [ -z "$first" ] && first=$rc
done
echo "crashes=$crash failures=$fail first=${first:-none}"
EOF

# exits NAME DIR CMD...: HARM_EXITS (or EXITS_N) runs of CMD in the lab, one after the
# other (two SoftHSM2 processes at once on one token directory fail now and
# then, with the vendor alone too); none may end by a signal or fail.
exits() {
    local name=$1 dir=$2 r c f n=${EXITS_N:-$exits}
    shift 2
    r=$(HAEXT_TEST_TIMEOUT=900 in_lab "$dir" bash "$work/loop.sh" "$n" "$@" 2>&1 || true)
    c=$(echo "$r" | sed -n 's/^crashes=\([0-9]*\) .*/\1/p')
    f=$(echo "$r" | sed -n 's/.* failures=\([0-9]*\) .*/\1/p')
    if [ "${c:-1}" -eq 0 ] && [ "${f:-1}" -eq 0 ]; then
        ok "$name: $n exits without C_Finalize, 0 crashes"
    else
        notok "$name: $n exits without C_Finalize: $r"
    fi
}

# openssl.cnf for pkcs11-provider over MODULE, as a host that never
# finalizes the module (no-deinit) uses it.
provider_conf() {
    cat <<EOF
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
pkcs11-module-path = $1
pkcs11-module-token-pin = 1234
pkcs11-module-quirks = no-deinit
activate = 1
EOF
}

# The two labs, with key "k" on every token.
direct=$work/lab-direct
net=$work/lab-net
bash "$lab" up --dir "$direct" --mode direct --members 2 >/dev/null
bash "$lab" up --dir "$net" --mode net --members 3 --timeout 2 >/dev/null
chmod 0755 "$direct" "$net"
echo "signed by libhaext's tests" >"$work/data"

for dir in "$direct" "$net"; do
    kind=$(. "$dir/env" && echo "$HALAB_MODE")
    vendor=$(. "$dir/env" && echo "$HALAB_MODULE")
    name=$([ "$kind" = direct ] && echo SoftHSM2 || echo p11-kit-proxy)
    in_lab "$dir" "$py" "$host_py" --module "$vendor" setup >/dev/null
    slot=$(slot_of "$dir" "$vendor" m00)
    echo "== $name"

    # --- 1. exit without C_Finalize -----------------------------------------
    exits "minimal host through the front, $name" "$dir" "$host" "$front" init @US@
    provider_conf "$front" >"$work/front-$kind.cnf"
    provider_conf "$vendor" >"$work/vendor-$kind.cnf"
    if in_lab "$dir" env OPENSSL_CONF="$work/vendor-$kind.cnf" openssl dgst -sha256 \
        -sign "pkcs11:token=m00;object=k;type=private" -out "$work/sig.vendor" "$work/data" &&
        in_lab "$dir" env OPENSSL_CONF="$work/front-$kind.cnf" openssl dgst -sha256 \
            -sign "pkcs11:token=m00;object=k;type=private" -out "$work/sig.front" "$work/data" &&
        cmp -s "$work/sig.vendor" "$work/sig.front"; then
        ok "openssl dgst -sign through pkcs11-provider, $name: the same signature with and without the front"
    else
        notok "openssl dgst -sign through pkcs11-provider, $name: differs or fails with the front"
    fi
    exits "openssl dgst -sign through pkcs11-provider and the front, $name" "$dir" env \
        OPENSSL_CONF="$work/front-$kind.cnf" openssl dgst -sha256 -sign "pkcs11:token=m00;object=k;type=private" \
        -out /dev/null "$work/data"

    # --- 2. exit() while libhaext's calls are inside the vendor --------------
    # The delay shim holds every C_GetSessionInfo 200 ms; a host thread calls
    # CA_GetCurrentHAState in a loop and the main thread exits 1 s in. The
    # shim's atexit handler, registered when it was loaded (where a vendor's
    # static destructors stand), counts the calls inside it.
    if [ "$kind" = direct ]; then
        for mode in front beside; do
            rm -f "$work/exit.report"
            if [ "$mode" = front ]; then
                conf_set "$dir" LibHAExtVendor "$shim"
                args=("$front" ca-exit "$slot" 1000)
            else
                conf_set "$dir" LibUNIX64 "$shim"
                args=("$shim" ca-exit "$slot" 1000 "$beside")
            fi
            calls=0
            for i in 1 2 3 4 5 6 7 8; do
                n=$(in_lab "$dir" env DELAYSHIM_US=200000 DELAYSHIM_ONLY=C_GetSessionInfo \
                    DELAYSHIM_EXIT_REPORT="$work/exit.report" "$host" "${args[@]}" 2>&1 |
                    sed -n 's/^ca: calls=\([0-9]*\) .*/\1/p' || true)
                calls=$((calls + ${n:-0}))
            done
            conf_unset "$dir" LibHAExtVendor
            conf_set "$dir" LibUNIX64 "$vendor"
            reports=$(sort "$work/exit.report" 2>/dev/null | uniq -c | tr -s ' ' | tr '\n' ';')
            if [ "$calls" -ge 16 ] && [ "$(grep -c '^inflight=0$' "$work/exit.report" 2>/dev/null)" = 8 ]; then
                ok "exit() during status calls ($mode): no call of libhaext's inside the vendor when its exit handlers ran, 8 of 8 exits ($calls status calls)"
            else
                notok "exit() during status calls ($mode): ${reports:-no report} ($calls status calls)"
            fi
        done
    fi

    # --- 3. the host initializes again, then exits ------------------------------
    out=$(in_lab "$dir" "$host" "$front" reinit "$slot" 2>&1 || true)
    want=$(printf '0x0,%.0s' $(seq "$(. "$dir/env" && echo "$HALAB_MEMBERS")") | sed 's/,$//')
    if echo "$out" | grep -qx "after=0x0 statuses=$want"; then
        ok "the first status call after the host initialized again, $name: every member CKR_OK ($want)"
    else
        notok "the first status call after the host initialized again, $name: $(echo "$out" | tr '\n' ' ')"
    fi
    EXITS_N=$((exits / 10)) exits "C_Initialize, status call, C_Finalize, C_Initialize, exit, $name" "$dir" \
        "$host" "$front" reinit "$slot"
    conf_set "$dir" LibHAExtVendor "$spy"
    rm -f "$work/spy.log"
    in_lab "$dir" env PKCS11SPY="$vendor" PKCS11SPY_OUTPUT="$work/spy.log" "$host" "$front" reinit "$slot" >/dev/null 2>&1 || true
    conf_unset "$dir" LibHAExtVendor
    tail_calls=$(sed -n 's/^[0-9][0-9]*: \(C_[A-Za-z]*\)$/\1/p' "$work/spy.log" | tail -n 2 | tr '\n' ' ')
    if [ "$tail_calls" = "C_Finalize C_Initialize " ]; then
        ok "pkcs11-spy, $name: no call of libhaext's after the host's last C_Initialize"
    else
        notok "pkcs11-spy, $name: the last calls are: $tail_calls"
    fi
    # A host that listed the slots itself: libhaext takes its answer and
    # lists none of its own (p11-kit's proxy asks every member for it).
    conf_set "$dir" LibHAExtVendor "$spy"
    rm -f "$work/spy.log"
    out=$(in_lab "$dir" env PKCS11SPY="$vendor" PKCS11SPY_OUTPUT="$work/spy.log" "$host" "$front" slots "$slot" 2>&1 || true)
    conf_unset "$dir" LibHAExtVendor
    lists=$(grep -c '^[0-9]*: C_GetSlotList$' "$work/spy.log" || true)
    if [ "$lists" = 2 ] && echo "$out" | grep -qx "ca=0x0 statuses=$want"; then
        ok "pkcs11-spy, $name: the first status call takes the host's C_GetSlotList answer (2 C_GetSlotList, both the host's; $out)"
    else
        notok "pkcs11-spy, $name: $lists C_GetSlotList for the host's 2; $out"
    fi
    rm -f "$work/spy.log"
    in_lab "$dir" env PKCS11SPY="$vendor" PKCS11SPY_OUTPUT="$work/spy.log" "$host" "$spy" init 30000 >/dev/null 2>&1 || true
    want_calls=$(sed -n 's/^[0-9][0-9]*: \(C_[A-Za-z]*\)$/\1/p' "$work/spy.log" | tr '\n' ' ')
    conf_set "$dir" LibHAExtVendor "$spy"
    rm -f "$work/spy.log"
    in_lab "$dir" env PKCS11SPY="$vendor" PKCS11SPY_OUTPUT="$work/spy.log" "$host" "$front" init 30000 >/dev/null 2>&1 || true
    conf_unset "$dir" LibHAExtVendor
    got_calls=$(sed -n 's/^[0-9][0-9]*: \(C_[A-Za-z]*\)$/\1/p' "$work/spy.log" | tr '\n' ' ')
    if [ -n "$want_calls" ] && [ "$got_calls" = "$want_calls" ]; then
        ok "pkcs11-spy, $name: a host that never calls CA_* makes the same calls with the front ($got_calls)"
    else
        notok "pkcs11-spy, $name: vendor alone: $want_calls; with the front: $got_calls"
    fi

    # --- 6. fork while host calls are in flight ---------------------------------
    # 8 host threads in calls on their own sessions, the main thread forks
    # 100 times, each child initializes the module again and uses it;
    # through the front, CA_GetCurrentHAState runs meanwhile too. A child
    # that inherits a lock a host thread held at fork time hangs with the
    # vendor alone too (SoftHSM2: a mutex of its C_OpenSession), a few in a
    # hundred, and the count varies run by run: the front passes while it
    # stays within twice the vendor's count plus 5 (a front that made
    # children hang as in the issue, 25% against 6%, does not).
    v=$(in_lab "$dir" "$host" "$vendor" fork-storm "$slot" 8 100 2000 2>&1 | tail -n 1 || true)
    f=$(in_lab "$dir" env HARM_CA_LIBRARY="$front" "$host" "$front" fork-storm "$slot" 8 100 2000 2>&1 | tail -n 1 || true)
    vh=$(echo "$v" | sed -n 's/.* hung=\([0-9]*\) failed=\([0-9]*\)$/\1 \2/p')
    fh=$(echo "$f" | sed -n 's/.* hung=\([0-9]*\) failed=\([0-9]*\)$/\1 \2/p')
    if [ -n "$vh" ] && [ -n "$fh" ] && [ "${fh% *}" -le $((2 * ${vh% *} + 5)) ] && [ "${fh#* }" -le $((2 * ${vh#* } + 5)) ]; then
        ok "fork with host calls in flight, $name: children hang no more often with the front (vendor alone: $v; front: $f)"
    else
        notok "fork with host calls in flight, $name: vendor alone: $v; front: $f"
    fi
done

# --- 4. a setuid host ignores ChrystokiConfigurationPath ----------------------
# Run as root, a copy of the host that is setuid to nobody has AT_SECURE set:
# the variable belongs to the user who ran it.
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$work/suid"
    chmod 0755 "$work/suid"
    cp "$host" "$work/suid/harm_host"
    chown nobody "$work/suid/harm_host"
    chmod 4755 "$work/suid/harm_host"
    out=$(env ChrystokiConfigurationPath="$direct" "$work/suid/harm_host" "$front" init 2>&1 || true)
    if echo "$out" | grep -q "/etc/Chrystoki.conf" && ! echo "$out" | grep -q "$direct"; then
        ok "a setuid host: the front ignores ChrystokiConfigurationPath ($(echo "$out" | head -n 1 | cut -c1-90)...)"
    else
        notok "a setuid host: the front read ChrystokiConfigurationPath: $(echo "$out" | tr '\n' ' ')"
    fi
    out=$(env ChrystokiConfigurationPath="$direct" "$work/suid/harm_host" "$beside" ca-once 1 2>&1 || true)
    if echo "$out" | grep -q "reason=configuration: /etc/Chrystoki.conf" && ! echo "$out" | grep -q "$direct"; then
        ok "a setuid host: libhaext.so ignores ChrystokiConfigurationPath"
    else
        notok "a setuid host: libhaext.so read ChrystokiConfigurationPath: $out"
    fi
    out=$(env ChrystokiConfigurationPath="$direct" "$host" "$beside" ca-once 1 2>&1 || true)
    if echo "$out" | grep -q "reason=slot 1"; then
        ok "the same host, not setuid, reads it (reason: ${out#*reason=})"
    else
        notok "the same host, not setuid: $out"
    fi
else
    notok "the setuid checks need root (CI runs as root)"
fi

# --- 5. CKF_LIBRARY_CANT_CREATE_OS_THREADS -------------------------------------
vendor=$(. "$direct/env" && echo "$HALAB_MODULE")
slot=$(slot_of "$direct" "$vendor" m00)
v=$(in_lab "$direct" "$host" "$vendor" nothreads "$slot" 2>&1 || true)
f=$(in_lab "$direct" "$host" "$front" nothreads "$slot" 2>&1 || true)
if [ "${v%% *}" = "${f%% *}" ] && echo "$f" | grep -q " ca=0x6 " &&
    echo "$f" | sed -n 's/.* threads=\([0-9]*\)->\([0-9]*\) .*/\1 \2/p' | awk '{exit !($1 == $2)}' &&
    echo "$f" | grep -q "reason=the host initialized the module with CKF_LIBRARY_CANT_CREATE_OS_THREADS"; then
    ok "CKF_LIBRARY_CANT_CREATE_OS_THREADS: C_Initialize answers as the vendor's (${f%% *}); the status call is CKR_FUNCTION_FAILED with the reason and starts no thread (${f#* ca=0x6 })"
else
    notok "CKF_LIBRARY_CANT_CREATE_OS_THREADS: vendor: $v; front: $f"
fi

t_done
