//! QMP, the QEMU Machine Protocol: the hypervisor's own interface through
//! which vpm hot-plugs VFs into running VMs and takes them back.
//!
//! [`proto`] is the wire format (pure); [`Qmp`] is the client (tokio, one
//! session per socket, typed commands, every step under a timeout). vpm takes
//! a device from a VM only by `device_del` confirmed by the matching
//! `DEVICE_DELETED` event ([`Qmp::device_del`]).

pub mod client;
pub mod proto;

use std::path::PathBuf;
use std::time::Duration;

pub use client::Qmp;
pub use proto::{Event, GuestPciDevice, QomProperty, Status};

/// QMP errors. Each names the monitor socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket cannot be reached.
    #[error(
        "QMP monitor {path}: {source} (is the VM running, and was it started with \
         `-qmp unix:{path},server=on,wait=off`? vpm needs root or the socket's owner)"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another client holds the monitor (QEMU serves one at a time).
    #[error(
        "QMP monitor {path} is busy: another client holds it (QEMU serves one at a time); \
         close that client, or give the VM a second `-qmp` socket for vpm"
    )]
    Busy {
        /// The socket.
        path: PathBuf,
    },
    /// The socket's other end is not the VM's process.
    #[error(
        "QMP monitor {path} belongs to {}, not to the VM's process {owner}: another VM \
         bound the same path, or the policy's [hotplug] monitor names another VM's socket; \
         give each VM its own socket",
        .found.map(|p| format!("process {p}")).unwrap_or_else(|| "an unknown process".into())
    )]
    NotOwner {
        /// The socket.
        path: PathBuf,
        /// The VM's process.
        owner: u32,
        /// The process at the other end.
        found: Option<u32>,
    },
    /// The monitor closed the connection (QEMU exited or dropped the client).
    #[error("QMP monitor {path} closed the connection while {during}{}", .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Closed {
        /// The socket.
        path: PathBuf,
        /// What vpm was doing.
        during: String,
        /// The I/O error, if any.
        detail: Option<String>,
    },
    /// No answer in time.
    #[error("QMP monitor {path}: no answer within {after:?} while {during}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// What vpm was doing.
        during: String,
        /// The time waited.
        after: Duration,
    },
    /// The server sent something that is not QMP.
    #[error("QMP monitor {path}: protocol error: {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The guest refused to release a device (`DEVICE_UNPLUG_GUEST_ERROR`).
    #[error(
        "QMP monitor {path}: the guest refused to release device {id} \
         (DEVICE_UNPLUG_GUEST_ERROR); it stays attached"
    )]
    UnplugRefused {
        /// The socket.
        path: PathBuf,
        /// The device's qdev id.
        id: String,
    },
    /// QEMU refused a command.
    #[error("QMP monitor {path}: {command} failed: {desc} ({class})")]
    Command {
        /// The socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// QMP's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

impl QmpError {
    /// Whether the command may have taken effect even though vpm saw no
    /// answer (the monitor closed or timed out after the command was sent).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, QmpError::Closed { .. } | QmpError::Timeout { .. })
    }
}

#[cfg(test)]
mod tests;
