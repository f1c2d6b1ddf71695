#!/usr/bin/env bash
# Run the whole suite. pytest's exit 5 (no tests collected) is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "no tests were collected: that is a failure" >&2; exit 1; fi
exit $rc
