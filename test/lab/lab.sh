#!/usr/bin/env bash
# lab.sh - test lab for libhaext: an HA group of SoftHSM2 tokens.
#
# A member is one SoftHSM2 token.  Two modes:
#   direct  N tokens in one SoftHSM2 token directory; the vendor module is
#           libsofthsm2.so with SOFTHSM2_CONF pointing at the lab.
#   net     every member has its own SoftHSM2 config and token directory and
#           is served by its own `p11-kit server` on its own unix socket; the
#           vendor module is p11-kit-proxy.so, which sees one module file per
#           member (DIR/modules/mNN.module, "remote: unix:path=<socket>").
#   tcp, tls, mixed  members over TCP (and TLS) through Caml Crush, in a
#           network namespace of the lab's own: see test/lab/camlcrush.sh.
#
# Usage: lab.sh COMMAND [--dir DIR] [options]     (DIR may also be $HALAB_DIR)
#   up --mode direct|net|tcp|tls|mixed --members N [--group-serial S] [--label L]
#      [--timeout SEC] [--no-endpoints] [--delay-us N] [--ha-slot 0|1]
#   down [--purge]
#   exec -- CMD [ARGS...]
#   status
#   remote-pid IDX            (net mode)
#   kill|stop|cont IDX        (net mode: SIGKILL/SIGSTOP/SIGCONT the member's
#                              per-connection p11-kit-remote process(es))
#   kill-server IDX           (net mode: the member's server and children die)
#   restart-server IDX        (net mode: start the member's server again)
#   partition|heal [IDX]      (tcp/tls/mixed: iptables DROP to and from the
#                              Caml Crush server, inside the lab's namespace)
#   kill-proxy|restart-proxy [IDX]   (tcp/tls/mixed: SIGKILL pkcs11proxyd,
#                              start it again)
#   proxy-pid [IDX]           (tcp/tls/mixed: pids of pkcs11proxyd)
#   netns-exec -- CMD [ARGS...]      (run CMD in the lab's network namespace)
#
# --delay-us N (networked modes): every member's server loads the delay shim
# ($HALAB_SHIM, built from test/shim/delayshim.c) as its provider, which
# sleeps N microseconds before it forwards each call to SoftHSM2.
#
# See test/lab/README.md.
set -euo pipefail

readonly SO_PIN=12345678
readonly USER_PIN=1234
readonly MAX_MEMBERS=32
readonly STOP_GRACE_TENTHS=20 # SIGTERM -> SIGKILL after 2 s
readonly SOCKET_WAIT_TENTHS=100

PROG=$(basename "$0")
SELF=$(readlink -f "$0")

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	log "error: $*"
	exit 2
}

usage() {
	sed -n '/^# Usage:/,/^# See /p' "$SELF" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------------------
# Lab directory and state
# ---------------------------------------------------------------------------

DIR=""
ST_MODE="" ST_MEMBERS="" ST_LABID="" ST_SOFTHSM="" ST_SERVER="" ST_MODULE=""
ST_SERIALS="" ST_PROVIDER="" ST_DELAY_US=""

resolve_dir() {
	[ -n "$DIR" ] || DIR=${HALAB_DIR:-}
	[ -n "$DIR" ] || die "no lab directory: give --dir DIR or set HALAB_DIR"
	DIR=$(realpath -m -- "$DIR")
	case "$DIR" in
	/ | /usr | /usr/* | /etc | /etc/* | /proc | /proc/* | /sys | /sys/* | /dev | /dev/*)
		die "refusing to use $DIR as a lab directory"
		;;
	esac
	case "$DIR" in
	*[[:space:]\;\{\}\"\'\\]*) die "lab directory must not contain spaces, quotes, ';', '{' or '}': $DIR" ;;
	esac
}

has_lab() { [ -f "$DIR/.halab" ]; }

load_state() {
	has_lab || die "no lab in $DIR (run: $PROG up --dir $DIR ...)"
	# shellcheck source=/dev/null
	. "$DIR/.halab"
	ST_MODE=$HALAB_ST_MODE
	ST_MEMBERS=$HALAB_ST_MEMBERS
	ST_LABID=$HALAB_ST_LABID
	ST_SOFTHSM=$HALAB_ST_SOFTHSM
	ST_SERVER=$HALAB_ST_SERVER
	ST_MODULE=$HALAB_ST_MODULE
	ST_SERIALS=$HALAB_ST_SERIALS
	ST_PROVIDER=${HALAB_ST_PROVIDER:-$ST_SOFTHSM}
	ST_DELAY_US=${HALAB_ST_DELAY_US:-}
	cc_load_state
}

save_state() {
	{
		echo "# lab.sh internal state; do not edit"
		printf 'HALAB_ST_MODE=%q\n' "$ST_MODE"
		printf 'HALAB_ST_MEMBERS=%q\n' "$ST_MEMBERS"
		printf 'HALAB_ST_LABID=%q\n' "$ST_LABID"
		printf 'HALAB_ST_SOFTHSM=%q\n' "$ST_SOFTHSM"
		printf 'HALAB_ST_SERVER=%q\n' "$ST_SERVER"
		printf 'HALAB_ST_MODULE=%q\n' "$ST_MODULE"
		printf 'HALAB_ST_SERIALS=%q\n' "$ST_SERIALS"
		printf 'HALAB_ST_PROVIDER=%q\n' "$ST_PROVIDER"
		printf 'HALAB_ST_DELAY_US=%q\n' "$ST_DELAY_US"
	} >"$DIR/.halab.tmp"
	mv -f "$DIR/.halab.tmp" "$DIR/.halab"
}

mname() { printf 'm%02d' "$1"; }
sock_path() { printf '%s/sock/%s.sock' "$DIR" "$(mname "$1")"; }
member_conf() { printf '%s/members/%s/softhsm2.conf' "$DIR" "$(mname "$1")"; }

# Member index: accepts 3, 03 or m03.
parse_idx() {
	local raw=$1 n
	n=${raw#m}
	[[ "$n" =~ ^[0-9]+$ ]] || die "bad member index: $raw"
	n=$((10#$n))
	[ "$n" -lt "$ST_MEMBERS" ] || die "member index $n out of range (lab has $ST_MEMBERS members)"
	printf '%d\n' "$n"
}

need_net() {
	[ "$ST_MODE" = net ] || [ "$ST_MODE" = mixed ] || die "'$1' needs a net-mode lab (this lab is $ST_MODE)"
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

lock_lab() {
	mkdir -p "$DIR"
	exec 9>"$DIR/.lock"
	flock 9
}

managed_paths() {
	printf '%s\n' .halab env Chrystoki.conf softhsm2.conf tokens members sock \
		modules home log empty pkcs11.conf pids pids.tmp .halab.tmp
	cc_managed_paths
}

# Stop everything of the lab in $DIR (state must be loaded).
do_down() {
	local idx pids=() p
	if [ -n "$ST_MEMBERS" ] && [ "$ST_MODE" = net ]; then
		for ((idx = 0; idx < ST_MEMBERS; idx++)); do
			while read -r p; do [ -n "$p" ] && pids+=("$p"); done < <(member_procs "$idx")
		done
	fi
	while read -r p; do [ -n "$p" ] && pids+=("$p"); done < <(all_lab_procs)
	if [ ${#pids[@]} -gt 0 ]; then
		mapfile -t pids < <(printf '%s\n' "${pids[@]}" | sort -un)
		stop_pids "${pids[@]}"
	fi
	if [ -f "$DIR/pids" ]; then : >"$DIR/pids"; fi
	printf '%s\n' "${#pids[@]}"
}

# True when DIR holds nothing but (possibly) the lab's lock file.
dir_is_empty() {
	local f
	for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do
		[ -e "$f" ] || [ -L "$f" ] || continue
		[ "$f" = "$1/.lock" ] || return 1
	done
	return 0
}

cmd_down() {
	local purge=$1 n
	resolve_dir
	if ! has_lab; then
		log "no lab in $DIR; nothing to stop"
	else
		lock_lab
		load_state
		n=$(do_down)
		echo "halab: down dir=$DIR stopped=$n process(es)"
	fi
	if [ "$purge" = 1 ] && [ -d "$DIR" ]; then
		if has_lab || dir_is_empty "$DIR"; then
			rm -rf -- "$DIR"
			echo "halab: purged $DIR"
		else
			die "not purging $DIR: it does not look like a lab directory"
		fi
	fi
}

cmd_exec() {
	resolve_dir
	load_state
	[ $# -gt 0 ] || die "exec: no command (usage: $PROG exec --dir DIR -- CMD ARGS...)"
	cc_enter_netns "$@" # tcp, tls, mixed: into the lab's network namespace first
	# shellcheck source=/dev/null
	. "$DIR/env"
	if [ "$ST_MODE" != net ] && [ "$ST_MODE" != mixed ]; then
		exec "$@"
	fi
	if is_root; then
		# p11-kit ignores per-user config for root: lay the lab's module
		# folder over the system ones in a private mount namespace.
		unshare -m true 2>/dev/null ||
			die "exec: cannot create a mount namespace (unshare -m needs CAP_SYS_ADMIN)"
		HALAB_PARENT_MNTNS=$(readlink /proc/self/ns/mnt)
		export HALAB_PARENT_MNTNS
		exec unshare -m -- "$SELF" _nsexec --dir "$DIR" -- "$@"
	fi
	export HALAB_REAL_HOME="${HOME:-}"
	# Keep Go's caches where they were (they default to $HOME/...).
	if [ -n "${HOME:-}" ]; then
		export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/go-build}"
		export GOPATH="${GOPATH:-$HOME/go}"
	fi
	export HOME="$DIR/home"
	export XDG_CONFIG_HOME="$DIR/home/.config"
	exec "$@"
}

# Runs inside `unshare -m` (root only).
cmd_nsexec() {
	local d here target
	resolve_dir
	load_state
	here=$(readlink /proc/self/ns/mnt)
	if [ -z "${HALAB_PARENT_MNTNS:-}" ] || [ "$here" = "$HALAB_PARENT_MNTNS" ]; then
		die "_nsexec must run in a fresh mount namespace; refusing to touch the machine's mounts"
	fi
	unset HALAB_PARENT_MNTNS
	mount --make-rprivate /
	# The first (package) module folder gets the lab's module files, any
	# other existing one (e.g. /etc/pkcs11/modules) an empty folder.
	target="$DIR/modules"
	while read -r d; do
		[ -d "$d" ] || continue
		mount --bind "$target" "$d"
		target="$DIR/empty"
	done < <(p11kit_module_dirs)
	if [ -f /etc/pkcs11/pkcs11.conf ]; then
		mount --bind "$DIR/pkcs11.conf" /etc/pkcs11/pkcs11.conf
	fi
	exec "$@"
}

cmd_status() {
	local idx serials spid srv kids k state st fmt sw
	resolve_dir
	load_state
	sw=$(sock_path 0)
	sw=${#sw}
	[ "$ST_MODE" = net ] || [ "$ST_MODE" = mixed ] || sw=22
	fmt="%-3s %-16s %-${sw}s %-12s %-14s %s\n"
	read -r -a serials <<<"$ST_SERIALS"
	# shellcheck disable=SC2059 # the format is ours
	printf "$fmt" IDX SERIAL SOCKET SERVER/ST CHILDREN/ST STATE
	for ((idx = 0; idx < ST_MEMBERS; idx++)); do
		if cc_member "$idx"; then
			cc_status_row "$idx" "${serials[$idx]:-?}" "$fmt"
			continue
		fi
		if [ "$ST_MODE" != net ] && [ "$ST_MODE" != mixed ]; then
			# shellcheck disable=SC2059
			printf "$fmt" "$idx" "${serials[$idx]:-?}" - - - direct
			continue
		fi
		spid=$(live_server "$idx")
		srv=-
		[ -z "$spid" ] || srv="$spid/$(proc_field "$spid" 3 || echo '?')"
		kids=""
		state=idle
		for k in $(member_children "$idx"); do
			st=$(proc_field "$k" 3 || echo '?')
			kids="${kids:+$kids,}$k/$st"
			case "$st" in
			T | t) state=stopped ;;
			*) [ "$state" = stopped ] || state=connected ;;
			esac
		done
		[ -n "$spid" ] || state="down${kids:+(orphans)}"
		# shellcheck disable=SC2059
		printf "$fmt" "$idx" "${serials[$idx]:-?}" "$(sock_path "$idx")" "$srv" "${kids:--}" "$state"
	done
}

# ---------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------

main() {
	[ $# -gt 0 ] || usage
	local cmd=$1
	shift
	local mode="" members="" gserial=1000001 label=halab timeout=3 endpoints=1 purge=0 delay_us="" ha_slot=""
	local pos=()
	while [ $# -gt 0 ]; do
		case "$1" in
		--dir) [ $# -ge 2 ] || die "--dir needs a value"; DIR=$2; shift 2 ;;
		--dir=*) DIR=${1#--dir=}; shift ;;
		--mode) [ $# -ge 2 ] || die "--mode needs a value"; mode=$2; shift 2 ;;
		--mode=*) mode=${1#--mode=}; shift ;;
		--members) [ $# -ge 2 ] || die "--members needs a value"; members=$2; shift 2 ;;
		--members=*) members=${1#--members=}; shift ;;
		--group-serial) [ $# -ge 2 ] || die "--group-serial needs a value"; gserial=$2; shift 2 ;;
		--group-serial=*) gserial=${1#--group-serial=}; shift ;;
		--label) [ $# -ge 2 ] || die "--label needs a value"; label=$2; shift 2 ;;
		--label=*) label=${1#--label=}; shift ;;
		--timeout) [ $# -ge 2 ] || die "--timeout needs a value"; timeout=$2; shift 2 ;;
		--timeout=*) timeout=${1#--timeout=}; shift ;;
		--no-endpoints) endpoints=0; shift ;;
		--delay-us) [ $# -ge 2 ] || die "--delay-us needs a value"; delay_us=$2; shift 2 ;;
		--delay-us=*) delay_us=${1#--delay-us=}; shift ;;
		--ha-slot) [ $# -ge 2 ] || die "--ha-slot needs 0 or 1"; ha_slot=$2; shift 2 ;;
		--purge) purge=1; shift ;;
		-h | --help) usage ;;
		--) shift; pos+=("$@"); break ;;
		-*) die "unknown option: $1" ;;
		*)
			if [ "$cmd" = exec ] || [ "$cmd" = _nsexec ] || [ "$cmd" = netns-exec ]; then
				pos+=("$@")
				break
			fi
			pos+=("$1")
			shift
			;;
		esac
	done
	case "$cmd" in
	up)
		[ ${#pos[@]} -eq 0 ] || die "up: unexpected argument: ${pos[0]}"
		cmd_up "$mode" "$members" "$gserial" "$label" "$timeout" "$endpoints" "$delay_us" "$ha_slot"
		;;
	down)
		[ ${#pos[@]} -eq 0 ] || die "down: unexpected argument: ${pos[0]}"
		cmd_down "$purge"
		;;
	exec) cmd_exec "${pos[@]}" ;;
	_nsexec) cmd_nsexec "${pos[@]}" ;;
	status) cmd_status ;;
	remote-pid)
		[ ${#pos[@]} -eq 1 ] || die "usage: $PROG remote-pid --dir DIR IDX"
		cmd_remote_pid "${pos[0]}"
		;;
	kill | stop | cont)
		[ ${#pos[@]} -eq 1 ] || die "usage: $PROG $cmd --dir DIR IDX"
		cmd_signal "$cmd" "${pos[0]}"
		;;
	kill-server)
		[ ${#pos[@]} -eq 1 ] || die "usage: $PROG kill-server --dir DIR IDX"
		cmd_kill_server "${pos[0]}"
		;;
	restart-server)
		[ ${#pos[@]} -eq 1 ] || die "usage: $PROG restart-server --dir DIR IDX"
		cmd_restart_server "${pos[0]}"
		;;
	partition | heal | kill-proxy | restart-proxy | proxy-pid | netns-exec) cc_command "$cmd" "${pos[@]}" ;;
	help | -h | --help) usage ;;
	*) die "unknown command: $cmd (try: $PROG help)" ;;
	esac
}

# The rest of the lab, by concern.
here=$(dirname "$SELF")
# shellcheck source=test/lab/components.sh
. "$here/components.sh"
# shellcheck source=test/lab/procs.sh
. "$here/procs.sh"
# shellcheck source=test/lab/members.sh
. "$here/members.sh"
# shellcheck source=test/lab/faults.sh
. "$here/faults.sh"
# The network modes (tcp, tls, mixed) and their fault commands.
# shellcheck source=test/lab/camlcrush.sh
. "$here/camlcrush.sh"

main "$@"
