# shellcheck shell=bash
# Part of lab.sh (sourced): making the members' tokens and bringing a lab up.

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
	local mode=$1 members=$2 gserial=$3 label=$4 timeout=$5 endpoints=$6 delay_us=$7 ha_slot=${8:-}
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
		[ -z "$ha_slot" ] || echo "   LibHAExtHASlot = $ha_slot;"
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
