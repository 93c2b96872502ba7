#!/bin/sh
# vmtest-guest: initramfs
# vmtest-timeout: 300
# Inbound confinement (enforcer/tests/bpf_inbound.rs) on a real kernel, with isolate's programs
# at the guest's root cgroup as the daemon attaches them: a confined server binds only what
# network.listen lists (EPERM otherwise), no connection or datagram reaches an unlisted port
# (ephemeral ones and listen() without bind included), answers to allowed flows arrive, and
# each refusal is counted and recorded.
set -u
. "$VMTESTS/lib/testbin.sh"
ISOLATE_IN_VM=1 run_testbin bpf_inbound
