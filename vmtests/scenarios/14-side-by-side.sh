#!/bin/bash
# vmtest-guest: systemd
# vmtest-timeout: 480
# vmtest-boot: 2
# Two real `opencode serve` instances side by side under the daemon, each with its own user,
# home and port, from examples/opencode.toml: neither reads or writes the other's home (only
# Landlock stands in the way: the homes are world-readable here), reaches the other's port
# (EPERM) until its policy allows it, or signals the other's processes; a reload that changes
# one instance leaves the other untouched (its counter keeps counting from where it was);
# stopping one leaves the other enforced and serving.
set -u
failed=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failed=1; }
. "$VMTESTS/lib/opencode.sh"
install_opencode

policies=/etc/isolate/instances
mkdir -p "$policies" && chmod 0700 /etc/isolate "$policies"
declare -A port=([alpha]=8801 [beta]=8802) other=([alpha]=beta [beta]=alpha)
# The example as a user adapts it per project: name, user, project directory, port.
policy() { # NAME EXTRA_ALLOW
    sed -e "s|^name = \"opencode\"|name = \"$1\"|" \
        -e "s|^user = \"dynamic\"|user = \"$1\"|" \
        -e "s|^directory = \"/srv/my-project\"|directory = \"/srv/$1\"|" \
        -e "s|^allow = \\[\"127.0.0.1/32:8787/tcp\"\\]|allow = [\"127.0.0.1/32:${port[$1]}/tcp\"$2]|" \
        -e "s|^listen = \\[\"127.0.0.1:8787/tcp\"\\]|listen = [\"127.0.0.1:${port[$1]}/tcp\"]|" \
        -e 's|^dns = "system"|dns = "none"|' \
        "$VMTESTS/../examples/opencode.toml" >"$policies/$1.toml.new"
    mv "$policies/$1.toml.new" "$policies/$1.toml"
}
for name in alpha beta; do
    useradd --create-home --shell /bin/sh "$name"
    # World-readable, so that only the instance's Landlock rules keep the other out.
    chmod 0755 "/home/$name"
    echo "$name's secret" >"/home/$name/secret" && chmod 0644 "/home/$name/secret"
    mkdir -p "/srv/$name"
    policy "$name" ""
done
"$ISOLATE" check "$policies" >"$RESULTS/check.log" 2>&1 || { fail "isolate check: $(cat "$RESULTS/check.log")"; exit 1; }

"$ISOLATE" daemon --policy-dir "$policies" >"$RESULTS/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do "$ISOLATE" status 2>/dev/null | grep -q "running daemon" && break; sleep 0.2; done

# Each instance first tries the other's home from inside its confinement, then serves.
cat >/usr/local/bin/probe-then-serve <<'SCRIPT'
#!/bin/sh
other=$1 port=$2
{
    cat "/home/$other/secret" >/dev/null 2>&1 && echo "read-other yes" || echo "read-other no"
    touch "/home/$other/planted" 2>/dev/null && echo "write-other yes" || echo "write-other no"
    touch "$HOME/mine" 2>/dev/null && echo "write-own yes" || echo "write-own no"
} >"$HOME/probe.txt"
exec /usr/local/bin/opencode serve --port "$port" --hostname 127.0.0.1
SCRIPT
chmod 0755 /usr/local/bin/probe-then-serve
declare -A exec_pid
for name in alpha beta; do
    "$ISOLATE" exec --instance "$name" -- /usr/local/bin/probe-then-serve "${other[$name]}" "${port[$name]}" \
        >"$RESULTS/$name.log" 2>&1 &
    exec_pid[$name]=$!
done
healthy() { curl -fsS -m 5 "http://127.0.0.1:$1/global/health" 2>/dev/null | grep -q '"healthy":true'; }
for name in alpha beta; do
    for _ in $(seq 360); do healthy "${port[$name]}" && break; sleep 0.5; done
    if healthy "${port[$name]}"; then ok "$name's opencode serves on ${port[$name]}"; else
        fail "$name's opencode does not answer: $(tail -5 "$RESULTS/$name.log")"; fi
done

for name in alpha beta; do
    probe=$(cat "/home/$name/probe.txt" 2>/dev/null)
    case $probe in
    *"read-other no"*"write-other no"*"write-own yes"*) ok "$name neither reads nor writes ${other[$name]}'s home, and writes its own" ;;
    *) fail "$name's file probe: $probe" ;;
    esac
done
[ ! -e /home/alpha/planted ] && [ ! -e /home/beta/planted ] && ok "nothing was planted in either home" || fail "a file was planted"

# As the instance's user, judged by the daemon's programs (keyed by UID, host-wide).
connect_as() { # USER PORT: prints "connected" or the errno's name
    setpriv --reuid "$1" --regid "$1" --clear-groups python3 -c 'import errno, socket, sys
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1]))); print("connected")
except OSError as e:
    print(errno.errorcode[e.errno])' "$2"
}
for name in alpha beta; do
    answer=$(connect_as "$name" "${port[${other[$name]}]}")
    [ "$answer" = EPERM ] && ok "$name cannot reach ${other[$name]}'s port (EPERM)" || fail "$name -> ${other[$name]}'s port: $answer"
    answer=$(connect_as "$name" "${port[$name]}")
    [ "$answer" = connected ] && ok "$name reaches its own port" || fail "$name -> own port: $answer"
done
beta_pid=$(pgrep -u beta -f "opencode serve" | head -n 1)
if [ -n "$beta_pid" ] && ! setpriv --reuid alpha --regid alpha --clear-groups kill -0 "$beta_pid" 2>/dev/null; then
    ok "alpha cannot signal beta's opencode (pid $beta_pid)"
else
    fail "alpha signalled beta's process '$beta_pid'"
fi

counter() { # INSTANCE: its refused IPv4 TCP connects, from /metrics
    curl -fsS http://127.0.0.1:9477/metrics |
        sed -n "s/^isolate_blocked_total{family=\"ipv4\",isolate_instance=\"$1\",layer=\"ebpf\",protocol=\"tcp\"} //p"
}
beta_before=$(counter beta)
# A reload that lets alpha reach beta's port, and changes nothing of beta.
policy alpha ", \"127.0.0.1/32:${port[beta]}/tcp\""
"$ISOLATE" reload >"$RESULTS/reload.log" 2>&1 || fail "reload: $(cat "$RESULTS/reload.log")"
for _ in $(seq 50); do [ "$(connect_as alpha "${port[beta]}")" = connected ] && break; sleep 0.2; done
[ "$(connect_as alpha "${port[beta]}")" = connected ] && ok "after the reload, alpha reaches beta's port" || fail "alpha's new allow entry does not hold"
[ "$(counter beta)" = "$beta_before" ] && ok "the reload left beta's counter at $beta_before" || fail "beta's counter went from $beta_before to $(counter beta)"
answer=$(connect_as beta "${port[alpha]}")
[ "$answer" = EPERM ] && [ "$(counter beta)" = $((beta_before + 1)) ] && ok "beta is still refused, and its counter counts on ($((beta_before + 1)))" ||
    fail "beta after the reload: $answer, counter $(counter beta)"

kill -TERM "${exec_pid[alpha]}"
wait "${exec_pid[alpha]}" 2>/dev/null
healthy "${port[alpha]}" && fail "alpha still serves after SIGTERM" || ok "alpha stopped"
healthy "${port[beta]}" && ok "beta still serves" || fail "beta stopped with alpha"
answer=$(connect_as beta "${port[alpha]}")
[ "$answer" = EPERM ] && ok "beta is still refused alpha's port (EPERM, not a refused connection)" || fail "beta -> alpha's port after alpha stopped: $answer"

kill -TERM "${exec_pid[beta]}"
wait "${exec_pid[beta]}" 2>/dev/null
kill -TERM "$daemon"
wait "$daemon" 2>/dev/null
"$ISOLATE" daemon --policy-dir "$policies" --cleanup >>"$RESULTS/daemon.log" 2>&1 || fail "cleanup: $(tail -3 "$RESULTS/daemon.log")"
rm -rf "$policies" /srv/alpha /srv/beta /usr/local/bin/probe-then-serve
userdel --remove alpha 2>/dev/null
userdel --remove beta 2>/dev/null
exit "$failed"
