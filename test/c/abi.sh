#!/usr/bin/env bash
# The ABI as applications meet it (issue 11): compiles test/c/abi/client.c
# against each header generation and layout, in each include order that can
# work, as C99, C11, C++98 and C++17 with -Wall -Wextra -Werror, links it
# against libhaext.so and runs it against the lab's SoftHSM2 group. Also
# checks that the builds that must not work stop at compile time with a
# message naming the fix. Run by test/c/run.sh inside a direct lab (needs
# LIBHAEXT, HALAB_SCRATCH and the lab's environment); prints one line per
# build and run, with the client's own lines when it fails, and
# "N passed, N failed" over all the client checks.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
lib=${LIBHAEXT:?LIBHAEXT is not set}
out=${HALAB_SCRATCH:?HALAB_SCRATCH is not set}/abi
cc=${CC:-cc}
cxx=${CXX:-c++}
mkdir -p "$out"
read -r -a p11 <<<"$(pkg-config --cflags p11-kit-1)"
passed=0
failed=0

result() { # result OK DESCRIPTION
    if [ "$1" = 1 ]; then
        passed=$((passed + 1))
        echo "ok - $2"
    else
        failed=$((failed + 1))
        echo "not ok - $2"
    fi
}

# compile STD VENDOR ORDER OUTPUT [DEFINES...]: the client as C or C++.
compile() {
    local std=$1 vendor=$2 order=$3 bin=$4 cmd
    shift 4
    case $std in
    c++*) cmd=("$cxx" -x c++) ;;
    *) cmd=("$cc" -x c) ;;
    esac
    cmd+=(-std="$std" -O1 -Wall -Wextra -Werror "${p11[@]}" -I"$top/include" -DCLIENT_ORDER="$order" "$@")
    [ "$vendor" != - ] && cmd+=(-I"$here/abi/$vendor")
    "${cmd[@]}" -o "$bin" "$here/abi/client.c" -x none "$lib" -Wl,-rpath,"$(dirname "$lib")" -ldl \
        >"$bin.cc.log" 2>&1
}

# build_and_run NAME VENDOR ORDER WHAT [DEFINES...]: in every language
# standard, a build that must compile without a warning and pass every check.
build_and_run() {
    local name=$1 vendor=$2 order=$3 what=$4 std bin counts rc
    shift 4
    for std in c99 c11 c++98 c++17; do
        bin=$out/$name-$std
        if ! compile "$std" "$vendor" "$order" "$bin" "$@"; then
            result 0 "$std: $what: compiles with -Werror"
            sed 's/^/     /' "$bin.cc.log"
            continue
        fi
        rc=0
        timeout 60 "$bin" >"$bin.log" 2>&1 || rc=$?
        counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$bin.log" | tail -n 1)
        if [ "$rc" -eq 0 ] && [ -n "$counts" ] && [ "${counts#* passed, }" = "0 failed" ]; then
            passed=$((passed + ${counts%% *}))
            echo "ok - $std: $what: compiles with -Werror, ${counts%% *} checks pass"
        else
            failed=$((failed + 1))
            echo "not ok - $std: $what: exit $rc"
            sed 's/^/     /' "$bin.log"
        fi
    done
}

# must_fail NAME VENDOR ORDER PATTERN WHAT [DEFINES...]: a build that cannot
# work stops at compile time, with PATTERN in the compiler's message.
must_fail() {
    local name=$1 vendor=$2 order=$3 pattern=$4 what=$5 std bin
    shift 5
    for std in c11 c++17; do
        bin=$out/$name-$std
        if compile "$std" "$vendor" "$order" "$bin" "$@"; then
            result 0 "$std: $what: compiled, but must not"
        elif grep -qE "$pattern" "$bin.cc.log"; then
            result 1 "$std: $what: does not compile ($pattern)"
        else
            result 0 "$std: $what: fails, but without naming $pattern"
            sed 's/^/     /' "$bin.cc.log"
        fi
    done
}

build_and_run luna5 luna5 1 "Luna 5 header (listSize CK_USHORT), then cryptoki_ha.h"
build_and_run luna5-ulong luna5 1 "Luna 5 header (listSize CK_ULONG, prototypes), then cryptoki_ha.h" \
    -DTEST_LUNA_LISTSIZE_ULONG -DTEST_LUNA_PROTOTYPES
build_and_run luna5-alone luna5 5 "Luna 5 header (prototypes) alone, without cryptoki_ha.h" -DTEST_LUNA_PROTOTYPES
build_and_run classic-base - 2 "pkcs11.h, then cryptoki_ha.h (classic)"
build_and_run classic-ha - 3 "cryptoki_ha.h, then pkcs11.h (classic)"
build_and_run luna7 luna7 1 "Luna 7 header, then cryptoki_ha.h with LIBHAEXT_HA_LAYOUT_SA6" \
    -DLIBHAEXT_HA_LAYOUT_SA6
build_and_run luna7-proto luna7 1 "Luna 7 header (prototypes), then cryptoki_ha.h with LIBHAEXT_HA_LAYOUT_SA6" \
    -DLIBHAEXT_HA_LAYOUT_SA6 -DTEST_LUNA_PROTOTYPES
build_and_run sa6-base - 2 "pkcs11.h, then cryptoki_ha.h with LIBHAEXT_HA_LAYOUT_SA6" -DLIBHAEXT_HA_LAYOUT_SA6
build_and_run sa6-ha - 3 "cryptoki_ha.h with LIBHAEXT_HA_LAYOUT_SA6, then pkcs11.h" -DLIBHAEXT_HA_LAYOUT_SA6

must_fail luna7-nomacro luna7 1 CK_HA_STATUS_has_text_serials_define_LIBHAEXT_HA_LAYOUT_SA6 \
    "Luna 7 header without LIBHAEXT_HA_LAYOUT_SA6"
must_fail luna5-sa6 luna5 1 LIBHAEXT_HA_LAYOUT_SA6_is_defined_but_CK_HA_STATUS_has_numeric_serials \
    "Luna 5 header with LIBHAEXT_HA_LAYOUT_SA6" -DLIBHAEXT_HA_LAYOUT_SA6
must_fail luna5-after luna5 4 "CK_HA_MEMBER|CK_USHORT" "cryptoki_ha.h before the Luna header"

# The example program in both layouts.
for layout in classic sa6; do
    defs=()
    [ "$layout" = sa6 ] && defs=(-DLIBHAEXT_HA_LAYOUT_SA6)
    if "$cc" -std=c99 -Wall -Wextra -Werror "${p11[@]}" -I"$top/include" "${defs[@]}" -o "$out/ha_state-$layout" \
        "$top/examples/ha_state.c" "$lib" -Wl,-rpath,"$(dirname "$lib")" >"$out/ha_state-$layout.cc.log" 2>&1; then
        result 1 "examples/ha_state.c compiles with -Werror ($layout)"
    else
        result 0 "examples/ha_state.c compiles with -Werror ($layout)"
        sed 's/^/     /' "$out/ha_state-$layout.cc.log"
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
