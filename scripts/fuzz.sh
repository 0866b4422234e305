#!/usr/bin/env bash
# Runs every fuzz target of the module (`make fuzz`), each for FUZZTIME
# (default 30s): the packages whose tests define a func Fuzz*, and in each
# the targets `go test -list` names. A target that fails does not stop the
# others; the run ends with "N passed, N failed" (one per target).
#
# Environment: GO (default go), FUZZTIME.
set -euo pipefail

cd "$(dirname "$0")/.."
go=${GO:-go}
fuzztime=${FUZZTIME:-30s}
passed=0
failed=0

for dir in $(grep -rl --include='*_test.go' '^func Fuzz' cmd pkg internal | xargs -r -n1 dirname | sort -u); do
    for target in $("$go" test -list '^Fuzz' "./$dir" | grep '^Fuzz' || true); do
        echo "# $target in ./$dir for $fuzztime"
        if "$go" test -run='^$' -fuzz="^$target\$" -fuzztime="$fuzztime" "./$dir"; then
            echo "ok - $target"
            passed=$((passed + 1))
        else
            echo "not ok - $target"
            failed=$((failed + 1))
        fi
    done
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
