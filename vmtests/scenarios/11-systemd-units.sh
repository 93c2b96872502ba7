#!/bin/bash
# vmtest-guest: systemd
# vmtest-timeout: 300
# The Debian package and its systemd units: `dpkg -i` installs the binary, units, manual pages,
# completions and presets; isolate.service starts the daemon, which enforces an instance from
# /etc/isolate/instances, serves /metrics and answers `isolate status`; opencode@.service wraps
# a server for that instance with `isolate exec` (a stand-in `opencode` that serves HTTP, so the
# unit itself is what is tested). Stopping the daemon keeps enforcement; `dpkg --purge` takes
# it away and leaves nothing of isolate behind.
set -u
failed=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failed=1; }

if dpkg -i "$VMTESTS/../isolate.deb" >"$RESULTS/dpkg-install.log" 2>&1; then
    ok "dpkg -i installs the package"
else
    fail "dpkg -i: $(cat "$RESULTS/dpkg-install.log")"
fi
# The guest image's dpkg skips manual pages (path-exclude): they are looked for in the package.
contents=$(dpkg-deb -c "$VMTESTS/../isolate.deb")
for page in man1/isolate.1.gz man1/isolate-exec.1.gz man5/isolate.toml.5.gz; do
    case $contents in
    *"./usr/share/man/$page"*) ok "the package has $page" ;;
    *) fail "the package lacks /usr/share/man/$page" ;;
    esac
done
for file in /usr/bin/isolate /usr/lib/systemd/system/isolate.service \
    /usr/lib/systemd/system/opencode@.service /usr/share/bash-completion/completions/isolate /usr/share/zsh/vendor-completions/_isolate \
    /usr/share/fish/vendor_completions.d/isolate.fish /usr/share/isolate/presets/opencode.toml \
    /usr/share/isolate/examples/opencode.toml /usr/share/isolate/prometheus/isolate-rules.yml; do
    if [ -f "$file" ]; then ok "installed $file"; else fail "not installed: $file"; fi
done
if [ "$(stat -c %a /etc/isolate/instances)" = 700 ]; then
    ok "/etc/isolate/instances is root's alone"
else
    fail "/etc/isolate/instances has mode $(stat -c %a /etc/isolate/instances)"
fi
if grep -q "^ExecStart=/usr/bin/isolate " /usr/lib/systemd/system/opencode@.service; then
    ok "the units run the packaged binary"
else
    fail "opencode@.service: $(grep ExecStart /usr/lib/systemd/system/opencode@.service)"
fi
useradd --system --home-dir /srv/unitdemo --create-home --shell /usr/sbin/nologin unitdemo
mkdir -p /etc/isolate/instances /etc/isolate/opencode
cat >/etc/isolate/instances/unitdemo.toml <<'POLICY'
user = "unitdemo"
directory = "/srv/unitdemo"
[network]
dns = "none"
allow = ["127.0.0.1/32:8787/tcp"]
listen = ["127.0.0.1:8787/tcp"]
[filesystem]
read_only = ["/usr", "/etc"]
exec = ["/usr/bin", "/bin", "/usr/local/bin"]
POLICY
# The stand-in: serves HTTP on the port it is given, and tries a forbidden destination.
cat >/usr/local/bin/opencode <<'STANDIN'
#!/bin/bash
(echo > /dev/tcp/127.0.0.1/9) 2>/dev/null && echo "forbidden connect succeeded" >&2
exec python3 -m http.server "$3" --bind 127.0.0.1
STANDIN
chmod 0755 /usr/local/bin/opencode
systemctl daemon-reload

systemctl start isolate.service
for _ in $(seq 50); do isolate status 2>/dev/null | grep -q "running daemon" && break; sleep 0.2; done
if systemctl is-active --quiet isolate.service; then ok "isolate.service is active"; else fail "isolate.service is not active"; fi
if isolate status | grep -q "^unitdemo .*daemon"; then ok "status lists the instance"; else fail "status: $(isolate status)"; fi

systemctl start opencode@unitdemo.service
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:8787/ 2>/dev/null && break; sleep 0.2; done
if curl -fsS -o /dev/null http://127.0.0.1:8787/; then ok "the wrapped server answers on 127.0.0.1:8787"; else fail "the wrapped server does not answer"; fi
if ps -o user= -C python3 | grep -q unitdemo; then ok "the server runs as the instance user"; else fail "server user: $(ps -o user=,args= -C python3)"; fi
metrics=$(curl -fsS http://127.0.0.1:9477/metrics)
if echo "$metrics" | grep -q '^isolate_blocked_total{family="ipv4",isolate_instance="unitdemo",layer="ebpf",protocol="tcp"} 1$'; then
    ok "the forbidden connect is counted once in /metrics"
else
    fail "metrics: $(echo "$metrics" | grep isolate_blocked_total)"
fi
if journalctl -u isolate.service ISOLATE_INSTANCE=unitdemo -o cat | grep -q "isolate-unitdemo-blocked tcp 127.0.0.1:9"; then
    ok "the journal has the audit record"
else
    fail "no audit record in the journal"
fi
systemctl stop opencode@unitdemo.service

systemctl stop isolate.service
if su -s /bin/bash unitdemo -c 'echo > /dev/tcp/127.0.0.1/9' 2>&1 | grep -q "Operation not permitted"; then
    ok "with the daemon stopped, the instance user is still refused"
else
    fail "enforcement went away with the daemon"
fi
if dpkg --purge isolate >"$RESULTS/dpkg-purge.log" 2>&1; then
    ok "dpkg --purge removes the package"
else
    fail "dpkg --purge: $(cat "$RESULTS/dpkg-purge.log")"
fi
if su -s /bin/bash unitdemo -c 'echo > /dev/tcp/127.0.0.1/9' 2>&1 | grep -q "Operation not permitted"; then
    fail "enforcement stayed after the package was removed"
else
    ok "removing the package removed enforcement"
fi
left=$(ls -d /usr/bin/isolate /usr/lib/systemd/system/isolate.service /sys/fs/bpf/isolate/daemon 2>/dev/null)
tables=$(nft list tables 2>/dev/null | grep isolate)
if [ -z "$left$tables" ]; then ok "nothing of isolate is left"; else fail "left behind: $left $tables"; fi
journalctl -b -u isolate.service -u opencode@unitdemo.service >"$RESULTS/units.journal" 2>&1
exit "$failed"
