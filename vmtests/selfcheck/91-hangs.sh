#!/bin/sh
# vmtest-guest: initramfs
# vmtest-timeout: 5
# Only run by `cargo xtask vmtest --self-check`: hangs, so the guest-side timeout must stop it
# and the harness must report it as timed out, then carry on with the next scenario.
echo "sleeping forever (harness self-check)"
sleep 100000
