#!/bin/bash
# The demo behind `cargo xtask demo`, run by xtask inside a network namespace of its own
# (`unshare --net`): the daemon enforces one instance, a workload of that instance makes an
# allowed and a forbidden connection, and we look at the audit record, `isolate status` and
# /metrics. Everything it makes (user, cgroup, pins, tables, files) is removed at the end.
# Usage: demo.sh ISOLATE_BINARY
set -euo pipefail
isolate=$1
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ip link set lo up
work=$(mktemp -d /tmp/isolate-demo.XXXXXX)
chmod 0755 "$work"
cgroup2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
cgroup="$cgroup2/isolate-demo-$$"
pins="/sys/fs/bpf/isolate-demo-$$"
user="isodemo$$"
daemon_args=(--policy-dir "$work/instances" --state-dir "$work/state" --control-socket "$work/control.sock"
    --metrics 127.0.0.1:9477 --cgroup "$cgroup" --pin-dir "$pins")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$isolate" daemon "${daemon_args[@]}" --cleanup --force 2>/dev/null || true
    rmdir "$cgroup" 2>/dev/null || true
    userdel "$user" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step "An instance user, a cgroup for its workload, and two local servers (ports 8080, 8081)"
useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
mkdir "$cgroup" "$work/instances"
python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 & pids+=($!)
python3 -m http.server 8081 --bind 127.0.0.1 >/dev/null 2>&1 & pids+=($!)
cat >"$work/instances/demo.toml" <<POLICY
user = "$user"
[network]
dns = "none"
allow = ["127.0.0.1/32:8080/tcp"]   # only this server
log = { rate = "10/second" }
POLICY
"$isolate" check "$work/instances"

step "isolate daemon enforces it (block records go to stderr here: no journald on this host)"
"$isolate" daemon "${daemon_args[@]}" & pids+=($!)
for _ in $(seq 100); do "$isolate" status --control-socket "$work/control.sock" 2>/dev/null | grep -q "running daemon" && break; sleep 0.1; done
sleep 0.5

# Runs a command as the instance user inside the workload cgroup.
as_instance() { bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec setpriv --reuid "$0" --regid "$0" --clear-groups "$@"' "$user" "$cgroup" "$@"; }

step "The instance reaches the allowed server"
as_instance curl -sS -o /dev/null -w "127.0.0.1:8080 -> HTTP %{http_code}\n" http://127.0.0.1:8080/
step "...and is refused at once (EPERM) when it tries the other one"
time (as_instance curl -sS -o /dev/null http://127.0.0.1:8081/ || true)
sleep 0.5

step "isolate status"
"$isolate" status --control-socket "$work/control.sock"

step "/metrics"
curl -sS http://127.0.0.1:9477/metrics | grep -E '^isolate_(blocked_total|instances|policy_entries)'

step "isolate exec: a one-off command confined the same way, with a dynamic user and Landlock"
cat >"$work/oneoff.toml" <<POLICY
name = "oneoff"
user = "dynamic"
directory = "$work"
[network]
dns = "none"
allow = ["127.0.0.1/32:8080/tcp"]
[filesystem]
read_only = ["/usr", "/etc"]
exec = ["/usr/bin", "/bin"]
POLICY
"$isolate" exec --policy "$work/oneoff.toml" -- /bin/sh -c \
    'id; curl -sS -o /dev/null -w "8080 -> HTTP %{http_code}\n" http://127.0.0.1:8080/; curl -sS http://127.0.0.1:8081/ || true; cat /root/.bashrc || true' 2>&1 |
    grep -v "^ *INFO "
step "Done: everything the demo made is removed"
