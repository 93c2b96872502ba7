//! Builds the eBPF programs (`ebpf/programs`) for bpfel-unknown-none with nightly and puts the
//! object in `OUT_DIR`, where `src/bpf` embeds it with `include_bytes_aligned!`.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("enforcer/ has no parent"))?
        .join("ebpf/programs");
    let root = root.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [Package {
            name: "isolate-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if bpf-linker or nightly rust-src is missing)")
}
