#!/usr/bin/env bash
# Run the whole suite. pytest's exit 5 (no tests collected) is a failure here.
#
# With no arguments (`make test`), the cloud tests (tests/integration/clouds: the OpenStack and AWS
# labs, ~12 minutes of mostly waiting on cloud APIs and booting instances) run in a second pytest
# process beside the rest of the suite: they share nothing with it (their own lab names, local
# bridges and address ranges; see tests/integration/clouds/conftest.py), and on a fresh machine
# the labs' one-time builds (the OpenStack chroot, the instances' rootfs) happen meanwhile. Their
# output follows the main run's. With arguments, one pytest runs exactly what is asked.
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

clouds_log=$(mktemp /tmp/overcloud-cloud-tests.XXXXXX.log)
"$PY" -m pytest -p no:cacheprovider tests/integration/clouds >"$clouds_log" 2>&1 &
clouds_pid=$!
stop_clouds() { kill -INT "$clouds_pid" 2>/dev/null; wait "$clouds_pid" 2>/dev/null; }
trap 'stop_clouds; exit 130' INT TERM

"$PY" -m pytest --ignore=tests/integration/clouds tests
main_rc=$?
echo
echo "== the cloud tests (tests/integration/clouds, run beside the above; log $clouds_log) =="
wait "$clouds_pid"
clouds_rc=$?
trap - INT TERM
cat "$clouds_log"
judge "the suite" "$main_rc"; main_rc=$?
judge "the cloud tests" "$clouds_rc"; clouds_rc=$?
[ "$clouds_rc" = 0 ] && rm -f "$clouds_log"
if [ "$main_rc" != 0 ] || [ "$clouds_rc" != 0 ]; then
    echo "FAILED: the suite exited $main_rc, the cloud tests $clouds_rc" >&2
    exit 1
fi
