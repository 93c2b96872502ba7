#!/bin/sh
# vmtest-guest: initramfs
# vmtest-timeout: 300
# The connect4 proof and the rest of the eBPF egress layer (enforcer/tests/bpf_egress.rs) on a
# real kernel: with ISOLATE_IN_VM=1 the test attaches isolate's programs at the guest's root
# cgroup, as the daemon does, and runs its clients as non-root users; allowed destinations
# connect, forbidden ones get EPERM at once.
set -u
. "$VMTESTS/lib/testbin.sh"
ISOLATE_IN_VM=1 run_testbin bpf_egress
