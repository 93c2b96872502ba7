#!/bin/sh
# vmtest-guest: initramfs
# Only run by `cargo xtask vmtest --self-check`: powers the guest off in the middle of the run,
# so the harness must report this scenario (and any after it) as failed with "no result".
echo "powering the guest off behind the runner's back (harness self-check)"
sync
echo o >/proc/sysrq-trigger
sleep 30
