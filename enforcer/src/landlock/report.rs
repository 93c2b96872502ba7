//! What a prepared ruleset enforces on this kernel, for logs and `--dry-run`.

use std::fmt;

use super::abi::Feature;
use super::plan::{Origin, PathRule};

/// The Landlock level in use and what the kernel's ABI made of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockReport {
    pub instance: String,
    /// The running kernel's Landlock ABI version.
    pub kernel_abi: u8,
    /// `uname -r`.
    pub kernel_release: String,
    /// The policy's `landlock.minimum_abi`.
    pub minimum_abi: u8,
    /// The plan's features this kernel enforces.
    pub enabled: Vec<Feature>,
    /// The plan's features this kernel lacks (all above `minimum_abi`).
    pub dropped: Vec<Feature>,
    /// Paths left out because they do not exist.
    pub skipped: Vec<PathRule>,
    /// Path rules given to the kernel.
    pub path_rules: usize,
    /// Port rules given to the kernel.
    pub port_rules: usize,
}

impl LandlockReport {
    /// Whether every feature of the plan is enforced.
    pub fn fully_enforced(&self) -> bool {
        self.dropped.is_empty()
    }
}

/// One line; with `{:#}`, one line per item (for `--dry-run`).
impl fmt::Display for LandlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if f.alternate() { "\n  " } else { "; " };
        write!(
            f,
            "ABI {} (Linux {}, policy minimum {}), {}, {} path rules, {} port rules",
            self.kernel_abi,
            self.kernel_release,
            self.minimum_abi,
            if self.fully_enforced() {
                "fully enforced"
            } else {
                "partially enforced"
            },
            self.path_rules,
            self.port_rules,
        )?;
        write!(f, "{sep}enabled: ")?;
        write_list(f, self.enabled.iter().map(ToString::to_string))?;
        if !self.dropped.is_empty() {
            write!(f, "{sep}dropped (kernel too old): ")?;
            write_list(
                f,
                self.dropped
                    .iter()
                    .map(|d| format!("{d}: {}", d.when_missing())),
            )?;
        }
        if !self.skipped.is_empty() {
            write!(f, "{sep}skipped (do not exist): ")?;
            write_list(
                f,
                self.skipped.iter().map(|r| match r.origin {
                    Origin::Baseline => format!("{} [baseline]", r.path.display()),
                    _ => r.path.display().to_string(),
                }),
            )?;
        }
        Ok(())
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, items: impl Iterator<Item = String>) -> fmt::Result {
    for (i, item) in items.enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        f.write_str(&item)?;
    }
    Ok(())
}
