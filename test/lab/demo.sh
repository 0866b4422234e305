#!/usr/bin/env bash
# demo.sh - the README's first command (make demo): a SoftHSM2 HA group of
# three members, and its state as CA_GetCurrentHAState reports it.
# The lab stays in build/demo-lab for you to look at; `make demo` again
# rebuilds it from scratch.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
lab=$top/test/lab/lab.sh
dir=$top/build/demo-lab

bash "$lab" up --dir "$dir" --mode direct --members 3 --group-serial 1000001 --label demo >/dev/null
# shellcheck source=/dev/null
. "$dir/env"
first=${HALAB_SERIALS%% *}
slot=$(SOFTHSM2_CONF=$SOFTHSM2_CONF softhsm2-util --show-slots |
    awk -v s="$first" '/^Slot [0-9]+/ {slot=$2} $1=="Serial" && $3==s {print slot; exit}')

echo "Configuration: $dir/Chrystoki.conf"
sed 's/^/    /' "$dir/Chrystoki.conf"
echo
echo "An application's call, CA_GetCurrentHAState(slot $slot) (examples/ha_state.c):"
bash "$lab" exec --dir "$dir" -- "$top/build/ha_state" "$slot"
echo
echo "The operator's view, build/hastatus:"
bash "$lab" exec --dir "$dir" -- "$top/build/hastatus"
echo
echo "Try it yourself:  . $dir/env && $top/build/hastatus --json"

# The HA slot: the same kind of group behind p11-kit servers (one process
# per member, so one can be killed), every member holding the same keys,
# through the front module. The group is one slot; a member killed while 4
# threads sign costs the application nothing.
ha=$top/build/demo-ha-lab
bash "$lab" up --dir "$ha" --mode net --members 3 --group-serial 1000002 --label demo-ha >/dev/null
bash "$top/test/ha/keys.sh" "$ha"
sed -i 's/^   VirtualToken00Members = .*/&\n   VirtualToken00LibHAExtOpTimeout = 500;/' "$ha/Chrystoki.conf"
front=$top/build/libhaext-pkcs11.so
echo
echo "The HA slot: the group demo-ha as one slot, through the front ($front):"
bash "$lab" exec --dir "$ha" -- pkcs11-tool --module "$front" -L 2>/dev/null | grep -A3 '0x48410000' | sed 's/^/    /'
echo
echo "4 threads sign on the HA slot for 6 s (every signature verified); member m00 is killed 2 s in:"
bash "$lab" exec --dir "$ha" -- "$top/build/ha_host" "$front" 0x48410000 "$ha/hakeys" storm 6 4 >"$ha/signing.txt" 2>&1 &
pid=$!
sleep 2
bash "$lab" kill --dir "$ha" 0 >/dev/null
wait "$pid" || true
grep -v '^second' "$ha/signing.txt" | sed 's/^/    /'
echo
echo "(ops: signatures made; errors: failures the application saw; bad: signatures that did not verify)"
