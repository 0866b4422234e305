# shellcheck shell=bash
# Part of lab.sh (sourced): faults on a member (kill, stop, cont, its server).

cmd_remote_pid() {
	local idx out
	resolve_dir
	load_state
	need_net remote-pid
	idx=$(parse_idx "$1")
	out=$(member_children "$idx")
	[ -n "$out" ] || exit 1
	printf '%s\n' "$out"
}

cmd_signal() {
	local what=$1 sig idx pids
	resolve_dir
	load_state
	need_net "$what"
	idx=$(parse_idx "$2")
	case "$what" in
	kill) sig=KILL ;;
	stop) sig=STOP ;;
	cont) sig=CONT ;;
	esac
	mapfile -t pids < <(member_children "$idx")
	if [ ${#pids[@]} -eq 0 ]; then
		log "member $idx ($(mname "$idx")): no per-connection process to $what"
		exit 1
	fi
	kill "-$sig" "${pids[@]}"
	[ "$sig" != KILL ] || wait_gone "${pids[@]}"
	echo "halab: SIG$sig member=$idx pids=${pids[*]}"
}

cmd_kill_server() {
	local idx pids
	resolve_dir
	lock_lab
	load_state
	need_net kill-server
	idx=$(parse_idx "$1")
	mapfile -t pids < <(member_procs "$idx")
	if [ ${#pids[@]} -eq 0 ]; then
		log "member $idx ($(mname "$idx")): server not running"
		exit 1
	fi
	kill -KILL "${pids[@]}"
	wait_gone "${pids[@]}"
	echo "halab: SIGKILL member=$idx server+children pids=${pids[*]}"
}

cmd_restart_server() {
	local idx pid
	resolve_dir
	lock_lab
	load_state
	need_net restart-server
	idx=$(parse_idx "$1")
	pid=$(live_server "$idx")
	if [ -n "$pid" ]; then
		echo "halab: member=$idx server already running pid=$pid"
		return 0
	fi
	start_server "$idx"
	echo "halab: member=$idx server restarted pid=$(server_pid "$idx") socket=$(sock_path "$idx")"
}
