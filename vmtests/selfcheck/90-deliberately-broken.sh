#!/bin/sh
# vmtest-guest: initramfs systemd
# Only run by `cargo xtask vmtest --self-check`: it must be reported as FAIL, with this output
# kept in target/vmtest/<kernel>/<guest>/results/90-deliberately-broken.log.
echo "this scenario fails on purpose (harness self-check)"
echo "a trace the developer needs" >"$RESULTS/evidence.txt"
exit 3
