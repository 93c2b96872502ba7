#!/bin/bash
# vmtest-guest: systemd
# vmtest-timeout: 240
# The audit trail of blocked attempts, end to end through `isolate exec` in the guest's initial
# network namespace (nftables `log` prints only there), against a local listener with one port
# the policies allow and one they do not:
#  1. eBPF layer alone: a blocked curl fails at once (exit 7) and leaves one journald record
#     (ISOLATE_INSTANCE, _LAYER, _DEST, _PORT, _PROTO, _PID, _COMM, _UID, MESSAGE); the allowed
#     curl gets through and leaves none.
#  2. nftables layer alone: a blocked curl times out, the kernel log has the
#     `isolate-NAME-blocked` line(s), and the listener never sees the connection.
#  3. A flood of 50 blocked connects with `log.rate = 5/second`, once per layer: the journal
#     keeps a handful of records plus a count of the suppressed ones (together: all 50), and the
#     kernel log keeps within the limit.
#  4. After every run: no `isolate-*` nftables table, no pinned eBPF objects, no cgroup.
# Every check prints `ok …` or `FAIL …`; the journal excerpts are kept in $RESULTS.
# Bash, not sh: $EPOCHREALTIME, /dev/tcp and `printf -v` spare process starts (0.3 s each
# under TCG).
set -u
failed=0
ok() { echo "ok   $*"; }
fail() {
    echo "FAIL $*"
    failed=1
}
check() { # DESCRIPTION CONDITION...: `ok`/`FAIL` by the status of the (builtin) condition,
    # and returns that status
    local what=$1
    shift
    if "$@"; then
        ok "$what"
    else
        fail "$what"
        return 1
    fi
}
now_us() { # sets $now to the wall clock in microseconds
    now=${EPOCHREALTIME/./}
}
between() { # N MIN MAX: MIN <= N <= MAX (false when N is not a number)
    [ "$1" -ge "$2" ] 2>/dev/null && [ "$1" -le "$3" ]
}
us() { # SECONDS: sets $v to SECONDS (like curl's 0.001234) in microseconds
    local int=${1%%.*} frac=${1#*.}000000
    [ "$int" = "$1" ] && frac=000000
    frac=${frac:0:6}
    v=$((10#${int:-0} * 1000000 + 10#$frac))
}

# --- the listener: two ports on 127.0.0.1; each accepted connection appends its port to
# `accepted`, and is answered as HTTP so that curl succeeds.
rm -f ports accepted
python3 - <<'PY' &
import os, selectors, socket
sel = selectors.DefaultSelector()
ports = []
for _ in range(2):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    ports.append(s.getsockname()[1])
with open("ports.tmp", "w") as f:
    f.write("%d %d\n" % tuple(ports))
os.rename("ports.tmp", "ports")
while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
        except BlockingIOError:
            continue
        with open("accepted", "a") as f:
            f.write("%d\n" % key.fileobj.getsockname()[1])
        conn.settimeout(2)
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        except OSError:
            pass
        conn.close()
PY
listener=$!
trap 'kill "$listener" 2>/dev/null' EXIT
for _ in $(seq 100); do
    [ -s ports ] && break
    sleep 0.1
done
read -r allowed forbidden <ports 2>/dev/null || {
    echo "FAIL the listener did not start"
    exit 1
}
echo "listener: allowed port $allowed, forbidden port $forbidden"

policy() { # NAME: writes NAME.toml, allowing only 127.0.0.1:$allowed/tcp
    printf '%s\n' "name = \"$1\"" 'user = "dynamic"' "directory = \"$PWD\"" '' \
        '[network]' "allow = [\"127.0.0.1/32:$allowed/tcp\"]" 'dns = "none"' \
        'log = { rate = "5/second" }' '' \
        '[filesystem]' 'read_only = ["/usr", "/etc"]' 'exec = ["/usr/bin", "/bin"]' >"$1.toml"
}

run() { # NAME LAYERS SCRIPT: runs SCRIPT with bash as instance NAME; its stdout's `key=value`
    # lines become $r_key; stderr (isolate's log) goes to $RESULTS/NAME.exec.log
    local name=$1 layers=$2 script=$3 line
    policy "$name"
    "$ISOLATE" exec --policy "$name.toml" --layers "$layers" -- /bin/bash -c "$script" \
        >"$RESULTS/$name.out" 2>"$RESULTS/$name.exec.log" </dev/null
    r_exit=$?
    while IFS= read -r line; do
        case $line in
        [a-z]*=*) printf -v "r_${line%%=*}" %s "${line#*=}" ;;
        esac
    done <"$RESULTS/$name.out"
    check "$name: isolate exec exited 0 (got $r_exit)" [ "$r_exit" = 0 ]
}

tables_out=
left_behind() { # NAME: checks that the run of NAME left nothing applied
    local name=$1
    tables_out=$(nft list tables 2>&1)
    case $tables_out in
    *isolate-*) fail "$name: nftables tables left behind: $tables_out" ;;
    *) ok "$name: no isolate-* nftables table" ;;
    esac
    check "$name: no /sys/fs/bpf/isolate/exec/$name" [ ! -e "/sys/fs/bpf/isolate/exec/$name" ]
    check "$name: no cgroup /sys/fs/cgroup/isolate/$name" [ ! -e "/sys/fs/cgroup/isolate/$name" ]
}

field() { # JSON-LINE KEY: sets $v to the string value of KEY in a `journalctl -o json` line
    case $1 in
    *"\"$2\":\""*)
        v=${1#*\"$2\":\"}
        v=${v%%\"*}
        ;;
    *) v="<absent>" ;;
    esac
}

journal() { # NAME UNTIL [SECONDS]: reads the records of instance NAME into $RESULTS/NAME.json
    # and @records, polling (journald is asynchronous) until `UNTIL` (a function) holds
    local name=$1 until=$2 deadline line
    now_us
    deadline=$((now + ${3:-6} * 1000000))
    while :; do
        journalctl --no-pager -q -o json "ISOLATE_INSTANCE=$name" >"$RESULTS/$name.json" 2>&1
        records=()
        while IFS= read -r line; do
            records+=("$line")
        done <"$RESULTS/$name.json"
        "$until" && return 0
        now_us
        [ "$now" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

kernel_log() { # NAME UNTIL: the kernel log lines with NAME's nft prefix into @klines and
    # $RESULTS/NAME.kernel.log, polling until `UNTIL` holds
    local name=$1 until=$2 deadline line
    now_us
    deadline=$((now + 6000000))
    while :; do
        journalctl --no-pager -q -k -o short-monotonic -g "isolate-$name-blocked" \
            >"$RESULTS/$name.kernel.log" 2>&1
        klines=()
        while IFS= read -r line; do
            case $line in
            *"isolate-$name-blocked "*) klines+=("$line") ;;
            esac
        done <"$RESULTS/$name.kernel.log"
        "$until" && return 0
        now_us
        [ "$now" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
have_one_record() { [ "${#records[@]}" -ge 1 ]; }
have_suppressed() { case ${records[*]-} in *ISOLATE_SUPPRESSED*) true ;; *) false ;; esac; }
have_kernel_line() { [ "${#klines[@]}" -ge 1 ]; }
never() { false; }

# ---------------------------------------------------------------------------------------------
echo "--- 1. eBPF layer alone"
name=audit-ebpf
r_forbidden_rc= r_forbidden_pid= r_forbidden_us= r_forbidden_time= r_uid= r_allowed_rc=
run "$name" ebpf "
s=\$EPOCHREALTIME
curl -s -o /dev/null -w 'forbidden_time=%{time_total}\n' http://127.0.0.1:$forbidden/ &
pid=\$!
wait \$pid
rc=\$?
e=\$EPOCHREALTIME
echo forbidden_rc=\$rc
echo forbidden_pid=\$pid
echo forbidden_us=\$(( \${e/./} - \${s/./} ))
echo uid=\$UID
curl -s -o /dev/null --max-time 20 -w 'allowed_time=%{time_total}\n' http://127.0.0.1:$allowed/
echo allowed_rc=\$?
"
uid=$r_uid
echo "instance uid $uid; blocked curl: pid $r_forbidden_pid, exit $r_forbidden_rc, $r_forbidden_us µs (curl: ${r_forbidden_time}s)"
check "$name: blocked curl exits 7 (got $r_forbidden_rc)" [ "$r_forbidden_rc" = 7 ]
us "${r_forbidden_time:-9}"
check "$name: blocked curl fails at once (curl's own time ${r_forbidden_time}s < 0.2 s)" \
    between "$v" 0 199999
# Wall clock, including curl's own start (about 0.3 s under TCG, over 1.5 s on a busy host): a
# dropped SYN instead of a refusal would keep curl waiting for its connect timeout (minutes).
check "$name: blocked curl, start to exit, in seconds, not a connect timeout (${r_forbidden_us} µs < 5 s)" \
    between "$r_forbidden_us" 0 4999999
check "$name: the instance runs as a dynamic user, not root (uid $uid)" between "$uid" 1 4294967294
check "$name: allowed curl succeeds (got $r_allowed_rc)" [ "$r_allowed_rc" = 0 ]
journal "$name" have_one_record
echo "$name: ${#records[@]} journal record(s)"
check "$name: exactly one record (one blocked attempt)" [ "${#records[@]}" = 1 ]
for rec in "${records[@]}"; do
    for want in ISOLATE_INSTANCE="$name" ISOLATE_LAYER=ebpf-connect ISOLATE_DEST=127.0.0.1 \
        ISOLATE_PORT="$forbidden" ISOLATE_PROTO=tcp ISOLATE_COMM=curl ISOLATE_UID="$uid" \
        ISOLATE_PID="$r_forbidden_pid" PRIORITY=4 SYSLOG_IDENTIFIER=isolate; do
        field "$rec" "${want%%=*}"
        check "$name: record ${want%%=*}=$v" [ "$v" = "${want#*=}" ]
    done
    # The message and ISOLATE_FIX name the entry that would allow it (JSON escapes its quotes).
    fix="add \\\"127.0.0.1:$forbidden/tcp\\\" to network.allow in $PWD/$name.toml"
    case $rec in
    *"\"MESSAGE\":\"isolate-$name-blocked tcp 127.0.0.1:$forbidden pid=$r_forbidden_pid comm=curl fix: $fix\""*)
        ok "$name: record MESSAGE names the fix" ;;
    *) fail "$name: record MESSAGE with the fix ($fix): $rec" ;;
    esac
    case $rec in
    *"\"ISOLATE_FIX\":\"$fix\""*) ok "$name: record ISOLATE_FIX" ;;
    *) fail "$name: record ISOLATE_FIX=$fix: $rec" ;;
    esac
    case $rec in
    *"\"ISOLATE_PORT\":\"$allowed\""*) fail "$name: a record for the allowed port: $rec" ;;
    esac
done
left_behind "$name"

# ---------------------------------------------------------------------------------------------
echo "--- 2. nftables layer alone"
name=audit-nft
r_forbidden_rc= r_forbidden_us= r_uid= r_allowed_rc=
run "$name" nftables "
s=\$EPOCHREALTIME
curl -s -o /dev/null --connect-timeout 1 http://127.0.0.1:$forbidden/
rc=\$?
e=\$EPOCHREALTIME
echo forbidden_rc=\$rc
echo forbidden_us=\$(( \${e/./} - \${s/./} ))
echo uid=\$UID
curl -s -o /dev/null --max-time 20 http://127.0.0.1:$allowed/
echo allowed_rc=\$?
"
uid=$r_uid
echo "instance uid $uid; blocked curl: exit $r_forbidden_rc after $r_forbidden_us µs"
check "$name: blocked curl times out (exit 28, got $r_forbidden_rc)" [ "$r_forbidden_rc" = 28 ]
check "$name: ... after its 1 s connect timeout ($r_forbidden_us µs)" \
    between "$r_forbidden_us" 900000 5000000
check "$name: allowed curl succeeds (got $r_allowed_rc)" [ "$r_allowed_rc" = 0 ]
landlock_hint() { # what it means when the nftables layer never saw a connect
    echo "     (refused in connect() before a packet left: Landlock's TCP connect port rules"
    echo "     (ABI >= 4) pre-empt the nftables layer, so the attempt is neither logged nor counted)"
}
[ "$r_forbidden_rc" = 7 ] && landlock_hint
kernel_log "$name" have_kernel_line
echo "$name: ${#klines[@]} kernel log line(s)"
check "$name: kernel log has isolate-$name-blocked (1 or 2 SYNs: ${#klines[@]})" \
    between "${#klines[@]}" 1 2
for line in "${klines[@]}"; do
    for want in "DST=127.0.0.1 " "PROTO=TCP " "DPT=$forbidden " "UID=$uid "; do
        case "$line " in
        *" $want"*) ok "$name: kernel line has $want" ;;
        *) fail "$name: kernel line without $want: $line" ;;
        esac
    done
done
journal "$name" never 0
check "$name: no eBPF record without the eBPF layer (${#records[@]})" [ "${#records[@]}" = 0 ]
left_behind "$name"

# What the listener saw in 1 and 2: the two allowed curls, nothing on the forbidden port.
n_allowed=0 n_forbidden=0
while read -r port; do
    case $port in
    "$allowed") n_allowed=$((n_allowed + 1)) ;;
    "$forbidden") n_forbidden=$((n_forbidden + 1)) ;;
    esac
done <accepted
check "listener: 2 connections on the allowed port (got $n_allowed)" [ "$n_allowed" = 2 ]
check "listener: no connection on the forbidden port (got $n_forbidden)" [ "$n_forbidden" = 0 ]

# ---------------------------------------------------------------------------------------------
echo "--- 3a. a flood of 50 blocked connects, eBPF layer, log.rate 5/second"
name=audit-flood-ebpf
r_connected= r_flood_us= r_uid=
run "$name" ebpf "
n=0
s=\$EPOCHREALTIME
for ((i = 0; i < 50; i++)); do
    { : 3<>/dev/tcp/127.0.0.1/$forbidden; } 2>/dev/null && n=\$((n + 1))
done
e=\$EPOCHREALTIME
echo connected=\$n
echo flood_us=\$(( \${e/./} - \${s/./} ))
echo uid=\$UID
"
uid=$r_uid
echo "$name: 50 connects in $r_flood_us µs, $r_connected connected"
check "$name: all 50 connects refused" [ "$r_connected" = 0 ]
journal "$name" have_suppressed
blocked=0 suppressed=0 bad=0
for rec in "${records[@]}"; do
    case $rec in
    *'"ISOLATE_SUPPRESSED":"'*)
        field "$rec" ISOLATE_SUPPRESSED
        suppressed=$((suppressed + v))
        field "$rec" MESSAGE
        echo "$name: suppressed record: $v"
        ;;
    *)
        blocked=$((blocked + 1))
        for want in ISOLATE_PORT="$forbidden" ISOLATE_COMM=bash ISOLATE_UID="$uid" \
            ISOLATE_LAYER=ebpf-connect ISOLATE_DEST=127.0.0.1 ISOLATE_PROTO=tcp; do
            field "$rec" "${want%%=*}"
            [ "$v" = "${want#*=}" ] || {
                fail "$name: record with ${want%%=*}=$v: $rec"
                bad=1
            }
        done
        ;;
    esac
done
echo "$name: $blocked records of blocked attempts, $suppressed suppressed"
check "$name: records' fields are right" [ "$bad" = 0 ]
check "$name: between 1 and 12 records of blocked attempts (got $blocked)" \
    between "$blocked" 1 12
check "$name: a suppressed-count record (ISOLATE_SUPPRESSED, total $suppressed)" \
    [ "$suppressed" -ge 1 ]
check "$name: records + suppressed account for all 50 attempts ($blocked + $suppressed)" \
    [ $((blocked + suppressed)) = 50 ]
left_behind "$name"

# ---------------------------------------------------------------------------------------------
echo "--- 3b. a flood of 50 blocked connects, nftables layer, log.rate 5/second"
# Non-blocking connects: each sends one SYN, which the nftables layer drops (and logs while the
# limit lets it); the sockets are closed before the SYNs' first retransmission (1 s).
name=audit-flood-nft
r_codes= r_uid=
run "$name" nftables "
echo uid=\$UID
exec python3 -c '
import errno, socket, time
codes = {}
socks = []
for _ in range(50):
    s = socket.socket()
    s.setblocking(False)
    rc = s.connect_ex((\"127.0.0.1\", $forbidden))
    codes[errno.errorcode.get(rc, str(rc))] = codes.get(errno.errorcode.get(rc, str(rc)), 0) + 1
    socks.append(s)
time.sleep(0.5)
print(\"codes=\" + \",\".join(\"%s:%d\" % kv for kv in sorted(codes.items())))
'
"
uid=$r_uid
echo "$name: connect results: $r_codes"
check "$name: all 50 connects in progress (not refused at once)" [ "$r_codes" = EINPROGRESS:50 ] ||
    landlock_hint
kernel_log "$name" have_kernel_line
sleep 0.5
kernel_log "$name" have_kernel_line
echo "$name: ${#klines[@]} kernel log lines for 50 dropped SYNs"
check "$name: between 1 and 12 kernel log lines (got ${#klines[@]})" \
    between "${#klines[@]}" 1 12
bad=0
for line in "${klines[@]}"; do
    case "$line " in
    *" DPT=$forbidden "*" UID=$uid "*) ;;
    *)
        fail "$name: unexpected kernel line: $line"
        bad=1
        ;;
    esac
done
check "$name: each line is the instance's SYN to the forbidden port" [ "$bad" = 0 ]
left_behind "$name"

n_forbidden=0
while read -r port; do
    [ "$port" = "$forbidden" ] && n_forbidden=$((n_forbidden + 1))
done <accepted
check "listener: still no connection on the forbidden port (got $n_forbidden)" [ "$n_forbidden" = 0 ]

# The excerpt: everything isolate wrote to the journal in this scenario.
journalctl --no-pager -q -o verbose SYSLOG_IDENTIFIER=isolate >"$RESULTS/journal-isolate.txt" 2>&1
[ "$failed" = 0 ] && echo "all checks passed" || echo "some checks FAILED"
exit "$failed"
