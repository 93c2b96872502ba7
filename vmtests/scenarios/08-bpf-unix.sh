#!/bin/sh
# vmtest-guest: initramfs
# vmtest-timeout: 300
# The unix-socket allowlist of the eBPF layer (enforcer/tests/bpf_unix.rs) on a real kernel:
# BPF LSM programs on unix_stream_connect and unix_may_send, with ISOLATE_IN_VM=1 attached for
# the guest's root cgroup. Allowed sockets connect, others get EPERM at once, also through
# symlinks and relative paths; datagrams, abstract sockets, counters and events.
set -u
. "$VMTESTS/lib/testbin.sh"
echo "LSMs: $(cat /sys/kernel/security/lsm)"
ISOLATE_IN_VM=1 run_testbin bpf_unix
