#!/bin/sh
# vmtest-guest: systemd
# vmtest-timeout: 600
# Learn mode on the real `opencode serve` (enforcer/tests/opencode.rs, learn_mode): from a
# policy granting only its programs and system files, `isolate exec --learn` lets opencode
# serve, observed, and writes a policy (its port, its lookups by name, its home directories)
# under which opencode, enforced, serves again with no refusal. The file accesses come from a
# fanotify watch on the run's own mount namespace; the refusals it would have met, from the
# eBPF programs in observe mode and isolate's resolver.
#
# On 6.1 only (Debian bookworm's kernel, the oldest here): it takes about four minutes under
# TCG, and what learn mode asks of the kernel (the programs' observe flag, fanotify, the
# mount namespace) 06-exec's learn test checks on every kernel.
set -u
if [ "$KERNEL_SERIES" != 6.1 ]; then
    echo "15-learn runs on 6.1 only; 06-exec covers learn mode on $KERNEL_SERIES"
    exit 77
fi
. "$VMTESTS/lib/testbin.sh"
. "$VMTESTS/lib/opencode.sh"
install_opencode
run_testbin opencode learn_mode
