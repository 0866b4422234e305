#!/usr/bin/env bash
# Runs the C tests against labs of real components (test/lab/lab.sh):
# SoftHSM2 tokens, and p11-kit servers behind p11-kit-proxy for networked
# members. Prints each test program's lines and a closing
# "N passed, N failed" over all of them. Every lab is torn down on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${BUILD:-$top/build}
lab=$top/test/lab/lab.sh
# shellcheck source=test/lib.sh
. "$top/test/lib.sh"
t_setup ctest

# run NAME LABDIR CMD...: runs a test program inside a lab, adds its counts.
run() {
    local name=$1 dir=$2 log rc=0 counts
    shift 2
    log=$work/$name.log
    echo "== $name"
    timeout "${HAEXT_TEST_TIMEOUT:-300}" bash "$lab" exec --dir "$dir" -- \
        env LIBHAEXT="$build/libhaext.so" HALAB_SCRATCH="$work/scratch-$name" "$@" >"$log" 2>&1 || rc=$?
    sed 's/^/   /' "$log"
    counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)
    if [ -z "$counts" ]; then
        echo "   $name: exited $rc without a result line"
        failed=$((failed + 1))
        return
    fi
    passed=$((passed + $(echo "$counts" | cut -d' ' -f1)))
    failed=$((failed + $(echo "$counts" | cut -d' ' -f3)))
    if [ "$rc" -ne 0 ] && [ "$(echo "$counts" | cut -d' ' -f3)" = 0 ]; then
        echo "   $name: exited $rc"
        failed=$((failed + 1))
    fi
}

mkdir -p "$work"/scratch-core "$work/halog"
bash "$lab" up --dir "$work/lab-core" --mode direct --members 3 --group-serial 1000001 >/dev/null
# The HA log to a file only: the library must then write nothing to the
# host's standard output or error.
sed -i "s#^HAConfiguration = {#&\n   haLogStatus = enabled;\n   haLogPath = $work/halog;#" "$work/lab-core/Chrystoki.conf"
run core "$work/lab-core" env HALAB_GROUP_SERIAL=1000001 HAEXT_HALOG_DIR="$work/halog" "$build/test_core"
stray=$(grep -cvE '^(ok |not ok |# |[0-9]+ passed, [0-9]+ failed$)' "$work/core.log" || true)
if [ "$stray" -eq 0 ]; then
    echo "   ok - the library wrote nothing to the host's stdout or stderr"
    passed=$((passed + 1))
else
    echo "   not ok - $stray stray lines on the host's stdout/stderr"
    failed=$((failed + 1))
fi

# The host's login state, with libhaext's monitor sessions (the default)
# and without any session (haExtMonitorSession = disabled).
for variant in default nosession; do
    dir=$work/lab-login-$variant
    bash "$lab" up --dir "$dir" --mode direct --members 2 >/dev/null
    if [ "$variant" = nosession ]; then
        sed -i "s#^HAConfiguration = {#&\n   haExtMonitorSession = disabled;#" "$dir/Chrystoki.conf"
    fi
    run "login-$variant" "$dir" "$build/test_login" "$variant"
    bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true
done

# The HA log to a standard output nobody reads: the host must survive with
# SIGPIPE at its default action, ignored, or handled by its own handler.
bash "$lab" up --dir "$work/lab-sigpipe" --mode direct --members 3 >/dev/null
run sigpipe "$work/lab-sigpipe" "$build/test_sigpipe"
bash "$lab" down --dir "$work/lab-sigpipe" >/dev/null 2>&1 || true

# The ABI as applications build against it (test/c/abi.sh), the threads'
# signal masks, per-thread last errors and fork children (test_capi), and a
# sigtimedwait host under a signal burst (test_sigwait), on a SoftHSM2
# group of their own.
bash "$lab" up --dir "$work/lab-abi" --mode direct --members 3 --group-serial 1000001 >/dev/null
run abi "$work/lab-abi" env HALAB_GROUP_SERIAL=1000001 bash "$here/abi.sh"
run capi "$work/lab-abi" env HALAB_GROUP_SERIAL=1000001 "$build/test_capi"
run sigwait "$work/lab-abi" "$build/test_sigwait"
bash "$lab" down --dir "$work/lab-abi" >/dev/null 2>&1 || true

# The host forks while libhaext's stage-3 call is inside the vendor module:
# the delay shim over SoftHSM2 holds one module-wide mutex for each call
# and makes C_GetSessionInfo slow (test_capi fork-in-call).
dir=$work/lab-forkcall
bash "$lab" up --dir "$dir" --mode direct --members 2 >/dev/null
softhsm=$(. "$dir/env" && echo "$HALAB_MODULE")
sed -i "s#^\( *LibUNIX64 = \).*;#\1$build/delayshim.so;#" "$dir/Chrystoki.conf"
run fork-in-call "$dir" env HALAB_MODULE="$build/delayshim.so" DELAYSHIM_MODULE="$softhsm" DELAYSHIM_LOCK=1 \
    DELAYSHIM_ONLY=C_GetSessionInfo "$build/test_capi" fork-in-call
bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true

# Networked members: one p11-kit server per member behind p11-kit-proxy.
# p11-kit-proxy gives every caller of C_GetFunctionList its own instance; a
# vendor client is one instance per process. Scenarios where the host and
# the library must share the module (the host closes sessions or
# re-initializes) put OpenSC's pkcs11-spy.so in front of the proxy, which
# also logs every call.
timeout_s=2
spy=$(ls /usr/lib/*/pkcs11/pkcs11-spy.so /usr/lib/pkcs11/pkcs11-spy.so 2>/dev/null | head -n 1 || true)

# fault NAME SCENARIO MEMBERS proxy|spy [lab options...]: a fresh lab for
# one scenario, torn down after it.
fault() {
    local name=$1 scenario=$2 members=$3 via=$4 dir proxy
    shift 4
    dir=$work/lab-$name
    mkdir -p "$work/scratch-$name"
    bash "$lab" up --dir "$dir" --mode net --members "$members" --timeout "$timeout_s" "$@" >/dev/null
    local extra=()
    if [ "$via" = spy ]; then
        proxy=$(sed -n 's/^ *LibUNIX64 = \(.*\);$/\1/p' "$dir/Chrystoki.conf")
        sed -i "s#^\( *LibUNIX64 = \).*;#\1$spy;#" "$dir/Chrystoki.conf"
        extra=(HALAB_MODULE="$spy" PKCS11SPY="$proxy" PKCS11SPY_OUTPUT="$work/$name.spy.log"
            HALAB_SPY_LOG="$work/$name.spy.log")
    fi
    run "$name" "$dir" env HALAB_LAB_SH="$lab" HALAB_TIMEOUT_MS=$((timeout_s * 1000)) "${extra[@]}" \
        "$build/test_faults" "$scenario"
    bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true
}
fault killed killed 3 proxy
fault killed-noep killed-noep 3 proxy --no-endpoints
fault hung hung 3 proxy
fault closeall closeall 3 spy
fault reinit reinit 3 spy
fault spy spy 3 spy
fault stress stress 4 proxy
fault lend lend 3 proxy
fault lend-late lend-late 3 proxy
fault percaller percaller 3 proxy

# A slot nobody has, asked about while a member is stopped (issue 17): the
# host's own calls to a healthy member keep the latency they have during
# the same hang without it, beside the module and in front of it.
dir=$work/lab-unknownslot
bash "$lab" up --dir "$dir" --mode net --members 3 --timeout "$timeout_s" >/dev/null
for mode in beside front; do
    run "unknownslot-$mode" "$dir" env HALAB_LAB_SH="$lab" HALAB_TIMEOUT_MS=$((timeout_s * 1000)) \
        HAEXT_FRONT="$build/libhaext-pkcs11.so" "$build/test_unknownslot" "$mode"
done
bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true

# State-change callbacks (CA_HAExtSetStateCallback, issue 20 item 3): a host
# counts the changes while members of the p11-kit lab are stopped, resumed
# and killed, beside the module and in front of it (test_callback.c).
dir=$work/lab-callback
bash "$lab" up --dir "$dir" --mode net --members 3 --timeout "$timeout_s" >/dev/null
for mode in beside front; do
    run "callback-$mode" "$dir" env HALAB_LAB_SH="$lab" HALAB_TIMEOUT_MS=$((timeout_s * 1000)) \
        HAEXT_FRONT="$build/libhaext-pkcs11.so" "$build/test_callback" "$mode"
done
bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true

# hastatus --watch while a member hangs and resumes (docs/HASTATUS.md shows this
# by hand).
check_line() { # check_line DESCRIPTION PATTERN FILE
    if grep -qE "$2" "$3"; then
        echo "   ok - $1"
        passed=$((passed + 1))
    else
        echo "   not ok - $1"
        failed=$((failed + 1))
    fi
}
echo "== watch"
dir=$work/lab-watch
bash "$lab" up --dir "$dir" --mode net --members 3 --timeout "$timeout_s" >/dev/null
rc=0
bash "$lab" exec --dir "$dir" -- timeout --preserve-status -s INT 11 "$build/hastatus" --watch 200ms \
    >"$work/watch.log" 2>&1 &
watcher=$!
sleep 1.5
bash "$lab" stop --dir "$dir" 1 2>/dev/null
sleep 3
bash "$lab" cont --dir "$dir" 1 2>/dev/null
sleep 1.5
bash "$lab" kill --dir "$dir" 2 2>/dev/null # its p11-kit server stays up
wait "$watcher" || rc=$?
sed 's/^/   /' "$work/watch.log"
m01=$(. "$dir/env" && echo "$HALAB_SERIALS" | cut -d' ' -f2)
m02=$(. "$dir/env" && echo "$HALAB_SERIALS" | cut -d' ' -f3)
check_line "hastatus --watch prints the hang with a timestamp" \
    "^[0-9T:.-]+Z  halab  $m01  alive -> down \(timeout\)$" "$work/watch.log"
check_line "and the recovery" "^[0-9T:.-]+Z  halab  $m01  down \(timeout\) -> alive$" "$work/watch.log"
check_line "a killed member is reported down" "^[0-9T:.-]+Z  halab  $m02  alive -> down \((socket down|no instance)\)$" \
    "$work/watch.log"
check_line "and alive again without restarting hastatus (it re-initializes its own module)" \
    "^[0-9T:.-]+Z  halab  $m02  down \((socket down|no instance)\) -> alive$" "$work/watch.log"
if [ "$rc" -eq 0 ]; then
    echo "   ok - hastatus stops on SIGINT with exit status 0 (all alive at the end)"
    passed=$((passed + 1))
else
    echo "   not ok - hastatus exited $rc"
    failed=$((failed + 1))
fi
bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true

# Members across a network: TCP and TLS through Caml Crush, in network
# namespaces of the labs' own.
# shellcheck source=test/c/net.sh
. "$here/net.sh"

t_done
