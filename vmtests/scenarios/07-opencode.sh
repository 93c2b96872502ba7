#!/bin/sh
# vmtest-guest: systemd
# vmtest-timeout: 600
# vmtest-boot: 2
# The real `opencode serve` (npm opencode-ai, installed by `cargo xtask setup` and shared as
# /share/opencode/opencode) under `isolate exec` with examples/opencode.toml
# (enforcer/tests/opencode.rs): it answers on loopback, its calls to models.opencode.ai and
# registry.npmjs.org (and, with DNS off, its lookups) are refused and journald records each, a
# host added to `allow` is reached, SIGTERM stops it and nothing of the instance is left.
# opencode peaks at ~0.5 GB RSS here: the default 2 GiB of guest memory is enough.
set -u
. "$VMTESTS/lib/testbin.sh"
. "$VMTESTS/lib/opencode.sh"
install_opencode
# learn_mode runs in 15-learn, in the other boot: the two share the time.
run_testbin opencode --skip learn_mode
