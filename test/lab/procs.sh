# shellcheck shell=bash
# Part of lab.sh (sourced): the lab's processes.

# ---------------------------------------------------------------------------
# Processes.  Every process the lab starts carries HALAB_LAB_ID=<id> in its
# environment (p11-kit-server passes its environment to the p11-kit-remote
# children it execs); a process is only ever signalled when its
# /proc/PID/environ has this lab's id, so pid reuse cannot hit a stranger.
# ---------------------------------------------------------------------------

# Field N (as numbered in proc(5)) of /proc/PID/stat.
proc_field() {
	local pid=$1 n=$2 stat rest
	stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	rest=${stat##*) }
	# shellcheck disable=SC2086 # split the fields
	set -- $rest
	[ "$n" -ge 3 ] || return 1
	shift $((n - 3))
	printf '%s\n' "$1"
}

owned() {
	local pid=$1
	[ -n "$pid" ] && [ "$pid" != "$$" ] && [ -n "$ST_LABID" ] || return 1
	grep -qzxF "HALAB_LAB_ID=$ST_LABID" "/proc/$pid/environ" 2>/dev/null
}

alive() {
	local st
	st=$(proc_field "$1" 3) || return 1
	[ "$st" != Z ] && [ "$st" != X ]
}

# Recorded server pid of member IDX (empty if none).
server_pid() {
	[ -f "$DIR/pids" ] || return 0
	awk -v i="$1" '$1 == i { print $2 }' "$DIR/pids" | tail -n1
}

# Live server pid of member IDX (empty if it is not running).
live_server() {
	local pid
	pid=$(server_pid "$1")
	if [ -n "$pid" ] && alive "$pid" && owned "$pid"; then
		printf '%s\n' "$pid"
	fi
}

set_server_pid() {
	local idx=$1 pid=$2 tmp="$DIR/pids.tmp"
	touch "$DIR/pids"
	awk -v i="$idx" '$1 != i' "$DIR/pids" >"$tmp"
	[ -z "$pid" ] || printf '%s %s %s\n' "$idx" "$pid" "$(mname "$idx")" >>"$tmp"
	sort -n "$tmp" >"$DIR/pids"
	rm -f "$tmp"
}

# All live lab processes of member IDX: its server (if alive) and every other
# process in the server's session (the per-connection children; they stay in
# that session even after the server itself is gone).
member_procs() {
	local spid p
	spid=$(server_pid "$1")
	[ -n "$spid" ] || return 0
	for p in $(
		{
			pgrep -s "$spid" 2>/dev/null || true
			pgrep -P "$spid" 2>/dev/null || true
			echo "$spid"
		} | sort -un
	); do
		if alive "$p" && owned "$p"; then
			printf '%s\n' "$p"
		fi
	done
}

# The per-connection children of member IDX (everything but the server).
member_children() {
	local spid p
	spid=$(server_pid "$1")
	for p in $(member_procs "$1"); do
		[ "$p" = "$spid" ] || printf '%s\n' "$p"
	done
}

# Every live process carrying this lab's id (a sweep over /proc).
all_lab_procs() {
	local d p
	for d in /proc/[0-9]*; do
		p=${d#/proc/}
		if [ "$p" = "$$" ] || [ "$p" = "${BASHPID:-$$}" ]; then continue; fi
		if owned "$p" && alive "$p"; then
			printf '%s\n' "$p"
		fi
	done
}

# Wait (up to 1 s) until the given processes are gone or zombies.
wait_gone() {
	local i p busy
	for ((i = 0; i < 10; i++)); do
		busy=0
		for p in "$@"; do
			if alive "$p"; then busy=1; fi
		done
		[ "$busy" = 1 ] || return 0
		sleep 0.1
	done
}

# SIGCONT, SIGTERM, wait up to 2 s, SIGKILL.
stop_pids() {
	local pids=("$@") left
	[ ${#pids[@]} -gt 0 ] || return 0
	kill -CONT "${pids[@]}" 2>/dev/null || true
	kill -TERM "${pids[@]}" 2>/dev/null || true
	wait_survivors "$STOP_GRACE_TENTHS" "${pids[@]}" && return 0
	log "SIGKILL after 2 s: ${left[*]}"
	kill -KILL "${left[@]}" 2>/dev/null || true
	wait_survivors 20 "${pids[@]}" && return 0
	log "warning: still alive: ${left[*]}"
}

# wait_survivors TENTHS PID...: waits up to TENTHS tenths of a second until
# none of the lab's PIDs is alive; leaves the survivors in the caller's `left`.
wait_survivors() {
	local tenths=$1 i p
	shift
	for ((i = 0; i < tenths; i++)); do
		left=()
		for p in "$@"; do
			if alive "$p" && owned "$p"; then left+=("$p"); fi
		done
		[ ${#left[@]} -gt 0 ] || return 0
		sleep 0.1
	done
	return 1
}

# Start member IDX's p11-kit server (net mode) and wait for its socket.
start_server() {
	local idx=$1 name sock conf logf pid i
	name=$(mname "$idx")
	sock=$(sock_path "$idx")
	conf=$(member_conf "$idx")
	logf="$DIR/log/$name.server.log"
	# A stale socket left by a killed server would make the bind fail.
	if [ -S "$sock" ]; then rm -f "$sock"; fi
	# Not a job-control shell, so the background job is not a process-group
	# leader and setsid(1) calls setsid() without forking: $! is the server.
	# The lock fd 9 is closed so that the server does not inherit it.
	# With --delay-us the provider is the delay shim, in front of SoftHSM2.
	SOFTHSM2_CONF="$conf" HALAB_LAB_ID="$ST_LABID" HALAB_MEMBER="$idx" \
		DELAYSHIM_MODULE="$ST_SOFTHSM" DELAYSHIM_US="${ST_DELAY_US:-0}" \
		setsid "$ST_SERVER" -f --provider "$ST_PROVIDER" -n "$sock" \
		"pkcs11:token=$name" </dev/null >>"$logf" 2>&1 9>&- &
	pid=$!
	set_server_pid "$idx" "$pid"
	for ((i = 0; i < SOCKET_WAIT_TENTHS; i++)); do
		if [ -S "$sock" ]; then
			return 0
		fi
		if ! alive "$pid"; then
			sed 's/^/  | /' "$logf" >&2 || true
			die "p11-kit server for $name (pid $pid) exited; log: $logf"
		fi
		sleep 0.1
	done
	die "p11-kit server for $name (pid $pid) did not create $sock in time"
}
