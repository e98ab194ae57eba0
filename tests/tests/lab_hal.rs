//! Guest-side tests of `cargo xtask vm-test`: vpm's hardware actions on a real
//! kernel (Debian's, in QEMU with an emulated SR-IOV NVMe controller).
//!
//! They act on the machine's real `/sys` and refuse to run outside the lab guest
//! (`VPM_LAB=1`, set by the guest's run script).

use std::path::Path;

fn in_lab() {
    assert_eq!(
        std::env::var("VPM_LAB").as_deref(),
        Ok("1"),
        "these tests change PCI devices: run them with `cargo xtask vm-test`"
    );
}

#[test]
fn lab_has_the_sriov_pf() {
    in_lab();
    let pf = Path::new("/sys/bus/pci/devices/0000:01:00.0");
    let vendor = std::fs::read_to_string(pf.join("vendor")).unwrap();
    assert_eq!(vendor.trim(), "0x1b36");
    let total = std::fs::read_to_string(pf.join("sriov_totalvfs")).unwrap();
    assert_eq!(total.trim(), "4");
}
