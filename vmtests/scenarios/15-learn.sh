#!/bin/sh
# vmtest-guest: systemd
# vmtest-timeout: 600
# Learn mode on the real `opencode serve` (enforcer/tests/opencode.rs, learn_mode): from a
# policy granting only its programs and system files, `isolate exec --learn` lets opencode
# serve, observed, and writes a policy (its port, its lookups by name, its home directories)
# under which opencode, enforced, serves again with no refusal. The file accesses come from a
# fanotify watch on the run's own mount namespace; the refusals it would have met, from the
# eBPF programs in observe mode and isolate's resolver.
set -u
. "$VMTESTS/lib/testbin.sh"
test -x /share/opencode/opencode || {
    echo "no /share/opencode/opencode: run \`cargo xtask setup\` on the host (npm install opencode-ai)"
    exit 1
}
# On the guest's own disk: Landlock rules cannot hold on the 9p share.
cp /share/opencode/opencode /usr/local/bin/opencode || exit 1
export OPENCODE_BIN=/usr/local/bin/opencode
run_testbin opencode learn_mode
