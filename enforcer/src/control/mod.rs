//! The control protocol between the daemon and its clients (`isolate status`, `reload`,
//! `exec`): one JSON request per line, one JSON answer per line, over a unix socket that
//! answers root only. Neither side owns it: the daemon serves it, the clients speak it.

mod status;

use std::io::{self, BufRead as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use status::{DaemonStats, DnsStatus, InstanceStatus, LayerAvailability, NameStatus, Status};

/// How long a client waits for the daemon's answer. An `ensure` or `reload` applies every
/// changed instance before it answers, so this is generous.
const ANSWER_TIMEOUT: Duration = Duration::from_mins(2);
/// How long a client waits to hand over its request.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Reload,
    /// Make sure `instance` is enforced (re-reads the policy directory first).
    Ensure {
        instance: String,
    },
    /// The latest refusals of `instance` (of every instance when `None`), one
    /// [`Response::Refusal`] each; with `follow`, then every new one as it arrives, until the
    /// client hangs up.
    Log {
        instance: Option<String>,
        follow: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Reloaded {
        report: ReloadReport,
    },
    Ensured {
        instance: String,
        uid: u32,
        /// The daemon's policy file for the instance.
        #[serde(default)]
        source: PathBuf,
        /// [`network_digest`] of the network section the daemon enforces.
        #[serde(default)]
        network: String,
        /// The layers (or parts) the daemon cannot put in force on this kernel, and why.
        #[serde(default)]
        not_enforced: Vec<LayerAvailability>,
    },
    /// One refusal, as the audit trail records it (with the fix).
    Refusal {
        instance: String,
        record: String,
    },
    /// A follower fell behind: `count` refusals were not sent to it.
    Missed {
        count: u64,
    },
    Error {
        message: String,
    },
}

/// The outcome of a reload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Instances whose rules were written (new or changed).
    pub applied: Vec<String>,
    /// Instances already in force as their files say.
    pub unchanged: Vec<String>,
    /// Instances whose file is gone, no longer enforced.
    pub removed: Vec<String>,
    pub failed: Vec<Failure>,
}

/// Something a reload could not do; the instance (if any) keeps its last good enforcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The instance concerned, when one is.
    pub instance: Option<String>,
    /// The file concerned, when one is.
    pub file: Option<PathBuf>,
    pub reason: String,
}

impl ReloadReport {
    /// Why `instance` failed, if it did.
    pub fn failure_of(&self, instance: &str) -> Option<&Failure> {
        self.failed
            .iter()
            .find(|f| f.instance.as_deref() == Some(instance))
    }
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        write!(
            f,
            "applied: {}; unchanged: {}; removed: {}; failed: {}",
            list(&self.applied),
            list(&self.unchanged),
            list(&self.removed),
            self.failed.len()
        )?;
        for failure in &self.failed {
            write!(f, "\n  {}", failure.reason)?;
        }
        Ok(())
    }
}

/// A digest of a policy's network section, to tell whether two policies of one instance
/// ask the same of the network layers.
pub fn network_digest(network: &isolate_policy::Network) -> String {
    let text = serde_json::to_string(network).expect("a network section serialises");
    crate::digest::sha256([text])
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the daemon at {path} did not answer: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon at {path} answered something else than isolate's protocol: {source}")]
    Protocol {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Sends one request to a running daemon. `Ok(None)` when no daemon listens at `path`.
pub fn request(path: &Path, request: &Request) -> Result<Option<Response>, ControlError> {
    let mut answer = None;
    let answered = exchange(path, request, Some(ANSWER_TIMEOUT), |response| {
        answer = Some(response);
        false
    })?;
    if !answered {
        return Ok(None);
    }
    // Hung up without a word: as much a protocol error as a garbled answer.
    answer.map(Some).ok_or_else(|| ControlError::Protocol {
        path: path.to_path_buf(),
        source: serde::de::Error::custom("the connection closed before an answer"),
    })
}

/// Sends `request` and hands each answer line to `each` until the daemon closes the
/// connection or `each` returns `false`. Without a read timeout: a follower waits as long as
/// nothing is refused. `Ok(false)` when no daemon listens at `path`.
pub fn stream(
    path: &Path,
    request: &Request,
    each: impl FnMut(Response) -> bool,
) -> Result<bool, ControlError> {
    exchange(path, request, None, each)
}

/// One request line, then answer lines to `each` (see [`stream`]), each read within
/// `read_timeout` when there is one.
fn exchange(
    path: &Path,
    request: &Request,
    read_timeout: Option<Duration>,
    mut each: impl FnMut(Response) -> bool,
) -> Result<bool, ControlError> {
    let Ok(stream) = UnixStream::connect(path) else {
        return Ok(false);
    };
    let io_error = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream
        .set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(io_error)?;
    stream.set_read_timeout(read_timeout).map_err(io_error)?;
    let mut line = serde_json::to_vec(request).expect("requests serialise");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_error)?;
    for answer in io::BufReader::new(&stream).lines() {
        let answer = answer.map_err(io_error)?;
        let response = serde_json::from_str(&answer).map_err(|source| ControlError::Protocol {
            path: path.to_path_buf(),
            source,
        })?;
        if !each(response) {
            break;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_typed_json() {
        let line = serde_json::to_string(&Request::Ensure {
            instance: "a".into(),
        })
        .unwrap();
        assert_eq!(line, r#"{"command":"ensure","instance":"a"}"#);
        let report = ReloadReport {
            applied: vec!["a".into()],
            failed: vec![Failure {
                instance: Some("b".into()),
                file: Some("/etc/isolate/instances/b.toml".into()),
                reason: "b.toml:1:1: user: …".into(),
            }],
            ..ReloadReport::default()
        };
        let text = serde_json::to_string(&Response::Reloaded {
            report: report.clone(),
        })
        .unwrap();
        let Response::Reloaded { report: back } = serde_json::from_str(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!(back, report);
        assert_eq!(back.failure_of("b").unwrap().reason, "b.toml:1:1: user: …");
        assert!(back.failure_of("a").is_none());
    }

    #[test]
    fn no_daemon_is_none_and_a_mute_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        assert!(request(&path, &Request::Status).unwrap().is_none());
        // A listener that takes the request and closes without answering.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            io::BufReader::new(&stream).read_line(&mut line).unwrap();
        });
        let error = request(&path, &Request::Status).unwrap_err();
        assert!(matches!(error, ControlError::Protocol { .. }), "{error}");
        server.join().unwrap();
    }
}
