#!/bin/sh
# vmtest-guest: initramfs
# vmtest-timeout: 180
# The connect4 proof (enforcer/tests/bpf_connect4.rs) on a real kernel: with ISOLATE_IN_VM=1 the
# test attaches isolate's programs at the guest's root cgroup and runs its client as a
# non-root user; it exits 0 when allowed connects pass and forbidden ones get EPERM.
set -u
test -x "$TESTBIN/bpf_connect4" || {
    echo "no test executable $TESTBIN/bpf_connect4"
    exit 1
}
ISOLATE_IN_VM=1 "$TESTBIN/bpf_connect4" --test-threads=1 --nocapture >output.txt 2>&1
rc=$?
cat output.txt
cp output.txt "$RESULTS/"
if grep -q "test result: ok. 0 passed" output.txt; then
    echo "bpf_connect4 ran no test"
    exit 1
fi
exit "$rc"
