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
work=$(mktemp -d "${TMPDIR:-/tmp}/haext-ctest.XXXXXX")
passed=0
failed=0

cleanup() {
    local d
    for d in "$work"/lab-*; do
        [ -d "$d" ] && bash "$lab" down --dir "$d" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

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

mkdir -p "$work"/scratch-core
bash "$lab" up --dir "$work/lab-core" --mode direct --members 3 --group-serial 1000001 >/dev/null
run core "$work/lab-core" env HALAB_GROUP_SERIAL=1000001 "$build/test_core"

echo "C tests: $passed passed, $failed failed"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
