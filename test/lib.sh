# test/lib.sh - what the shell test runners share, sourced after they set
# lab (test/lab/lab.sh): a work folder whose labs are torn down on exit, the
# ok / not ok lines and their counts, commands inside a lab, and the lab's
# Chrystoki2 keys. Each runner ends with t_done: "N passed, N failed".

# t_setup NAME: a fresh work folder, the counts at 0, the cleanup on exit.
t_setup() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/haext-$1.XXXXXX")
    passed=0
    failed=0
    trap t_cleanup EXIT
}

# t_cleanup: every lab under the work folder down, the folder gone.
t_cleanup() {
    local d
    for d in "$work"/lab-*; do
        [ -d "$d" ] && bash "$lab" down --dir "$d" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}

ok() { echo "ok - $*"; passed=$((passed + 1)); }
notok() { echo "not ok - $*"; failed=$((failed + 1)); }

# check DESCRIPTION COMMAND...: one result; the command's output is shown on
# failure.
check() {
    local what=$1 log=$work/check.log
    shift
    if "$@" >"$log" 2>&1; then ok "$what"; else notok "$what"; sed 's/^/    /' "$log" | tail -n 30; fi
}

# in_lab DIR CMD...: runs CMD in the lab's environment (net mode: in its
# mount namespace, where p11-kit sees the lab's modules). A command that
# hangs is killed after HAEXT_TEST_TIMEOUT seconds (default 300) and fails,
# instead of holding up the run.
in_lab() {
    local dir=$1
    shift
    timeout -k 10 "${HAEXT_TEST_TIMEOUT:-300}" bash "$lab" exec --dir "$dir" -- env HALAB_LAB_SH="$lab" "$@"
}

# conf_set DIR KEY VALUE / conf_unset DIR KEY: Chrystoki2/KEY in the lab's
# Chrystoki.conf.
conf_set() { sed -i "/^ *$2 = /d; s#^Chrystoki2 = {#&\n   $2 = $3;#" "$1/Chrystoki.conf"; }
conf_unset() { sed -i "/^ *$2 = /d" "$1/Chrystoki.conf"; }

# t_done: the closing count (scripts/tally.sh reads it); fails when
# anything failed or nothing ran.
t_done() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
}
