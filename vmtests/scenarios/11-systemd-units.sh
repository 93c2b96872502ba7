#!/bin/bash
# vmtest-guest: systemd
# vmtest-timeout: 420
# The Debian package and its systemd units: `dpkg -i` installs the binary, units, manual pages,
# completions and presets; isolate.service starts the daemon, which enforces an instance from
# /etc/isolate/instances, serves /metrics and answers `isolate status`; opencode@.service wraps
# a server for that instance with `isolate exec` (a stand-in `opencode` that serves HTTP, so the
# unit itself is what is tested). A real Prometheus scrapes the daemon with the packaged rules,
# and its API gives the refusal back under isolate's labels. Stopping the daemon keeps
# enforcement; `dpkg --purge` takes it away and leaves nothing of isolate behind.
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

# A real Prometheus (the server of Debian's package, shared in by the host) scrapes the
# packaged daemon with the packaged alerting rules, and its own API gives the counter back
# under isolate's label, with `instance` left to Prometheus (the scrape target).
mkdir -p /tmp/prometheus
cat >/tmp/prometheus/prometheus.yml <<'CONFIG'
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [/usr/share/isolate/prometheus/isolate-rules.yml]
scrape_configs:
  - job_name: isolate
    static_configs: [{targets: ["127.0.0.1:9477"]}]
CONFIG
/share/prometheus/prometheus --config.file=/tmp/prometheus/prometheus.yml \
    --storage.tsdb.path=/tmp/prometheus/data --web.listen-address=127.0.0.1:9090 \
    >"$RESULTS/prometheus.log" 2>&1 &
prometheus_pid=$!
query() { curl -fsS --get --data-urlencode "query=$1" http://127.0.0.1:9090/api/v1/query 2>/dev/null; }
# One line per series: its labels (sorted, without __name__) and its value.
series() { python3 -c 'import json,sys
text = sys.stdin.read()
for s in json.loads(text)["data"]["result"] if text else []:
    m = s["metric"]; m.pop("__name__", None)
    print(",".join(f"{k}={v}" for k, v in sorted(m.items())), s["value"][1])'; }
answer=
for _ in $(seq 120); do
    answer=$(query 'isolate_blocked_total{isolate_instance="unitdemo",layer="ebpf",family="ipv4",protocol="tcp"}' | series)
    [ -n "$answer" ] && break
    sleep 0.5
done
if [ "$answer" = "family=ipv4,instance=127.0.0.1:9477,isolate_instance=unitdemo,job=isolate,layer=ebpf,protocol=tcp 1" ]; then
    ok "Prometheus's API gives the refusal back: $answer"
else
    fail "Prometheus's API: '$answer' (log: $(tail -5 "$RESULTS/prometheus.log"))"
fi
if [ -z "$(query '{exported_instance!=""}' | series)" ]; then
    ok "no series arrives with exported_instance"
else
    fail "series renamed on ingestion: $(query '{exported_instance!=""}' | series)"
fi
rules=$(curl -fsS http://127.0.0.1:9090/api/v1/rules 2>/dev/null | python3 -c 'import json,sys
groups = json.load(sys.stdin)["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
print(len(rules), sorted({r["health"] for r in rules}))')
case $rules in
"0 "*) fail "Prometheus loaded no rule: $rules" ;;
*"['ok']") ok "Prometheus evaluates the packaged rules without error: $rules" ;;
*) fail "rules: $rules (log: $(grep -i error "$RESULTS/prometheus.log" | tail -3))" ;;
esac
kill "$prometheus_pid"
wait "$prometheus_pid" 2>/dev/null
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
