#!/usr/bin/env bash
# Tests `make install` into a DESTDIR: the files and symlinks, the SONAME,
# a haext.pc free of DESTDIR, and examples/ha_state.c built with
# `cc ha_state.c $(pkg-config --cflags --libs haext)` against the staged
# tree, then run on a SoftHSM2 group with the installed hastatus beside it;
# the front module and its p11-kit module file, loaded by pkcs11-tool and
# by p11-kit.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
lab=$top/test/lab/lab.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/haext-install.XXXXXX")
stage=$work/stage
prefix=/usr/local
passed=0
failed=0
cleanup() {
    bash "$lab" down --dir "$work/lab" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

ok() { # ok DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@" >>"$work/detail.log" 2>&1; then
        echo "ok - $what"
        passed=$((passed + 1))
    else
        echo "not ok - $what"
        sed 's/^/    /' "$work/detail.log" | tail -n 20
        failed=$((failed + 1))
    fi
    : >"$work/detail.log"
}

make -s -C "$top" install DESTDIR="$stage" PREFIX="$prefix" >"$work/install.log" 2>&1 ||
    { cat "$work/install.log"; echo "0 passed, 1 failed"; exit 1; }
lib=$stage$prefix/lib

ok "libhaext.so.1.0.0, libhaext.so.1 and libhaext.so installed" \
    test -f "$lib/libhaext.so.1.0.0" -a "$(readlink "$lib/libhaext.so.1")" = libhaext.so.1.0.0 \
    -a "$(readlink "$lib/libhaext.so")" = libhaext.so.1
ok "SONAME is libhaext.so.1" bash -c "readelf -d '$lib/libhaext.so.1.0.0' | grep -q 'SONAME.*\[libhaext.so.1\]'"
ok "header, hastatus and haext.pc installed" \
    test -f "$stage$prefix/include/cryptoki_ha.h" -a -x "$stage$prefix/bin/hastatus" -a -f "$lib/pkgconfig/haext.pc"
ok "haext.pc names the PREFIX, not the DESTDIR" \
    bash -c "grep -qx 'prefix=$prefix' '$lib/pkgconfig/haext.pc' && ! grep -q '$stage' '$lib/pkgconfig/haext.pc'"
# A second install with another PREFIX right after the first must not reuse
# the first's haext.pc.
make -s -C "$top" install DESTDIR="$work/stage2" PREFIX=/opt/haext >"$work/install2.log" 2>&1 ||
    { cat "$work/install2.log"; failed=$((failed + 1)); }
ok "a second install with PREFIX=/opt/haext installs a haext.pc that names /opt/haext" \
    bash -c "grep -qx 'prefix=/opt/haext' '$work/stage2/opt/haext/lib/pkgconfig/haext.pc' &&
        grep -qx 'libdir=/opt/haext/lib' '$work/stage2/opt/haext/lib/pkgconfig/haext.pc'"

# Build the example as its comment says, with the staged tree in front of
# the prefix (the files are not in /usr/local until a real install).
flags=$(PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config --cflags --libs haext)
ok "pkg-config --cflags --libs haext: $flags" test -n "$flags"
# shellcheck disable=SC2086
ok "examples/ha_state.c builds with cc \$(pkg-config --cflags --libs haext)" \
    cc -Wall -Wextra -Werror "$top/examples/ha_state.c" $flags -I"$stage$prefix/include" -L"$lib" \
    -o "$work/ha_state"
ok "the example needs libhaext.so.1" bash -c "readelf -d '$work/ha_state' | grep -q 'NEEDED.*\[libhaext.so.1\]'"

# The HA slot off (LibHAExtHASlot = 0), as in the front's other side-by-side
# tests: pkcs11-tool through the front then lists exactly the vendor's slots.
bash "$lab" up --dir "$work/lab" --mode direct --members 3 --ha-slot 0 >/dev/null
# shellcheck source=/dev/null
. "$work/lab/env"
first=${HALAB_SERIALS%% *}
slot=$(softhsm2-util --show-slots | awk -v s="$first" '/^Slot [0-9]+/ {slot=$2} $1=="Serial" && $3==s {print slot; exit}')
ok "the installed example reports all 3 members alive" bash -c \
    "LD_LIBRARY_PATH='$lib' '$work/ha_state' '$slot' | tee /dev/stderr | grep -c ' alive$' | grep -qx 3"
ok "the installed hastatus exits 0 on the same group" "$stage$prefix/bin/hastatus" --group halab

# The front module, in $(LIBDIR)/pkcs11 with its example p11-kit module file.
front=$lib/pkcs11/libhaext-pkcs11.so
modfile=$stage$prefix/share/doc/libhaext/libhaext-pkcs11.module
ok "libhaext-pkcs11.so installed in \$(LIBDIR)/pkcs11" test -f "$front"
ok "the example p11-kit module file names the installed front, not the DESTDIR" \
    bash -c "grep -qx 'module: $prefix/lib/pkcs11/libhaext-pkcs11.so' '$modfile' && ! grep -q '$stage' '$modfile'"
ok "pkcs11-tool through the installed front lists the tokens the vendor lists" \
    bash -c "diff <(pkcs11-tool --module '$HALAB_MODULE' -L 2>&1) <(pkcs11-tool --module '$front' -L 2>&1)"
# Its CA_* calls load the installed libhaext.so.1, one directory up.
ok "CA_GetCurrentHAState through the installed front loads \$(LIBDIR)/libhaext.so.1 and reports all 3 members alive" \
    /usr/bin/python3 -c '
import ctypes, sys
f = ctypes.CDLL(sys.argv[1])
lst = ctypes.c_void_p()
assert f.C_GetFunctionList(ctypes.byref(lst)) == 0
init = ctypes.cast(ctypes.cast(lst.value + 8, ctypes.POINTER(ctypes.c_void_p))[0], ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p))
assert init(None) == 0
st = (ctypes.c_ubyte * 2048)()
rv = f.CA_GetCurrentHAState(ctypes.c_ulong(int(sys.argv[2])), st)
n = ctypes.c_ulong.from_buffer(st, 8 + 32 * 16).value
statuses = [ctypes.c_ulong.from_buffer(st, 8 + 16 * i + 8).value for i in range(n)]
print("rv", rv, "statuses", statuses)
assert rv == 0 and statuses == [0, 0, 0]
' "$front" "$slot"
# p11-kit loads the front from the module file (pointed at the staged
# front), in a private mount namespace over the machine's module folder.
mkdir -p "$work/modules"
sed "s#^module: .*#module: $front#" "$modfile" >"$work/modules/libhaext-pkcs11.module"
ok "p11-kit loads the front from the module file and sees the group's tokens through it" \
    unshare -m bash -c "mount --make-rprivate / && mount --bind '$work/modules' /usr/share/p11-kit/modules &&
        p11-kit list-modules | tee /dev/stderr | grep -A30 '^libhaext-pkcs11' | grep -q 'token: m00'"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
