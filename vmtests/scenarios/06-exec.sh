#!/bin/sh
# vmtest-guest: systemd
# vmtest-timeout: 400
# `isolate exec` end to end (enforcer/tests/exec.rs): user switch, no privileges, cgroup,
# network layers and Landlock on the child and its descendants, exit codes and signals, and
# nothing left behind.
set -u
. "$VMTESTS/lib/testbin.sh"
run_testbin exec
