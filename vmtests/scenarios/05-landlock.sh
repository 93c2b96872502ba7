#!/bin/sh
# vmtest-guest: systemd
# vmtest-timeout: 300
# The Landlock layer (enforcer/tests/landlock.rs) on each kernel's ABI (2 on 6.1, 6 on 6.12):
# what the ABI has is enforced, what it lacks is reported as dropped.
set -u
. "$VMTESTS/lib/testbin.sh"
run_testbin landlock
