//! The inner VMs' firmware: a 64 KiB BIOS image, built here, that gives each
//! PCIe root port on bus 0 a secondary bus number and halts.
//!
//! The lab's hot-plug tests run a QEMU inside the guest with hot-plug ports
//! and no OS. QEMU lists a device behind a bridge in `query-pci` only once
//! the bridge's secondary bus number is set, which is firmware's job; SeaBIOS
//! would do it but boots for seconds and then looks for a disk. This image
//! does only that: at the reset vector it jumps to code that writes, through
//! the legacy configuration mechanism (ports 0xCF8/0xCFC), primary 0,
//! secondary `slot` and subordinate `slot` into the bus-number register
//! (offset 0x18) of function 0 of slots 1..=7, then halts with interrupts
//! off. Writes to empty slots are dropped by the chipset.
//!
//! A second image ([`image_busy`]) spins instead of halting: a VM that keeps
//! one host CPU busy while it runs and none while it is stopped (QMP
//! `stop`/`cont`), the scripted CPU demand of the hot-plug loop test.

/// The image size: QEMU wants a BIOS that is a multiple of 64 KiB.
pub const SIZE: usize = 64 * 1024;
/// Where the code starts in the image (and in the reset segment, offset
/// from 0xF0000 / 0xFFFF0000).
const CODE_AT: usize = 0xFF00;
/// The reset vector's offset: the CPU starts at F000:FFF0.
const RESET_AT: usize = 0xFFF0;
/// The slots whose function 0 gets bus numbers.
pub const SLOTS: std::ops::RangeInclusive<u32> = 1..=7;

/// The config-space address of bus 0, `slot`, function 0, register `reg`.
pub fn config_address(slot: u32, reg: u32) -> u32 {
    0x8000_0000 | (slot << 11) | (reg & 0xfc)
}

/// The bus-number register value for a port in `slot`: primary 0,
/// secondary and subordinate `slot`.
pub fn bus_numbers(slot: u32) -> u32 {
    (slot << 16) | (slot << 8)
}

/// The firmware image: number the buses, halt.
pub fn image() -> Vec<u8> {
    build(&[0xF4, 0xEB, 0xFD]) // hlt; jmp back to hlt
}

/// The busy variant: number the buses, spin.
pub fn image_busy() -> Vec<u8> {
    build(&[0xEB, 0xFE]) // jmp to itself
}

fn build(tail: &[u8]) -> Vec<u8> {
    let mut code = vec![0xFA]; // cli
    for slot in SLOTS {
        for (port, value) in [
            (0xCF8u16, config_address(slot, 0x18)),
            (0xCFC, bus_numbers(slot)),
        ] {
            code.extend([0x66, 0xB8]); // mov eax, imm32
            code.extend(value.to_le_bytes());
            code.push(0xBA); // mov dx, imm16
            code.extend(port.to_le_bytes());
            code.extend([0x66, 0xEF]); // out dx, eax
        }
    }
    code.extend(tail);
    assert!(CODE_AT + code.len() <= RESET_AT, "firmware code too long");
    let mut img = vec![0u8; SIZE];
    img[CODE_AT..CODE_AT + code.len()].copy_from_slice(&code);
    // jmp near rel16 to CODE_AT, relative to the next instruction.
    let rel = (CODE_AT as i32 - (RESET_AT as i32 + 3)) as i16;
    img[RESET_AT] = 0xE9;
    img[RESET_AT + 1..RESET_AT + 3].copy_from_slice(&rel.to_le_bytes());
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_vector_jumps_to_the_code_that_writes_each_slots_bus_numbers() {
        let img = image();
        assert_eq!(img.len(), SIZE);
        assert_eq!(img.len() % 65536, 0);
        assert_eq!(img[RESET_AT], 0xE9);
        let rel = i16::from_le_bytes([img[RESET_AT + 1], img[RESET_AT + 2]]);
        let target = (RESET_AT as i32 + 3 + i32::from(rel)) as usize;
        assert_eq!(target, CODE_AT);
        assert_eq!(img[CODE_AT], 0xFA);
        // Slot 2's address and value appear as mov eax immediates.
        let find = |v: u32| {
            let needle: Vec<u8> = [0x66, 0xB8].into_iter().chain(v.to_le_bytes()).collect();
            img.windows(needle.len()).any(|w| w == needle.as_slice())
        };
        assert!(find(0x8000_1018));
        assert!(find(0x0002_0200));
        assert_eq!(config_address(1, 0x18), 0x8000_0818);
        // It ends halted.
        let end = img[..RESET_AT].iter().rposition(|&b| b != 0).unwrap();
        assert_eq!(&img[end - 2..=end], &[0xF4, 0xEB, 0xFD]);
        let busy = image_busy();
        let busy_end = busy[..RESET_AT].iter().rposition(|&b| b != 0).unwrap();
        assert_eq!(&busy[busy_end - 1..=busy_end], &[0xEB, 0xFE]);
        // The same code before the spin as before the halt.
        assert!(busy[..busy_end - 1] == img[..end - 2]);
    }
}
