#!/bin/sh
# vmtest-guest: systemd
# vmtest-timeout: 400
# `isolate exec` end to end (enforcer/tests/exec.rs): user switch, no privileges, cgroup,
# network layers and Landlock on the child and its descendants, host names followed through
# isolate's resolver (exact, wildcard, CNAME chain, 30 addresses over TCP, IPv6, a changed
# answer, a refused name recorded by name), learn mode (a run observed, the policy it writes
# enforced with no refusal), exit codes and signals, and nothing left behind.
set -u
. "$VMTESTS/lib/testbin.sh"
run_testbin exec
