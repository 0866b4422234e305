# ha.sh - make bench's part on the HA slot (issue 19), sourced by run.sh
# (its up, down, log, die, $work, $out, $results, $build, $cc, $python):
#   9a. overhead: C_SignInit + C_Sign (HMAC-SHA256, ECDSA P-256) on the HA
#       slot against the same on member m00's session, SoftHSM2 directly, in
#       one process (ha_bench.c overhead);
#   9b. scaling: 3 members behind p11-kit servers, 1 ms injected in each
#       (the delay shim), 12 threads: the HA slot against one member
#       (ha_bench.c scale);
#   9c. failover: 8 signing threads (test/ha/ha_host.c storm) while a member
#       is killed (the p99 of the second after it against the healthy p99),
#       and while one is stopped with the operation timeout at 200 ms (the
#       worst latency).

ha_iters=200000
ha_secs=10
[ "${BENCH_QUICK:-0}" = 1 ] && ha_iters=20000 && ha_secs=4
# shellcheck disable=SC2046
"$cc" -std=gnu11 -O2 -g -Wall -Wextra -Werror $(pkg-config --cflags p11-kit-1) -o "$out/ha_bench" \
    test/bench/ha_bench.c -ldl -lpthread
# shellcheck disable=SC2046
"$cc" -std=gnu11 -O2 -g -Wall -Wextra -Werror -Wno-deprecated-declarations $(pkg-config --cflags p11-kit-1) \
    -o "$out/ha_host" test/ha/ha_host.c -ldl -lpthread -lcrypto
front=$build/libhaext-pkcs11.so

# ha_lab DIR MODE LATENCY_US: a lab of 3 with the keys of test/ha/keys.sh.
ha_lab() {
    up "$1" 3 "$3" "$2"
    bash test/ha/keys.sh "$1" >>"$benchlog" 2>&1 || die "test/ha/keys.sh $1 failed (see $benchlog)"
}

log "9a. the HA slot's overhead (SoftHSM2 directly, 3 members)"
dir=$work/lab-ha-direct
ha_lab "$dir" direct 0
bash "$lab" exec --dir "$dir" -- bash -c '"$0" "$HALAB_MODULE" "$1" overhead "$2"' "$out/ha_bench" "$front" \
    "$ha_iters" | tee -a "$benchlog" "$results" || die "ha_bench overhead failed"
down "$dir"

log "9b. the HA slot's scaling (3 p11-kit members, 1 ms injected, 12 threads)"
dir=$work/lab-ha-scale
ha_lab "$dir" net 1000
bash "$lab" exec --dir "$dir" -- bash -c '"$0" "$HALAB_MODULE" "$1" scale "$2" 12' "$out/ha_bench" "$front" \
    "$ha_secs" | tee -a "$benchlog" "$results" || die "ha_bench scale failed"
down "$dir"

# storm_with NAME FAULT...: 8 threads for 10 s on a fresh lab; FAULT runs
# with the lab's dir as $1 four seconds in.
storm_with() {
    local name=$1 timeout_ms=$2 dir=$work/lab-ha-$1 pid
    shift 2
    ha_lab "$dir" net 0
    sed -i "s/^   VirtualToken00Members = .*/&\n   VirtualToken00LibHAExtOpTimeout = $timeout_ms;/" "$dir/Chrystoki.conf"
    bash "$lab" exec --dir "$dir" -- bash -c '"$0" "$1" 0x48410000 "$HALAB_DIR/hakeys" storm 10 8' "$out/ha_host" \
        "$front" >"$work/$name.storm" 2>&1 &
    pid=$!
    sleep 4
    "$@" "$dir" >>"$benchlog" 2>&1
    wait "$pid" || true
    tee -a "$benchlog" <"$work/$name.storm" >/dev/null
    "$python" - "$work/$name.storm" "$name" "$timeout_ms" >>"$results" <<'PY'
import json, re, sys
lines = open(sys.argv[1]).read().splitlines()
sec = [dict(re.findall(r"(\w+) ([0-9.]+)", l)) for l in lines if l.startswith("second ")]
tot = [dict(re.findall(r"(\w+) ([0-9.x]+)", l)) for l in lines if l.startswith("ops ")]
t = tot[0] if tot else {"ops": "0", "errors": "-1", "bad": "-1"}
healthy = sorted(float(s["p99_ms"]) for s in sec[1:4] if "p99_ms" in s)
after = [float(s["p99_ms"]) for s in sec[4:5] if "p99_ms" in s]
print(json.dumps({"scenario": "ha_failover", "fault": sys.argv[2], "op_timeout_ms": int(sys.argv[3]),
                  "ops": int(t["ops"]), "errors": int(t["errors"]), "bad": int(t["bad"]),
                  "healthy_p99_ms": healthy[len(healthy) // 2] if healthy else None,
                  "after_p99_ms": after[0] if after else None,
                  "max_ms": max((float(s.get("max_ms", 0)) for s in sec), default=None)}))
PY
    down "$dir"
}
kill_m00() { bash "$lab" kill --dir "$1" 0; }
stop_m01() { bash "$lab" stop --dir "$1" 1; sleep 3; bash "$lab" cont --dir "$1" 1; }
log "9c. failover under 8 signing threads: a member killed; a member stopped, operation timeout 200 ms"
storm_with kill 200 kill_m00
storm_with stop 200 stop_m01
