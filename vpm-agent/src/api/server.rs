//! The agent side of the socket (tokio).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Request, Response, Status};
use crate::history::History;

/// What the server reads to answer.
pub struct Shared {
    /// Recent ticks.
    pub history: History,
    /// Status fields.
    pub status: Status,
    /// The closed loop's latest plan and host state, as JSON.
    pub plan: PlanView,
}

/// What the agent tells about its closed loop.
#[derive(Debug, Clone, Default)]
pub struct PlanView {
    /// The latest plan (`null` before the first).
    pub plan: serde_json::Value,
    /// The managed devices.
    pub host: serde_json::Value,
    /// Whether a policy file says what to manage.
    pub managing: bool,
    /// Whether the agent acts.
    pub apply: bool,
    /// When the latest plan was made.
    pub forecast_at: Option<f64>,
    /// The forecasts it used.
    pub forecasts: Vec<super::ForecastEntry>,
    /// The adaptive headroom of the classes with a target rate.
    pub headroom: Vec<crate::forecast::adaptive::ClassHeadroom>,
}

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another agent answers at the socket.
    #[error("another vpm agent is already listening at {0}; stop it or use --socket")]
    InUse(PathBuf),
    /// Something that is not a socket is at the path: vpm does not remove it.
    #[error("{0} exists and is not a socket; vpm leaves it alone: remove it, or use --socket")]
    NotASocket(PathBuf),
    /// Creating the socket failed.
    #[error("cannot listen at {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket at `path` with mode 0600, replacing a stale socket
/// (never another kind of file).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::FileTypeExt as _;
    let bind_err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    // Create it private from the start: no window where it is world-connectable.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: UnixListener, shared: Arc<Mutex<Shared>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, shared).await {
                        log::debug!("api connection: {e}");
                    }
                });
            }
            Err(e) => log::warn!("api accept failed: {e}"),
        }
    }
}

async fn handle(stream: UnixStream, shared: Arc<Mutex<Shared>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => answer(&shared, &request),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_else(|e| {
            format!("{{\"response\":\"error\",\"message\":\"encoding failed: {e}\"}}").into_bytes()
        });
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

fn answer(shared: &Mutex<Shared>, request: &Request) -> Response {
    let Ok(shared) = shared.lock() else {
        return Response::Error {
            message: "agent state poisoned".into(),
        };
    };
    match request {
        Request::Status => Response::Status(shared.status.clone()),
        Request::Forecast => Response::Forecast {
            generated_at: shared.plan.forecast_at,
            forecasts: shared.plan.forecasts.clone(),
        },
        Request::Plan => Response::Plan {
            plan: shared.plan.plan.clone(),
            host: shared.plan.host.clone(),
            managing: shared.plan.managing,
            apply: shared.plan.apply,
            headroom: shared.plan.headroom.clone(),
        },
        Request::Report { seconds } => {
            if !(seconds.is_finite() && *seconds > 0.0) {
                return Response::Error {
                    message: format!("window must be a positive number of seconds, got {seconds}"),
                };
            }
            match serde_json::to_value(shared.history.window(*seconds).report()) {
                Ok(report) => Response::Report { report },
                Err(e) => Response::Error {
                    message: format!("encoding the report failed: {e}"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_anything_else_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the socket should go: refused, kept.
        let file = dir.path().join("notasocket");
        std::fs::write(&file, "precious").unwrap();
        let e = bind(&file).unwrap_err();
        assert!(matches!(e, ServerError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        // A socket nobody listens on: replaced, owner-only.
        let path = dir.path().join("vpm.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Someone listening: in use.
        let e = bind(&path).unwrap_err();
        assert!(matches!(e, ServerError::InUse(_)), "{e}");
        drop(listener);
    }
}
