//! The daemon's side of the control socket and the `/metrics` endpoint. Neither does any
//! blocking work on the async side: changes go to the registry worker, counter reads to the
//! blocking pool.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use super::{Shared, Work};
use crate::control::{Request, Response, Status};

/// How long a status waits for the event pump to take in what the ring buffer holds.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) struct Server {
    pub(super) shared: Arc<Shared>,
    pub(super) work: mpsc::Sender<Work>,
    /// Asks the event pump to take in pending events (none without the eBPF layer).
    pub(super) drain: Option<mpsc::Sender<oneshot::Sender<()>>>,
}

/// Binds the socket, mode 0600, replacing a stale one.
pub(super) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(listener)
}

impl Server {
    /// Serves the control socket until the task is aborted; a failed accept is logged and
    /// the loop goes on.
    pub(super) async fn serve_control(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let server = Arc::clone(&self);
                    tokio::spawn(async move {
                        if let Err(e) = server.handle(stream).await {
                            tracing::warn!("control socket: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("control socket: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub(super) async fn serve_metrics(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let server = Arc::clone(&self);
                async move { crate::metrics::render(&server.status().await) }
            }),
        );
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server: {e}");
        }
    }

    async fn handle(&self, stream: UnixStream) -> std::io::Result<()> {
        let peer = stream.peer_cred()?;
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        let response = if peer.uid() == 0 {
            match serde_json::from_str::<Request>(&line) {
                Ok(Request::Log { instance, follow }) => {
                    return self.log(&mut write, instance, follow).await;
                }
                Ok(request) => self.answer(request).await,
                Err(e) => Response::Error {
                    message: format!("bad request: {e}"),
                },
            }
        } else {
            Response::Error {
                message: "the control socket answers root only".into(),
            }
        };
        send(&mut write, &response).await
    }

    /// `isolate log`: the latest refusals of `instance` (or of all), then, when following,
    /// every new one until the client hangs up.
    async fn log(
        &self,
        write: &mut (impl tokio::io::AsyncWrite + Unpin),
        instance: Option<String>,
        follow: bool,
    ) -> std::io::Result<()> {
        // Subscribed before the history is read: nothing falls between the two.
        let mut refusals = self.shared.refusals.subscribe();
        let view = self.shared.view();
        if let Some(name) = &instance
            && !view.instances.iter().any(|i| &i.id.name == name)
        {
            let known: Vec<&str> = view.instances.iter().map(|i| i.id.name.as_str()).collect();
            let message = format!(
                "no instance `{name}` is enforced (enforced: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            );
            return send(write, &Response::Error { message }).await;
        }
        let wanted = |name: &str| instance.as_deref().is_none_or(|i| i == name);
        let history: Vec<Response> =
            {
                let recent = self
                    .shared
                    .recent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                view.instances
                    .iter()
                    .filter(|i| wanted(&i.id.name))
                    .flat_map(|i| {
                        recent.get(&i.id.uid).into_iter().flatten().map(|record| {
                            Response::Refusal {
                                instance: i.id.name.clone(),
                                record: record.clone(),
                            }
                        })
                    })
                    .collect()
            };
        for response in &history {
            send(write, response).await?;
        }
        if !follow {
            return Ok(());
        }
        loop {
            let response = match refusals.recv().await {
                Ok(refusal) if wanted(&refusal.instance) => Response::Refusal {
                    instance: refusal.instance,
                    record: refusal.record,
                },
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(count)) => {
                    Response::Missed { count }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            };
            // A write error is the client hanging up.
            if send(write, &response).await.is_err() {
                return Ok(());
            }
        }
    }

    async fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(self.status().await),
            Request::Reload => {
                let (answer, report) = oneshot::channel();
                self.to_worker(Work::Reload(Some(answer)), report, |report| {
                    Response::Reloaded { report }
                })
                .await
            }
            Request::Ensure { instance } => {
                let (answer, response) = oneshot::channel();
                self.to_worker(Work::Ensure { instance, answer }, response, |r| r)
                    .await
            }
            Request::Log { .. } => unreachable!("`handle` streams the log itself"),
        }
    }

    async fn to_worker<T>(
        &self,
        work: Work,
        answer: oneshot::Receiver<T>,
        respond: impl FnOnce(T) -> Response,
    ) -> Response {
        if self.work.send(work).is_err() {
            return stopped();
        }
        answer.await.map_or_else(|_| stopped(), respond)
    }

    /// The status now: pending events taken in first, counters read on the blocking pool.
    async fn status(&self) -> Status {
        if let Some(drain) = &self.drain {
            let (done, drained) = oneshot::channel();
            if drain.send(done).is_ok() {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
            }
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.status())
            .await
            .unwrap_or_else(|e| {
                tracing::error!("reading the status failed: {e}");
                Status {
                    daemon_running: true,
                    ..Status::default()
                }
            })
    }
}

/// One answer line.
async fn send(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    response: &Response,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

fn stopped() -> Response {
    Response::Error {
        message: "the daemon's registry has stopped; see its log".into(),
    }
}
