#!/bin/sh
# Runs the scenarios listed in /share/$VMTEST_LIST (run-<guest>-<boot>.list, written by xtask,
# named on the kernel command line: one line per scenario,
# `name<TAB>timeout-seconds<TAB>path`), one after another, in both guests:
#   /results/<name>.log    the scenario's stdout and stderr
#   /results/<name>.rc     `<exit code> <elapsed centiseconds>`
#   /results/<name>/       $RESULTS: a directory for the scenario's own artifacts
# and prints `vmtest-runner: …` progress markers on the console, which xtask watches to tell a
# slow guest from a hung one. vmtest.mode=shell skips the scenarios, vmtest.mode=keep opens a
# shell after them; otherwise the systemd guest dumps its journal and powers off (the
# initramfs guest's /init powers off).
. /share/vmtests/guest/env.sh

say() {
    echo "vmtest-runner: $*" >/dev/console
}

now() { # sets $now to the uptime in centiseconds, without starting a process
    read -r _up _ </proc/uptime
    _c=${_up#*.}
    now=$((${_up%.*} * 100 + ${_c#0}))
}

shell() {
    if [ "$VMTEST_GUEST" = systemd ]; then
        systemctl start --no-block vmtest-shell.service
    else
        say "interactive shell; exit it to power off"
        ENV=/share/vmtests/guest/env.sh setsid cttyhack sh -i
    fi
}

if [ "$VMTEST_GUEST" = systemd ]; then
    state=$(systemctl is-system-running --wait)
    say "system is $state"
    [ "$state" = running ] || systemctl --failed --no-legend >/results/failed-units.txt 2>&1
fi

if [ "$VMTEST_MODE" = shell ]; then
    shell
    exit 0
fi

read -r uptime _ </proc/uptime
say "start (uptime ${uptime}s)"
tab=$(printf '\t')
while IFS=$tab read -r name timeout path; do
    [ -n "$name" ] || continue
    mkdir -p "/results/$name" "/tmp/vmtest/$name"
    say "begin $name"
    now
    start=$now
    (
        cd "/tmp/vmtest/$name" || exit 1
        RESULTS="/results/$name" exec timeout -k 5 "$timeout" "$path"
    ) >"/results/$name.log" 2>&1 </dev/null
    rc=$?
    now
    echo "$rc $((now - start))" >"/results/$name.rc"
    say "end $name rc=$rc"
done <"/share/${VMTEST_LIST:-run-$VMTEST_GUEST.list}"
sync

if [ "$VMTEST_GUEST" = systemd ]; then
    journalctl -b --no-pager -o short-monotonic >/results/journal.txt 2>&1
    sync
fi
read -r uptime _ </proc/uptime
say "done (uptime ${uptime}s)"

if [ "$VMTEST_MODE" = keep ]; then
    shell
elif [ "$VMTEST_GUEST" = systemd ]; then
    systemctl poweroff --check-inhibitors=no
fi
