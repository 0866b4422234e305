# shellcheck shell=bash
# net.sh - sourced by test/c/run.sh (uses its run, check_line, lab, work,
# build, timeout_s, passed and failed): members across a network, through
# Caml Crush. Every lab runs in a network namespace of its own
# (test/lab/camlcrush.sh); the faults are real: pkcs11proxyd SIGKILLed,
# iptables DROP inside that namespace, or both. build/test_net holds the
# scenarios.

# net_up NAME MODE MEMBERS: a fresh lab with the HA log on, in $work/halog-NAME.
net_up() {
    local name=$1 mode=$2 members=$3 dir=$work/lab-$1
    mkdir -p "$work/scratch-$name" "$work/halog-$name"
    bash "$lab" up --dir "$dir" --mode "$mode" --members "$members" --timeout "$timeout_s" >/dev/null
    sed -i "s#^HAConfiguration = {#&\n   haLogStatus = enabled;\n   haLogPath = $work/halog-$name;#" \
        "$dir/Chrystoki.conf"
}

# net_run NAME LAB SCENARIO [ENV=VALUE...]: build/test_net SCENARIO in lab
# LAB, logged as NAME.
net_run() {
    local name=$1 dir=$2 scenario=$3
    shift 3
    run "$name" "$work/lab-$dir" env HALAB_LAB_SH="$lab" HALAB_TIMEOUT_MS=$((timeout_s * 1000)) \
        HAEXT_HALOG_DIR="$work/halog-$dir" "$@" "$build/test_net" "$scenario"
}

net_down() { bash "$lab" down --dir "$work/lab-$1" >/dev/null 2>&1 || true; }

# net_case NAME MODE MEMBERS SCENARIO: one scenario in a lab of its own.
net_case() {
    net_up "$1" "$2" "$3"
    net_run "$1" "$1" "$4"
    net_down "$1"
}

net_case net-killed tcp 3 killed
net_case net-partition tcp 3 partition
net_case net-halfopen tcp 3 halfopen
net_case net-mixed mixed 3 mixed

# A configured member that no token has, during a partition.
net_up net-missing tcp 2
sed -i 's/^\(   VirtualToken00Members = .*\);$/\1,00000000deadbeef;/' "$work/lab-net-missing/Chrystoki.conf"
net_run net-missing net-missing missing HALAB_MISSING_SERIAL=00000000deadbeef
net_down net-missing

# TLS: the wrong CA first (the lab's server must be up), then the faults.
net_up net-tls tls 2
net_run net-wrongca net-tls wrongca
echo "== net-tls-hastatus"
net_dir=$work/lab-net-tls
net_rc=0
bash "$lab" exec --dir "$net_dir" -- "$build/hastatus" >"$work/tls-hastatus.log" 2>&1 || net_rc=$?
sed 's/^/   /' "$work/tls-hastatus.log"
check_line "hastatus over TLS: every member alive" "^[0-9a-f]{16} +m01 .* alive " "$work/tls-hastatus.log"
net_rc=0
# shellcheck disable=SC2016 # expanded by the lab's shell
bash "$lab" exec --dir "$net_dir" -- sh -c 'PKCS11PROXY_CA_FILE=$HALAB_WRONG_CA_FILE exec "$0"' \
    "$build/hastatus" >"$work/wrongca-hastatus.log" 2>&1 || net_rc=$?
sed 's/^/   /' "$work/wrongca-hastatus.log"
if [ "$net_rc" -eq 3 ]; then
    echo "   ok - hastatus with the wrong CA: exit status 3 (module error), not the module's 255"
    passed=$((passed + 1))
else
    echo "   not ok - hastatus with the wrong CA exited $net_rc, want 3"
    failed=$((failed + 1))
fi
check_line "and the reason on one line: the module ended the process, with what it said" \
    '^hastatus: the check ended without a report \(exit status 255\): the vendor module ended the process; it said: .*verify result: unable to get local issuer certificate' \
    "$work/wrongca-hastatus.log"
net_run net-tls net-tls tls
net_down net-tls
