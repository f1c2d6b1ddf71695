#!/usr/bin/env bash
# make demo: start the Tower (if it is not running yet), create an OverCloud of a DevOps Post
# and 3 logical clusters across the two local sites, show the workflow live, say where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-6125}"
URL="http://127.0.0.1:${PORT}"
OC=.venv/bin/overcloud
STATE="$(.venv/bin/python -c 'from overcloud.config import Settings; print(Settings().state_dir)')"
mkdir -p "$STATE"

if curl -fsS "$URL/healthz" >/dev/null 2>&1; then
  echo "a Tower already answers on $URL; using it"
else
  echo "starting the Tower on $URL (state in $STATE, log in $STATE/tower.log)"
  setsid nohup "$OC" serve --host 127.0.0.1 --port "$PORT" >"$STATE/tower.log" 2>&1 < /dev/null &
  echo $! > "$STATE/tower.pid"
  for _ in $(seq 1 100); do
    curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "$STATE/tower.pid")" 2>/dev/null; then
      echo "the Tower exited; its log:" >&2; tail -n 20 "$STATE/tower.log" >&2; exit 1
    fi
    sleep 0.1
  done
fi

"$OC" --url "$URL" create --clusters 3 --size m1.small --site local-a --site local-b --name demo --wait
ID="$("$OC" --url "$URL" -o json list | .venv/bin/python -c 'import json,sys; r=[o for o in json.load(sys.stdin) if o["name"]=="demo" and o["status"]=="READY"]; print(r[-1]["overcloud_ID"] if r else "")')"
"$OC" --url "$URL" show "$ID"
"$OC" --url "$URL" topology "$ID"
echo "composing the smart-energy IoT-Cloud service (the first run builds its image: ~40 s)"
"$OC" --url "$URL" demo "$ID"
cat <<EOT

Where to look:
  overview     .venv/bin/overcloud list            (token: $STATE/admin.token)
  one          .venv/bin/overcloud show $ID
  workflow     .venv/bin/overcloud workflow $ID
  live         .venv/bin/overcloud top $ID              (per-box CPU, memory, network; busiest flows)
  graph        .venv/bin/overcloud -o dot topology $ID
  services     .venv/bin/overcloud services $ID      (smart-energy: placement, replicas, restarts)
  datalake     .venv/bin/overcloud datalake credentials $ID   (S3 keys; S3 is published on the Post's site address, printed above)
  API          curl -H "Authorization: Bearer \$(cat $STATE/admin.token)" $URL/overclouds/$ID
  events       curl -N -H "Authorization: Bearer \$(cat $STATE/admin.token)" $URL/overclouds/$ID/events
  metrics      curl -H "Authorization: Bearer \$(cat $STATE/admin.token)" $URL/metrics
  boxes        ip netns list | grep oc-${ID:0:8}
  delete       .venv/bin/overcloud delete $ID --wait
  stop it all  make demo-stop   (deletes every OverCloud of this Tower, then stops it)
EOT
