#!/usr/bin/env bash
# The consumers a user runs, through the front and through the vendor alone,
# side by side (`make test-eco`, part of make test). Over SoftHSM2 directly
# (test/lab/lab.sh --mode direct) and over p11-kit-proxy (--mode net: one
# p11-kit server per member), each consumer's scenario
# (test/consumers/eco/scenarios.sh) runs once with the vendor's module and
# once with the front in its place; the two outputs, with what legitimately
# varies removed (handles, times, random signatures, the module's path),
# must be identical, and every signature made must verify with the public
# key:
#
#  - OpenSSL 3 with pkcs11-provider: storeutl, pkey -pubout, dgst -sign
#    (RSA PKCS#1 v1.5, RSA-PSS, ECDSA), pkeyutl -decrypt, req -x509,
#    s_server with the key in the token <-> s_client, TLS 1.3 and 1.2, RSA
#    and EC; and eco/provider_host.c, an OpenSSL application signing through
#    pkcs11-provider while, through the front, a thread of it calls
#    CA_GetCurrentHAState on the module pkcs11-provider loaded.
#  - Java SunPKCS11 (one JVM per run, eco/Eco.java): keytool -list; key
#    store entries, SHA256withRSA, SHA256withECDSA, AES with the token's key
#    and a session key, SecureRandom, 4 threads signing.
#  - NSS's tools: modutil -add, modutil -list, certutil -L / -K on the
#    token, certutil -R (requests signed by the token's RSA and EC keys),
#    rsaperf with the token's key.
#  - GnuTLS: p11tool --list-tokens / --list-all, certtool
#    --generate-self-signed with the key in the token, gnutls-serv (key in
#    the token) <-> gnutls-cli, TLS 1.3 and 1.2, RSA and EC.
#  - OpenSC's pkcs11-tool --test, --test-ec, --test-fork.
#  - eco/sign_host.c, a plain C host: a C_Sign/C_Verify loop while, through
#    the front, a thread calls CA_GetCurrentHAState in the same process.
#
# Then p11-kit with the front registered by its module file
# (cmd/libhaext-pkcs11/libhaext-pkcs11.module.in, bind-mounted over
# p11-kit's module folder in a private mount namespace) against SoftHSM2
# registered by its own: p11-kit list-modules, p11tool --list-tokens and
# pkcs11-tool through p11-kit-proxy. Last, the cost of one signature
# (sign_host, vendor alone and front, alternated), informational.
#
# A consumer that is not installed fails its checks (scripts/deps.sh
# installs them). Prints ok/not ok lines and a closing "N passed, N failed".
# ECO_BENCH_LOOPS: signatures per cost measurement (500); ECO_KEEP=1: the
# work folder and its labs are left for a look (stop them with lab.sh down).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${BUILD:-$top/build}
front=$build/libhaext-pkcs11.so
lab=$top/test/lab/lab.sh
sc=$here/eco/scenarios.sh
bench_loops=${ECO_BENCH_LOOPS:-500}
# shellcheck source=test/lib.sh
. "$top/test/lib.sh"
t_setup eco
[ -z "${ECO_KEEP:-}" ] || trap - EXIT # ECO_KEEP=1: keep the work folder (and its labs) for a look

[ -f "$front" ] && [ -f "$build/libhaext.so" ] ||
    { notok "$front or libhaext.so is missing (make)"; t_done; exit 1; }
provider=$(ls /usr/lib/*/ossl-modules/pkcs11.so 2>/dev/null | head -n 1 || true)
proxy=$(ls /usr/lib/*/p11-kit-proxy.so 2>/dev/null | head -n 1 || true)

# Each consumer's commands; a missing one fails the consumer, once.
declare -A missing=()
need() {
    local consumer=$1 pkg=$2 c
    shift 2
    for c in "$@"; do
        if ! command -v "$c" >/dev/null 2>&1 && [ ! -f "$c" ]; then
            notok "$consumer: $c is not installed (Debian's $pkg; scripts/deps.sh installs it)"
            missing[$consumer]=1
        fi
    done
}
need openssl "openssl, pkcs11-provider, libssl-dev" openssl "${provider:-pkcs11-provider/ossl-modules/pkcs11.so}" \
    /usr/include/openssl/store.h
need java openjdk-17-jdk-headless java javac keytool
need nss libnss3-tools certutil modutil rsaperf
need gnutls gnutls-bin p11tool certtool gnutls-serv gnutls-cli
need pkcs11-tool opensc pkcs11-tool
need p11-kit "p11-kit, p11-kit-modules" p11-kit "${proxy:-p11-kit-proxy.so}"
# setup, the C host and the p11-kit checks use pkcs11-tool and openssl too.
for c in setup c-host p11-kit; do
    [ -z "${missing[pkcs11-tool]:-}${missing[openssl]:-}" ] || missing[$c]=1
done

# The hosts: C programs, and the Java one compiled once.
eb=$build/consumers
mkdir -p "$eb"
cflags="-std=gnu11 -O2 -g -Wall -Wextra -Werror $(pkg-config --cflags p11-kit-1) -I$top/include"
# shellcheck disable=SC2086
cc_ok() { ${CC:-cc} $cflags -o "$eb/$1" "$here/eco/$1.c" -ldl -lpthread "${@:2}"; }
check "eco/sign_host.c builds" cc_ok sign_host
if [ -z "${missing[openssl]:-}" ]; then
    check "eco/provider_host.c builds against libcrypto" cc_ok provider_host -lcrypto
fi
if [ -z "${missing[java]:-}" ]; then
    rm -rf "$eb/java"
    check "eco/Eco.java compiles ($(javac -version 2>&1))" javac -d "$eb/java" "$here/eco/Eco.java"
fi

# slot_of DIR MODULE LABEL: the slot (decimal) of the token LABEL.
slot_of() {
    local hex
    hex=$(in_lab "$1" pkcs11-tool --module "$2" -L 2>/dev/null | awk -v want="$3" '
        /^Slot [0-9]+ \(0x[0-9a-f]+\)/ { s = $3; gsub(/[():]/, "", s) }
        /token label *:/ { l = $0; sub(/.*: */, "", l); if (l == want) { print s; exit } }')
    [ -n "$hex" ] && echo $((hex))
}

# pair DIR KIND CONSUMER: the scenario with the vendor's module, then with
# the front; one ok when both ran to the end, every check of their own is
# OK, and the two outputs are identical.
pair() {
    local dir=$1 kind=$2 consumer=$3 vendor rc_v=0 rc_f=0 v f n
    vendor=$(. "$dir/env" && echo "$HALAB_MODULE")
    v=$work/$kind.$consumer.vendor
    f=$work/$kind.$consumer.front
    if [ -n "${missing[$consumer]:-}" ]; then
        notok "$kind, $consumer: not run, the consumer is not installed"
        return
    fi
    local t0=$SECONDS
    in_lab "$dir" env "${eco_env[@]}" bash "$sc" "$consumer" "$vendor" vendor >"$v" 2>"$v.err" || rc_v=$?
    in_lab "$dir" env "${eco_env[@]}" bash "$sc" "$consumer" "$front" front >"$f" 2>"$f.err" || rc_f=$?
    n=$(grep -c . "$f" || true)
    if [ "$rc_v" -eq 0 ] && [ "$rc_f" -eq 0 ] && [ "$(tail -n 1 "$v")" = done ] && [ "$(tail -n 1 "$f")" = done ] &&
        ! grep -q ECO-FAILED "$v" "$f" && [ "$n" -ge 3 ] && cmp -s "$v" "$f"; then
        ok "$kind, $consumer: the same $n lines with the vendor alone and through the front$(
            grep -q 'ECO-OK' "$f" && echo ", $(grep -c 'ECO-OK' "$f") checks of ours OK (signatures verified, handshakes made)") ($((SECONDS - t0)) s)"
    else
        notok "$kind, $consumer: differs or fails through the front (exit $rc_v vendor, $rc_f front)"
        {
            diff "$v" "$f" | head -n 30 | sed 's/^/    /'
            grep -h ECO-FAILED "$v" "$f" | head -n 5 | sed 's/^/    /'
            tail -n 5 "$v.err" | sed 's/^/    vendor stderr: /'
            tail -n 5 "$f.err" | sed 's/^/    front stderr: /'
        } || true
    fi
}

# ca_meanwhile KIND CONSUMER: the front run's CA_GetCurrentHAState tally.
ca_meanwhile() {
    local tally
    [ -z "${missing[$2]:-}" ] || return 0
    tally=$(grep "^ca: " "$ECO_WORK/front.$2.ca" 2>/dev/null | tail -n 1 || true)
    if [[ "$tally" =~ ^ca:\ calls=([1-9][0-9]*)\ ok=([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ]; then
        ok "$1, $2: CA_GetCurrentHAState ran meanwhile in the same process, every call CKR_OK with every member up ($tally)"
    else
        notok "$1, $2: CA_GetCurrentHAState meanwhile: ${tally:-no tally}"
    fi
}

# bench DIR KIND: sign_host's cost of one signature, vendor alone and front,
# alternated twice; the lower of each. Informational: no assertion.
bench() {
    local dir=$1 kind=$2 vendor mod i
    vendor=$(. "$dir/env" && echo "$HALAB_MODULE")
    for i in 1 2; do
        for mod in vendor front; do
            in_lab "$dir" "$eb/sign_host" "$([ $mod = vendor ] && echo "$vendor" || echo "$front")" m00 "$bench_loops" \
                2>&1 >/dev/null | sed -n "s/^time \(.*\) sign us\/op=\(.*\)/$mod \1 \2/p" >>"$work/bench.$kind"
        done
    done
    for k in rsa-2048 ecdsa-p256; do
        echo "   $kind, $k sign, $bench_loops signatures: $(awk -v k="$k" '$2 == k {
            if (!($1 in m) || $3 < m[$1]) m[$1] = $3 } END { printf "vendor alone %.1f us, front %.1f us", m["vendor"], m["front"] }' \
            "$work/bench.$kind")"
    done
}

for kind in direct net; do
    name=$([ $kind = direct ] && echo SoftHSM2 || echo p11-kit-proxy)
    echo "== $name"
    dir=$work/lab-$kind
    bash "$lab" up --dir "$dir" --mode "$kind" --members 2 --timeout 2 --ha-slot 0 >/dev/null
    vendor=$(. "$dir/env" && echo "$HALAB_MODULE")
    export ECO_WORK=$work/eco-$kind
    mkdir -p "$ECO_WORK"
    if [ -n "${missing[setup]:-}" ]; then
        notok "$name: no keys made (pkcs11-tool or openssl is missing)"
        continue
    fi
    eco_env=(ECO_WORK="$ECO_WORK" ECO_BUILD="$eb" ECO_PROVIDER="$provider" ECO_FRONT="$front" ECO_KIND=$kind)
    # p11-kit 0.24's RPC carries no SHA256-RSA-PKCS-PSS (nor the other
    # hash-and-PSS mechanisms): RSA-PSS through pkcs11-provider, and TLS 1.3
    # with an RSA key, fail there with the vendor alone as with the front.
    [ $kind = direct ] || eco_env+=(ECO_NO_PSS=1)
    if ! in_lab "$dir" env "${eco_env[@]}" bash "$sc" setup "$vendor" vendor >"$work/setup.$kind" 2>&1; then
        notok "$name: the keys and certificates could not be made with the vendor alone"
        sed 's/^/    /' "$work/setup.$kind" | tail -n 10
        continue
    fi
    slot=$(slot_of "$dir" "$vendor" m00)
    eco_env+=(ECO_SLOT="$slot")
    for consumer in openssl java nss gnutls pkcs11-tool c-host; do
        pair "$dir" "$kind" "$consumer"
    done
    ca_meanwhile "$kind" openssl
    ca_meanwhile "$kind" c-host
    [ -n "${missing[c-host]:-}" ] || bench "$dir" "$kind"
    [ $kind = net ] || keep_direct=$dir
done

# --- p11-kit with the front registered by its module file ---------------------
# The front over SoftHSM2 (the direct lab), registered by the example module
# file; the control is SoftHSM2 registered by its own. Each in a private
# mount namespace, its module folder over p11-kit's (as root p11-kit reads
# no per-user configuration).
if [ -z "${missing[p11-kit]:-}" ] && [ -n "${keep_direct:-}" ]; then
    dir=$keep_direct
    vendor=$(. "$dir/env" && echo "$HALAB_MODULE")
    mkdir -p "$work/p11kit/vendor" "$work/p11kit/front" "$work/p11kit/empty"
    echo "module: $vendor" >"$work/p11kit/vendor/softhsm2.module"
    sed "s|@FRONTDIR@|$build|" "$top/cmd/libhaext-pkcs11/libhaext-pkcs11.module.in" \
        >"$work/p11kit/front/libhaext-pkcs11.module"
    cat >"$work/p11kit/run.sh" <<'EOF'
# run.sh MODULES_DIR PROXY DATA WORK: inside `unshare -m`.
set -u
mount --make-rprivate / && mount --bind "$1" /usr/share/p11-kit/modules || exit 1
[ ! -d /etc/pkcs11/modules ] || mount --bind "$4/empty" /etc/pkcs11/modules || exit 1
[ ! -f /etc/pkcs11/pkcs11.conf ] || mount --bind /dev/null /etc/pkcs11/pkcs11.conf || exit 1
echo "== p11-kit list-modules"
# The module's name and path are the only lines that may differ.
p11-kit list-modules 2>&1 | sed -e 's/^[A-Za-z0-9_.-]*: .*/MODULE: PATH/' -e 's/^\(\s*library-description:\).*/\1 X/' \
    -e 's/^\(\s*library-manufacturer:\).*/\1 X/' -e 's/^\(\s*library-version:\).*/\1 X/'
echo "== p11tool --list-tokens (GnuTLS, p11-kit's registered modules)"
p11tool --list-tokens 2>&1 | grep -v '^\s*Module:' | grep -iv 'trust\|system'
echo "== pkcs11-tool through p11-kit-proxy"
pkcs11-tool --module "$2" -L 2>&1 | grep -E 'token (label|serial)|serial num|^Slot' | sed 's/^Slot [0-9]* (0x[0-9a-f]*)/Slot/'
pkcs11-tool --module "$2" --token-label m00 --login --pin 1234 --sign --mechanism SHA256-RSA-PKCS --id 01 \
    -i "$3" -o "$4/sig" >/dev/null 2>&1 && echo "sign through p11-kit-proxy: $(sha256sum <"$4/sig" | cut -c1-16)"
echo done
EOF
    ekind=$work/eco-direct
    for m in vendor front; do
        in_lab "$dir" unshare -m bash "$work/p11kit/run.sh" "$work/p11kit/$m" "$proxy" "$ekind/data" "$work/p11kit" \
            >"$work/p11kit.$m" 2>&1 || true
    done
    if [ "$(tail -n 1 "$work/p11kit.front")" = done ] && cmp -s "$work/p11kit.vendor" "$work/p11kit.front" &&
        grep -q 'token: m00' "$work/p11kit.front" && grep -q 'sign through p11-kit-proxy' "$work/p11kit.front" &&
        in_lab "$dir" unshare -m bash -c 'mount --make-rprivate / && mount --bind "$0" /usr/share/p11-kit/modules &&
            p11-kit list-modules' "$work/p11kit/front" | grep -q "^libhaext-pkcs11: $front"; then
        ok "p11-kit with the front registered by its module file: list-modules, p11tool --list-tokens and pkcs11-tool through p11-kit-proxy see the same $(grep -c . "$work/p11kit.front") lines as with SoftHSM2 registered (front's tokens m00, m01)"
    else
        notok "p11-kit with the front registered by its module file: differs from SoftHSM2 registered"
        {
            diff "$work/p11kit.vendor" "$work/p11kit.front" | head -n 30 | sed 's/^/    /'
            tail -n 5 "$work/p11kit.front" | sed 's/^/    front: /'
        } || true
    fi
else
    notok "p11-kit with the front registered: not run (p11-kit, or the SoftHSM2 lab, is missing)"
fi

# The versions tested (for the README's table).
echo "== versions"
dpkg-query -W -f='   ${Package} ${Version}\n' pkcs11-provider openssl openjdk-17-jdk-headless libnss3-tools gnutls-bin \
    opensc p11-kit softhsm2 2>/dev/null || true
t_done
