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
