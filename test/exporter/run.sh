#!/usr/bin/env bash
# hastatus --listen, the Prometheus exporter (`make test-exporter`, part of
# make test), on the p11-kit lab (test/lab/lab.sh --mode net, 3 members,
# statusTimeout 2 s), scraped with curl as Prometheus would:
#
#  1. every member up (haext_member_up 1, haext_member_status 0 CKR_OK),
#     haext_config_info names the lab's Chrystoki.conf; /healthz answers;
#     the process is not woken for 3 s while nobody scrapes (from
#     statusTimeout + 1 s after the scrape);
#  2. a second hastatus --listen on the same port exits 3 and says the
#     address is in use;
#  3. a member stopped (SIGSTOP on its p11-kit-remote): the first scrape
#     after says it is down with CKR_HA_TIMEOUT, the others up, within
#     statusTimeout + 0.5 s; the next scrape does not wait again;
#  4. the member resumed (SIGCONT): up again;
#  5. a member killed (SIGKILL): down, then up again without restarting the
#     exporter (it initializes its own module again, as --watch does);
#  6. SIGTERM: exit status 0.
#
# Prints ok/not ok lines and a closing "N passed, N failed".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${BUILD:-$top/build}
lab=$top/test/lab/lab.sh
# shellcheck source=test/lib.sh
. "$top/test/lib.sh"
t_setup exporter

timeout_s=2
exporter=""
stop_exporter() {
    if [ -n "$exporter" ] && kill -0 "$exporter" 2>/dev/null; then
        kill -TERM "$exporter" 2>/dev/null || true
        wait "$exporter" 2>/dev/null || true
    fi
    exporter=""
}
trap 'stop_exporter; t_cleanup' EXIT

for need in curl "$build/hastatus"; do
    if ! command -v "$need" >/dev/null; then
        notok "$need is missing (make deps; make $build/hastatus)"
        t_done
        exit 1
    fi
done

dir=$work/lab-exporter
bash "$lab" up --dir "$dir" --mode net --members 3 --timeout "$timeout_s" >/dev/null
read -r -a serials < <(. "$dir/env" && echo "$HALAB_SERIALS")

# The exporter, in the lab's environment, on a port the system picks: it
# says which on standard error.
bash "$lab" exec --dir "$dir" -- "$build/hastatus" --listen 127.0.0.1:0 >"$work/out.log" 2>"$work/err.log" &
exporter=$!
addr=""
for _ in $(seq 100); do
    addr=$(sed -n 's#^hastatus: serving http://\([0-9.:]*\)/metrics .*#\1#p' "$work/err.log")
    [ -n "$addr" ] && break
    kill -0 "$exporter" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$addr" ]; then
    notok "hastatus --listen serves (stderr: $(tr '\n' ' ' <"$work/err.log"))"
    t_done
    exit 1
fi
ok "hastatus --listen serves on $addr"

# scrape FILE: GET /metrics into FILE; prints the seconds it took.
scrape() {
    curl -sS --max-time 30 -o "$1" -w '%{time_total}\n' "http://$addr/metrics"
}
# up FILE MEMBER: the member's haext_member_up.
up() { sed -n "s/^haext_member_up{group=\"halab\",member=\"$2\"} //p" "$1"; }
# status_is FILE MEMBER NAME VALUE: the member's haext_member_status has
# the status label NAME and the value VALUE (the text format may write it
# with an exponent).
status_is() {
    sed -n "s/^haext_member_status{group=\"halab\",member=\"$2\",status=\"$3\"} //p" "$1" |
        awk -v want="$4" 'NR == 1 { found = ($1 + 0 == want + 0) } END { exit !found }'
}
# within SECONDS LIMIT: SECONDS <= LIMIT.
within() { awk -v t="$1" -v l="$2" 'BEGIN { exit !(t <= l) }'; }
# members_up FILE: how many members are up.
members_up() { grep -c '^haext_member_up{group="halab",member="[^"]*"} 1$' "$1" || true; }

m=$work/m
scrape "$m.1" >/dev/null
check "3 members up" test "$(members_up "$m.1")" = 3
for i in 0 1 2; do
    check "member $i: haext_member_status 0, CKR_OK" status_is "$m.1" "${serials[$i]}" CKR_OK 0
done
check "haext_config_info names the lab's configuration and statusTimeout" \
    grep -q "^haext_config_info{config=\"$dir/Chrystoki.conf\",groups=\"halab\",module=\"[^\"]*p11-kit-proxy.so\",status_timeout=\"$timeout_s\"} 1$" "$m.1"
check "haext_check_duration_seconds has the check" grep -q '^haext_check_duration_seconds_count{group="halab"} 1$' "$m.1"
check "/healthz" test "$(curl -sS --max-time 5 "http://$addr/healthz")" = ok

# Nothing runs between scrapes: the checking process (the guard's child)
# is not woken while nobody scrapes (its threads' context switches). The
# window starts once the last scrape's deadline (statusTimeout, plus the
# exporter's grace of 0.25 s) is past: a timer stopped before it fires stays
# in the Go runtime's heap until it is due, and may wake the runtime once
# then to drop it (seen on a loaded machine, 2.2 to 2.4 s after the scrape).
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
child=$(pgrep -P "$exporter" -x hastatus | head -n 1 || true)
sleep "$((timeout_s + 1))"
s0=$(switches "$child")
sleep 3
s1=$(switches "$child")
check "no wakeup while nobody scrapes: $((s1 - s0)) context switches in 3 s" test -n "$child" -a "$((s1 - s0))" -le 2

# A second exporter on the same port.
rc=0
bash "$lab" exec --dir "$dir" -- "$build/hastatus" --listen "$addr" >/dev/null 2>"$work/busy.log" || rc=$?
check "a second --listen on $addr: exit status 3 ($rc)" test "$rc" = 3
check "and it says the address is in use" grep -q "^hastatus: --listen $addr: .*address already in use$" "$work/busy.log"

# A member hangs.
bash "$lab" stop --dir "$dir" 1 >/dev/null
took=$(scrape "$m.2")
check "member 1 stopped: down in the first scrape" test "$(up "$m.2" "${serials[1]}")" = 0
check "with CKR_HA_TIMEOUT (3359703043)" status_is "$m.2" "${serials[1]}" CKR_HA_TIMEOUT 3359703043
check "the others up" test "$(members_up "$m.2")" = 2
check "the scrape took ${took}s <= statusTimeout + 0.5s" within "$took" "$timeout_s.5"
took=$(scrape "$m.3")
check "the next scrape does not wait for the stuck member (${took}s <= 0.5s)" within "$took" 0.5
check "and says it is down" test "$(up "$m.3" "${serials[1]}")" = 0

# It resumes.
bash "$lab" cont --dir "$dir" 1 >/dev/null
back=""
for i in $(seq 20); do
    scrape "$m.4" >/dev/null
    if [ "$(up "$m.4" "${serials[1]}")" = 1 ]; then
        back=$i
        break
    fi
    sleep 0.25
done
check "member 1 resumed: up again (scrape ${back:-none})" test -n "$back"
check "every member up" test "$(members_up "$m.4")" = 3

# A member dies (its p11-kit server stays up) and comes back.
bash "$lab" kill --dir "$dir" 2 >/dev/null
took=$(scrape "$m.5")
check "member 2 killed: down" test "$(up "$m.5" "${serials[2]}")" = 0
check "the scrape took ${took}s <= statusTimeout + 0.5s" within "$took" "$timeout_s.5"
back=""
for i in $(seq 40); do
    scrape "$m.6" >/dev/null
    if [ "$(members_up "$m.6")" = 3 ]; then
        back=$i
        break
    fi
    sleep 0.25
done
check "and up again without restarting the exporter (scrape ${back:-none})" test -n "$back"

rc=0
kill -TERM "$exporter"
wait "$exporter" || rc=$?
exporter=""
check "SIGTERM: exit status 0 ($rc)" test "$rc" = 0
check "nothing on standard output" test ! -s "$work/out.log"

bash "$lab" down --dir "$dir" >/dev/null 2>&1 || true
t_done
