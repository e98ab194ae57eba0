//! The client against a scripted QMP server on a real Unix socket.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixListener;

use super::{Qmp, QmpError};

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

/// What the server does when a command arrives.
enum Reply {
    /// Send these lines; `{id}` in a line becomes the command's id.
    Lines(Vec<String>),
    /// Close the connection.
    Hang,
    /// Say nothing.
    Silent,
}

fn ok() -> Reply {
    Reply::Lines(vec![r#"{"return": {}, "id": {id}}"#.into()])
}

/// Serves one client: greeting, then for each expected command the reply.
async fn serve(script: Vec<(&'static str, Reply)>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(format!("{GREETING}\r\n").as_bytes())
            .await
            .unwrap();
        for (expect, reply) in script {
            let Ok(Some(line)) = lines.next_line().await else {
                return;
            };
            let cmd: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(cmd["execute"], expect, "{line}");
            let id = cmd["id"].as_u64().unwrap();
            match reply {
                Reply::Lines(ls) => {
                    for l in ls {
                        let l = l.replace("{id}", &id.to_string());
                        write
                            .write_all(format!("{l}\r\n").as_bytes())
                            .await
                            .unwrap();
                    }
                }
                Reply::Hang => return,
                Reply::Silent => {}
            }
        }
        // Keep the connection open until the client goes.
        while let Ok(Some(_)) = lines.next_line().await {}
    });
    (dir, path)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn handshake_query_and_events_kept() {
    rt().block_on(async {
        let (_d, path) = serve(vec![
            ("qmp_capabilities", ok()),
            (
                "query-status",
                Reply::Lines(vec![
                    r#"{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}}"#.into(),
                    r#"{"return": {"status": "paused", "singlestep": false, "running": false}, "id": {id}}"#.into(),
                ]),
            ),
        ])
        .await;
        let mut q = Qmp::connect(&path, SHORT).await.unwrap();
        assert_eq!(q.version(), Some("7.2.0"));
        let s = q.query_status().await.unwrap();
        assert!(!s.running);
        assert_eq!(s.status, "paused");
        let events = q.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name, "STOP");
    });
}

#[test]
fn error_answers_are_typed() {
    rt().block_on(async {
        let (_d, path) = serve(vec![
            ("qmp_capabilities", ok()),
            (
                "device_add",
                Reply::Lines(vec![
                    r#"{"id": {id}, "error": {"class": "GenericError", "desc": "Bus 'pcie.0' does not support hotplugging"}}"#.into(),
                ]),
            ),
        ])
        .await;
        let mut q = Qmp::connect(&path, SHORT).await.unwrap();
        let err = q
            .device_add_vfio("vf0", "0000:01:00.1", "pcie.0")
            .await
            .unwrap_err();
        match &err {
            QmpError::Command { command, class, desc, .. } => {
                assert_eq!(command, "device_add");
                assert_eq!(class, "GenericError");
                assert!(desc.contains("does not support hotplugging"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.outcome_unknown());
        assert!(err.to_string().contains("qmp.sock"));
    });
}

#[test]
fn device_del_waits_for_its_event_before_or_after_the_answer() {
    let deleted = |id: &str| {
        format!(
            r#"{{"event": "DEVICE_DELETED", "data": {{"device": "{id}", "path": "/machine/peripheral/{id}"}}, "timestamp": {{"seconds": 2, "microseconds": 0}}}}"#
        )
    };
    rt().block_on(async {
        let (_d, path) = serve(vec![
            ("qmp_capabilities", ok()),
            // The event comes first, then the answer.
            (
                "device_del",
                Reply::Lines(vec![deleted("a"), r#"{"return": {}, "id": {id}}"#.into()]),
            ),
            // The answer, another device's event, then ours.
            (
                "device_del",
                Reply::Lines(vec![
                    r#"{"return": {}, "id": {id}}"#.into(),
                    deleted("other"),
                    deleted("b"),
                ]),
            ),
            // The answer and never the event.
            ("device_del", ok()),
            // The guest refuses.
            (
                "device_del",
                Reply::Lines(vec![
                    r#"{"return": {}, "id": {id}}"#.into(),
                    r#"{"event": "DEVICE_UNPLUG_GUEST_ERROR", "data": {"device": "d", "path": "/machine/peripheral/d"}, "timestamp": {"seconds": 3, "microseconds": 0}}"#.into(),
                ]),
            ),
        ])
        .await;
        let mut q = Qmp::connect(&path, SHORT).await.unwrap();
        q.device_del("a", SHORT).await.unwrap();
        q.device_del("b", SHORT).await.unwrap();
        let err = q.device_del("c", SHORT).await.unwrap_err();
        assert!(
            matches!(&err, QmpError::Timeout { during, .. } if during.contains("DEVICE_DELETED of c")),
            "{err}"
        );
        assert!(err.outcome_unknown());
        let err = q.device_del("d", SHORT).await.unwrap_err();
        assert!(matches!(&err, QmpError::UnplugRefused { id, .. } if id == "d"), "{err}");
        assert!(!err.outcome_unknown());
        // The unrelated event was kept.
        assert!(q.take_events().iter().any(|e| e.is_device_deleted("other")));
    });
}

#[test]
fn monitor_gone_or_silent_mid_command() {
    rt().block_on(async {
        let (_d, path) = serve(vec![
            ("qmp_capabilities", ok()),
            ("device_add", Reply::Hang),
        ])
        .await;
        let mut q = Qmp::connect(&path, SHORT).await.unwrap();
        let err = q
            .device_add_vfio("vf0", "0000:01:00.1", "rp1")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QmpError::Closed { during, .. } if during == "running device_add"),
            "{err}"
        );
        assert!(err.outcome_unknown());

        let (_d, path) = serve(vec![
            ("qmp_capabilities", ok()),
            ("query-pci", Reply::Silent),
        ])
        .await;
        let mut q = Qmp::connect(&path, SHORT).await.unwrap();
        let err = q.query_pci().await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    });
}

#[test]
fn not_a_monitor() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("nothing.sock"), SHORT)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("-qmp unix:"));

        // An HMP-style server that greets in text.
        let path = dir.path().join("hmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"QEMU 7.2.0 monitor - type 'help'\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let err = Qmp::connect(&path, SHORT).await.err().unwrap();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
    });
}

#[test]
fn query_pci_and_qom() {
    rt().block_on(async {
        let pci = json!([{"bus": 0, "devices": [{"bus": 0, "slot": 2, "function": 0,
            "id": {"vendor": 6966, "device": 12}, "qdev_id": "rp1",
            "pci_bridge": {"devices": [{"bus": 1, "slot": 0, "function": 0,
                "id": {"vendor": 6966, "device": 16}, "qdev_id": "vf0"}]}}]}]);
        let (_d, path) = serve(vec![
            ("qmp_capabilities", ok()),
            ("query-pci", Reply::Lines(vec![format!(r#"{{"return": {pci}, "id": {{id}}}}"#)])),
            (
                "qom-list",
                Reply::Lines(vec![
                    r#"{"return": [{"name": "type", "type": "string"}, {"name": "vf0", "type": "child<vfio-pci>"}], "id": {id}}"#.into(),
                ]),
            ),
            ("qom-get", Reply::Lines(vec![r#"{"return": "0000:01:00.1", "id": {id}}"#.into()])),
        ])
        .await;
        let mut q = Qmp::connect(&path, SHORT).await.unwrap();
        let devs = q.query_pci().await.unwrap();
        assert_eq!(devs[1].qdev_id, "vf0");
        assert_eq!(devs[1].behind.as_deref(), Some("rp1"));
        let children = q.qom_list("/machine/peripheral").await.unwrap();
        assert_eq!(children[1].child_type(), Some("vfio-pci"));
        let host = q.qom_get("/machine/peripheral/vf0", "host").await.unwrap();
        assert_eq!(host, json!("0000:01:00.1"));
    });
}

#[test]
fn a_line_cut_by_a_timeout_is_finished_by_the_next_read() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(format!("{GREETING}\r\n").as_bytes())
                .await
                .unwrap();
            let _ = lines.next_line().await; // qmp_capabilities
            write
                .write_all(b"{\"return\": {}, \"id\": 1}\r\n")
                .await
                .unwrap();
            let _ = lines.next_line().await; // query-status
            // Half the answer, a pause longer than the client's timeout, the rest.
            write
                .write_all(b"{\"return\": {\"status\": \"running\", ")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            write
                .write_all(b"\"singlestep\": false, \"running\": true}, \"id\": 2}\r\n")
                .await
                .unwrap();
            let _ = lines.next_line().await; // query-status again
            write
                .write_all(
                    b"{\"return\": {\"status\": \"paused\", \"running\": false}, \"id\": 3}\r\n",
                )
                .await
                .unwrap();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        let mut q = Qmp::connect(&path, SHORT).await.unwrap();
        let err = q.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The stale answer (id 2) is skipped whole, not read from its middle.
        let s = q.query_status().await.unwrap();
        assert_eq!(s.status, "paused");
    });
}

#[test]
fn a_monitor_that_never_greets_is_named_with_the_likely_cause() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.sock");
        // Accepts and says nothing, as QEMU does while another client holds
        // its monitor.
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let err = Qmp::connect(&path, SHORT).await.err().unwrap();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("another tool connected"), "{err}");
    });
}

#[test]
fn in_vm_reads_the_qom_tree_then_query_pci() {
    rt().block_on(async {
        let vf: crate::hal::Bdf = "0000:01:00.1".parse().unwrap();
        let other: crate::hal::Bdf = "0000:01:00.2".parse().unwrap();
        let list = || {
            Reply::Lines(vec![
                r#"{"return": [{"name": "rp1", "type": "child<pcie-root-port>"}, {"name": "vpm-0000-01-00-1", "type": "child<vfio-pci>"}], "id": {id}}"#.into(),
            ])
        };
        let no_anon = || {
            Reply::Lines(vec![
                r#"{"error": {"class": "DeviceNotFound", "desc": "Device '/machine/peripheral-anon' not found"}, "id": {id}}"#.into(),
            ])
        };
        let pci = |id: &str| {
            let pci = json!([{"bus": 0, "devices": [{"bus": 0, "slot": 2, "function": 0,
                "id": {"vendor": 6966, "device": 12}, "qdev_id": "rp1",
                "pci_bridge": {"devices": [{"bus": 1, "slot": 0, "function": 0,
                    "id": {"vendor": 6966, "device": 16}, "qdev_id": id}]}}]}]);
            Reply::Lines(vec![format!(r#"{{"return": {pci}, "id": {{id}}}}"#)])
        };
        let host = || Reply::Lines(vec![r#"{"return": "0000:01:00.1", "id": {id}}"#.into()]);
        let bus = || {
            Reply::Lines(vec![
                r#"{"return": "/machine/peripheral/rp1/rp1.0", "id": {id}}"#.into(),
            ])
        };
        // Listed, and on QEMU's PCI bus (or not yet).
        for (shown, visible) in [("vpm-0000-01-00-1", true), ("", false)] {
            let (_d, path) = serve(vec![
                ("qmp_capabilities", ok()),
                ("qom-list", list()),
                ("qom-get", host()),
                ("qom-get", bus()),
                ("qom-list", no_anon()),
                ("query-pci", pci(shown)),
            ])
            .await;
            let mut q = Qmp::connect(&path, SHORT).await.unwrap();
            let found = crate::connect::in_vm(&mut q, vf).await.unwrap();
            assert_eq!(found.device.as_deref(), Some("vpm-0000-01-00-1"));
            assert_eq!(found.port.as_deref(), Some("rp1"));
            assert_eq!(found.on_bus, visible, "query-pci shows {shown:?}");
        }

        // A VF the VM does not have: not listed, and query-pci is not asked.
        let (_d, path) = serve(vec![
            ("qmp_capabilities", ok()),
            ("qom-list", Reply::Lines(vec![r#"{"return": [], "id": {id}}"#.into()])),
            ("qom-list", no_anon()),
        ])
        .await;
        let mut q = Qmp::connect(&path, SHORT).await.unwrap();
        let found = crate::connect::in_vm(&mut q, other).await.unwrap();
        assert_eq!(found.device, None);
        assert!(!found.on_bus);
    });
}

#[test]
fn a_socket_of_another_process_is_refused() {
    rt().block_on(async {
        // The scripted server runs in this process: its socket's owner.
        let me = std::process::id();
        let (_d, path) = serve(vec![("qmp_capabilities", ok())]).await;
        let Err(err) = Qmp::connect_to(&path, SHORT, me + 1).await else {
            panic!("connected to a socket of another process");
        };
        assert!(
            matches!(&err, QmpError::NotOwner { owner, found: Some(f), .. } if *owner == me + 1 && *f == me),
            "{err}"
        );
        assert!(err.to_string().contains("another VM"), "{err}");
        let (_d, path) = serve(vec![("qmp_capabilities", ok())]).await;
        assert!(Qmp::connect_to(&path, SHORT, me).await.is_ok());
    });
}
