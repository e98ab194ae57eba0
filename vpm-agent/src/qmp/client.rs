//! A QMP client over a Unix socket (tokio).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout_at};

use super::QmpError;
use super::proto::{self, Event, GuestPciDevice, Message, QomProperty, Status};

/// A connected QMP session, past the capabilities handshake.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    /// The line being read: kept across reads, since a read cut short by a
    /// timeout may have taken part of a line already.
    line: Vec<u8>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Events received while waiting for something else, oldest first.
    events: VecDeque<Event>,
    timeout: Duration,
    version: Option<String>,
}

/// What a [`QmpError::Timeout`] of [`Qmp::device_del`] says it was doing
/// when the answer came but the event did not (`during` starts with it).
pub const AWAITING_DELETED: &str = "waiting for DEVICE_DELETED";

impl Qmp {
    /// Connects to the monitor socket at `path`, reads the greeting and
    /// negotiates capabilities, each step within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        Self::connect_checked(path, timeout, None).await
    }

    /// As [`connect`](Self::connect), to the monitor of the VM in process
    /// `owner`: the socket's other end must be that process (`SO_PEERCRED`),
    /// so a path another VM bound over it, or a policy template that names
    /// another VM's socket, is refused rather than acted on.
    pub async fn connect_to(path: &Path, timeout: Duration, owner: u32) -> Result<Self, QmpError> {
        Self::connect_checked(path, timeout, Some(owner)).await
    }

    async fn connect_checked(
        path: &Path,
        timeout: Duration,
        owner: Option<u32>,
    ) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = match timeout_at(deadline, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            // A full listen queue: QEMU takes one client at a time, and
            // another holds the monitor.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(QmpError::Busy {
                    path: path.to_path_buf(),
                });
            }
            Ok(Err(source)) => {
                return Err(QmpError::Connect {
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(_) => {
                return Err(QmpError::Timeout {
                    path: path.to_path_buf(),
                    during: "connecting".into(),
                    after: timeout,
                });
            }
        };
        if let Some(owner) = owner {
            let found = stream
                .peer_cred()
                .ok()
                .and_then(|c| c.pid())
                .and_then(|p| u32::try_from(p).ok());
            if found != Some(owner) {
                return Err(QmpError::NotOwner {
                    path: path.to_path_buf(),
                    owner,
                    found,
                });
            }
        }
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(read),
            line: Vec::new(),
            writer,
            next_id: 1,
            events: VecDeque::new(),
            timeout,
            version: None,
        };
        match qmp
            .read_message(
                deadline,
                "waiting for the greeting (QEMU serves one client per monitor socket: is \
                 another tool connected to it?)",
            )
            .await?
        {
            Message::Greeting { version } => qmp.version = version,
            other => {
                return Err(qmp.protocol(format!(
                    "expected the QMP greeting first, got {other:?} (is this a QMP socket, \
                     not an HMP one?)"
                )));
            }
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// QEMU's version from the greeting.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Runs `command` and returns its answer; an error answer is
    /// [`QmpError::Command`]. Events that arrive meanwhile are kept.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = proto::command_line(command, arguments.as_ref(), id);
        let deadline = Instant::now() + self.timeout;
        let during = format!("running {command}");
        match timeout_at(deadline, self.writer.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.gone(&during, Some(e))),
            Err(_) => return Err(self.timed_out(&during)),
        }
        loop {
            match self.read_message(deadline, &during).await? {
                Message::Return { id: got, value } if got.is_none_or(|g| g == id) => {
                    return Ok(value);
                }
                Message::Error {
                    id: got,
                    class,
                    desc,
                } if got.is_none_or(|g| g == id) => {
                    return Err(QmpError::Command {
                        path: self.path.clone(),
                        command: command.to_string(),
                        class,
                        desc,
                    });
                }
                Message::Event(e) => self.events.push_back(e),
                // An answer to an earlier command that timed out: stale.
                Message::Return { .. } | Message::Error { .. } => {}
                Message::Greeting { .. } => {
                    return Err(self.protocol("a second greeting mid-session".into()));
                }
            }
        }
    }

    /// `device_add` of a `vfio-pci` device for host function `host` with qdev
    /// id `id` onto the hot-plug port `bus`.
    pub async fn device_add_vfio(
        &mut self,
        id: &str,
        host: &str,
        bus: &str,
    ) -> Result<(), QmpError> {
        self.execute("device_add", Some(proto::vfio_device_add(id, host, bus)))
            .await
            .map(drop)
    }

    /// Asks QEMU to unplug device `id` and waits, up to `wait`, for its
    /// `DEVICE_DELETED` event: the `{}` answer to `device_del` only means the
    /// request was sent to the guest, not that the device is gone. A guest
    /// that refuses (`DEVICE_UNPLUG_GUEST_ERROR`) ends the wait with
    /// [`QmpError::UnplugRefused`].
    pub async fn device_del(&mut self, id: &str, wait: Duration) -> Result<(), QmpError> {
        self.events
            .retain(|e| !e.is_device_deleted(id) && !e.is_unplug_error(id));
        self.execute("device_del", Some(json!({ "id": id })))
            .await?;
        let e = self
            .wait_event(
                |e| e.is_device_deleted(id) || e.is_unplug_error(id),
                wait,
                &format!("{AWAITING_DELETED} of {id}"),
            )
            .await?;
        if e.is_unplug_error(id) {
            return Err(QmpError::UnplugRefused {
                path: self.path.clone(),
                id: id.to_owned(),
            });
        }
        Ok(())
    }

    /// Waits up to `wait` for an event `matches` accepts (kept ones first).
    pub async fn wait_event(
        &mut self,
        matches: impl Fn(&Event) -> bool,
        wait: Duration,
        during: &str,
    ) -> Result<Event, QmpError> {
        if let Some(pos) = self.events.iter().position(&matches)
            && let Some(e) = self.events.remove(pos)
        {
            return Ok(e);
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.read_message(deadline, during).await {
                Ok(Message::Event(e)) if matches(&e) => return Ok(e),
                Ok(Message::Event(e)) => self.events.push_back(e),
                Ok(_) => {}
                Err(QmpError::Timeout { path, during, .. }) => {
                    return Err(QmpError::Timeout {
                        path,
                        during,
                        after: wait,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The guest's PCI functions, flattened (`query-pci`).
    pub async fn query_pci(&mut self) -> Result<Vec<GuestPciDevice>, QmpError> {
        let v = self.execute("query-pci", None).await?;
        proto::parse_query_pci(&v).map_err(|m| self.protocol(m))
    }

    /// The run state (`query-status`).
    pub async fn query_status(&mut self) -> Result<Status, QmpError> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v).map_err(|e| self.protocol(format!("query-status answer: {e}")))
    }

    /// The children of a QOM path (`qom-list`).
    pub async fn qom_list(&mut self, path: &str) -> Result<Vec<QomProperty>, QmpError> {
        let v = self
            .execute("qom-list", Some(json!({ "path": path })))
            .await?;
        serde_json::from_value(v).map_err(|e| self.protocol(format!("qom-list answer: {e}")))
    }

    /// A QOM property's value (`qom-get`).
    pub async fn qom_get(&mut self, path: &str, property: &str) -> Result<Value, QmpError> {
        self.execute(
            "qom-get",
            Some(json!({ "path": path, "property": property })),
        )
        .await
    }

    /// Events received and not yet consumed.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    async fn read_message(&mut self, deadline: Instant, during: &str) -> Result<Message, QmpError> {
        loop {
            // `read_until` appends to `self.line`, so what a read cut short by
            // the timeout took stays for the next one.
            match timeout_at(deadline, self.reader.read_until(b'\n', &mut self.line)).await {
                Err(_) => return Err(self.timed_out(during)),
                Ok(Err(e)) => return Err(self.gone(during, Some(e))),
                Ok(Ok(0)) => return Err(self.gone(during, None)),
                // End of stream in the middle of a line.
                Ok(Ok(_)) if !self.line.ends_with(b"\n") => return Err(self.gone(during, None)),
                Ok(Ok(_)) => {}
            }
            let raw = std::mem::take(&mut self.line);
            let Ok(line) = String::from_utf8(raw) else {
                return Err(self.protocol("a message that is not UTF-8".into()));
            };
            if line.trim().is_empty() {
                continue;
            }
            return proto::parse_message(&line).map_err(|m| self.protocol(m));
        }
    }

    fn gone(&self, during: &str, source: Option<std::io::Error>) -> QmpError {
        QmpError::Closed {
            path: self.path.clone(),
            during: during.to_string(),
            detail: source.map(|e| e.to_string()),
        }
    }

    fn timed_out(&self, during: &str) -> QmpError {
        QmpError::Timeout {
            path: self.path.clone(),
            during: during.to_string(),
            after: self.timeout,
        }
    }

    fn protocol(&self, message: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            message,
        }
    }
}
