#!/usr/bin/env bash
# Run the whole suite. pytest's exit 5 (no tests collected) is a failure here.
#
# With no arguments (`make test`), the tests on the labs — the cloud tests (tests/integration/clouds:
# the OpenStack and AWS labs, mostly waiting on cloud APIs and booting instances) and the ssh tests
# (tests/integration/ssh*: the simulated hosts lab) — run in a second pytest process beside the
# rest of the suite. They share nothing with it: their own lab names, and local bridges and address
# ranges of their own (towers.SIDE_SITES); on a fresh machine the labs' one-time builds (the
# OpenStack chroot, the instances' rootfs) happen meanwhile. The second run's output follows the
# first's. With arguments, one pytest runs exactly what is asked.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

judge() {  # judge NAME RC: 5 (nothing collected) is a failure
    if [ "$2" = 5 ]; then echo "$1: no tests were collected: that is a failure" >&2; return 1; fi
    return "$2"
}

if [ "$#" -gt 0 ]; then
    "$PY" -m pytest "$@"
    judge pytest $?
    exit $?
fi

SIDE=(tests/integration/ssh tests/integration/ssh_e2e tests/integration/ssh_faults tests/integration/ssh_grow
      tests/integration/ssh_host tests/integration/ssh_wan tests/integration/clouds)
IGNORE=()
for d in "${SIDE[@]}"; do IGNORE+=("--ignore=$d"); done
clouds_log=$(mktemp /tmp/overcloud-lab-tests.XXXXXX.log)
"$PY" -m pytest -p no:cacheprovider "${SIDE[@]}" >"$clouds_log" 2>&1 &
clouds_pid=$!
stop_clouds() { kill -INT "$clouds_pid" 2>/dev/null; wait "$clouds_pid" 2>/dev/null; }
trap 'stop_clouds; exit 130' INT TERM

"$PY" -m pytest "${IGNORE[@]}" tests
main_rc=$?
echo
echo "== the lab tests (${SIDE[*]}), run beside the above; log $clouds_log =="
wait "$clouds_pid"
clouds_rc=$?
trap - INT TERM
cat "$clouds_log"
judge "the suite" "$main_rc"; main_rc=$?
judge "the lab tests" "$clouds_rc"; clouds_rc=$?
[ "$clouds_rc" = 0 ] && rm -f "$clouds_log"
if [ "$main_rc" != 0 ] || [ "$clouds_rc" != 0 ]; then
    echo "FAILED: the suite exited $main_rc, the lab tests $clouds_rc" >&2
    exit 1
fi
