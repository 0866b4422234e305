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
#      [--timeout SEC] [--no-endpoints] [--delay-us N]
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
# Locating the components
# ---------------------------------------------------------------------------

multiarch() {
	local ma=""
	if command -v dpkg-architecture >/dev/null 2>&1; then
		ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)
	fi
	if [ -z "$ma" ] && command -v gcc >/dev/null 2>&1; then
		ma=$(gcc -print-multiarch 2>/dev/null || true)
	fi
	if [ -z "$ma" ]; then
		ma="$(uname -m)-linux-gnu"
	fi
	printf '%s\n' "$ma"
}

first_file() {
	local f
	for f in "$@"; do
		if [ -n "$f" ] && [ -f "$f" ]; then
			printf '%s\n' "$f"
			return 0
		fi
	done
	return 1
}

find_softhsm_module() {
	local ma pkgpath=""
	ma=$(multiarch)
	if command -v dpkg >/dev/null 2>&1; then
		pkgpath=$(dpkg -L libsofthsm2 2>/dev/null | grep '/libsofthsm2\.so$' | head -n1 || true)
	fi
	# shellcheck disable=SC2086 # the globs are meant to expand
	first_file "$pkgpath" "/usr/lib/$ma/softhsm/libsofthsm2.so" \
		/usr/lib/*/softhsm/libsofthsm2.so /usr/lib64/softhsm/libsofthsm2.so \
		/usr/lib/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so
}

find_proxy_module() {
	local ma pc=""
	ma=$(multiarch)
	if command -v pkg-config >/dev/null 2>&1; then
		pc=$(pkg-config --variable=proxy_module p11-kit-1 2>/dev/null || true)
	fi
	first_file "$pc" "/usr/lib/$ma/p11-kit-proxy.so" /usr/lib/*/p11-kit-proxy.so \
		/usr/lib64/p11-kit-proxy.so /usr/lib/p11-kit-proxy.so
}

# The p11-kit server binary.  `p11-kit server` execs it (with argv[0]
# "server"); calling it directly gives a clearer command line in ps.
find_server_bin() {
	local ma pkgpath=""
	if [ -n "${HALAB_P11KIT_SERVER:-}" ]; then
		first_file "$HALAB_P11KIT_SERVER" || die "HALAB_P11KIT_SERVER=$HALAB_P11KIT_SERVER is not a file"
		return 0
	fi
	ma=$(multiarch)
	if command -v dpkg >/dev/null 2>&1; then
		pkgpath=$(dpkg -L p11-kit 2>/dev/null | grep '/p11-kit-server$' | head -n1 || true)
	fi
	first_file "$pkgpath" /usr/libexec/p11-kit/p11-kit-server \
		"/usr/lib/$ma/p11-kit/p11-kit-server" /usr/lib/p11-kit/p11-kit-server \
		/usr/local/libexec/p11-kit/p11-kit-server
}

# Directories p11-kit reads module files from (besides the per-user one).
p11kit_module_dirs() {
	{
		if command -v pkg-config >/dev/null 2>&1; then
			pkg-config --variable=p11_module_configs p11-kit-1 2>/dev/null || true
			pkg-config --variable=p11_system_config_modules p11-kit-1 2>/dev/null || true
		fi
		echo /usr/share/p11-kit/modules
		echo /etc/pkcs11/modules
	} | awk 'NF && !seen[$0]++'
}

# Install the lab's packages when something is missing (root only).
ensure_deps() {
	local pkgs=()
	command -v softhsm2-util >/dev/null 2>&1 || pkgs+=(softhsm2)
	find_softhsm_module >/dev/null || pkgs+=(softhsm2)
	command -v p11-kit >/dev/null 2>&1 || pkgs+=(p11-kit)
	find_server_bin >/dev/null || pkgs+=(p11-kit)
	find_proxy_module >/dev/null || pkgs+=(p11-kit-modules)
	command -v pkcs11-tool >/dev/null 2>&1 || pkgs+=(opensc)
	[ -f /usr/include/p11-kit-1/p11-kit/pkcs11.h ] || pkgs+=(libp11-kit-dev)
	command -v unshare >/dev/null 2>&1 || pkgs+=(util-linux)
	command -v setsid >/dev/null 2>&1 || pkgs+=(util-linux)
	command -v pgrep >/dev/null 2>&1 || pkgs+=(procps)
	[ ${#pkgs[@]} -eq 0 ] && return 0
	mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
	if ! is_root; then
		log "SKIP: missing packages (${pkgs[*]}) and not root; install them with:"
		log "      apt-get update && apt-get install -y ${pkgs[*]}"
		exit 77
	fi
	log "installing missing packages: ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update && apt-get install -y "${pkgs[@]}"
}

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

# Map label -> serial from `softhsm2-util --show-slots` (uninitialised slots,
# which have an empty label, are skipped).
slot_serials() {
	SOFTHSM2_CONF=$1 softhsm2-util --show-slots | awk '
		/^[[:space:]]*Serial number:/ { s = $0; sub(/^[^:]*:[[:space:]]*/, "", s); gsub(/[[:space:]]+$/, "", s); serial = s }
		/^[[:space:]]*Label:/ { l = $0; sub(/^[^:]*:[[:space:]]*/, "", l); gsub(/[[:space:]]+$/, "", l); if (l != "") print l, serial }'
}

write_softhsm_conf() {
	local conf=$1 tokdir=$2
	mkdir -p "$tokdir"
	cat >"$conf" <<EOF
# SoftHSM2 configuration written by lab.sh
directories.tokendir = $tokdir
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
}

init_token() {
	local conf=$1 label=$2
	SOFTHSM2_CONF=$conf softhsm2-util --init-token --free --label "$label" \
		--so-pin "$SO_PIN" --pin "$USER_PIN" >/dev/null ||
		die "softhsm2-util --init-token failed for $label"
}

serial_of() {
	local conf=$1 label=$2 s
	s=$(slot_serials "$conf" | awk -v l="$label" '$1 == l { print $2; exit }')
	[[ "$s" =~ ^[0-9a-fA-F]{16}$ ]] || die "could not read the serial of token $label (got '$s')"
	printf '%s\n' "$s"
}

UP_OK=0
up_cleanup() {
	if [ "$UP_OK" != 1 ] && [ -n "$ST_LABID" ]; then
		log "up failed; stopping what was started"
		do_down >/dev/null || true
	fi
}

cmd_up() {
	local mode=$1 members=$2 gserial=$3 label=$4 timeout=$5 endpoints=$6 delay_us=$7
	local idx name conf serials=()

	[ -n "$mode" ] || die "up: --mode direct|net is required"
	[ "$mode" = direct ] || [ "$mode" = net ] || cc_mode "$mode" ||
		die "up: --mode must be direct, net, tcp, tls or mixed, not '$mode'"
	[[ "$members" =~ ^[0-9]+$ ]] || die "up: --members N is required (1..$MAX_MEMBERS)"
	members=$((10#$members))
	if [ "$members" -lt 1 ] || [ "$members" -gt "$MAX_MEMBERS" ]; then
		die "up: --members must be 1..$MAX_MEMBERS"
	fi
	[[ "$gserial" =~ ^[0-9]+$ ]] || die "up: --group-serial must be numeric"
	[[ "$timeout" =~ ^[0-9]+$ ]] || die "up: --timeout must be a whole number of seconds"
	[[ "$label" =~ ^[A-Za-z0-9_.:@+-]([A-Za-z0-9_.:@+\ -]*[A-Za-z0-9_.:@+-])?$ ]] ||
		die "up: bad --label '$label'"
	[ ${#label} -le 32 ] || die "up: --label longer than 32 characters"
	local shim=""
	if [ -n "$delay_us" ]; then
		[[ "$delay_us" =~ ^[0-9]+$ ]] || die "up: --delay-us must be a whole number of microseconds"
		delay_us=$((10#$delay_us))
		[ "$mode" != direct ] || die "up: --delay-us needs a networked mode"
		[ -n "${HALAB_SHIM:-}" ] || die "up: --delay-us needs HALAB_SHIM=/path/to/delayshim.so (test/shim/delayshim.c)"
		[ -f "$HALAB_SHIM" ] || die "up: HALAB_SHIM=$HALAB_SHIM is not a file"
		shim=$(realpath -- "$HALAB_SHIM")
	fi
	resolve_dir
	if [ "$mode" = net ] || [ "$mode" = mixed ]; then
		local s
		s="$DIR/sock/m00.sock"
		[ ${#s} -le 107 ] || die "lab directory path too long for unix sockets: $DIR"
	fi

	ensure_deps
	! cc_mode "$mode" || cc_ensure_deps

	if has_lab; then
		log "$DIR already holds a lab; taking it down first"
		cmd_down 0 >/dev/null
	fi
	lock_lab
	# Clear what an earlier lab left (only lab-managed paths).
	local p
	while read -r p; do rm -rf -- "${DIR:?}/$p"; done < <(managed_paths)

	ST_MODE=$mode
	ST_MEMBERS=$members
	ST_LABID="halab-$(cat /proc/sys/kernel/random/uuid)"
	ST_SOFTHSM=$(find_softhsm_module) || die "libsofthsm2.so not found"
	ST_PROVIDER=${shim:-$ST_SOFTHSM}
	ST_DELAY_US=$delay_us
	ST_SERVER=""
	CC_FIRST=""
	if [ "$mode" = net ]; then
		ST_SERVER=$(find_server_bin) || die "p11-kit-server not found"
		ST_MODULE=$(find_proxy_module) || die "p11-kit-proxy.so not found"
	elif cc_mode "$mode"; then
		cc_select "$mode" "$members"
	else
		ST_MODULE=$ST_SOFTHSM
	fi
	ST_SERIALS=""
	save_state # from here on `down` can find what we start
	trap up_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP

	mkdir -p "$DIR/log"
	if [ "$mode" = direct ]; then
		conf="$DIR/softhsm2.conf"
		write_softhsm_conf "$conf" "$DIR/tokens"
		for ((idx = 0; idx < members; idx++)); do
			init_token "$conf" "$(mname "$idx")"
		done
		for ((idx = 0; idx < members; idx++)); do
			serials+=("$(serial_of "$conf" "$(mname "$idx")")")
		done
	else
		mkdir -p "$DIR/sock" "$DIR/modules" "$DIR/empty" "$DIR/home/.config/pkcs11"
		: >"$DIR/pids"
		for ((idx = 0; idx < members; idx++)); do
			! cc_member "$idx" || break # Caml Crush's members come last
			name=$(mname "$idx")
			conf=$(member_conf "$idx")
			mkdir -p "$DIR/members/$name"
			write_softhsm_conf "$conf" "$DIR/members/$name/tokens"
			init_token "$conf" "$name"
			serials+=("$(serial_of "$conf" "$name")")
			printf 'remote: unix:path=%s\n' "$(sock_path "$idx")" >"$DIR/modules/$name.module"
		done
		# Non-root: p11-kit reads ~/.config/pkcs11 (or $XDG_CONFIG_HOME/pkcs11);
		# "user-config: only" drops the machine's modules.
		ln -sfn ../../../modules "$DIR/home/.config/pkcs11/modules"
		printf 'user-config: only\n' >"$DIR/home/.config/pkcs11/pkcs11.conf"
		# Root: laid over /etc/pkcs11/pkcs11.conf if that exists.
		printf '# empty p11-kit global config (lab.sh)\n' >"$DIR/pkcs11.conf"
		for ((idx = 0; idx < members; idx++)); do
			cc_member "$idx" || start_server "$idx"
		done
		! cc_mode "$mode" || cc_up_members "$mode" "$members"
	fi
	ST_SERIALS="${serials[*]}"
	save_state

	# Chrystoki.conf
	{
		echo "Chrystoki2 = {"
		echo "   LibUNIX64 = $ST_MODULE;"
		echo "}"
		echo "VirtualToken = {"
		echo "   VirtualToken00Label = $label;"
		echo "   VirtualToken00SN = $gserial;"
		echo "   VirtualToken00Members = $(
			IFS=,
			echo "${serials[*]}"
		);"
		echo "}"
		echo "HAConfiguration = {"
		echo "   statusTimeout = $timeout;"
		echo "}"
		if [ "$mode" != direct ] && [ "$endpoints" = 1 ]; then
			echo "HAMemberEndpoints = {"
			for ((idx = 0; idx < members; idx++)); do
				if cc_member "$idx"; then
					echo "   ${serials[$idx]} = $(cc_endpoint);"
				else
					echo "   ${serials[$idx]} = unix:$(sock_path "$idx");"
				fi
			done
			echo "}"
		fi
	} >"$DIR/Chrystoki.conf"

	# env
	{
		echo "# Source this file to use the lab (written by lab.sh)."
		printf 'export ChrystokiConfigurationPath=%q\n' "$DIR"
		printf 'export HALAB_DIR=%q\n' "$DIR"
		printf 'export HALAB_MODE=%q\n' "$mode"
		printf 'export HALAB_MODULE=%q\n' "$ST_MODULE"
		printf 'export HALAB_MEMBERS=%q\n' "$members"
		printf 'export HALAB_SERIALS=%q\n' "${serials[*]}"
		if [ "$mode" = direct ]; then
			printf 'export SOFTHSM2_CONF=%q\n' "$DIR/softhsm2.conf"
		fi
		cc_env
	} >"$DIR/env"

	UP_OK=1
	trap - EXIT INT TERM HUP
	echo "halab: up mode=$mode members=$members dir=$DIR module=$ST_MODULE group=$gserial serials=${serials[*]}${delay_us:+ delay_us=$delay_us}"
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
	local mode="" members="" gserial=1000001 label=halab timeout=3 endpoints=1 purge=0 delay_us=""
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
		cmd_up "$mode" "$members" "$gserial" "$label" "$timeout" "$endpoints" "$delay_us"
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

# The network modes (tcp, tls, mixed) and their fault commands.
# shellcheck source=test/lab/camlcrush.sh
. "$(dirname "$SELF")/camlcrush.sh"

main "$@"
