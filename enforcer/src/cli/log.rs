//! `isolate log`: the daemon's refusals, as the audit trail records them, without journald.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use isolate_enforcer::control::{self, Request, Response};
use isolate_enforcer::paths;

#[derive(Args)]
pub struct LogArgs {
    /// Only this instance's refusals (every instance's by default).
    instance: Option<String>,
    /// Keep following: print each new refusal as the daemon takes it in, until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// The daemon's control socket.
    #[arg(long, default_value = paths::CONTROL_SOCKET)]
    control_socket: PathBuf,
}

pub fn run(args: &LogArgs) -> anyhow::Result<ExitCode> {
    let request = Request::Log {
        instance: args.instance.clone(),
        follow: args.follow,
    };
    let mut refused = None;
    let mut stdout = std::io::stdout().lock();
    let answered = control::stream(&args.control_socket, &request, |response| match response {
        Response::Refusal { record, .. } => {
            // A closed pipe (`isolate log -f | head`) ends the follow.
            writeln!(stdout, "{record}")
                .and_then(|()| stdout.flush())
                .is_ok()
        }
        Response::Missed { count } => {
            eprintln!("isolate: {count} refusal(s) not shown: this log fell behind");
            true
        }
        Response::Error { message } => {
            refused = Some(message);
            false
        }
        other => {
            refused = Some(format!("unexpected answer: {other:?}"));
            false
        }
    })?;
    if !answered {
        bail!(
            "no daemon listens on {}: `isolate log` shows the daemon's refusals (an `isolate exec` \
             run without a daemon records its own in journald, or on its stderr)",
            args.control_socket.display()
        );
    }
    if let Some(message) = refused {
        bail!("the daemon refused: {message}");
    }
    Ok(ExitCode::SUCCESS)
}
