# The environment every scenario (and the interactive debugging shell) gets, in both guests.
# Sourced by runner.sh and by the debugging shells; uses shell builtins only (every process
# start costs about 0.3 s under TCG).
read -r _vmtest_cmdline </proc/cmdline
for _vmtest_arg in $_vmtest_cmdline; do
    case "$_vmtest_arg" in
    vmtest.guest=*) VMTEST_GUEST=${_vmtest_arg#*=} ;;
    vmtest.mode=*) VMTEST_MODE=${_vmtest_arg#*=} ;;
    vmtest.kernel=*) KERNEL_SERIES=${_vmtest_arg#*=} ;;
    vmtest.list=*) VMTEST_LIST=${_vmtest_arg#*=} ;;
    esac
done
unset _vmtest_cmdline _vmtest_arg
read -r KERNEL_VERSION </proc/sys/kernel/osrelease

# VMTEST_GUEST     initramfs | systemd
# KERNEL_SERIES    the kernel's short name: 6.1 | 6.12 | newest (Debian's newest, any version)
# KERNEL_VERSION   uname -r
# ISOLATE          the freshly built release `isolate` binary
# TESTBIN          the test executables named in vmtests/testbins.txt (by target name)
# VMTESTS          this directory tree (scenarios, policies, guest scripts)
# ISOLATE_IN_VM=1  tests may take over the whole (throwaway) machine: root cgroup, ruleset
export VMTEST_GUEST VMTEST_MODE VMTEST_LIST KERNEL_SERIES KERNEL_VERSION
export ISOLATE=/share/bin/isolate
export TESTBIN=/share/testbin
export VMTESTS=/share/vmtests
export ISOLATE_IN_VM=1
export RUST_BACKTRACE=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# Shared libraries the initramfs lacks for the shared binaries (xtask copies them here).
if [ "$VMTEST_GUEST" = initramfs ] && [ -d /share/lib ]; then
    export LD_LIBRARY_PATH=/share/lib
fi
