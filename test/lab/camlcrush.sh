# shellcheck shell=bash
# camlcrush.sh - the lab's network modes, sourced by lab.sh (not run by
# itself). Members reached over TCP, as appliances are, through Caml Crush:
# SoftHSM2 tokens served by `pkcs11proxyd` on 127.0.0.1 inside a private
# network namespace that the lab creates, so that faults (iptables DROP,
# killed servers) touch nothing outside it.
#
#   tcp    every member's token is served by one pkcs11proxyd on
#          127.0.0.1:PORT; the vendor module is Caml Crush's
#          libp11clienttcp.so. Caml Crush's client reads its server from the
#          environment, so a process reaches one server, over one
#          connection: all members share it.
#   tls    the same over TLS with mutual certificates (a CA, a server and a
#          client certificate made with openssl; also a second, wrong CA);
#          the module is libp11clienttcpssl.so.
#   mixed  one group across transports in one process: members m00..m(N-2)
#          are p11-kit servers over unix sockets (as in net mode), the last
#          member is served by pkcs11proxyd over TCP; p11-kit-proxy.so loads
#          the p11-kit client modules and Caml Crush's TCP client module
#          together.
#
# Uses lab.sh's globals (DIR, ST_*) and helpers (log, die, owned, alive,
# write_softhsm_conf, init_token, serial_of,
# first_file, multiarch). Its own state is in DIR/.halab-cc.

readonly CC_PORT_DEFAULT=21000 # inside the lab's own namespace: collides with nothing
readonly CC_ALIAS=halab        # the module alias in filter.conf = PKCS11PROXY_LIBNAME
readonly CC_WAIT_TENTHS=100

CC_NETNS="" CC_PORT="" CC_FIRST="" CC_CLIENT="" CC_PROXYD="" CC_PROXY_PID=""

# cc_mode MODE: true for the modes this file provides.
cc_mode() { case "$1" in tcp | tls | mixed) return 0 ;; esac; return 1; }

# cc_member IDX: true when member IDX is served by Caml Crush.
cc_member() { [ -n "$CC_FIRST" ] && [ "$1" -ge "$CC_FIRST" ]; }

cc_managed_paths() { printf '%s\n' camlcrush .halab-cc .halab-cc.tmp; }

cc_load_state() {
	CC_NETNS="" CC_PORT="" CC_FIRST="" CC_CLIENT="" CC_PROXYD="" CC_PROXY_PID=""
	[ -f "$DIR/.halab-cc" ] || return 0
	# shellcheck source=/dev/null
	. "$DIR/.halab-cc"
}

cc_save_state() {
	{
		echo "# lab.sh (camlcrush.sh) internal state; do not edit"
		printf 'CC_NETNS=%q\nCC_PORT=%q\nCC_FIRST=%q\n' "$CC_NETNS" "$CC_PORT" "$CC_FIRST"
		printf 'CC_CLIENT=%q\nCC_PROXYD=%q\nCC_PROXY_PID=%q\n' "$CC_CLIENT" "$CC_PROXYD" "$CC_PROXY_PID"
	} >"$DIR/.halab-cc.tmp"
	mv -f "$DIR/.halab-cc.tmp" "$DIR/.halab-cc"
}

cc_find_client() { # cc_find_client tcp|tcpssl
	local ma
	ma=$(multiarch)
	# shellcheck disable=SC2086 # the globs are meant to expand
	first_file "/usr/lib/$ma/caml-crush/libp11client$1.so" /usr/lib/*/caml-crush/libp11client$1.so \
		"/usr/local/lib/caml-crush/libp11client$1.so"
}

cc_find_proxyd() { first_file "$(command -v pkcs11proxyd 2>/dev/null || true)" /usr/bin/pkcs11proxyd; }

# Installs what the network modes need when it is missing (root only).
cc_ensure_deps() {
	local pkgs=()
	cc_find_proxyd >/dev/null || pkgs+=(caml-crush-server)
	cc_find_client tcp >/dev/null || pkgs+=(caml-crush-clients)
	cc_find_client tcpssl >/dev/null || pkgs+=(caml-crush-clients)
	command -v iptables >/dev/null 2>&1 || pkgs+=(iptables)
	command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
	command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
	command -v nsenter >/dev/null 2>&1 || pkgs+=(util-linux)
	install_packages "${pkgs[@]}"
}

# cc_select MODE MEMBERS: chooses the modules and the Caml Crush members.
cc_select() {
	local mode=$1 members=$2
	is_root || {
		log "SKIP: --mode $mode creates a network namespace (unshare -n) and needs root"
		exit 77
	}
	CC_PORT=${HALAB_TCP_PORT:-$CC_PORT_DEFAULT}
	[[ "$CC_PORT" =~ ^[0-9]+$ ]] && [ "$CC_PORT" -ge 1024 ] && [ "$CC_PORT" -le 65535 ] ||
		die "HALAB_TCP_PORT must be a port number 1024..65535"
	CC_PROXYD=$(cc_find_proxyd) || die "pkcs11proxyd not found (caml-crush-server)"
	case "$mode" in
	tcp | tls)
		CC_FIRST=0
		local kind=tcp
		[ "$mode" = tcp ] || kind=tcpssl
		CC_CLIENT=$(cc_find_client "$kind") || die "libp11client$kind.so not found (caml-crush-clients)"
		ST_MODULE=$CC_CLIENT
		;;
	mixed)
		[ "$members" -ge 2 ] || die "up: --mode mixed needs --members 2 or more (the last one is over TCP)"
		CC_FIRST=$((members - 1))
		CC_CLIENT=$(cc_find_client tcp) || die "libp11clienttcp.so not found (caml-crush-clients)"
		ST_SERVER=$(find_server_bin) || die "p11-kit-server not found"
		ST_MODULE=$(find_proxy_module) || die "p11-kit-proxy.so not found"
		;;
	esac
	CC_NETNS=""
	cc_save_state
}

# The lab's network namespace: a holder process (carrying the lab's id, so
# `down` stops it) keeps it alive; everything of the lab that speaks TCP
# runs in it.
cc_netns_up() {
	local pid i
	HALAB_LAB_ID="$ST_LABID" setsid unshare -n -- bash -c 'ip link set lo up && exec sleep infinity' \
		</dev/null >>"$DIR/log/netns.log" 2>&1 9>&- &
	pid=$!
	for ((i = 0; i < CC_WAIT_TENTHS; i++)); do
		# Once it runs sleep, lo is up (the holder runs `ip ... && exec sleep`).
		if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sleep ] &&
			[ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ]; then
			CC_NETNS=$pid
			cc_save_state
			return 0
		fi
		alive "$pid" || die "could not create the lab's network namespace (log: $DIR/log/netns.log)"
		sleep 0.1
	done
	die "the lab's network namespace did not come up"
}

# cc_netns_ok: the holder is alive, ours, and in a namespace of its own.
cc_netns_ok() {
	[ -n "$CC_NETNS" ] && alive "$CC_NETNS" && owned "$CC_NETNS" &&
		[ "$(readlink "/proc/$CC_NETNS/ns/net")" != "$(readlink /proc/1/ns/net)" ]
}

# cc_in_netns CMD...: runs CMD in the lab's network namespace.
cc_in_netns() {
	cc_netns_ok || die "the lab's network namespace is gone (holder pid ${CC_NETNS:-none}); run up again"
	nsenter --net="/proc/$CC_NETNS/ns/net" -- "$@"
}

# cc_enter_netns ARGS...: for `exec`: re-runs `lab.sh exec ARGS` inside the
# lab's network namespace unless already there; returns when there is none.
cc_enter_netns() {
	[ -n "$CC_NETNS" ] || return 0
	cc_netns_ok || die "the lab's network namespace is gone (holder pid ${CC_NETNS:-none}); run up again"
	[ "$(readlink "/proc/$CC_NETNS/ns/net")" != "$(readlink /proc/self/ns/net)" ] || return 0
	exec nsenter --net="/proc/$CC_NETNS/ns/net" -- "$SELF" exec --dir "$DIR" -- "$@"
}

# A CA, a server and a client certificate (EC P-256, valid 7 days), and a
# second CA that signed neither: the wrong CA for a client to hold.
cc_make_pki() {
	local pki=$DIR/camlcrush/pki n ext
	mkdir -p "$pki"
	(
		cd "$pki"
		umask 077
		for n in ca wrong-ca; do
			openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
				-keyout "$n.key" -out "$n.pem" -subj "/CN=halab $n $ST_LABID" 2>/dev/null
		done
		for n in server client; do
			ext=clientAuth
			[ "$n" = client ] || ext=serverAuth
			openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$n.key" \
				-out "$n.csr" -subj "/CN=halab $n" 2>/dev/null
			printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=%s\n' "$ext" >"$n.ext"
			openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
				-extfile "$n.ext" -out "$n.pem" 2>/dev/null
		done
		rm -f ./*.csr ./*.ext ca.srl
	) || die "openssl could not make the lab's certificates"
}

# The netplex configuration of pkcs11proxyd and its filter configuration.
cc_write_conf() {
	local mode=$1 cc=$DIR/camlcrush tls="" module
	mkdir -p "$cc/netplex"
	module=$ST_SOFTHSM
	[ "$ST_PROVIDER" = "$ST_SOFTHSM" ] || module=$ST_PROVIDER # the delay shim
	cat >"$cc/filter.conf" <<EOF
(* Caml Crush filter configuration written by lab.sh: one module alias. *)
debug = 0
modules = [("$CC_ALIAS", "$module")]
log_subchannel = filter
EOF
	if [ "$mode" = tls ]; then
		# peer_auth "required": pkcs11proxyd accepts only clients with a
		# certificate from its CA (without it, the server asks for none and
		# then refuses every client).
		tls="
      tls {
        peer_auth = \"required\";
        x509 {
          key { crt_file = \"$cc/pki/server.pem\"; key_file = \"$cc/pki/server.key\"; };
          trust { crt_file = \"$cc/pki/ca.pem\"; };
        };
      };"
	fi
	cat >"$cc/pkcs11proxyd.conf" <<EOF
(* pkcs11proxyd (netplex) configuration written by lab.sh *)
netplex {
  controller {
    max_level = "info";
    socket_directory = "$cc/netplex";
    logging { type = "stderr"; };
  };
  service {
    name = "halab";
    conn_limit = 1;
    protocol {
      name = "rpc_pkcs11";
      address { type = "internet"; bind = "127.0.0.1:$CC_PORT"; };
    };
    processor {
      type = "rpc_pkcs11";
      filter_config = "$cc/filter.conf";
      use_ssl = $([ "$mode" = tls ] && echo true || echo false);$tls
    };
    workload_manager {
      type = "dynamic";
      max_jobs_per_thread = 1;
      min_free_jobs_capacity = 1;
      max_free_jobs_capacity = 1;
      max_threads = 100;
    };
  }
}
EOF
}

# cc_listening: pkcs11proxyd listens on the lab's port (/proc/net/tcp of
# the namespace: state 0A is LISTEN).
cc_listening() {
	local hex
	hex=$(printf '%04X' "$CC_PORT")
	cc_in_netns awk -v p=":$hex" 'NR > 1 && substr($2, length($2) - 4) == p && $4 == "0A" { f = 1 } END { exit !f }' \
		/proc/net/tcp
}

# Starts pkcs11proxyd (in the foreground, its own session, in the lab's
# namespace) and waits until it listens.
cc_start_proxy() {
	local logf=$DIR/log/cc.proxy.log pid i
	SOFTHSM2_CONF="$DIR/camlcrush/softhsm2.conf" HALAB_LAB_ID="$ST_LABID" \
		DELAYSHIM_MODULE="$ST_SOFTHSM" DELAYSHIM_US="${ST_DELAY_US:-0}" \
		nsenter --net="/proc/$CC_NETNS/ns/net" -- setsid "$CC_PROXYD" -fg \
		-conf "$DIR/camlcrush/pkcs11proxyd.conf" </dev/null >>"$logf" 2>&1 9>&- &
	pid=$!
	CC_PROXY_PID=$pid
	cc_save_state
	for ((i = 0; i < CC_WAIT_TENTHS; i++)); do
		if cc_listening; then
			return 0
		fi
		if ! alive "$pid"; then
			sed 's/^/  | /' "$logf" >&2 || true
			die "pkcs11proxyd (pid $pid) exited; log: $logf"
		fi
		sleep 0.1
	done
	die "pkcs11proxyd (pid $pid) does not listen on 127.0.0.1:$CC_PORT; log: $logf"
}

# cc_up_members MODE MEMBERS: the Caml Crush members' tokens (one SoftHSM2
# token directory) and their server; appends their serials to the caller's
# `serials` array (they are the last members, so the order holds).
cc_up_members() {
	local mode=$1 members=$2 idx name conf=$DIR/camlcrush/softhsm2.conf
	mkdir -p "$DIR/camlcrush"
	write_softhsm_conf "$conf" "$DIR/camlcrush/tokens"
	for ((idx = CC_FIRST; idx < members; idx++)); do
		name=$(mname "$idx")
		init_token "$conf" "$name"
		serials+=("$(serial_of "$conf" "$name")")
		if [ "$mode" = mixed ]; then
			printf 'module: %s\n' "$CC_CLIENT" >"$DIR/modules/$name.module"
		fi
	done
	[ "$mode" != tls ] || cc_make_pki
	cc_write_conf "$mode"
	cc_netns_up
	cc_start_proxy
}

cc_endpoint() { printf 'tcp:127.0.0.1:%s' "$CC_PORT"; }

# Lines for DIR/env.
cc_env() {
	[ -n "$CC_FIRST" ] || return 0
	printf 'export PKCS11PROXY_SOCKET_PATH=%q\n' "127.0.0.1:$CC_PORT"
	printf 'export PKCS11PROXY_LIBNAME=%q\n' "$CC_ALIAS"
	printf 'export HALAB_TCP_PORT=%q\n' "$CC_PORT"
	printf 'export HALAB_TCP_MEMBERS=%q\n' "$(
		for ((i = CC_FIRST; i < ST_MEMBERS; i++)); do printf '%d ' "$i"; done | sed 's/ $//'
	)"
	if [ "$ST_MODE" = tls ]; then
		printf 'export PKCS11PROXY_CA_FILE=%q\n' "$DIR/camlcrush/pki/ca.pem"
		printf 'export PKCS11PROXY_CERT_FILE=%q\n' "$DIR/camlcrush/pki/client.pem"
		printf 'export PKCS11PROXY_PRIVKEY_FILE=%q\n' "$DIR/camlcrush/pki/client.key"
		printf 'export HALAB_WRONG_CA_FILE=%q\n' "$DIR/camlcrush/pki/wrong-ca.pem"
	fi
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

cc_need() {
	[ -n "$CC_FIRST" ] || die "'$1' needs a tcp, tls or mixed lab (this lab is $ST_MODE)"
}

# cc_check_idx IDX: an optional member index must name a Caml Crush member
# (all of them share the server and, in one process, the connection).
cc_check_idx() {
	local idx
	[ -n "${1:-}" ] || return 0
	idx=$(parse_idx "$1")
	cc_member "$idx" || die "member $idx is not served by Caml Crush (members $CC_FIRST..$((ST_MEMBERS - 1)) are)"
}

# iptables rules that cut the link to pkcs11proxyd both ways; connections
# stay ESTABLISHED, nothing answers.
cc_rules() { # cc_rules -I|-D
	cc_in_netns iptables -w "$1" INPUT -i lo -p tcp --dport "$CC_PORT" -j DROP &&
		cc_in_netns iptables -w "$1" INPUT -i lo -p tcp --sport "$CC_PORT" -j DROP
}

cc_partitioned() {
	cc_in_netns iptables -w -C INPUT -i lo -p tcp --dport "$CC_PORT" -j DROP 2>/dev/null
}

# cc_proxy_procs: pkcs11proxyd's live processes, the controller and the
# workers it forks (one per connection), all in the controller's session.
cc_proxy_procs() {
	local p
	[ -n "$CC_PROXY_PID" ] || return 0
	for p in $( (pgrep -s "$CC_PROXY_PID" 2>/dev/null || true; echo "$CC_PROXY_PID") | sort -un); do
		if alive "$p" && owned "$p"; then
			printf '%s\n' "$p"
		fi
	done
}

cc_cmd_partition() {
	cc_check_idx "${1:-}"
	if cc_partitioned; then
		echo "halab: partition already in place port=$CC_PORT"
		return 0
	fi
	cc_rules -I || die "iptables failed in the lab's namespace"
	echo "halab: partition port=$CC_PORT (iptables DROP both ways, namespace of pid $CC_NETNS)"
}

cc_cmd_heal() {
	cc_check_idx "${1:-}"
	if ! cc_partitioned; then
		echo "halab: no partition port=$CC_PORT"
		return 0
	fi
	cc_rules -D || die "iptables failed in the lab's namespace"
	echo "halab: healed port=$CC_PORT"
}

cc_cmd_kill_proxy() {
	local pids
	cc_check_idx "${1:-}"
	mapfile -t pids < <(cc_proxy_procs)
	if [ ${#pids[@]} -eq 0 ]; then
		log "pkcs11proxyd is not running"
		exit 1
	fi
	kill -KILL "${pids[@]}"
	wait_gone "${pids[@]}"
	echo "halab: SIGKILL pkcs11proxyd pids=${pids[*]}"
}

cc_cmd_restart_proxy() {
	local pids
	cc_check_idx "${1:-}"
	mapfile -t pids < <(cc_proxy_procs)
	if [ ${#pids[@]} -gt 0 ]; then
		echo "halab: pkcs11proxyd already running pids=${pids[*]}"
		return 0
	fi
	cc_start_proxy
	echo "halab: pkcs11proxyd restarted pid=$CC_PROXY_PID port=$CC_PORT"
}

cc_cmd_proxy_pid() {
	local out
	cc_check_idx "${1:-}"
	out=$(cc_proxy_procs)
	[ -n "$out" ] || exit 1
	printf '%s\n' "$out"
}

# cc_status_row IDX SERIAL FMT: one line of `status` for a Caml Crush member.
cc_status_row() {
	local idx=$1 serial=$2 fmt=$3 pids state=up
	pids=$(cc_proxy_procs | paste -sd, -)
	[ -n "$pids" ] || state=down
	! cc_partitioned || state="$state,partitioned"
	# shellcheck disable=SC2059 # the format is lab.sh's
	printf "$fmt" "$idx" "$serial" "$(cc_endpoint)" "${pids:--}" - "$state"
}

# cc_command CMD ARGS...: the network fault commands (lab.sh main).
cc_command() {
	local cmd=$1
	shift
	resolve_dir
	case "$cmd" in
	netns-exec)
		load_state
		cc_need "$cmd"
		[ $# -gt 0 ] || die "netns-exec: no command"
		cc_in_netns "$@"
		return
		;;
	esac
	[ $# -le 1 ] || die "usage: $PROG $cmd --dir DIR [IDX]"
	lock_lab
	load_state
	cc_need "$cmd"
	case "$cmd" in
	partition) cc_cmd_partition "$@" ;;
	heal) cc_cmd_heal "$@" ;;
	kill-proxy) cc_cmd_kill_proxy "$@" ;;
	restart-proxy) cc_cmd_restart_proxy "$@" ;;
	proxy-pid) cc_cmd_proxy_pid "$@" ;;
	esac
}
