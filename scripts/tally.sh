#!/usr/bin/env bash
# One summary format for `make test`: every runner's output ends with
# "N passed, N failed", and make test ends with their total.
#
#   tally.sh NAME COMMAND...             runs one runner, its standard output
#       passed through, and appends its closing "N passed, N failed" to
#       $HAEXT_TALLY (when set) as "NAME: N passed, N failed"; a runner that
#       ends without that line counts as 1 failed. Exits as the runner did.
#   tally.sh --packages NAME COMMAND...  the same for go test, whose output
#       has no such line: it prints one after go test's own output, counting
#       the packages (its "ok" and "FAIL" lines).
#   tally.sh --total FILE                prints FILE's lines and their sum.
set -uo pipefail

line='^[0-9]+ passed, [0-9]+ failed$'

if [ "${1:-}" = --total ]; then
    [ -s "${2:-}" ] || exit 0
    echo "== make test"
    cat "$2"
    awk '{p += $(NF-3); f += $(NF-1)} END {printf "%d passed, %d failed\n", p, f}' "$2"
    exit 0
fi

packages=0
if [ "${1:-}" = --packages ]; then
    packages=1
    shift
fi
name=$1
shift
log=$(mktemp "${TMPDIR:-/tmp}/haext-tally.XXXXXX")
trap 'rm -f "$log"' EXIT

"$@" | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$packages" = 1 ]; then
    passed=$(grep -cE '^ok[[:space:]]' "$log")
    failed=$(grep -cE '^FAIL[[:space:]]' "$log")
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
        failed=1
    fi
    echo "$passed passed, $failed failed" | tee -a "$log"
fi
summary=$(grep -E "$line" "$log" | tail -n 1)
if [ -z "$summary" ]; then
    echo "$name: exited $rc without a closing \"N passed, N failed\""
    summary="0 passed, 1 failed"
fi
if [ -n "${HAEXT_TALLY:-}" ]; then
    echo "$name: $summary" >>"$HAEXT_TALLY"
fi
exit "$rc"
