#!/bin/bash
# vmtest-guest: systemd
# vmtest-timeout: 300
# The shipped systemd units: isolate.service starts the daemon, which enforces an instance from
# /etc/isolate/instances, serves /metrics and answers `isolate status`; opencode@.service wraps
# a server for that instance with `isolate exec` (a stand-in `opencode` that serves HTTP, so the
# unit itself is what is tested). Stopping the daemon keeps enforcement.
set -u
failed=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failed=1; }

install -m 0755 "$ISOLATE" /usr/local/bin/isolate
install -m 0644 "$VMTESTS/../dist/systemd/isolate.service" "$VMTESTS/../dist/systemd/opencode@.service" /etc/systemd/system/
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
isolate daemon --cleanup
if su -s /bin/bash unitdemo -c 'echo > /dev/tcp/127.0.0.1/9' 2>&1 | grep -q "Operation not permitted"; then
    fail "enforcement stayed after --cleanup"
else
    ok "--cleanup removed enforcement"
fi
journalctl -b -u isolate.service -u opencode@unitdemo.service >"$RESULTS/units.journal" 2>&1
exit "$failed"
