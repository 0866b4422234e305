#!/usr/bin/env bash
# One consumer, one module: the scenarios of test/consumers/eco.sh, run
# inside a lab (lab.sh exec) once with the vendor's module and once with the
# front. Prints what the consumer showed, with what legitimately varies
# removed (handles, times, random signatures, the module's path), and one
# line per check of our own: "...: ECO-OK" or "...: ECO-FAILED". The last
# line is "done". eco.sh compares the vendor's and the front's outputs.
#
#   scenarios.sh setup|openssl|java|nss|gnutls|pkcs11-tool|c-host MODULE TAG
#
# TAG is "vendor" or "front" (with the front, the in-process hosts call
# CA_GetCurrentHAState meanwhile; its tally goes to $ECO_WORK/TAG.CONSUMER.ca).
# Environment: ECO_WORK (this lab's files: public keys, certificates),
# ECO_BUILD (the compiled hosts), ECO_PROVIDER (pkcs11-provider's
# pkcs11.so), ECO_SLOT (token m00's slot), ECO_FRONT, ECO_KIND (direct or
# net), ECO_NO_PSS (set: the module has no SHA256-RSA-PKCS-PSS). Tokens m00 (keys
# "rsa" RSA-2048, "ec" P-256, "aes" AES-256, certificates "rsa" and "ec") and
# m01 (pkcs11-tool's tests); user PIN 1234.
set -u
consumer=$1 module=$2 tag=$3
w=$ECO_WORK
t=$w/$tag.$consumer
mkdir -p "$t"
data=$w/data
pin=1234
export GNUTLS_PIN=$pin
unset OPENSSL_CONF
key() { echo "pkcs11:token=m00;object=$1;type=${2:-private}"; }
h() { sha256sum | cut -c1-16; }
ok_or() { if "$@" >/dev/null 2>&1; then echo ECO-OK; else echo ECO-FAILED; fi; }
# pss_or CMD...: ok_or for what needs RSA-PSS with a hash (CKM_SHA256_RSA_PKCS_PSS),
# which p11-kit 0.24's RPC does not carry (ECO_NO_PSS=1, the p11-kit lab):
# there, it fails with the vendor alone as through the front.
pss_or() {
    if [ -z "${ECO_NO_PSS:-}" ]; then ok_or "$@"
    elif "$@" >/dev/null 2>&1; then echo ECO-OK
    else echo "fails (p11-kit-proxy carries no SHA256-RSA-PKCS-PSS)"; fi
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_for FILE TEXT: until TEXT is in FILE (a server is ready), 10 s at most.
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# The openssl.cnf of pkcs11-provider over MODULE. no-deinit: pkcs11-provider
# 1.0 finalizing SoftHSM2 2.6 at exit crashes the vendor alone (exit 139).
ossl_conf() {
    cat <<EOF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = $ECO_PROVIDER
pkcs11-module-path = $1
pkcs11-module-token-pin = $pin
pkcs11-module-quirks = no-deinit
activate = 1
EOF
}
# Certificate facts that do not depend on the time of day.
x509_facts() { openssl x509 -in "$1" -inform "${2:-PEM}" -noout -subject -issuer -serial; openssl x509 -in "$1" -inform "${2:-PEM}" -noout -pubkey | h; }

# --- setup (vendor alone, once per lab) ---------------------------------------
setup() {
    local p="--module $module --login --pin $pin"
    pkcs11-tool $p --token-label m00 --keypairgen --key-type rsa:2048 --label rsa --id 01 >/dev/null &&
        pkcs11-tool $p --token-label m00 --keypairgen --key-type EC:prime256v1 --label ec --id 02 >/dev/null &&
        pkcs11-tool $p --token-label m00 --keygen --key-type AES:32 --label aes --id 03 >/dev/null &&
        pkcs11-tool $p --token-label m01 --keypairgen --key-type rsa:2048 --label t-rsa --id 11 --usage-sign >/dev/null &&
        pkcs11-tool $p --token-label m01 --keypairgen --key-type EC:prime256v1 --label t-ec --id 12 --usage-sign >/dev/null ||
        return 1
    ossl_conf "$module" >"$w/setup.cnf"
    export OPENSSL_CONF=$w/setup.cnf
    openssl pkey -pubin -in "$(key rsa public)" -pubout -out "$w/rsa.pub" &&
        openssl pkey -pubin -in "$(key ec public)" -pubout -out "$w/ec.pub" &&
        openssl req -new -x509 -key "$(key rsa)" -subj /CN=eco-rsa -days 30 -set_serial 1 -out "$w/rsa.crt" &&
        openssl req -new -x509 -key "$(key ec)" -subj /CN=eco-ec -days 30 -set_serial 2 -out "$w/ec.crt" || return 1
    unset OPENSSL_CONF
    openssl x509 -in "$w/rsa.crt" -outform DER -out "$w/rsa.der"
    openssl x509 -in "$w/ec.crt" -outform DER -out "$w/ec.der"
    pkcs11-tool $p --token-label m00 --write-object "$w/rsa.der" --type cert --id 01 --label rsa >/dev/null &&
        pkcs11-tool $p --token-label m00 --write-object "$w/ec.der" --type cert --id 02 --label ec >/dev/null || return 1
    echo "signed and decrypted by libhaext's ecosystem tests" >"$data"
    openssl pkeyutl -encrypt -pubin -inkey "$w/rsa.pub" -in "$data" -out "$w/data.enc"
    echo done
}

# --- OpenSSL 3 with pkcs11-provider ---------------------------------------------
run_openssl() {
    local srv port proto k spid sigalgs
    ossl_conf "$module" >"$t/openssl.cnf"
    export OPENSSL_CONF=$t/openssl.cnf
    echo "== storeutl"
    openssl storeutl "pkcs11:token=m00" 2>&1
    echo "== pkey -pubout"
    for k in rsa ec; do
        openssl pkey -pubin -in "$(key $k public)" -pubout -out "$t/$k.pub" 2>&1
        echo "$k: $(h <"$t/$k.pub")"
    done
    echo "== dgst -sign"
    openssl dgst -sha256 -sign "$(key rsa)" -out "$t/pkcs1.sig" "$data" 2>&1
    echo "rsa pkcs1 signature $(h <"$t/pkcs1.sig"), verify: $(ok_or env -u OPENSSL_CONF openssl dgst -sha256 -verify "$w/rsa.pub" -signature "$t/pkcs1.sig" "$data")"
    openssl dgst -sha256 -sign "$(key rsa)" -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -out "$t/pss.sig" "$data" 2>&1 |
        sed 's/^[0-9A-F]*:error:/error:/'
    echo "rsa-pss signature, verify: $(pss_or env -u OPENSSL_CONF openssl dgst -sha256 -verify "$w/rsa.pub" -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -signature "$t/pss.sig" "$data")"
    openssl dgst -sha256 -sign "$(key ec)" -out "$t/ec.sig" "$data" 2>&1
    echo "ecdsa signature, verify: $(ok_or env -u OPENSSL_CONF openssl dgst -sha256 -verify "$w/ec.pub" -signature "$t/ec.sig" "$data")"
    echo "== pkeyutl -decrypt"
    openssl pkeyutl -decrypt -inkey "$(key rsa)" -in "$w/data.enc" -out "$t/data.dec" 2>&1
    echo "rsa pkcs1 decrypt, plaintext: $(ok_or cmp "$data" "$t/data.dec")"
    echo "== req -x509"
    for k in rsa ec; do
        openssl req -new -x509 -key "$(key $k)" -subj "/CN=eco-req-$k" -days 1 -set_serial 7 -out "$t/$k.crt" 2>&1
        x509_facts "$t/$k.crt"
        echo "self-signed $k, verify: $(ok_or env -u OPENSSL_CONF openssl verify -CAfile "$t/$k.crt" "$t/$k.crt")"
    done
    echo "== s_server (key in the token) <-> s_client"
    for proto in "tls1_3 rsa" "tls1_2 rsa" "tls1_3 ec" "tls1_2 ec"; do
        set -- $proto
        port=$(port)
        srv=$t/s_server.$1.$2.log
        timeout 30 openssl s_server -accept "127.0.0.1:$port" -key "$(key "$2")" -cert "$w/$2.crt" -naccept 1 \
            "-$1" -rev >"$srv" 2>&1 &
        spid=$!
        wait_for "$srv" ACCEPT
        # Without SHA256-RSA-PKCS-PSS (ECO_NO_PSS), TLS 1.2 with RSA PKCS#1 v1.5.
        sigalgs=()
        [ -z "${ECO_NO_PSS:-}" ] || [ "$1 $2" != "tls1_2 rsa" ] || sigalgs=(-sigalgs RSA+SHA256)
        (echo "ping $1 $2"; sleep 0.5) | env -u OPENSSL_CONF timeout 20 openssl s_client -connect "127.0.0.1:$port" \
            -CAfile "$w/$2.crt" -verify_return_error "-$1" "${sigalgs[@]}" 2>&1 |
            grep -E '^(subject=|Peer signature type|Server public key|New, |Verification:)|^ *(Protocol|Cipher|Verify return code) *:|gnip' |
            sed 's/^ *//' | sort -u
        wait $spid
        if [ "$1 $2" = "tls1_3 rsa" ]; then
            echo "server $1 $2: $(pss_or grep -q "CONNECTION ESTABLISHED" "$srv")"
        else
            echo "server $1 $2: $(ok_or grep -q "CONNECTION ESTABLISHED" "$srv")"
        fi
    done
    echo "== in-process: provider_host (pkcs11-provider, 20 x 3 signatures)"
    if [ "$tag" = front ]; then
        "$ECO_BUILD/provider_host" m00 20 "$w/rsa.pub" "$w/ec.pub" "$ECO_FRONT" "$ECO_SLOT" 2>"$w/$tag.openssl.ca"
    else
        "$ECO_BUILD/provider_host" m00 20 "$w/rsa.pub" "$w/ec.pub"
    fi | grep -vx done
    unset OPENSSL_CONF
}

# --- Java SunPKCS11 -------------------------------------------------------------
run_java() {
    printf 'name = eco\nlibrary = %s\nslot = %s\n' "$module" "$ECO_SLOT" >"$t/sunpkcs11.cfg"
    echo "== keytool -list"
    keytool -list -keystore NONE -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11 \
        -providerArg "$t/sunpkcs11.cfg" -storepass "$pin" 2>&1
    echo "== Eco.java (one JVM)"
    java -cp "$ECO_BUILD/java" Eco "$t/sunpkcs11.cfg" "$pin" ${ECO_NO_PSS:+p11kit-rpc} >"$t/java.out" 2>&1
    grep -vx done "$t/java.out"
    grep -qx done "$t/java.out" || echo "Eco.java: ECO-FAILED (it did not finish)"
}

# --- NSS tools ------------------------------------------------------------------
run_nss() {
    local db=sql:$t/db
    echo "$pin" >"$t/pw"
    mkdir -p "$t/db"
    certutil -N -d "$db" -f "$t/pw" 2>&1
    echo "== modutil -add"
    modutil -add eco -libfile "$module" -dbdir "$db" -force 2>&1
    modutil -list eco -dbdir "$db" 2>&1 | sed 's#^\(\s*Library file:\).*#\1 MODULE#'
    echo "== certutil -L / -K (token m00)"
    certutil -L -h m00 -d "$db" -f "$t/pw" 2>&1
    certutil -K -h m00 -d "$db" -f "$t/pw" 2>&1
    echo "== certutil -R with the token's keys (certificate requests signed in the token)"
    certutil -R -d "$db" -h m00 -f "$t/pw" -k 01 -s CN=eco-nss-rsa -Z SHA256 -o "$t/rsa.req" </dev/null 2>&1
    echo "rsa request $(h <"$t/rsa.req"), signature: $(ok_or openssl req -in "$t/rsa.req" -inform DER -noout -verify)"
    certutil -R -d "$db" -h m00 -f "$t/pw" -k 02 -s CN=eco-nss-ec -Z SHA256 -o "$t/ec.req" </dev/null 2>&1
    echo "ec request, signature: $(ok_or openssl req -in "$t/ec.req" -inform DER -noout -verify)"
    openssl req -in "$t/ec.req" -inform DER -noout -subject -pubkey | h
    echo "== rsaperf (100 RSA private-key operations with m00:rsa)"
    rsaperf -n m00:rsa -d "$db" -w "$pin" -s -i 100 >"$t/rsaperf.log" 2>&1
    sed -n 's/^\([0-9]* iterations\) in .*/\1/p; /^Using PKCS#11/p' "$t/rsaperf.log"
}

# --- GnuTLS -------------------------------------------------------------------
run_gnutls() {
    local port srv p k spid prov=(--provider "$module")
    # GnuTLS refuses p11-kit-proxy.so as a --provider (p11-kit will not load
    # its own proxy as a module: "pkcs11_add_provider: PKCS #11 initialization
    # error"); a GnuTLS user of p11-kit loads p11-kit's registered modules
    # instead, here the lab's (the modules p11-kit-proxy offers). The front
    # over p11-kit-proxy is a --provider like any module.
    case $module in */p11-kit-proxy.so) prov=() ;; esac
    echo "== p11tool --list-tokens"
    if [ "${ECO_KIND:-}" = net ]; then
        # GnuTLS loads only the first of p11-kit's modules with the same
        # CK_INFO (both members are SoftHSM2 behind p11-kit-remote), so it
        # sees m00 alone there without the front: compare m00's line.
        p11tool "${prov[@]}" --list-token-urls 2>&1 | grep 'token=m00'
    else
        p11tool "${prov[@]}" --list-tokens 2>&1 | grep -v "^\s*Module:"
    fi
    echo "== p11tool --list-all (token m00, logged in)"
    p11tool "${prov[@]}" --login --list-all "pkcs11:token=m00" 2>&1
    echo "== certtool --generate-self-signed (key in the token)"
    for k in rsa ec; do
        printf 'cn = eco-gnutls-%s\nserial = 9\nexpiration_days = 2\nca\ncert_signing_key\nsigning_key\ntls_www_server\ndns_name = localhost\n' \
            "$k" >"$t/$k.tmpl"
        certtool "${prov[@]}" --generate-self-signed --load-privkey "$(key $k)" --template "$t/$k.tmpl" \
            --outfile "$t/$k.pem" >/dev/null 2>&1
        x509_facts "$t/$k.pem"
        echo "self-signed $k, verify: $(ok_or certtool --verify --load-ca-certificate "$t/$k.pem" --infile "$t/$k.pem")"
    done
    echo "== gnutls-serv (key in the token) <-> gnutls-cli"
    for k in rsa ec; do
        port=$(port)
        srv=$t/gnutls-serv.$k.log
        gnutls-serv "${prov[@]}" --x509keyfile "$(key $k)" --x509certfile "$t/$k.pem" -p "$port" --echo \
            >"$srv" 2>&1 &
        spid=$!
        wait_for "$srv" "listening on IPv4"
        for p in TLS1.3 TLS1.2; do
            echo "ping $p $k" | timeout 20 gnutls-cli --x509cafile "$t/$k.pem" -p "$port" localhost \
                --priority "NORMAL:-VERS-ALL:+VERS-$p" >"$t/cli.log" 2>&1
            grep -E '^- (Description|Status|Handshake)|^ping' "$t/cli.log"
            echo "handshake $p $k, echo: $(ok_or grep -qx "ping $p $k" "$t/cli.log")"
        done
        kill $spid 2>/dev/null
        wait $spid 2>/dev/null
    done
}

# --- OpenSC pkcs11-tool -----------------------------------------------------------
run_pkcs11_tool() {
    local p="--module $module --token-label m01 --login --pin $pin" rc
    # EC points and the 20-byte IDs made from them are random; so is the
    # token's time.
    norm() { sed -e 's/^\(\s*EC_POINT:\s*\).*/\1X/' -e 's/^\(\s*ID:\s*\)[0-9a-f]\{40\}$/\1X/'; }
    for test in --test --test-ec --test-fork; do
        echo "== pkcs11-tool $test"
        rc=0
        if [ $test = --test-ec ]; then
            pkcs11-tool $p --session-rw --test-ec --id 0a --label t-ecgen --key-type EC:prime256v1 >"$t/out" 2>&1 || rc=$?
            # It leaves the pair it generated: gone before the next run.
            pkcs11-tool $p --delete-object --type privkey --label t-ecgen >/dev/null 2>&1
            pkcs11-tool $p --delete-object --type pubkey --label t-ecgen >/dev/null 2>&1
        else
            pkcs11-tool $p $test >"$t/out" 2>&1 || rc=$?
        fi
        norm <"$t/out"
        echo "exit status $rc"
    done
}

# --- a plain C host -------------------------------------------------------------
run_c_host() {
    echo "== sign_host (C_Sign/C_Verify loop, 200 RSA-2048 and 200 ECDSA P-256)"
    if [ "$tag" = front ]; then
        "$ECO_BUILD/sign_host" "$module" m00 200 "$ECO_FRONT" 2>"$t/err"
    else
        "$ECO_BUILD/sign_host" "$module" m00 200 2>"$t/err"
    fi | grep -vx done
    grep '^ca: ' "$t/err" >"$w/$tag.c-host.ca" || true
}

case $consumer in
setup) setup ;;
openssl) run_openssl ;;
java) run_java ;;
nss) run_nss ;;
gnutls) run_gnutls ;;
pkcs11-tool) run_pkcs11_tool ;;
c-host) run_c_host ;;
*) echo "unknown consumer $consumer" >&2; exit 2 ;;
esac
[ "$consumer" = setup ] || echo done
