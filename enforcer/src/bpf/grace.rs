//! Waiting until no program still runs with what was current before a map update.
//!
//! A program reads a UID's generation, then looks its rules up under that generation. The
//! two reads are not atomic: a program that read the old generation just before the flip can
//! still be between them when the old entries go, and would then refuse an allowed connect.
//! isolate's programs all run inside an RCU read-side critical section (cgroup, socket and
//! LSM programs alike), so one RCU grace period after the flip, none is left that saw the old
//! generation. `membarrier(MEMBARRIER_CMD_GLOBAL)` is the system call that waits for one
//! (`synchronize_rcu`), the same wait the kernel does after a userspace update of a map of
//! maps.

use std::io;
use std::time::Duration;

/// `MEMBARRIER_CMD_GLOBAL` of `<linux/membarrier.h>` (Linux 4.16; formerly `_SHARED`).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Where the kernel refuses the global barrier (it does on `nohz_full` kernels), waiting this
/// long instead: far more than any run of isolate's programs, which are short and never
/// sleep. Failing to wait long enough could only refuse an allowed connect, never admit one.
const FALLBACK_WAIT: Duration = Duration::from_millis(20);

/// Returns once every eBPF program run that began before the call has ended.
pub(super) fn wait_for_running_programs() {
    if let Err(e) = global_barrier() {
        tracing::debug!("membarrier(MEMBARRIER_CMD_GLOBAL) refused ({e}); waiting instead");
        std::thread::sleep(FALLBACK_WAIT);
    }
}

fn global_barrier() -> io::Result<()> {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
