//! The QMP wire format, pure: messages the server sends, commands vpm sends,
//! and the typed answers of the few queries vpm uses.
//!
//! QMP is JSON objects, one per line (QEMU ends each with `\r\n`). The server
//! first sends a greeting (`{"QMP": {...}}`), then answers each command with
//! `{"return": ...}` or `{"error": {"class": ..., "desc": ...}}`, echoing the
//! command's `id`; events (`{"event": ..., "data": ..., "timestamp": ...}`)
//! may come at any time, also between a command and its answer.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting, sent once on connect.
    Greeting {
        /// QEMU's version, `major.minor.micro`, when the greeting says.
        version: Option<String>,
    },
    /// A successful answer.
    Return {
        /// The echoed command id.
        id: Option<u64>,
        /// The answer.
        value: Value,
    },
    /// A failed command.
    Error {
        /// The echoed command id.
        id: Option<u64>,
        /// QMP's error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// An asynchronous event.
    Event(Event),
}

/// An asynchronous event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its name (`DEVICE_DELETED`, `STOP`, ...).
    pub name: String,
    /// Its data (`{}` when none).
    pub data: Value,
}

impl Event {
    /// Whether this is a `DEVICE_UNPLUG_GUEST_ERROR` event for the device
    /// with qdev id `id` (the guest refused to release it).
    pub fn is_unplug_error(&self, id: &str) -> bool {
        self.name == "DEVICE_UNPLUG_GUEST_ERROR"
            && self.data.get("device").and_then(Value::as_str) == Some(id)
    }

    /// Whether this is the `DEVICE_DELETED` event of the device with qdev id `id`.
    pub fn is_device_deleted(&self, id: &str) -> bool {
        self.name == "DEVICE_DELETED" && self.data.get("device").and_then(Value::as_str) == Some(id)
    }
}

/// Parses one line from the server. `Err` carries what is wrong with it.
pub fn parse_message(line: &str) -> Result<Message, String> {
    let value: Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("not JSON ({e}): {line:.200}"))?;
    let Some(obj) = value.as_object() else {
        return Err(format!("not a JSON object: {line:.200}"));
    };
    let id = obj.get("id").and_then(Value::as_u64);
    if let Some(greeting) = obj.get("QMP") {
        let version = greeting.pointer("/version/qemu").map(|v| {
            let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            format!("{}.{}.{}", n("major"), n("minor"), n("micro"))
        });
        return Ok(Message::Greeting { version });
    }
    if let Some(value) = obj.get("return") {
        return Ok(Message::Return {
            id,
            value: value.clone(),
        });
    }
    if let Some(error) = obj.get("error") {
        let field = |k: &str| {
            error
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        return Ok(Message::Error {
            id,
            class: field("class"),
            desc: field("desc"),
        });
    }
    if let Some(name) = obj.get("event").and_then(Value::as_str) {
        return Ok(Message::Event(Event {
            name: name.to_string(),
            data: obj.get("data").cloned().unwrap_or_else(|| json!({})),
        }));
    }
    Err(format!(
        "neither a greeting, an answer nor an event: {line:.200}"
    ))
}

/// The line that sends `command` with `arguments` (`None`: none) and `id`.
pub fn command_line(command: &str, arguments: Option<&Value>, id: u64) -> String {
    let mut msg = json!({ "execute": command, "id": id });
    if let Some(args) = arguments {
        msg["arguments"] = args.clone();
    }
    let mut line = msg.to_string();
    line.push('\n');
    line
}

/// The arguments of `device_add` for a VFIO device: host function `host`,
/// qdev id `id`, onto the bus (port) `bus`.
pub fn vfio_device_add(id: &str, host: &str, bus: &str) -> Value {
    json!({ "driver": "vfio-pci", "host": host, "id": id, "bus": bus })
}

/// One function in the guest's PCI topology (`query-pci`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestPciDevice {
    /// Guest bus number.
    pub bus: u32,
    /// Guest slot.
    pub slot: u32,
    /// Guest function.
    pub function: u32,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// The qdev id (`-device ...,id=X`, `device_add` `id`), empty when none.
    pub qdev_id: String,
    /// The qdev id of the bridge it sits behind, if any.
    pub behind: Option<String>,
}

/// Flattens a `query-pci` answer: every function on every bus, behind
/// bridges too. Functions behind a bridge whose secondary bus is not set
/// (no firmware ran) are not listed by QEMU at all.
pub fn parse_query_pci(value: &Value) -> Result<Vec<GuestPciDevice>, String> {
    #[derive(Deserialize)]
    struct Bus {
        devices: Vec<Dev>,
    }
    #[derive(Deserialize)]
    struct Dev {
        bus: u32,
        slot: u32,
        function: u32,
        id: Ids,
        #[serde(default)]
        qdev_id: String,
        #[serde(default)]
        pci_bridge: Option<Bridge>,
    }
    #[derive(Deserialize)]
    struct Ids {
        vendor: u16,
        device: u16,
    }
    #[derive(Deserialize)]
    struct Bridge {
        #[serde(default)]
        devices: Vec<Dev>,
    }
    fn walk(devs: Vec<Dev>, behind: Option<&str>, out: &mut Vec<GuestPciDevice>) {
        for d in devs {
            out.push(GuestPciDevice {
                bus: d.bus,
                slot: d.slot,
                function: d.function,
                vendor: d.id.vendor,
                device: d.id.device,
                qdev_id: d.qdev_id.clone(),
                behind: behind.map(str::to_string),
            });
            if let Some(bridge) = d.pci_bridge {
                walk(bridge.devices, Some(&d.qdev_id), out);
            }
        }
    }
    let buses: Vec<Bus> =
        serde_json::from_value(value.clone()).map_err(|e| format!("query-pci answer: {e}"))?;
    let mut out = Vec::new();
    for bus in buses {
        walk(bus.devices, None, &mut out);
    }
    Ok(out)
}

/// The run state (`query-status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Whether the guest's CPUs run.
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, `prelaunch`, ...).
    pub status: String,
}

/// One child of a QOM path (`qom-list`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QomProperty {
    /// The child's name (for `/machine/peripheral`, the qdev id).
    pub name: String,
    /// Its type: `child<vfio-pci>`, `child<pcie-root-port>`, `link<...>`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

impl QomProperty {
    /// The device type of a `child<TYPE>` entry.
    pub fn child_type(&self) -> Option<&str> {
        self.kind.strip_prefix("child<")?.strip_suffix('>')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_message() {
        let g = parse_message(
            r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#,
        )
        .unwrap();
        assert_eq!(
            g,
            Message::Greeting {
                version: Some("7.2.0".into())
            }
        );
        assert_eq!(
            parse_message("{\"return\": {}, \"id\": 3}\r\n").unwrap(),
            Message::Return {
                id: Some(3),
                value: json!({})
            }
        );
        assert_eq!(
            parse_message(
                r#"{"id": 4, "error": {"class": "GenericError", "desc": "Bus 'pcie.0' does not support hotplugging"}}"#
            )
            .unwrap(),
            Message::Error {
                id: Some(4),
                class: "GenericError".into(),
                desc: "Bus 'pcie.0' does not support hotplugging".into()
            }
        );
        let Message::Event(e) = parse_message(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": "vf0", "path": "/machine/peripheral/vf0"}}"#,
        )
        .unwrap() else {
            panic!("not an event")
        };
        assert!(e.is_device_deleted("vf0"));
        assert!(!e.is_device_deleted("vf1"));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "[]", "{", "{\"x\": 1}", "42", "{\"event\": 3}"] {
            assert!(parse_message(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn command_lines_carry_id_and_arguments() {
        let line = command_line("device_del", Some(&json!({"id": "vf0"})), 9);
        assert!(line.ends_with('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"execute": "device_del", "id": 9, "arguments": {"id": "vf0"}})
        );
        let v: Value = serde_json::from_str(&command_line("query-status", None, 1)).unwrap();
        assert_eq!(v, json!({"execute": "query-status", "id": 1}));
    }

    #[test]
    fn flattens_query_pci_behind_bridges() {
        let answer = json!([{"bus": 0, "devices": [
            {"bus": 0, "slot": 0, "function": 0, "class_info": {"class": 1536},
             "id": {"vendor": 32902, "device": 10688}, "qdev_id": "", "regions": []},
            {"bus": 0, "slot": 2, "function": 0, "id": {"vendor": 6966, "device": 12},
             "qdev_id": "rp1", "pci_bridge": {"bus": {"number": 1, "secondary": 1, "subordinate": 1},
               "devices": [{"bus": 1, "slot": 0, "function": 0,
                 "id": {"vendor": 6966, "device": 16}, "qdev_id": "vpm-0000-01-00-1"}]}}
        ]}]);
        let devs = parse_query_pci(&answer).unwrap();
        assert_eq!(devs.len(), 3);
        assert_eq!(devs[2].qdev_id, "vpm-0000-01-00-1");
        assert_eq!(devs[2].behind.as_deref(), Some("rp1"));
        assert_eq!((devs[2].vendor, devs[2].device), (0x1b36, 0x0010));
        assert!(parse_query_pci(&json!({"bus": 0})).is_err());
    }

    #[test]
    fn qom_child_types() {
        let p: QomProperty =
            serde_json::from_value(json!({"name": "vf0", "type": "child<vfio-pci>"})).unwrap();
        assert_eq!(p.child_type(), Some("vfio-pci"));
        let p: QomProperty =
            serde_json::from_value(json!({"name": "type", "type": "string"})).unwrap();
        assert_eq!(p.child_type(), None);
    }
}
