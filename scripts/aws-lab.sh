#!/usr/bin/env bash
# The AWS lab: EC2 stood in by moto in server mode on loopback, and a harness that boots every
# instance moto runs as a namespace instance (docs/underclouds.md, "The AWS lab").
#
#   scripts/aws-lab.sh up DIR      moto on 127.0.0.1:<free port> (log DIR/moto.log), DIR/aws/credentials and
#                                  DIR/aws/config (profile overcloud-lab: the only place the lab's key lives),
#                                  DIR/sites.yaml (site aws-1, usable as OVERCLOUD_SITES_FILE), and the harness
#                                  lab/aws_harness.py (state and log in DIR/harness). Prints the sites file.
#   scripts/aws-lab.sh down DIR    stop the harness (it kills the instances it booted), kill any instance left
#                                  in DIR/harness, stop moto. Idempotent. DIR's files stay.
#   scripts/aws-lab.sh status DIR  moto's URL and PID, the harness's PID, the namespace instances
#
# Processes are recorded in DIR/pids as "role pid starttime" and killed by those PIDs only (after
# checking the start time, so a reused PID is never hit). One lab per machine: a second `up` while one
# is up is refused, naming the DIR to pass to `down` (moto's port is free-picked, but the harness's
# bridges and instances are named from moto's ids, and two harnesses would fight over the guard).
# OVERCLOUD_AWS_LAB_HARNESS=0 skips the harness (moto alone: no instance boots). The namespace
# instances' root filesystem is built once (lab/instance.py rootfs, ~70 s, cached in
# /var/cache/overcloud/instance-rootfs) by `up` when the harness runs.
set -euo pipefail

MARKER=/run/overcloud-aws-lab.dir  # the DIR of the lab that is up
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${OVERCLOUD_PYTHON:-$ROOT/.venv/bin/python}
SYSPY=/usr/bin/python3  # the harness and lab/instance.py run as root under the system Python (python3-boto3)
PROFILE=overcloud-lab
REGION=us-east-1
# the lab's address range (the instances' subnets): unreachable here until an
# instance's bridge gives its /24 a route, so a packet to an instance that is not booted yet (the
# Tower's SSH retries while the harness boots it) fails at once instead of taking the machine's
# default route off the machine. Removed by down.
LAB_RANGES=(10.91.0.0/16)  # not the box pool: the Tower guards that one (proto 88)
RANGE_PROTO=89
AMI=ami-785db401  # one of the AMIs moto ships (an Ubuntu 16.04 name; the harness boots our rootfs whatever it is)

die() { echo "aws-lab: $*" >&2; exit 1; }

starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null || true; }

alive() {  # alive PID STARTTIME: the recorded process still runs (not a reused PID, not a zombie)
    [ -n "$1" ] && [ -e "/proc/$1" ] && [ "$(starttime "$1")" = "$2" ] \
        && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

pid_of() {  # pid_of DIR ROLE: "pid starttime" of ROLE's last record
    [ -f "$1/pids" ] && awk -v r="$2" '$1 == r {p = $2 " " $3} END {print p}' "$1/pids" || true
}

role_alive() {  # role_alive DIR ROLE
    local rec
    rec=$(pid_of "$1" "$2")
    [ -n "$rec" ] && alive $rec
}

stop_role() {  # stop_role DIR ROLE SECONDS: SIGTERM, wait, then SIGKILL
    local rec pid st i
    rec=$(pid_of "$1" "$2")
    [ -n "$rec" ] || return 0
    read -r pid st <<<"$rec"
    alive "$pid" "$st" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq $(( $3 * 10 ))); do
        alive "$pid" "$st" || return 0
        sleep 0.1
    done
    echo "aws-lab: $2 (pid $pid) did not stop within $3 s: killed" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 50); do alive "$pid" "$st" || return 0; sleep 0.1; done
}

url_of() { cat "$1/endpoint" 2>/dev/null || true; }

cmd_down() {
    local dir=$1
    [ -d "$dir" ] || { echo "aws-lab: nothing at $dir"; return 0; }
    stop_role "$dir" harness 170  # it waits for boots under way (up to 150 s), then kills its instances
    if [ -d "$dir/harness/instances" ]; then  # a harness killed with -9 leaves its instances: kill them here
        "$SYSPY" - "$ROOT/lab" "$dir/harness/instances" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import instance
for rec in instance.list_instances(sys.argv[2]):
    instance.kill(rec["name"], sys.argv[2])
    print(f"aws-lab: instance {rec['name']} killed")
EOF
    fi
    stop_role "$dir" moto 10
    local r
    for r in "${LAB_RANGES[@]}"; do ip route del unreachable "$r" proto $RANGE_PROTO 2>/dev/null || true; done
    rm -f "$dir/pids"
    if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$dir" ]; then rm -f "$MARKER"; fi
    echo "aws-lab: down ($dir)"
}

record() {  # record DIR ROLE PID
    echo "$2 $3 $(starttime "$3")" >>"$1/pids"
}

cmd_up() {
    local dir=$1 port url secret access other
    mkdir -p "$dir"
    exec 9>"$MARKER.lock"
    flock -n 9 || die "another aws-lab up/down is under way"
    if [ -f "$MARKER" ]; then
        other=$(cat "$MARKER")
        if role_alive "$other" moto; then
            [ "$other" = "$dir" ] && { echo "aws-lab: already up ($(url_of "$dir")); sites: $dir/sites.yaml"; return 0; }
            die "an AWS lab is up in $other: scripts/aws-lab.sh down $other first (one lab per machine)"
        fi
        echo "aws-lab: the lab of $other is gone: cleaning what it left" >&2
        cmd_down "$other" >/dev/null
    fi
    echo "$dir" >"$MARKER"
    UP_DIR=$dir
    trap 'if [ -n "${UP_DIR:-}" ]; then echo "aws-lab: up failed: taking down what it made" >&2; cmd_down "$UP_DIR" >&2; fi' EXIT
    rm -f "$dir/pids"
    mkdir -p "$dir/aws" "$dir/harness"
    chmod 700 "$dir/aws"
    local r
    for r in "${LAB_RANGES[@]}"; do ip route replace unreachable "$r" proto $RANGE_PROTO; done

    local harness=${OVERCLOUD_AWS_LAB_HARNESS:-1}
    if [ "$harness" != 0 ]; then
        [ -f "$ROOT/lab/aws_harness.py" ] || die "lab/aws_harness.py is missing (OVERCLOUD_AWS_LAB_HARNESS=0 runs moto alone)"
        "$SYSPY" -c 'import boto3' 2>/dev/null || die "$SYSPY has no boto3: apt-get install python3-boto3 (make install does)"
        "$SYSPY" "$ROOT/lab/instance.py" rootfs >/dev/null  # built once, cached
    fi

    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    url="http://127.0.0.1:$port"
    setsid "$(dirname "$PY")/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 </dev/null 9>&- &
    record "$dir" moto $!
    echo "$url" >"$dir/endpoint"

    # the lab's key: random, in the credentials file only (0600); sites.yaml names the file and profile
    access="AKIA$("$PY" -c 'import secrets, string; print("".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16)))')"
    secret=$("$PY" -c 'import secrets; print(secrets.token_hex(20))')
    (umask 077; printf '[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$PROFILE" "$access" "$secret" >"$dir/aws/credentials")
    printf '[profile %s]\nregion = %s\n' "$PROFILE" "$REGION" >"$dir/aws/config"

    # moto answers, its EC2 backend is warm (the first EC2 call takes seconds), and it knows the AMI
    AWS_SHARED_CREDENTIALS_FILE="$dir/aws/credentials" AWS_CONFIG_FILE="$dir/aws/config" AWS_PROFILE=$PROFILE \
    AWS_EC2_METADATA_DISABLED=true "$PY" - "$url" "$AMI" <<'EOF'
import sys, time
import boto3
url, ami = sys.argv[1], sys.argv[2]
ec2 = boto3.client("ec2", endpoint_url=url)
deadline = time.monotonic() + 60
while True:
    try:
        ec2.describe_images(ImageIds=[ami])
        break
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"aws-lab: moto at {url} did not answer within 60 s: {type(exc).__name__}")
        time.sleep(0.2)
EOF

    cat >"$dir/sites.yaml" <<EOF
# The AWS lab (scripts/aws-lab.sh up $dir): EC2 is moto at $url.
# The credentials are in aws/credentials (profile $PROFILE), never here.
- name: aws-1
  kind: aws
  region: $REGION
  profile: $PROFILE
  credentials_file: aws/credentials
  endpoint_url: $url
  image: $AMI
  instance_types: {small: t3.micro, medium: t3.small, large: t3.medium}
  network: {vpc_cidr: 10.91.0.0/16}
  ssh_cidrs: [10.91.0.0/16]     # the Tower reaches each instance from its subnet's bridge (gateway .1)
  nodeport_cidrs: [10.91.0.0/16]
  user: overcloud
  box_pool: 10.97.0.0/16
  max_servers: 20
  boot_timeout: 300
  delete_timeout: 120
  labels: {overcloud.io/cloud: aws-lab}
EOF

    if [ "$harness" != 0 ]; then
        AWS_SHARED_CREDENTIALS_FILE="$dir/aws/credentials" AWS_CONFIG_FILE="$dir/aws/config" AWS_PROFILE=$PROFILE \
        AWS_EC2_METADATA_DISABLED=true setsid "$SYSPY" "$ROOT/lab/aws_harness.py" --endpoint "$url" \
            --state-dir "$dir/harness" --region "$REGION" >>"$dir/harness/stdout.log" 2>&1 </dev/null 9>&- &
        record "$dir" harness $!
        local i
        for i in $(seq 100); do
            grep -q "harness up" "$dir/harness/harness.log" 2>/dev/null && break
            role_alive "$dir" harness || die "the harness exited: $(tail -5 "$dir/harness/stdout.log" 2>/dev/null)"
            sleep 0.1
        done
    fi
    UP_DIR=
    trap - EXIT
    exec 9>&-  # the lock (the lab's processes never held it: 9>&- above)
    local h=on; [ "$harness" != 0 ] || h=off
    echo "aws-lab: up: moto $url (pid $(pid_of "$dir" moto | cut -d' ' -f1)), harness $h; sites: $dir/sites.yaml"
}

cmd_status() {
    local dir=$1 rec
    for role in moto harness; do
        rec=$(pid_of "$dir" "$role")
        if [ -n "$rec" ] && alive $rec; then echo "$role: running (pid ${rec%% *})"; else echo "$role: not running"; fi
    done
    echo "endpoint: $(url_of "$dir")"
    if [ -d "$dir/harness/instances" ]; then
        "$SYSPY" "$ROOT/lab/instance.py" list --state-dir "$dir/harness/instances"
    fi
    role_alive "$dir" moto
}

[ $# -ge 2 ] || die "usage: scripts/aws-lab.sh up|down|status DIR"
[ "$(id -u)" = 0 ] || [ "$1" = status ] || die "needs root (network namespaces, bridges)"
DIR=$(realpath -m "$2")
case "$1" in
    up) cmd_up "$DIR" ;;
    down) cmd_down "$DIR" ;;
    status) cmd_status "$DIR" ;;
    *) die "unknown command $1 (up, down, status)" ;;
esac
