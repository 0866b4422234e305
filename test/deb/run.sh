#!/usr/bin/env bash
# Tests the Debian packages (debian/): builds them with
# `dpkg-buildpackage -us -uc -b` in a copy of the tree (the tree's build/ is
# not touched), runs lintian on them and on the source package (no E:
# lines), installs them with apt-get, and uses them as a Debian user would:
# examples/ha_state.c built with `pkg-config --cflags --libs haext` alone and
# run on a SoftHSM2 group, the installed hastatus and its man page, the
# front from the PKCS#11 module folder (pkcs11-tool, CA_GetCurrentHAState
# through it, p11-kit from the example module file); the files, links,
# SONAME and symbols; then purges them and checks that nothing is left.
# Root only (it installs packages); it refuses to run when any of the four
# packages is installed already, rather than replace someone's install.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
lab=$top/test/lab/lab.sh
# shellcheck source=test/lib.sh
. "$top/test/lib.sh"
t_setup deb

pkgs=(libhaext1 libhaext-dev libhaext-pkcs11 hastatus)
installed=0
deb_cleanup() {
    if [ "$installed" = 1 ]; then
        dpkg -P "${pkgs[@]}" >/dev/null 2>&1 || true
    fi
    t_cleanup
}
trap deb_cleanup EXIT

# stop REASON: a failure the rest cannot run without.
stop() {
    notok "$1"
    t_done || true
    exit 1
}

[ "$(id -u)" = 0 ] || stop "test-deb installs packages: run it as root"
for p in "${pkgs[@]}"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$'; then
        stop "$p is installed already; remove it first (dpkg -P ${pkgs[*]})"
    fi
done
case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) PATH=$PATH:/usr/local/go/bin ;; esac
command -v go >/dev/null || stop "go is not on PATH (the package build needs Go 1.23 or newer)"
ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir=/usr/lib/$ma
version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)

# The copy: the tree's files as git sees them (tracked, and new ones not
# ignored), or without build/ and .git when it is not a git checkout.
src=$work/libhaext-$version
mkdir -p "$src"
if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$top" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -C "$src" -xf -
else
    tar -C "$top" --exclude=./build --exclude=./.git --exclude=./debian/build -cf - . | tar -C "$src" -xf -
fi

# The source package first (from the clean copy), for lintian's source checks.
check "dpkg-source -b builds the source package libhaext_$version.dsc" \
    bash -c "cd '$work' && dpkg-source -b '$(basename "$src")'"

# The binary packages, with the user's own Go caches: debhelper points HOME
# into debian/ while it builds, which would otherwise start them empty.
start=$(date +%s)
if (cd "$src" && GOCACHE=$(go env GOCACHE) GOMODCACHE=$(go env GOMODCACHE) \
    dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
    ok "dpkg-buildpackage -us -uc -b ($(($(date +%s) - start)) s)"
else
    tail -n 40 "$work/build.log" | sed 's/^/    /'
    stop "dpkg-buildpackage -us -uc -b"
fi
debs=()
for p in "${pkgs[@]}"; do
    debs+=("$work/${p}_${version}_$(dpkg --print-architecture).deb")
done
check "it builds ${pkgs[*]}" ls "${debs[@]}"

# lintian: no errors (exit status 0 with --fail-on error; a lintian that is
# missing or breaks fails too); its other tags are shown.
rc=0
lintian --fail-on error --info "$work"/libhaext_"${version}"_*.changes "$work/libhaext_$version.dsc" \
    >"$work/lintian.log" 2>&1 || rc=$?
grep -v '^N:' "$work/lintian.log" | grep -v 'running with root privileges' | sed 's/^/# /' || true
check "lintian reports no errors on the .changes and the .dsc (exit status $rc)" \
    bash -c "[ $rc = 0 ] && ! grep '^E:' '$work/lintian.log'"

export DEBIAN_FRONTEND=noninteractive
installed=1
check "apt-get install ./*.deb installs ${pkgs[*]}" \
    apt-get install -y --no-install-recommends "${debs[@]}"

# What each package holds.
check "libhaext1: $libdir/libhaext.so.$version, and libhaext.so.1 linked to it" bash -c "
    dpkg -L libhaext1 | grep -qx '$libdir/libhaext.so.$version' &&
    dpkg -L libhaext1 | grep -qx '$libdir/libhaext.so.1' &&
    [ \"\$(readlink '$libdir/libhaext.so.1')\" = libhaext.so.$version ]"
check "libhaext.so.$version has SONAME libhaext.so.1" \
    bash -c "readelf -d '$libdir/libhaext.so.$version' | grep -q 'SONAME.*\[libhaext.so.1\]'"
# (/lib is /usr/lib on a merged-/usr system: ldconfig and ldd may name either.)
check "ldconfig's cache has libhaext.so.1 in $libdir" \
    bash -c "ldconfig -p | grep -Eq 'libhaext\.so\.1 .*=> (/usr)?/lib/$ma/libhaext\.so\.1\$'"
check "libhaext1's symbols file names every CA_* the library exports, and only those" bash -c "
    diff <(nm -D --defined-only '$libdir/libhaext.so.1' | awk '{print \$3}' | sort) \
         <(sed -n 's/^ \(CA_[A-Za-z0-9_]*\)@Base .*/\1/p' /var/lib/dpkg/info/libhaext1:*.symbols | sort)"
check "libhaext-dev: cryptoki_ha.h, haext.pc and libhaext.so linked to libhaext.so.1" bash -c "
    dpkg -L libhaext-dev | grep -qx /usr/include/cryptoki_ha.h &&
    dpkg -L libhaext-dev | grep -qx '$libdir/pkgconfig/haext.pc' &&
    [ \"\$(readlink '$libdir/libhaext.so')\" = libhaext.so.1 ]"
check "libhaext-pkcs11: the front in $libdir/pkcs11 and the p11-kit module file as an example only" bash -c "
    dpkg -L libhaext-pkcs11 | grep -qx '$libdir/pkcs11/libhaext-pkcs11.so' &&
    dpkg -L libhaext-pkcs11 | grep -qx /usr/share/doc/libhaext-pkcs11/examples/libhaext-pkcs11.module &&
    ! dpkg -L libhaext-pkcs11 | grep -E '^(/usr/share/p11-kit|/etc)'"
check "hastatus: /usr/bin/hastatus and its man page" bash -c "
    dpkg -L hastatus | grep -qx /usr/bin/hastatus &&
    zcat \"\$(man -w hastatus)\" | grep -q '^\.TH HASTATUS 1'"
check "hastatus --help prints the usage and exits 0" \
    bash -c "out=\$(/usr/bin/hastatus --help 2>&1) && grep -q '^usage: hastatus' <<<\"\$out\""

# pkg-config and the example, with nothing but what the packages installed.
flags=$(pkg-config --cflags --libs haext 2>&1) || true
check "pkg-config --modversion haext is $version and --cflags --libs gives -lhaext ($flags)" bash -c "
    [ \"\$(pkg-config --modversion haext)\" = '$version' ] && echo '$flags' | grep -qw -- -lhaext"
# shellcheck disable=SC2086
check "the installed examples/ha_state.c builds with cc \$(pkg-config --cflags --libs haext)" \
    cc -Wall -Wextra -Werror /usr/share/doc/libhaext-dev/examples/ha_state.c $flags -o "$work/ha_state"
check "it loads $libdir/libhaext.so.1" \
    bash -c "env -u LD_LIBRARY_PATH ldd '$work/ha_state' | grep -Eq 'libhaext\.so\.1 => (/usr)?/lib/$ma/libhaext\.so\.1 '"

# The HA slot off (LibHAExtHASlot = 0), as in the front's other side-by-side
# tests: pkcs11-tool through the front then lists exactly the vendor's slots
# (the HA slot itself is test/ha's).
bash "$lab" up --dir "$work/lab-direct" --mode direct --members 3 --ha-slot 0 >"$work/lab.log" 2>&1 ||
    { cat "$work/lab.log"; stop "the SoftHSM2 lab comes up"; }
# shellcheck source=/dev/null
. "$work/lab-direct/env"
first=${HALAB_SERIALS%% *}
slot=$(softhsm2-util --show-slots | awk -v s="$first" '/^Slot [0-9]+/ {slot=$2} $1=="Serial" && $3==s {print slot; exit}')
check "the example reports all 3 members of the SoftHSM2 group alive" bash -c \
    "env -u LD_LIBRARY_PATH '$work/ha_state' '$slot' | tee /dev/stderr | grep -c ' alive$' | grep -qx 3"
check "the installed hastatus exits 0 on the same group, 3 members alive in its JSON" bash -c \
    "/usr/bin/hastatus --group halab --json | tee /dev/stderr | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert [m[\"alive\"] for g in d[\"groups\"] for m in g[\"members\"]] == [True] * 3'"

front=$libdir/pkcs11/libhaext-pkcs11.so
check "pkcs11-tool through the installed front lists the tokens the vendor lists" \
    bash -c "diff <(pkcs11-tool --module '$HALAB_MODULE' -L 2>&1) <(pkcs11-tool --module '$front' -L 2>&1)"
check "CA_GetCurrentHAState through the installed front loads $libdir/libhaext.so.1 and reports all 3 members alive" \
    env -u LD_LIBRARY_PATH /usr/bin/python3 -c '
import ctypes, sys
f = ctypes.CDLL(sys.argv[1])
lst = ctypes.c_void_p()
assert f.C_GetFunctionList(ctypes.byref(lst)) == 0
init = ctypes.cast(ctypes.cast(lst.value + 8, ctypes.POINTER(ctypes.c_void_p))[0],
                   ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p))
assert init(None) == 0
st = (ctypes.c_ubyte * 2048)()
rv = f.CA_GetCurrentHAState(ctypes.c_ulong(int(sys.argv[2])), st)
n = ctypes.c_ulong.from_buffer(st, 8 + 32 * 16).value
statuses = [ctypes.c_ulong.from_buffer(st, 8 + 16 * i + 8).value for i in range(n)]
maps = {l.split()[-1] for l in open("/proc/self/maps") if "libhaext.so" in l}
print("rv", rv, "statuses", statuses, "libhaext", maps)
assert rv == 0 and statuses == [0, 0, 0]
assert maps == {sys.argv[3]}, maps
' "$front" "$slot" "$libdir/libhaext.so.$version"
# p11-kit reads the example module file as it is (it names the front
# relative to p11-kit's module folder), in a private mount namespace over
# the machine's module folder.
mkdir -p "$work/modules"
cp /usr/share/doc/libhaext-pkcs11/examples/libhaext-pkcs11.module "$work/modules/"
check "p11-kit loads the front from the example module file and sees the group's tokens through it" \
    unshare -m bash -c "mount --make-rprivate / && mount --bind '$work/modules' /usr/share/p11-kit/modules &&
        p11-kit list-modules | tee /dev/stderr | grep -A30 '^libhaext-pkcs11' | grep -q 'token: m00'"

# Purge: nothing of the packages is left for the tests that follow.
check "dpkg -P ${pkgs[*]}" dpkg -P "${pkgs[@]}"
installed=0
check "after the purge: no package, no library in ldconfig's cache, no files" bash -c "
    ! dpkg-query -W -f='\${Status}\n' ${pkgs[*]} 2>/dev/null | grep -q ' installed\$' &&
    ! ldconfig -p | grep -q libhaext &&
    [ ! -e '$libdir/libhaext.so.1' ] && [ ! -e '$front' ] && [ ! -e /usr/bin/hastatus ] &&
    [ ! -e /usr/include/cryptoki_ha.h ] && [ ! -e '$libdir/pkgconfig/haext.pc' ]"

t_done
