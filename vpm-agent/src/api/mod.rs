//! Live inspection of a running agent over a Unix socket.
//!
//! One JSON request per line, one JSON response per line ([`Request`],
//! [`Response`]). The socket is created with mode 0600 and owned by the agent's
//! user (root), so only that user can connect; requests that change anything
//! (none yet) will also check the peer's credentials. Client functions are
//! generic over `Read + Write`, so they are tested over `UnixStream::pair()`.

pub mod server;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::report::WindowReport;
use crate::telemetry::Attachment;

/// Where `vpm run` listens by default.
pub const DEFAULT_SOCKET: &str = "/run/vpm/vpm.sock";

/// A request to the agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Agent status: version, tick, attachments.
    Status,
    /// Per-VM totals and rates over the last `seconds` of retained ticks.
    Report {
        /// Window length.
        seconds: f64,
    },
    /// The latest plan of the closed loop (actions, deferrals, recommendations)
    /// and the managed devices as the scheduler saw them.
    Plan,
    /// The forecasts the latest plan used, every series and horizon.
    Forecast,
}

/// One forecast the agent's latest plan used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ForecastEntry {
    /// The VM.
    pub vm: String,
    /// The resource (`cpu`, `vfs:0000:3b:00.0`, ...).
    pub resource: String,
    /// Seconds ahead of the end of the series' data.
    pub horizon_s: f64,
    /// Unix seconds at the end of the step forecast.
    pub target_time: f64,
    /// The point forecast.
    pub predicted: f64,
    /// The upper bound the plan used (at the VM's class headroom level).
    pub upper: f64,
    /// The model that made it.
    pub model: String,
}

/// The agent's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// vpm version.
    pub version: String,
    /// Tick interval in seconds.
    pub tick_s: f64,
    /// Ticks done since start.
    pub ticks: u64,
    /// Tracepoint attach report.
    pub attachments: serde_json::Value,
}

/// The agent's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Status),
    /// Answer to [`Request::Report`] (as JSON, the shape of [`WindowReport`]).
    Report {
        /// The report.
        report: serde_json::Value,
    },
    /// Answer to [`Request::Plan`]: `plan` is `null` before the first plan.
    Plan {
        /// The plan (the shape of [`crate::scheduler::Plan`]).
        plan: serde_json::Value,
        /// The managed devices (the shape of [`crate::scheduler::HostState`]).
        host: serde_json::Value,
        /// Whether a policy file says what to manage.
        managing: bool,
        /// Whether the agent acts (`--apply`) or only plans.
        apply: bool,
        /// The adaptive headroom of each class with a target
        /// under-provision rate, per horizon (empty without such a class).
        #[serde(default)]
        headroom: Vec<crate::forecast::adaptive::ClassHeadroom>,
    },
    /// Answer to [`Request::Forecast`]: empty before the first plan.
    Forecast {
        /// When the plan that used them was made (unix seconds), `null`
        /// before the first.
        generated_at: Option<f64>,
        /// The forecasts, by VM, resource and horizon.
        forecasts: Vec<ForecastEntry>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No agent listens at the socket.
    #[error("no vpm agent at {path} (start one with `vpm run`)")]
    NoAgent {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// An agent's socket is there, but this user may not use it.
    #[error(
        "the vpm agent's socket {path} is not open to this user (the agent makes it owner-only): \
         run this command as root, or as the user running `vpm run`"
    )]
    Denied {
        /// The socket path.
        path: PathBuf,
    },
    /// Reading or writing the socket failed.
    #[error("talking to the agent failed")]
    Io(#[source] std::io::Error),
    /// The agent answered something unreadable.
    #[error("unreadable answer from the agent")]
    Decode(#[source] serde_json::Error),
    /// The agent closed the connection without answering.
    #[error("the agent closed the connection without answering")]
    Closed,
    /// The agent reported an error.
    #[error("the agent refused the request: {0}")]
    Refused(String),
}

/// Sends `request` over `stream` and reads one response.
pub fn call<S: Read + Write>(stream: &mut S, request: &Request) -> Result<Response, ApiError> {
    let mut line = serde_json::to_vec(request).map_err(ApiError::Decode)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(ApiError::Io)?;
    stream.flush().map_err(ApiError::Io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    if reader.read_line(&mut answer).map_err(ApiError::Io)? == 0 {
        return Err(ApiError::Closed);
    }
    let response: Response = serde_json::from_str(&answer).map_err(ApiError::Decode)?;
    if let Response::Error { message } = response {
        return Err(ApiError::Refused(message));
    }
    Ok(response)
}

/// Connects to the agent at `path`.
pub fn connect(path: &std::path::Path) -> Result<std::os::unix::net::UnixStream, ApiError> {
    std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ApiError::Denied {
                path: path.to_path_buf(),
            }
        } else {
            ApiError::NoAgent {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Asks for the forecasts of the latest plan.
pub fn forecast<S: Read + Write>(stream: &mut S) -> Result<Response, ApiError> {
    match call(stream, &Request::Forecast)? {
        r @ Response::Forecast { .. } => Ok(r),
        _ => Err(ApiError::Closed),
    }
}

/// Asks for the latest plan.
pub fn plan<S: Read + Write>(stream: &mut S) -> Result<Response, ApiError> {
    match call(stream, &Request::Plan)? {
        r @ Response::Plan { .. } => Ok(r),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// Asks for a report and decodes it.
pub fn report<S: Read + Write>(stream: &mut S, seconds: f64) -> Result<WindowReport, ApiError> {
    match call(stream, &Request::Report { seconds })? {
        Response::Report { report } => serde_json::from_value(report).map_err(ApiError::Decode),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// Converts the attach report for [`Status`].
pub fn attachments_json(attachments: &[Attachment]) -> serde_json::Value {
    serde_json::to_value(attachments).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn request_and_response_round_trip_over_a_socket_pair() {
        let (mut client, server) = UnixStream::pair().expect("pair");
        let handle = std::thread::spawn(move || {
            let mut reader = BufReader::new(&server);
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            let req: Request = serde_json::from_str(&line).expect("decode");
            assert_eq!(req, Request::Report { seconds: 5.0 });
            let resp = Response::Report {
                report: serde_json::json!({"window_s": 5.0, "vms": []}),
            };
            let mut out = serde_json::to_vec(&resp).expect("encode");
            out.push(b'\n');
            (&server).write_all(&out).expect("write");
        });
        let r = report(&mut client, 5.0).expect("report");
        assert_eq!(r.window_s, 5.0);
        assert!(r.vms.is_empty());
        handle.join().expect("server thread");
    }

    #[test]
    fn agent_errors_become_refused() {
        let (mut client, server) = UnixStream::pair().expect("pair");
        let handle = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&server).read_line(&mut line).expect("read");
            (&server)
                .write_all(b"{\"response\":\"error\",\"message\":\"nope\"}\n")
                .expect("write");
        });
        let e = call(&mut client, &Request::Status).expect_err("refused");
        assert!(matches!(e, ApiError::Refused(ref m) if m == "nope"), "{e}");
        handle.join().expect("server thread");
    }

    #[test]
    fn request_wire_format_is_pinned() {
        assert_eq!(
            serde_json::to_string(&Request::Report { seconds: 2.0 }).expect("json"),
            r#"{"request":"report","seconds":2.0}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).expect("json"),
            r#"{"request":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Plan).expect("json"),
            r#"{"request":"plan"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Forecast).expect("json"),
            r#"{"request":"forecast"}"#
        );
    }
}
