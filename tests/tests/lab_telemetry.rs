//! Guest-side tests of vpm's VFIO / PCI telemetry (run by `cargo xtask vm-test`).

#[test]
fn lab_guest_has_btf() {
    assert_eq!(std::env::var("VPM_LAB").as_deref(), Ok("1"), "run with `cargo xtask vm-test`");
    assert!(std::path::Path::new("/sys/kernel/btf/vmlinux").is_file());
}
