//! Waiting for the child: forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to it, and between
//! signals runs a periodic task (the event pump). Returns the exit code as a shell reports it.

use std::os::fd::AsFd;
use std::process::Child;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals the supervisor passes on to the child.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// `si_code` of signals the kernel raised itself (e.g. the terminal's Ctrl-C, which reached the
/// child's process group already).
const SI_KERNEL: i32 = 0x80;

/// Blocks the forwarded signals and SIGCHLD in the calling thread, so they queue for the
/// signalfd. Call before spawning the child (std resets the mask in the child).
pub fn block_signals() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for signal in FORWARDED.into_iter().chain([Signal::SIGCHLD]) {
        set.add(signal);
    }
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
}

/// Waits for `child` to exit, forwarding signals and calling `tick` at least every `period`.
/// Returns the exit code, or 128 + the signal that killed it.
pub fn wait(
    child: &Child,
    signals: &mut SignalFd,
    period: Duration,
    mut tick: impl FnMut(),
) -> nix::Result<i32> {
    let pid = Pid::from_raw(child.id().cast_signed());
    let timeout = PollTimeout::try_from(period).unwrap_or(PollTimeout::MAX);
    loop {
        if let Some(code) = exit_code(waitpid(pid, Some(WaitPidFlag::WNOHANG))?) {
            tick();
            return Ok(code);
        }
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        while let Some(info) = signals.read_signal()? {
            let Ok(signal) = Signal::try_from(info.ssi_signo.cast_signed()) else {
                continue;
            };
            if FORWARDED.contains(&signal) && info.ssi_code != SI_KERNEL {
                tracing::info!("forwarding {signal} to the child");
                let _ = nix::sys::signal::kill(pid, signal);
            }
        }
        tick();
    }
}

fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}
