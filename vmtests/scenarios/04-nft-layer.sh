#!/bin/sh
# vmtest-guest: systemd
# vmtest-timeout: 300
# The nftables layer (enforcer/tests/nft_layer.rs) on a real kernel's nf_tables: render, apply,
# idempotence, replacement, removal, refused input, and real traffic allowed vs dropped.
set -u
. "$VMTESTS/lib/testbin.sh"
run_testbin nft_layer
