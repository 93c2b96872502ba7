#!/bin/sh
# vmtest-guest: initramfs
# vmtest-timeout: 300
# The connect4 proof and the rest of the eBPF egress layer (enforcer/tests/bpf_egress.rs) on a
# real kernel: with ISOLATE_IN_VM=1 the test attaches isolate's programs at the guest's root
# cgroup, as the daemon does, and runs its clients as non-root users; allowed destinations
# connect, forbidden ones get EPERM at once. The executable exits 0 when every test passed.
set -u
test -x "$TESTBIN/bpf_egress" || {
    echo "no test executable $TESTBIN/bpf_egress (see vmtests/testbins.txt)"
    exit 1
}
ISOLATE_IN_VM=1 "$TESTBIN/bpf_egress" >"$RESULTS/output.txt" 2>&1
rc=$?
cat "$RESULTS/output.txt"
if [ "$rc" -eq 0 ] && ! grep -q "^test result: ok\. [1-9][0-9]* passed" "$RESULTS/output.txt"; then
    echo "bpf_egress exited 0 but ran no test"
    exit 1
fi
exit "$rc"
