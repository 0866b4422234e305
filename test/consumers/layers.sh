#!/usr/bin/env bash
# layers.sh - the shape of internal/front (front.h, "Layers"): each file
# calls only the files before it in LAYERS (so no two call each other),
# every file has at most 400 lines and every function at most 60.
#
#   bash test/consumers/layers.sh      (CC, default cc)
#
# Who calls whom comes from the compiled objects (nm): a file's undefined
# symbols that another file of the front defines. Inline functions of the
# headers count for the file that includes them.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
front=$top/internal/front
cc=${CC:-cc}
LAYERS="conf_text conf_parse conf haconf vendor busy table loans own lend gate events slotlist hanote hapin harec hawork hamember halogin
haobj haop hacall haslot hasess hakeys setup host session front
iface attach ca"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0

# Every .c is in LAYERS, and the other way round.
for f in "$front"/*.c; do
    b=$(basename "$f" .c)
    grep -qw "$b" <<<"$LAYERS" || { echo "layers: $b.c is not in LAYERS (add it to front.h and here)"; fail=1; }
done
rank=0
declare -A rank_of
for b in $LAYERS; do
    [ -f "$front/$b.c" ] || { echo "layers: $b.c is missing"; fail=1; continue; }
    rank_of[$b]=$rank
    rank=$((rank + 1))
    # shellcheck disable=SC2046
    "$cc" -std=gnu11 -O2 -Wall -Wextra -Werror -fPIC $(pkg-config --cflags p11-kit-1) -I"$top/internal/hostapi" \
        -I"$front" -c -o "$work/$b.o" "$front/$b.c"
    nm --defined-only "$work/$b.o" | awk '$2 ~ /^[TDBRV]$/ {print $3}' | sed "s/\$/ $b/" >>"$work/defined"
done

# An upward call: file a uses a symbol of file b, where b is not before a.
for b in $LAYERS; do
    [ -f "$work/$b.o" ] || continue
    for sym in $(nm --undefined-only "$work/$b.o" | awk '{print $2}'); do
        owner=$(awk -v s="$sym" '$1 == s {print $2}' "$work/defined")
        [ -n "$owner" ] && [ "$owner" != "$b" ] || continue
        if [ "${rank_of[$owner]}" -ge "${rank_of[$b]}" ]; then
            echo "layers: $b.c uses $sym of $owner.c, which is not below it"
            fail=1
        fi
    done
done

# Lengths: files, and functions (from the line that starts the definition
# to the closing brace at column 0).
for f in "$front"/*.c "$front"/*.h; do
    n=$(wc -l <"$f")
    [ "$n" -le 400 ] || { echo "layers: $(basename "$f") has $n lines (> 400)"; fail=1; }
    awk -v file="$(basename "$f")" '
        /^[A-Za-z_].*\(/ && !/;[ \t]*$/ && !/=/ { start = NR; name = $0; body = 0 }
        /^\{/ { body = start > 0 }
        /^\}/ { if (body && NR - start + 1 > 60) { printf "layers: %s: %d lines: %s\n", file, NR - start + 1, name; bad = 1 }
                start = 0; body = 0 }
        END { exit bad }' "$f" || fail=1
done

[ "$fail" = 0 ] && echo "layers: ok ($(wc -w <<<"$LAYERS") files)"
exit "$fail"
