#!/usr/bin/env bash
# Installs what building and testing libhaext needs, only when it is missing:
# a C and a C++ compiler, pkg-config, SoftHSM2, p11-kit (server, proxy, headers),
# OpenSC's pkcs11-spy, for network members Caml Crush, iptables, iproute2
# and openssl, and the front module's consumers (PyKCS11, OpenSSL's pkcs11
# engine). Go itself (1.23 or newer) must be on PATH; Go modules
# come through the module proxy on first build.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_file() { compgen -G "$1" >/dev/null 2>&1; }

have_cmd gcc || need+=(gcc)
have_cmd c++ || need+=(g++)               # test/c/abi.sh builds C++ clients of the header
have_cmd pkg-config || need+=(pkg-config)
have_cmd softhsm2-util || need+=(softhsm2)
have_cmd p11-kit || need+=(p11-kit)
have_file '/usr/lib/*/p11-kit-proxy.so' || need+=(p11-kit-modules)
have_file /usr/include/p11-kit-1/p11-kit/pkcs11.h || need+=(libp11-kit-dev)
have_file '/usr/lib/*/pkcs11/pkcs11-spy.so' || need+=(opensc opensc-pkcs11)
have_cmd unshare || need+=(util-linux)
have_cmd pgrep || need+=(procps)           # the lab finds member processes
have_cmd readelf || need+=(binutils)       # the install test and the export check (nm)
have_cmd awk || need+=(mawk)
have_cmd python3 || need+=(python3) # make bench writes BENCHMARKS.md with it
# Network members (test/lab/camlcrush.sh): Caml Crush's server and clients,
# iptables and iproute2 inside the lab's network namespace, openssl for its
# certificates, nsenter (util-linux) to enter it.
have_cmd pkcs11proxyd || need+=(caml-crush-server)
have_file '/usr/lib/*/caml-crush/libp11clienttcp.so' || need+=(caml-crush-clients)
have_cmd iptables || need+=(iptables)
have_cmd ip || need+=(iproute2)
have_cmd openssl || need+=(openssl)
have_cmd nsenter || need+=(util-linux)

# The front module's consumer tests (test/consumers): PyKCS11 for Debian's
# python3, OpenSSL's pkcs11 engine and the headers to build a host on it.
/usr/bin/python3 -c 'import PyKCS11' >/dev/null 2>&1 || need+=(python3-pykcs11)
have_file '/usr/lib/*/engines-3/pkcs11.so' || need+=(libengine-pkcs11-openssl)
have_file /usr/include/openssl/engine.h || need+=(libssl-dev)

# OpenSSL 3's pkcs11-provider (the do-no-harm exits in test/consumers/harm.sh).
# Debian 12 has it in bookworm-backports only: that source is added below.
have_file '/usr/lib/*/ossl-modules/pkcs11.so' || need+=(pkcs11-provider)

# hastatus --listen, the Prometheus exporter (test/exporter): scraped with curl.
have_cmd curl || need+=(curl)

# The Debian packages (test/deb/run.sh): dpkg-buildpackage (dpkg-dev),
# build-essential (dpkg-checkbuilddeps requires it), debhelper, lintian,
# man-db (man -w finds the installed man page).
have_cmd dpkg-buildpackage || need+=(dpkg-dev)
have_file /usr/share/build-essential/list || need+=(build-essential)
have_cmd dh || need+=(debhelper)
have_cmd lintian || need+=(lintian)
have_cmd man || need+=(man-db)

# The consumers of test/consumers/eco.sh, each through the front and through
# the vendor alone: Java SunPKCS11 (javac, keytool), NSS's tools (certutil,
# modutil, rsaperf), GnuTLS's tools (p11tool, certtool, gnutls-serv/-cli);
# OpenSSL 3 with pkcs11-provider and pkcs11-tool are above.
have_cmd javac || need+=(openjdk-17-jdk-headless)
have_cmd certutil || need+=(libnss3-tools)
have_cmd p11tool || need+=(gnutls-bin)

if ! have_cmd go; then
    echo "deps: Go is not on PATH (expected /usr/local/go/bin); install Go 1.23 or newer" >&2
    exit 1
fi
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing packages: ${need[*]}; install them as root: apt-get install -y ${need[*]}" >&2
    exit 1
fi
echo "deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# A package this release has only in its backports (pkcs11-provider on
# Debian 12): add the release's backports source, once, and take it from
# there. Nothing else comes from backports (apt prefers the release).
backports=()
for p in "${need[@]}"; do
    if [ -z "$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)')" ]; then
        backports+=("$p")
    fi
done
if [ ${#backports[@]} -gt 0 ]; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    # The machine's own Debian mirror, as its sources name it.
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *\([^ ]*\/debian\)\/*$/\1/p' | head -n 1)
    [ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\/debian\)\/* .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
    list=/etc/apt/sources.list.d/libhaext-backports.list
    if [ -n "$codename" ] && [ -n "$mirror" ] && [ ! -f "$list" ]; then
        echo "deps: adding ${codename}-backports for ${backports[*]}"
        echo "deb $mirror ${codename}-backports main" >"$list"
        apt-get update -qq
    fi
    apt-get install -y -qq --no-install-recommends -t "${codename}-backports" "${backports[@]}" >/dev/null
    keep=()
    for p in "${need[@]}"; do
        case " ${backports[*]} " in *" $p "*) ;; *) keep+=("$p") ;; esac
    done
    need=("${keep[@]}")
fi
[ ${#need[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
