# shellcheck shell=bash
# Part of lab.sh (sourced): locating the components the lab runs.

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
	install_packages "${pkgs[@]}"
}

# install_packages PKG...: installs the packages named (duplicates allowed)
# when there are any; without root, says what to install and exits 77.
install_packages() {
	local pkgs=("$@")
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
