#!/usr/bin/env bash
# make demo-stop: delete every OverCloud the demo Tower knows (delete verifies nothing is left),
# then stop the Tower it started (by the PID it recorded).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-6125}"
URL="http://127.0.0.1:${PORT}"
OC=.venv/bin/overcloud
STATE="$(.venv/bin/python -c 'from overcloud.config import Settings; print(Settings().state_dir)')"
if curl -fsS "$URL/healthz" >/dev/null 2>&1; then
  for id in $("$OC" --url "$URL" -o json list | .venv/bin/python -c 'import json,sys; print(" ".join(o["overcloud_ID"] for o in json.load(sys.stdin) if o["status"] != "DELETING"))'); do
    "$OC" --url "$URL" delete "$id" --wait
  done
fi
if [ -f "$STATE/tower.pid" ] && kill -0 "$(cat "$STATE/tower.pid")" 2>/dev/null; then
  kill "$(cat "$STATE/tower.pid")" && echo "Tower stopped"
  rm -f "$STATE/tower.pid"
fi
# the Tower's Construction DataLake runs under its own supervisord (it outlives Tower restarts)
"$OC" store stop
# and the site bridges, their gateway addresses and the host firewall table (refused while boxes remain)
.venv/bin/python - <<'PY'
from overcloud.config import Settings, tower_identity
from overcloud.underclouds.local import LocalHost, LocalSiteConfig

s = Settings()
sites = [LocalSiteConfig(name=x.name, bridge=x.bridge, cidr=x.cidr) for x in s.sites if x.kind == "local"]
if sites:
    from overcloud.underclouds.base import UnderCloudError
    try:
        LocalHost(s.state_dir / "local", sites=sites, overlay_cidr=s.overlay_cidr,
                  tower_id=tower_identity(s.state_dir)).teardown_sites()
    except UnderCloudError as exc:
        raise SystemExit(f"site bridges left in place: {exc}")
    print("site bridges removed:", ", ".join(x.bridge for x in sites))
PY
