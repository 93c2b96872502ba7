#!/bin/bash
# vmtest-guest: systemd
# vmtest-timeout: 300
# A real PostgreSQL (Debian's package) behind the unix-socket allowlist, as a user runs it:
# `isolate exec` with a policy that lists /run/postgresql/.s.PGSQL.5432 runs psql and gets an
# answer, also through a symlink to the socket's directory and from a relative path; a policy
# that does not list it is refused at connect (EPERM) and the refusal is recorded with the
# entry that would allow it; a policy that names the socket through a symlink allows the real
# one; a server restart (which re-creates the socket) keeps it allowed.
set -u
failed=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failed=1; }

psql=$(ls -d /usr/lib/postgresql/*/bin/psql | tail -n 1)
cluster=$(ls /etc/postgresql | tail -n 1)
socket=/run/postgresql/.s.PGSQL.5432
systemctl start "postgresql@$cluster-main.service" || {
    journalctl -b -u "postgresql@$cluster-main.service" --no-pager | tail -20
    exit 1
}
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.2; done
[ -S "$socket" ] && ok "PostgreSQL $cluster serves on $socket" || { fail "no $socket"; exit 1; }

useradd --system --create-home --shell /usr/sbin/nologin pgclient
runuser -u postgres -- "$psql" -qc "CREATE ROLE pgclient LOGIN" || fail "create the role"
ln -s /run/postgresql /tmp/pglink

# One policy per case: the instance user, no DNS, and only what psql needs on disk.
policy() { # NAME UNIX_SOCKETS
    cat >"$PWD/$1.toml" <<POLICY
user = "pgclient"
[network]
dns = "none"
unix_sockets = [$2]
[filesystem]
read_only = ["/usr", "/etc"]
exec = ["/usr/lib", "/usr/bin", "/bin"]
POLICY
}
policy listed "\"$socket\""
policy unlisted ""
policy via-link "\"/tmp/pglink/.s.PGSQL.5432\""

# psql as the instance, confined by the named policy; prints psql's answer (or error).
confined_psql() { # POLICY SOCKET_DIR
    "$ISOLATE" exec --policy "$PWD/$1.toml" -- "$psql" -h "$2" -d postgres -Atc "SELECT 6 * 7" 2>"$RESULTS/$1.stderr"
}

answer=$(confined_psql listed /run/postgresql)
[ "$answer" = 42 ] && ok "listed: psql gets its answer" || fail "listed: '$answer' $(tail -3 "$RESULTS/listed.stderr")"
answer=$(confined_psql listed /tmp/pglink)
[ "$answer" = 42 ] && ok "listed, through a symlink to the directory: psql gets its answer" ||
    fail "listed via symlink: '$answer' $(tail -3 "$RESULTS/listed.stderr")"
# A relative path: the client connects to ".s.PGSQL.5432" from inside the directory.
relative=$("$ISOLATE" exec --policy "$PWD/listed.toml" -- python3 -c '
import os, socket
os.chdir("/run/postgresql")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(".s.PGSQL.5432")
print("connected")' 2>"$RESULTS/relative.stderr")
[ "$relative" = connected ] && ok "listed, from a relative path: the connect succeeds" ||
    fail "relative: '$relative' $(tail -3 "$RESULTS/relative.stderr")"

answer=$(confined_psql unlisted /run/postgresql)
if [ -z "$answer" ] && grep -q "Operation not permitted" "$RESULTS/unlisted.stderr"; then
    ok "unlisted: psql is refused at connect (EPERM)"
else
    fail "unlisted: '$answer' $(tail -3 "$RESULTS/unlisted.stderr")"
fi
# isolate exec writes its records to the journal where there is one (here), else to stderr.
record=$(journalctl -o cat ISOLATE_INSTANCE=unlisted ISOLATE_PROTO=stream 2>/dev/null | tail -n 1)
echo "the record: $record"
case $record in
*"isolate-unlisted-blocked stream"*"comm=psql"*"network.unix_sockets in $PWD/unlisted.toml"*)
    ok "unlisted: the refusal is recorded with the entry that would allow it" ;;
*) fail "unlisted: no such record in the journal" ;;
esac
answer=$(confined_psql unlisted /tmp/pglink)
if [ -z "$answer" ] && grep -q "Operation not permitted" "$RESULTS/unlisted.stderr"; then
    ok "unlisted, through a symlink: still refused (EPERM)"
else
    fail "unlisted via symlink: '$answer' $(tail -3 "$RESULTS/unlisted.stderr")"
fi

answer=$(confined_psql via-link /run/postgresql)
[ "$answer" = 42 ] && ok "a policy naming the socket through a symlink allows the real one" ||
    fail "via-link: '$answer' $(tail -3 "$RESULTS/via-link.stderr")"

systemctl restart "postgresql@$cluster-main.service"
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.2; done
answer=$(confined_psql listed /run/postgresql)
[ "$answer" = 42 ] && ok "after a server restart re-created the socket: still allowed" || fail "after restart: '$answer'"

systemctl stop "postgresql@$cluster-main.service"
rm -f /tmp/pglink
userdel --remove pgclient 2>/dev/null
exit "$failed"
