#!/bin/bash
# The demo behind `cargo xtask demo`, run by xtask inside a network namespace of its own
# (`unshare --net`): the daemon enforces one instance, a workload of that instance makes an
# allowed and a forbidden connection, and we look at the audit record, `isolate status` and
# /metrics; then `isolate exec` confines a one-off command and the real `opencode serve`.
# Each command is printed as it runs (`$ ...`). Everything it makes (users, cgroup, pins,
# tables, files) is removed at the end.
# Usage: demo.sh ISOLATE_BINARY OPENCODE_BINARY OPENCODE_EXAMPLE_POLICY
set -euo pipefail
isolate=$1
opencode=$2
opencode_example=$3
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Prints a command the way a user would type it (`isolate` for the built binary, the demo's
# scratch directory as $DEMO).
print_command() {
    local arg line=
    for arg in "$@"; do
        arg=${arg//"$isolate"/isolate}
        arg=${arg//"$work"/\$DEMO}
        if [[ $arg =~ ^[][A-Za-z0-9_./:=@%+,\$-]+$ ]]; then
            line+=" $arg"
        else
            line+=" '${arg//\'/\'\\\'\'}'"
        fi
    done
    printf '\033[2m$%s\033[0m\n' "$line"
}
# Prints a command, then runs it (in the foreground: a background job's PID must be the
# command's own, so those print first and start themselves).
show() {
    print_command "$@"
    "$@"
}

ip link set lo up
work=$(mktemp -d /tmp/isolate-demo.XXXXXX)
chmod 0755 "$work"
echo "DEMO=$work (the demo's scratch directory)"
cgroup2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
cgroup="$cgroup2/isolate-demo-$$"
pins="/sys/fs/bpf/isolate-demo-$$"
user="isodemo$$"
opencode_instance="opencode-demo-$$"
oneoff_instance="oneoff-demo-$$"
state_dir_existed=$([ -d /var/lib/isolate ] && echo yes || true)
daemon_args=(--policy-dir "$work/instances" --state-dir "$work/state" --control-socket "$work/control.sock"
    --metrics 127.0.0.1:9477 --cgroup "$cgroup" --pin-dir "$pins")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$isolate" daemon "${daemon_args[@]}" --cleanup --force 2>/dev/null || true
    rmdir "$cgroup" 2>/dev/null || true
    userdel "$user" 2>/dev/null || true
    # The dynamic user's home, kept across runs of an instance: this one never runs again.
    rm -rf "/var/lib/isolate/$opencode_instance" "/var/lib/isolate/$oneoff_instance"
    [ -n "$state_dir_existed" ] || rmdir /var/lib/isolate 2>/dev/null || true
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
cat "$work/instances/demo.toml"
show "$isolate" check "$work/instances"

step "isolate daemon enforces it (block records go to stderr here: no journald on this host)"
print_command "$isolate" daemon "${daemon_args[@]}"
"$isolate" daemon "${daemon_args[@]}" & pids+=($!)
for _ in $(seq 100); do "$isolate" status --control-socket "$work/control.sock" 2>/dev/null | grep -q "running daemon" && break; sleep 0.1; done
sleep 0.5

# Runs a command as the instance user inside the workload cgroup.
as_instance() { bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec setpriv --reuid "$0" --regid "$0" --clear-groups "$@"' "$user" "$cgroup" "$@"; }

step "The instance reaches the allowed server"
echo "(as_instance: setpriv to $user, in the instance's cgroup)"
show as_instance curl -sS -o /dev/null -w "127.0.0.1:8080 -> HTTP %{http_code}\n" http://127.0.0.1:8080/
step "...and is refused at once (EPERM) when it tries the other one"
time (show as_instance curl -sS -o /dev/null http://127.0.0.1:8081/ || true)
sleep 0.5

step "isolate status"
show "$isolate" status --control-socket "$work/control.sock"

step "/metrics"
show curl -sS http://127.0.0.1:9477/metrics | grep -E '^isolate_(blocked_total|instances|policy_entries)'

step "isolate exec: a one-off command confined the same way, with a dynamic user and Landlock"
cat >"$work/oneoff.toml" <<POLICY
name = "$oneoff_instance"
user = "dynamic"
directory = "$work"
[network]
dns = "none"
allow = ["127.0.0.1/32:8080/tcp"]
[filesystem]
read_only = ["/usr", "/etc"]
exec = ["/usr/bin", "/bin"]
POLICY
cat "$work/oneoff.toml"
show "$isolate" exec --policy "$work/oneoff.toml" -- /bin/sh -c \
    'id; curl -sS -o /dev/null -w "8080 -> HTTP %{http_code}\n" http://127.0.0.1:8080/; curl -sS http://127.0.0.1:8081/ || true; cat /root/.bashrc || true' 2>&1 |
    grep -v "^ *INFO "
step "The real opencode serve, confined by isolate exec with the shipped examples/opencode.toml"
# The example as a user adapts it: a project directory, and where this opencode binary lives
# (under root's cache, which the instance's dynamic user cannot reach: a link in $DEMO/bin).
mkdir "$work/project" "$work/bin"
ln "$opencode" "$work/bin/opencode" 2>/dev/null || cp "$opencode" "$work/bin/opencode"
chmod 0755 "$work/bin/opencode"
sed -e "s|^name = \"opencode\"|name = \"$opencode_instance\"|" \
    -e "s|^directory = \"/srv/my-project\"|directory = \"$work/project\"|" \
    -e "s|^exec = \\[|exec = [\"$work/bin\", |" \
    "$opencode_example" >"$work/$opencode_instance.toml"
show diff "$opencode_example" "$work/$opencode_instance.toml" || true
opencode_command=("$isolate" exec --policy "$work/$opencode_instance.toml" --
    "$work/bin/opencode" serve --port 8787 --hostname 127.0.0.1)
print_command "${opencode_command[@]}"
"${opencode_command[@]}" >"$work/opencode.log" 2>&1 &
opencode_pid=$!
pids+=("$opencode_pid")
healthy=
for _ in $(seq 300); do
    if curl -fsS -m 2 http://127.0.0.1:8787/global/health >/dev/null 2>&1; then healthy=1; break; fi
    kill -0 "$opencode_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -n "$healthy" ]; then
    show curl -sS http://127.0.0.1:8787/global/health
    echo
    show curl -sS -o /dev/null -w "GET /file?path=. -> HTTP %{http_code}\n" "http://127.0.0.1:8787/file?path=."
    sleep 1
else
    echo "opencode did not answer on 127.0.0.1:8787; its output:"
    cat "$work/opencode.log"
    exit 1
fi
echo "What isolate refused while opencode started (its block records on stderr, counted):"
grep -e "-blocked " "$work/opencode.log" | sed -e 's/ uid=.* layer=/ layer=/' | sort | uniq -c | sort -rn || true
show kill -TERM "$opencode_pid"
wait "$opencode_pid" || true
step "Done: everything the demo made is removed"
