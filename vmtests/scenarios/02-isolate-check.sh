#!/bin/sh
# vmtest-guest: initramfs
# `isolate check` accepts the example policy, refuses a broken one, and reports the kernel's
# features.
set -u
policies=$VMTESTS/policies
failed=0

echo "+ isolate check example.toml"
"$ISOLATE" check "$policies/example.toml" || failed=1

echo "+ isolate check invalid/unknown-key.toml (must fail)"
if "$ISOLATE" check "$policies/invalid/unknown-key.toml"; then
    echo "isolate check accepted a policy with an unknown key"
    failed=1
fi

echo "+ isolate check --kernel"
"$ISOLATE" check --kernel || failed=1
exit "$failed"
