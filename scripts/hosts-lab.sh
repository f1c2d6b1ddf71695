#!/usr/bin/env bash
# Simulated remote hosts for the ssh UnderCloud (docs/remote-hosts.md, "Simulated hosts").
#
#   scripts/hosts-lab.sh up DIR              make two sites (ssh-a, ssh-b) of two hosts each; write DIR/sites.yaml
#   scripts/hosts-lab.sh down DIR            remove everything `up DIR` made (idempotent)
#   scripts/hosts-lab.sh stop-sshd DIR HOST  kill one host's sshd (the host keeps running: a lost SSH server)
#   scripts/hosts-lab.sh start-sshd DIR HOST start it again
#   scripts/hosts-lab.sh reboot DIR HOST     a power cycle: processes, /run, /tmp, namespaces and links made on the
#                                            host are gone; its disk (/root, /var/lib/overcloud, /etc/ssh) stays
#   scripts/hosts-lab.sh status DIR          list hosts, addresses and PIDs
#
# A host (och-a1, och-a2, och-b1, och-b2) is a network namespace plus its own mount, UTS and PID
# namespaces. Its PID 1 is a small reaper ("init"); its sshd (own host key, own config, MaxStartups
# and MaxSessions raised) is entered into those namespaces with nsenter. Its /run, /root,
# /var/lib/overcloud, /var/lib/containers (its own Podman store), /etc/ssh, /etc/netns and /tmp are bind mounts of DIR/hosts/<host>/... made
# inside its private mount namespace (nothing is mounted in the root namespace). eth0 is a veth to
# the WAN bridge ocw-wan (10.77.0.1 in the root namespace: the Tower's side), eth1 a veth to its
# site's LAN bridge (ocw-lan-a / ocw-lan-b, no address in the root namespace).
#
# Every process is recorded in DIR/hosts/<host>/pids as "role pid starttime"; `down` kills by those
# PIDs only (after checking the start time, so a reused PID is never hit). Killing a host's init
# ends its whole PID namespace, so whatever ran on the host (boxes' supervisords included) ends too.
#
# One lab per machine at a time (the names are fixed): a second `up` while a lab is up is refused,
# naming the DIR to pass to `down`. On a failure half way, `up` removes what it made. `down` leaves
# DIR's files; an `up` of the same DIR after a `down` keeps its keys (and so its sites.yaml) and the
# hosts' disks (/root, /var/lib/overcloud), while /run and /tmp start empty as after a reboot.
set -euo pipefail

MARKER=/run/overcloud-hosts-lab.dir   # the DIR of the lab that is up
HOSTS=(och-a1 och-a2 och-b1 och-b2)
WAN_BR=ocw-wan
WAN_GW=10.77.0.1

die() { echo "hosts-lab: $*" >&2; exit 1; }

host_num() { case "$1" in och-a1) echo 1 ;; och-a2) echo 2 ;; och-b1) echo 3 ;; och-b2) echo 4 ;; *) die "unknown host $1 (hosts: ${HOSTS[*]})" ;; esac; }
host_site() { case "$1" in och-a*) echo ssh-a ;; *) echo ssh-b ;; esac; }
site_num() { case "$1" in ssh-a) echo 1 ;; *) echo 2 ;; esac; }
site_bridge() { case "$1" in ssh-a) echo ocw-lan-a ;; *) echo ocw-lan-b ;; esac; }
wan_addr() { echo "10.77.0.1$(host_num "$1")"; }
lan_addr() { local s; s=$(host_site "$1"); echo "10.78.$(site_num "$s").1$(host_num "$1")"; }
box_cidr() { echo "10.79.$(host_num "$1").0/24"; }

has_netns() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null || true; }

record() {  # record HOSTDIR ROLE PID
    echo "$2 $3 $(starttime "$3")" >>"$1/pids"
}

alive() {  # alive PID STARTTIME: the recorded process still runs (not a reused PID, not a zombie)
    [ -n "$1" ] && [ -e "/proc/$1" ] && [ "$(starttime "$1")" = "$2" ] \
        && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

wait_child() {  # wait_child PARENT: print the PID of PARENT's first child (5 s at most)
    local i c
    for i in $(seq 100); do
        c=$(pgrep -P "$1" | head -n1 || true)
        [ -n "$c" ] && { echo "$c"; return 0; }
        sleep 0.05
    done
    return 1
}

recorded_pid() {  # recorded_pid HOSTDIR ROLE: the last recorded PID of ROLE (empty if none)
    [ -f "$1/pids" ] || return 0
    awk -v r="$2" '$1 == r {p = $2} END {if (p) print p}' "$1/pids"
}

kill_roles() {  # kill_roles HOSTDIR ROLE...: SIGKILL the recorded processes of these roles, wait for them
    local hd=$1 role pid st left i; shift
    [ -f "$hd/pids" ] || return 0
    for role in "$@"; do
        while read -r r pid st; do
            [ "$r" = "$role" ] || continue
            if alive "$pid" "$st"; then kill -KILL "$pid" 2>/dev/null || true; fi
        done <"$hd/pids"
    done
    for i in $(seq 100); do
        left=0
        for role in "$@"; do
            while read -r r pid st; do
                if [ "$r" = "$role" ] && alive "$pid" "$st"; then left=1; fi
            done <"$hd/pids"
        done
        [ $left = 0 ] && break
        sleep 0.05
    done
    for role in "$@"; do  # forget what is gone
        awk -v r="$role" '$1 != r' "$hd/pids" >"$hd/pids.new" && mv "$hd/pids.new" "$hd/pids"
    done
}

start_sshd() {  # start_sshd DIR HOST
    local dir=$1 h=$2 hd init ns child i
    hd="$dir/hosts/$h"
    init=$(recorded_pid "$hd" init)
    [ -n "$init" ] && [ -e "/proc/$init" ] || die "$h is not up (no init process recorded in $hd/pids)"
    old=$(recorded_pid "$hd" sshd)
    if [ -n "$old" ] && [ -e "/proc/$old" ]; then die "$h: sshd already runs (pid $old)"; fi
    setsid nsenter -t "$init" --net --mount --uts --pid -- /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config \
        </dev/null >>"$hd/sshd.log" 2>&1 &
    ns=$!
    record "$hd" nsenter "$ns"
    child=$(wait_child "$ns") || die "$h: sshd did not start (see $hd/sshd.log)"
    record "$hd" sshd "$child"
    for i in $(seq 100); do  # listening?
        if timeout 0.3 bash -c "exec 3<>/dev/tcp/$(wan_addr "$h")/22" 2>/dev/null; then return 0; fi
        [ -e "/proc/$child" ] || break
        sleep 0.05
    done
    die "$h: sshd is not listening on $(wan_addr "$h"):22 (see $hd/sshd.log)"
}

stop_sshd() {  # stop_sshd DIR HOST: the listener and the sessions it forked (they are its children)
    local hd="$1/hosts/$2" sshd
    sshd=$(recorded_pid "$hd" sshd)
    if [ -n "$sshd" ] && [ -e "/proc/$sshd" ]; then
        # stop the listener first, so that no new session is forked while its sessions die (a
        # client reconnecting at once would otherwise get a session that outlives the listener),
        # then kill its session processes (its children), then the listener itself
        kill -STOP "$sshd" 2>/dev/null || true
        for _ in $(seq 100); do
            [ "$(awk '{print $3}' "/proc/$sshd/stat" 2>/dev/null)" != "R" ] && \
                [ "$(awk '{print $3}' "/proc/$sshd/stat" 2>/dev/null)" != "S" ] && break
            sleep 0.01
        done
        pkill -KILL -P "$sshd" 2>/dev/null || true
    fi
    kill_roles "$hd" sshd nsenter
}

init_script() {  # the commands the host's PID 1 runs before it becomes the reaper
    local h=$1 hd=$2
    cat <<EOF
set -e
mount --bind '$hd/run' /run
mkdir -p /run/sshd /run/netns
mount --bind '$hd/root' /root
mount --bind '$hd/var-lib-overcloud' /var/lib/overcloud
# its own Podman store: an image the Tower's machine has is not on the host until it is sent
mkdir -p /var/lib/containers
mount --bind '$hd/var-lib-containers' /var/lib/containers
mount --bind '$hd/etc-ssh' /etc/ssh
mount --bind '$hd/etc-netns' /etc/netns
# /sys of this network namespace, with the machine's cgroup hierarchies kept
mkdir -p /run/.lab-cgroup
mount --rbind /sys/fs/cgroup /run/.lab-cgroup
mount -t sysfs sysfs /sys
mount --move /run/.lab-cgroup /sys/fs/cgroup
rmdir /run/.lab-cgroup
mount --bind '$hd/tmp' /tmp
hostname '$h'
exec python3 -c '
import os, signal, time
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
'
EOF
}

sites_yaml() {  # sites_yaml DIR
    local dir=$1 site h
    echo "# Written by scripts/hosts-lab.sh up $dir: the simulated hosts (docs/remote-hosts.md)."
    echo "# Usable as OVERCLOUD_SITES_FILE."
    for site in ssh-a ssh-b; do
        echo "- name: $site"
        echo "  kind: ssh"
        if [ "$site" = ssh-a ]; then echo "  labels: {overcloud.io/tier: cloud}"; else echo "  labels: {overcloud.io/tier: edge}"; fi
        echo "  hosts:"
        for h in "${HOSTS[@]}"; do
            [ "$(host_site "$h")" = "$site" ] || continue
            echo "  - name: $h"
            echo "    address: $(wan_addr "$h")"
            echo "    port: 22"
            echo "    user: root"
            echo "    key_file: $dir/client_key"
            echo "    host_key: \"$(cut -d' ' -f1,2 "$dir/hosts/$h/etc-ssh/ssh_host_ed25519_key.pub")\""
            echo "    lan_address: $(lan_addr "$h")"
            echo "    box_cidr: $(box_cidr "$h")"
            echo "    cpus: 2"
            echo "    memory_mb: 2048"
            echo "    max_sessions: 64"
        done
    done
}

boot_host() {  # boot_host DIR HOST: the host's network namespace and links, its init (PID 1), its sshd
    local dir=$1 h=$2 hd n un init
    hd="$dir/hosts/$h"
    n=$(host_num "$h")
    ip netns add "$h"
    ip link add "$h-w" type veth peer name eth0 netns "$h"
    ip link add "$h-l" type veth peer name eth1 netns "$h"
    ip link set "$h-w" master "$WAN_BR" up
    ip link set "$h-l" master "$(site_bridge "$(host_site "$h")")" up
    ip -n "$h" link set lo up
    ip -n "$h" link set eth0 address "02:77:00:00:00:1$n" up
    ip -n "$h" link set eth1 address "02:78:00:00:00:1$n" up
    ip -n "$h" addr add "$(wan_addr "$h")/24" dev eth0
    ip -n "$h" addr add "$(lan_addr "$h")/24" dev eth1
    ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1

    init_script "$h" "$hd" >"$hd/init.sh"
    setsid nsenter --net="/run/netns/$h" -- unshare --mount --uts --pid --fork --mount-proc --propagation private \
        sh "$hd/init.sh" </dev/null >>"$hd/init.log" 2>&1 &
    un=$!
    record "$hd" unshare "$un"
    init=$(wait_child "$un") || die "$h: its init did not start (see $hd/init.log)"
    record "$hd" init "$init"
    for n in $(seq 100); do  # the init script has exec'd the reaper: mounts are done
        grep -q "os.wait" "/proc/$init/cmdline" 2>/dev/null && break
        [ -e "/proc/$init" ] || die "$h: its init failed (see $hd/init.log)"
        sleep 0.05
    done
    grep -q "os.wait" "/proc/$init/cmdline" || die "$h: its init did not finish its mounts (see $hd/init.log)"
    start_sshd "$dir" "$h"
}

halt_host() {  # halt_host DIR HOST: every process of the host, then its network namespace (and so its links)
    local dir=$1 h=$2 hd i
    hd="$dir/hosts/$h"
    [ -d "$hd" ] || return 0
    # sshd and nsenter first; init last: its death ends every process left in the host's PID namespace
    kill_roles "$hd" sshd nsenter init unshare
    if has_netns "$h"; then ip netns delete "$h"; fi
    # (a deleted namespace takes its veths along, asynchronously: a delete may find them gone)
    ip link delete "$h-w" 2>/dev/null || true
    ip link delete "$h-l" 2>/dev/null || true
    for i in $(seq 100); do
        ip link show "$h-w" >/dev/null 2>&1 || ip link show "$h-l" >/dev/null 2>&1 || break
        sleep 0.05
    done
}

reboot_host() {  # reboot_host DIR HOST: a power cycle; what was in memory (/run, /tmp, processes, netns, links) is gone
    local dir=$1 h=$2 hd
    hd="$dir/hosts/$h"
    [ -f "$dir/lab.env" ] || die "no lab is up from $dir"
    halt_host "$dir" "$h"
    find "$hd/run" "$hd/tmp" -mindepth 1 -delete
    boot_host "$dir" "$h"
}

up() {
    local dir=$1 h hd site br n un init
    if [ -f "$MARKER" ]; then
        die "a hosts lab is already up from $(cat "$MARKER"); run: $0 down $(cat "$MARKER")"
    fi
    for h in "${HOSTS[@]}"; do
        if has_netns "$h"; then die "network namespace $h exists already (a lab not made by this script, or a marker lost): remove it first"; fi
    done
    for m in "$WAN_BR" ocw-lan-a ocw-lan-b; do
        if ip link show "$m" >/dev/null 2>&1; then die "link $m exists already (not made by this lab): remove it first"; fi
    done
    for h in "${HOSTS[@]}"; do
        for m in "$h-w" "$h-l"; do
            if ip link show "$m" >/dev/null 2>&1; then die "link $m exists already (not made by this lab): remove it first"; fi
        done
    done
    mkdir -p "$dir"
    chmod 700 "$dir"
    echo "$dir" >"$MARKER"
    trap 'rc=$?; if [ $rc != 0 ]; then echo "hosts-lab: up failed; removing what was made" >&2; down "$dir" >&2 || true; fi; exit $rc' EXIT
    mkdir -p /etc/netns

    created_varlib=0
    if [ ! -d /var/lib/overcloud ]; then mkdir -p /var/lib/overcloud; created_varlib=1; fi
    echo "created_varlib=$created_varlib" >"$dir/lab.env"

    # keys are kept across down/up of the same DIR: its sites.yaml (and pins made from it) stay valid
    if [ ! -f "$dir/client_key" ] || [ ! -f "$dir/client_key.pub" ]; then
        ssh-keygen -q -t ed25519 -N '' -C "hosts-lab client" -f "$dir/client_key" <<<y >/dev/null
    fi
    chmod 600 "$dir/client_key"

    sysctl -qw net.ipv4.ip_forward=1
    ip link add "$WAN_BR" type bridge
    ip link set "$WAN_BR" address 02:77:00:00:00:01 up
    ip addr add "$WAN_GW/24" dev "$WAN_BR"
    n=1
    for site in ssh-a ssh-b; do
        br=$(site_bridge "$site")
        ip link add "$br" type bridge
        ip link set "$br" address "02:78:00:00:0$n:01" up
        n=$((n + 1))
    done

    for h in "${HOSTS[@]}"; do
        hd="$dir/hosts/$h"
        n=$(host_num "$h")
        mkdir -p "$hd"/{run,root/.ssh,var-lib-overcloud,var-lib-containers,etc-ssh,etc-netns,tmp}
        find "$hd/run" "$hd/tmp" -mindepth 1 -delete  # (an earlier up of this DIR) memory does not survive
        chmod 700 "$hd/root" "$hd/root/.ssh"
        chmod 1777 "$hd/tmp"
        : >"$hd/pids"
        cp "$dir/client_key.pub" "$hd/root/.ssh/authorized_keys"
        chmod 600 "$hd/root/.ssh/authorized_keys"
        if [ ! -f "$hd/etc-ssh/ssh_host_ed25519_key" ] || [ ! -f "$hd/etc-ssh/ssh_host_ed25519_key.pub" ]; then
            ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$hd/etc-ssh/ssh_host_ed25519_key" <<<y >/dev/null
        fi
        if [ -f /etc/ssh/moduli ]; then cp /etc/ssh/moduli "$hd/etc-ssh/moduli"; fi
        cat >"$hd/etc-ssh/sshd_config" <<EOF
# hosts-lab: $h
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
MaxStartups 200:30:400
MaxSessions 100
PidFile /run/sshd.pid
Subsystem sftp internal-sftp
EOF

        boot_host "$dir" "$h"
    done
    sites_yaml "$dir" >"$dir/sites.yaml"
    echo "hosts-lab: up; sites file $dir/sites.yaml"
}

down() {
    local dir=$1 h hd m
    for h in "${HOSTS[@]}"; do
        hd="$dir/hosts/$h"
        [ -d "$hd" ] || continue
        kill_roles "$hd" sshd nsenter init unshare
    done
    if [ -f "$dir/lab.env" ] || { [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$dir" ]; }; then
        for h in "${HOSTS[@]}"; do
            if has_netns "$h"; then ip netns delete "$h"; fi
            # (a deleted namespace takes its veths along, asynchronously: a delete may find them gone)
            for m in "$h-w" "$h-l"; do ip link delete "$m" 2>/dev/null || true; done
        done
        for m in "$WAN_BR" ocw-lan-a ocw-lan-b; do ip link delete "$m" 2>/dev/null || true; done
        for m in $(seq 100); do  # wait until the kernel has finished: `down` returns on a clean machine
            ip -br link | grep -qE '^(och-[ab][12]-[wl]|ocw-(wan|lan-a|lan-b))[@ ]' || break
            sleep 0.05
        done
        if [ -f "$dir/lab.env" ] && grep -q "created_varlib=1" "$dir/lab.env"; then
            rmdir /var/lib/overcloud 2>/dev/null || true
        fi
    fi
    # nothing is mounted under DIR in this namespace by design; remove anything that is, deepest first
    if [ -d "$dir" ]; then
        findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | while read -r m; do umount -l "$m"; done
    fi
    if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$dir" ]; then rm -f "$MARKER"; fi
    rm -f "$dir/lab.env"
    echo "hosts-lab: down"
}

status() {
    local dir=$1 h hd
    for h in "${HOSTS[@]}"; do
        hd="$dir/hosts/$h"
        echo "$h site=$(host_site "$h") wan=$(wan_addr "$h") lan=$(lan_addr "$h") boxes=$(box_cidr "$h")" \
            "init=$(recorded_pid "$hd" init) sshd=$(recorded_pid "$hd" sshd)"
    done
}

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, bridges, mounts)"
[ $# -ge 2 ] || die "usage: $0 up|down|status DIR  |  $0 start-sshd|stop-sshd|reboot DIR HOST"
cmd=$1
dir=$(realpath -m "$2")
[[ "$dir" =~ ^[A-Za-z0-9_./+-]+$ ]] || die "DIR must be a path of letters, digits and _ . / + - (it is written into shell scripts and YAML): $dir"
case "$cmd" in
    up) up "$dir" ;;
    down) down "$dir" ;;
    status) status "$dir" ;;
    reboot) [ $# = 3 ] || die "usage: $0 reboot DIR HOST"; host_num "$3" >/dev/null; reboot_host "$dir" "$3" ;;
    start-sshd) [ $# = 3 ] || die "usage: $0 start-sshd DIR HOST"; host_num "$3" >/dev/null; start_sshd "$dir" "$3" ;;
    stop-sshd) [ $# = 3 ] || die "usage: $0 stop-sshd DIR HOST"; host_num "$3" >/dev/null; stop_sshd "$dir" "$3" ;;
    *) die "unknown command $cmd (up, down, status, start-sshd, stop-sshd, reboot)" ;;
esac
