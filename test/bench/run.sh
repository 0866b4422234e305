#!/usr/bin/env bash
# Benchmarks of libhaext (`make bench`): CA_GetCurrentHAState against labs of
# real members (test/lab/lab.sh: SoftHSM2 tokens behind p11-kit servers, with
# latency injected server-side by the delay shim, test/shim/delayshim.c),
# compared with the old session-per-member way and with one round trip; then
# faults, concurrency, resources and the Go engine benchmarks.
#
# Needs build/libhaext.so and build/delayshim.so (built by `make bench`).
# Compiles build/bench/bench itself. Writes build/bench/results.json (the raw
# numbers, a build output) and BENCHMARKS.md (test/bench/report.py). Every lab is
# torn down on exit.
#
# Environment: CC, GO, BUILD (default build), BENCH_QUICK=1 (a smoke run with
# a tenth of the samples; the report says so), BENCH_SIZES (default
# "1 4 8 16 32"), BENCH_LATENCIES (microseconds, default "0 1000 5000").
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${BUILD:-$top/build}
out=$build/bench
lab=$top/test/lab/lab.sh
cc=${CC:-cc}
sizes=${BENCH_SIZES:-1 4 8 16 32}
latencies=${BENCH_LATENCIES:-0 1000 5000}
timeout_s=3
started=$(date +%s)

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 2
}

find_go() {
    if [ -n "${GO:-}" ]; then
        printf '%s\n' "$GO"
    elif command -v go >/dev/null 2>&1; then
        command -v go
    elif [ -x /usr/local/go/bin/go ]; then
        echo /usr/local/go/bin/go
    else
        return 1
    fi
}

find_python() {
    local p
    for p in /usr/bin/python3 "$(command -v python3 || true)"; do
        if [ -n "$p" ] && [ -x "$p" ]; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

cd "$top"
[ -f "$build/libhaext.so" ] || die "$build/libhaext.so is missing: run \`make bench\` (or make build/libhaext.so)"
go_bin=$(find_go) || die "go not found (set GO=/path/to/go)"
python=$(find_python) || die "python3 not found"
[ "$(id -u)" -eq 0 ] || log "warning: not root; lab.sh may skip (exit 77)"

work=$(mktemp -d "${TMPDIR:-/tmp}/haext-bench.XXXXXX")
cleanup() {
    local d
    for d in "$work"/lab*; do
        if [ -d "$d" ]; then bash "$lab" down --dir "$d" >/dev/null 2>&1 || true; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

mkdir -p "$out"
results=$out/results.jsonl
benchlog=$out/bench.log
: >"$results"
: >"$benchlog"

# Build the bench program (the shim comes from the Makefile).
p11flags=$(pkg-config --cflags p11-kit-1)
cflags=(-std=c99 -O2 -g -Wall -Wextra -Werror)
# shellcheck disable=SC2206 # pkg-config output is a list of flags
cflags+=($p11flags -Iinclude)
[ -f "$build/delayshim.so" ] || die "$build/delayshim.so is missing (make build/delayshim.so)"
log "compiling $out/bench"
"$cc" "${cflags[@]}" -o "$out/bench" test/bench/bench.c test/c/harness.c -ldl -lpthread -lm
export HALAB_SHIM=$build/delayshim.so

# up DIR MEMBERS LATENCY_US [MODE]: a lab (MODE net unless given); latency 0
# runs without the shim.
up() {
    local dir=$1 members=$2 lat=$3 mode=${4:-net} extra=()
    [ "$lat" -eq 0 ] || extra=(--delay-us "$lat")
    local rc=0
    bash "$lab" up --dir "$dir" --mode "$mode" --members "$members" --timeout "$timeout_s" "${extra[@]}" \
        >>"$benchlog" 2>&1 || rc=$?
    if [ "$rc" -eq 77 ]; then
        log "SKIP: lab.sh cannot set up a lab here (see $benchlog)"
        exit 77
    fi
    [ "$rc" -eq 0 ] || die "lab.sh up --members $members ${extra[*]} failed (see $benchlog)"
}

down() { bash "$lab" down --dir "$1" >>"$benchlog" 2>&1 || true; }

# bench DIR LATENCY_US [ENV=VALUE...] -- SCENARIO...: runs build/bench/bench in the lab.
bench() {
    local dir=$1 lat=$2 envs=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        envs+=("$1")
        shift
    done
    shift
    if ! bash "$lab" exec --dir "$dir" -- env LIBHAEXT="$build/libhaext.so" HALAB_LAB_SH="$lab" \
        BENCH_LATENCY_US="$lat" BENCH_TIMEOUT_MS=$((timeout_s * 1000)) "${envs[@]}" \
        "$out/bench" --json "${bench_json:-$results}" "$@" 2>&1 | tee -a "$benchlog"; then
        die "bench $* failed in $dir (see $benchlog)"
    fi
}

# 1. Latency: group size x injected latency.
for lat in $latencies; do
    for n in $sizes; do
        dir=$work/lab-$n-$lat
        log "lab: $n members, ${lat} us injected"
        up "$dir" "$n" "$lat"
        if [ "$lat" -le 1000 ]; then
            bench "$dir" "$lat" -- sweep fanout
        else
            bench "$dir" "$lat" -- sweep
        fi
        down "$dir"
    done
done

# 2. Idle, then resources: 8 members, no injected latency, fresh processes.
dir=$work/lab-res
log "lab: idle and resources (8 members, 0 us)"
up "$dir" 8 0
bench "$dir" 0 -- idle
# The same host with the front module as its module (one Go runtime, the
# engine on the host's own instance).
frontconf=$work/conf-front
mkdir -p "$frontconf"
sed "s#^\( *\)LibUNIX64 = \(.*\);#\1LibUNIX64 = $build/libhaext-pkcs11.so;\n\1LibHAExtVendor = \2;#" \
    "$dir/Chrystoki.conf" >"$frontconf/Chrystoki.conf"
bench "$dir" 0 ChrystokiConfigurationPath="$frontconf" HALAB_MODULE="$build/libhaext-pkcs11.so" \
    LIBHAEXT="$build/libhaext-pkcs11.so" -- idle=idle_front
bench "$dir" 0 -- resources
down "$dir"

# 3. Concurrency, then faults: 8 members, 1 ms injected, endpoints configured
# (plus faults with no injected latency).
dir=$work/lab-conc
log "lab: concurrency (8 members, 1000 us)"
up "$dir" 8 1000
bench "$dir" 1000 -- concurrency
# Stage 3 with the monitor session (C_GetSessionInfo) and without any
# session (haExtMonitorSession = disabled: C_GetTokenInfo), side by side on
# the same lab, one process each.
nosession=$work/conf-nosession
mkdir -p "$nosession"
sed "s#^HAConfiguration = {#&\n   haExtMonitorSession = disabled;#" "$dir/Chrystoki.conf" >"$nosession/Chrystoki.conf"
bench "$dir" 1000 -- libonly=stage3_session
bench "$dir" 1000 ChrystokiConfigurationPath="$nosession" -- libonly=stage3_token
down "$dir"
for lat in 1000 0; do
    # The 1 ms lab is the reference; the 0 us one shows the library's own
    # time when the healthy members answer at once.
    dir=$work/lab-faults-$lat
    log "lab: faults (8 members, $lat us)"
    up "$dir" 8 "$lat"
    bench "$dir" "$lat" -- faults
    down "$dir"
done

# 4a. Network transports: the sweep on members behind Caml Crush's
# pkcs11proxyd over TCP (lab mode tcp, in the lab's network namespace),
# side by side with p11-kit over unix sockets; 1 ms injected behind each
# server by the delay shim. Recorded apart, in results-net.jsonl.
netresults=$out/results-net.jsonl
: >"$netresults"
for n in ${BENCH_NET_SIZES:-1 4}; do
    for mode in net tcp; do
        dir=$work/lab-transport-$mode-$n
        log "lab: $n members over $mode, 1000 us injected"
        up "$dir" "$n" 1000 "$mode"
        bench_json=$netresults bench "$dir" 1000 BENCH_TRANSPORT="$mode" -- sweep
        down "$dir"
    done
done

# 4. The Go engine benchmarks (fake backend).
log "go test -bench ./pkg/probe"
gobench=$out/go-bench.txt
# Five runs: the report takes the median (one run swings by 30% on a VM).
"$go_bin" test -run='^$' -bench=. -benchmem -count=5 ./pkg/probe 2>&1 | tee "$gobench" ||
    log "warning: go test -bench failed (its output is in the report)"

# 5b. The front module: what forwarding through build/libhaext-pkcs11.so adds
# to C_GetSessionInfo and C_Sign on SoftHSM2, in one process; then the same
# through the reference modules of bare_module.c (the least a forwarding
# module does), small and padded to the front's code-to-data distance.
[ -f "$build/libhaext-pkcs11.so" ] || die "$build/libhaext-pkcs11.so is missing: run \`make bench\`"
"$cc" "${cflags[@]}" -o "$out/front_bench" test/bench/front_bench.c -ldl
"$cc" "${cflags[@]}" -fPIC -shared -o "$out/bare_module.so" test/bench/bare_module.c -ldl
"$cc" "${cflags[@]}" -fPIC -shared -DBARE_PAD_MB=2 -o "$out/bare_module_padded.so" test/bench/bare_module.c -ldl
dir=$work/lab-front
log "lab: front module forwarding (1 SoftHSM2 token, no p11-kit)"
bash "$lab" up --dir "$dir" --mode direct --members 1 >>"$benchlog" 2>&1 || die "lab.sh up --mode direct failed"
front_iters=400000
[ "${BENCH_QUICK:-0}" = 1 ] && front_iters=40000
for module in "libhaext-pkcs11:$build/libhaext-pkcs11.so" "bare C module:$out/bare_module.so" \
    "bare C module, 2 MB padded:$out/bare_module_padded.so"; do
    bash "$lab" exec --dir "$dir" -- bash -c 'BARE_VENDOR=$HALAB_MODULE "$0" "$HALAB_MODULE" "$1" --json "$2" \
        --iterations "$3" --module "$4"' "$out/front_bench" "${module#*:}" "$results" "$front_iters" "${module%%:*}" \
        2>&1 | tee -a "$benchlog" || die "front_bench through ${module%%:*} failed (see $benchlog)"
done
down "$dir"
# The same with a vendor that answers at once: the front's own work.
"$cc" "${cflags[@]}" -fPIC -shared -o "$out/null_vendor.so" test/bench/null_vendor.c
mkdir -p "$work/null-vendor"
printf 'Chrystoki2 = {\n   LibUNIX64 = %s;\n}\n' "$out/null_vendor.so" >"$work/null-vendor/Chrystoki.conf"
ChrystokiConfigurationPath=$work/null-vendor "$out/front_bench" "$out/null_vendor.so" "$build/libhaext-pkcs11.so" \
    --name null --json "$results" --iterations "$front_iters" 2>&1 | tee -a "$benchlog" ||
    die "front_bench with the null vendor failed (see $benchlog)"

# 5c. The front's start-up cost: a process that loads the module, calls
# C_GetFunctionList, C_Initialize and C_Finalize and exits, with SoftHSM2
# alone and through the front (which loads no Go until a CA_* call),
# alternating child by child (test/consumers/harm_host.c startup).
# shellcheck disable=SC2046
"$cc" -std=gnu11 -O2 -g -Wall -Wextra -Werror $(pkg-config --cflags p11-kit-1) -Iinclude -o "$out/harm_host" \
    test/consumers/harm_host.c -ldl -lpthread
dir=$work/lab-startup
log "lab: start-up cost (1 SoftHSM2 token)"
bash "$lab" up --dir "$dir" --mode direct --members 1 >>"$benchlog" 2>&1 || die "lab.sh up --mode direct failed"
startup_n=1000
[ "${BENCH_QUICK:-0}" = 1 ] && startup_n=100
bash "$lab" exec --dir "$dir" -- bash -c '"$0" "$HALAB_MODULE" startup "$1" "$2"' "$out/harm_host" "$startup_n" \
    "$build/libhaext-pkcs11.so" >"$out/startup.txt" 2>>"$benchlog" || die "harm_host startup failed (see $benchlog)"
tee -a "$benchlog" <"$out/startup.txt"
"$python" - "$out/startup.txt" "$results" <<'EOF'
import json, re, sys
rows = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in open(sys.argv[1]) if line.startswith("module=")]
vendor, front = rows
with open(sys.argv[2], "a") as out:
    out.write(json.dumps({"scenario": "front_startup", "n": int(front["n"]),
                          "vendor_median_us": int(vendor["median_us"]), "front_median_us": int(front["median_us"]),
                          "vendor_mean_us": int(vendor["mean_us"]), "front_mean_us": int(front["mean_us"]),
                          "added_median_us": int(front["median_us"]) - int(vendor["median_us"])}) + "\n")
EOF
down "$dir"

# 9. The HA slot (issue 19): overhead, scaling, failover.
# shellcheck source=ha.sh
. "$here/ha.sh"

# 5. Report.
finished=$(date +%s)
"$python" "$here/report.py" --results "$results" --net-results "$netresults" --go-bench "$gobench" \
    --out-json "$out/results.json" \
    --out-md "$top/BENCHMARKS.md" --seconds $((finished - started)) --quick "${BENCH_QUICK:-0}" \
    --go-version "$("$go_bin" version 2>/dev/null || true)"
log "done in $((finished - started)) s: $top/BENCHMARKS.md, $out/results.json"
