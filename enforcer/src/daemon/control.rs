//! The control socket: one JSON request per line, one JSON answer per line, root only
//! (checked with `SO_PEERCRED`). `isolate status`, `isolate reload` and `isolate exec` use it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::registry::{Registry, ReloadReport};
use super::status::{self, Status};

/// Where the daemon listens.
pub const DEFAULT_SOCKET: &str = "/run/isolate/control.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Reload,
    /// Make sure `instance` is enforced (re-reads the policy directory first).
    Ensure {
        instance: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Reloaded { report: serde_json::Value },
    Ensured { instance: String, uid: u32 },
    Error { message: String },
}

/// Binds the socket (mode 0600, replacing a stale one) and serves it until the task ends.
pub async fn serve(path: &Path, registry: Arc<Mutex<Registry>>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, registry).await {
                tracing::warn!("control socket: {e}");
            }
        });
    }
}

async fn handle(stream: UnixStream, registry: Arc<Mutex<Registry>>) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = if peer.uid() == 0 {
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => answer(request, &registry),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        }
    } else {
        Response::Error {
            message: "the control socket answers root only".into(),
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

fn answer(request: Request, registry: &Mutex<Registry>) -> Response {
    let mut registry = registry.lock().expect("registry lock");
    match request {
        Request::Status => {
            // Take in what the ring buffer holds, so the answer is current.
            registry.pump_events();
            Response::Status(status::from_registry(&registry))
        }
        Request::Reload => Response::Reloaded {
            report: report_json(&registry.reload()),
        },
        Request::Ensure { instance } => {
            let report = registry.reload();
            match registry.instances.get(&instance) {
                Some(i) => Response::Ensured {
                    uid: i.uid,
                    instance,
                },
                None => Response::Error {
                    message: report
                        .failed
                        .iter()
                        .find(|(name, _)| {
                            name == &instance || name.contains(&format!("/{instance}.toml"))
                        })
                        .map_or_else(
                            || {
                                format!(
                                    "the daemon has no instance `{instance}` in {}",
                                    registry.policy_dir.display()
                                )
                            },
                            |(_, why)| why.clone(),
                        ),
                },
            }
        }
    }
}

fn report_json(report: &ReloadReport) -> serde_json::Value {
    serde_json::to_value(report).unwrap_or_default()
}

/// Sends one request to a running daemon. `None` when no daemon listens at `path`.
pub fn request(path: &Path, request: &Request) -> Option<std::io::Result<Response>> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    let result = (|| {
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut answer = String::new();
        std::io::BufReader::new(&stream).read_line(&mut answer)?;
        serde_json::from_str(&answer).map_err(std::io::Error::other)
    })();
    Some(result)
}
