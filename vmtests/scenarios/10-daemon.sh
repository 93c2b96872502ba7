#!/bin/sh
# vmtest-guest: systemd
# vmtest-timeout: 400
# `isolate daemon` (enforcer/tests/daemon.rs) attached at the guest's root cgroup: instances
# side by side, metrics equal to the attempts, status with and without the daemon, reload with
# good and bad policies, SIGKILL and restart under load, cleanup, and each instance's DNS
# answers followed by the daemon's resolver for it (admitted addresses outlive a restart).
set -u
. "$VMTESTS/lib/testbin.sh"
run_testbin daemon
