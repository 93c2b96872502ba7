#!/bin/sh
# vmtest-guest: initramfs systemd
# The guest kernel offers what isolate builds on: BTF, cgroup v2, the Landlock and BPF LSMs,
# bpffs, and a working nf_tables (with the expressions isolate's ruleset uses).
set -u
failed=0
check() { # DESCRIPTION COMMAND...
    what=$1
    shift
    if "$@"; then
        echo "ok      $what"
    else
        echo "MISSING $what"
        failed=1
    fi
}
mounted() { # TYPE DIR
    grep -q " $2 $1 " /proc/mounts
}

echo "kernel $KERNEL_VERSION (series $KERNEL_SERIES), guest $VMTEST_GUEST"
if [ "$KERNEL_SERIES" = newest ]; then
    # The kernel that follows Debian's newest has no fixed series.
    echo "the newest kernel Debian ships: $KERNEL_VERSION"
else
    case "$KERNEL_VERSION" in
    "$KERNEL_SERIES".*) ;;
    *)
        echo "booted $KERNEL_VERSION, expected a $KERNEL_SERIES kernel"
        failed=1
        ;;
    esac
fi

check "BTF (/sys/kernel/btf/vmlinux)" test -s /sys/kernel/btf/vmlinux
check "cgroup v2 at /sys/fs/cgroup" mounted cgroup2 /sys/fs/cgroup
check "bpffs at /sys/fs/bpf" mounted bpf /sys/fs/bpf
lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)
echo "LSMs: $lsm"
check "landlock in the LSM list" grep -qw landlock /sys/kernel/security/lsm
check "bpf in the LSM list" grep -qw bpf /sys/kernel/security/lsm

# A table in the shape isolate renders (interval set, meta skuid, ct, limit, log, counter,
# reject), created, read back and deleted.
nft_table() {
    nft -f - <<'RULES' && nft list table inet vmtest-probe && nft delete table inet vmtest-probe
table inet vmtest-probe {
    set allow4 {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 192.168.0.0/16 }
    }
    chain output {
        type filter hook output priority 0; policy accept;
        ct state established,related accept
        meta skuid 65534 ip daddr @allow4 accept
        meta skuid 65534 limit rate 10/second log prefix "vmtest-probe-blocked " counter reject
    }
}
RULES
}
check "nf_tables: create, list and delete a table" nft_table
check "nf_tables: the table is gone" sh -c '! nft list table inet vmtest-probe 2>/dev/null'
exit "$failed"
