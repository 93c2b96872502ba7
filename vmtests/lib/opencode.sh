# Sourced by the scenarios that run the real `opencode serve` (npm opencode-ai, installed by
# `cargo xtask setup` on the host and shared as /share/opencode/opencode).
# install_opencode: copies it to /usr/local/bin/opencode, where examples/opencode.toml expects
# it (exec = [..., "/usr/local"]), and exports OPENCODE_BIN. It goes on the guest's own disk
# because Landlock rules cannot hold on the 9p share (its inodes are not stable across
# lookups), so exec from /share is refused.
install_opencode() {
    test -x /share/opencode/opencode || {
        echo "no /share/opencode/opencode: run \`cargo xtask setup\` on the host (npm install opencode-ai)"
        exit 1
    }
    cp /share/opencode/opencode /usr/local/bin/opencode || exit 1
    export OPENCODE_BIN=/usr/local/bin/opencode
}
