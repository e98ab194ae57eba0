//! A simulated PCI system behind [`PciBackend`]: the kernel's SR-IOV, driver
//! and runtime-PM rules kept in memory, for vpm's built-in demo (any KVM host,
//! no SR-IOV hardware) and for tests that make the kernel fail on purpose.
//!
//! Rules kept, as Linux applies them:
//! - `sriov_numvfs`: more than `sriov_totalvfs` is ERANGE; the same value is a
//!   no-op; non-zero to another non-zero is EBUSY (so a resize writes 0 then N);
//!   a PF without a driver is ENOENT. VFs appear at `offset + i * stride` with
//!   `physfn`/`virtfn` links, each in its own IOMMU group, bound to the host
//!   driver unless `sriov_drivers_autoprobe` is off (on by default). Removing a VF open through VFIO blocks
//!   (vfio-pci's release waits for the user), which the simulation reports as a
//!   timeout.
//! - Runtime PM: a function bound to vfio-pci with `power/control=auto` and no
//!   process holding it is in D3hot; anything else is D0.
//! - Opening through VFIO needs the function bound to vfio-pci.
//!
//! Faults can be injected ([`SimPci::inject`]): the next matching operation
//! fails with an errno, times out, or finds the device gone. Every write is
//! recorded ([`SimPci::writes`]).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::backend::{HolderInfo, HostUse, PciBackend};
use super::{
    Bdf, Errno, HalError, NumVfsChange, PciFunction, PowerControl, PowerState, Result,
    RuntimeStatus, SriovInfo, numvfs_steps,
};

/// The operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOp {
    /// A write of `sriov_numvfs`.
    SetNumVfs,
    /// Binding a driver.
    Bind,
    /// A write of `power/control`.
    PowerControl,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// The write fails with this errno.
    Errno(i32),
    /// The write does not return in time.
    Timeout,
    /// The device is gone (hot-removed) before the write.
    Vanish,
}

#[derive(Debug, Clone)]
struct SimSriov {
    total: u32,
    num: u32,
    autoprobe: bool,
    vf_device: u16,
    offset: u32,
    stride: u32,
}

#[derive(Debug, Clone)]
struct SimFunction {
    vendor: u16,
    device: u16,
    class: u32,
    driver: Option<String>,
    driver_override: Option<String>,
    iommu_group: u32,
    sriov: Option<SimSriov>,
    physfn: Option<Bdf>,
    virtfns: Vec<Bdf>,
    control: PowerControl,
}

#[derive(Default)]
struct State {
    functions: BTreeMap<Bdf, SimFunction>,
    holders: BTreeMap<Bdf, Vec<HolderInfo>>,
    host_use: BTreeMap<Bdf, Vec<HostUse>>,
    faults: VecDeque<(SimOp, Option<Bdf>, SimFault)>,
    writes: Vec<String>,
    next_group: u32,
    /// Runtime suspend goes to D3cold (a platform that can cut the power).
    d3cold: bool,
}

/// The simulated PCI system.
#[derive(Default)]
pub struct SimPci {
    state: Mutex<State>,
}

fn path(bdf: Bdf, attr: &str) -> PathBuf {
    PathBuf::from(format!("sim:/sys/bus/pci/devices/{bdf}/{attr}"))
}

fn errno_error(bdf: Bdf, attr: &str, code: i32) -> HalError {
    let source = std::io::Error::from_raw_os_error(code);
    HalError::Io {
        op: "write",
        path: path(bdf, attr),
        errno: Errno::from_io(&source),
        source,
    }
}

fn gone(bdf: Bdf) -> HalError {
    HalError::NoDevice {
        bdf,
        path: path(bdf, ""),
    }
}

impl SimPci {
    /// An empty system.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds an SR-IOV PF (QEMU's NVMe ids) with `total_vfs`, bound to `driver`,
    /// VF autoprobe on (the kernel's default: new VFs get the host driver).
    pub fn add_pf(&self, bdf: Bdf, total_vfs: u32, driver: Option<&str>) {
        let mut s = self.lock();
        let group = s.next_group;
        s.next_group += 1;
        s.functions.insert(
            bdf,
            SimFunction {
                vendor: 0x1b36,
                device: 0x0010,
                class: 0x010802,
                driver: driver.map(str::to_owned),
                driver_override: None,
                iommu_group: group,
                sriov: Some(SimSriov {
                    total: total_vfs,
                    num: 0,
                    autoprobe: true,
                    vf_device: 0x0010,
                    offset: 1,
                    stride: 1,
                }),
                physfn: None,
                virtfns: Vec::new(),
                control: PowerControl::On,
            },
        );
    }

    /// Runtime suspend goes to D3cold instead of D3hot, as on platforms with
    /// ACPI power resources.
    pub fn suspend_to_d3cold(&self, on: bool) {
        self.lock().d3cold = on;
    }

    /// Marks a host use of `bdf` (a mounted disk, an interface up).
    pub fn set_host_use(&self, bdf: Bdf, uses: Vec<HostUse>) {
        self.lock().host_use.insert(bdf, uses);
    }

    /// A process opens `bdf` through VFIO (as a VMM does); it must be bound to vfio-pci.
    pub fn open(&self, bdf: Bdf, holder: HolderInfo) -> Result<()> {
        let mut s = self.lock();
        let f = s.functions.get(&bdf).ok_or_else(|| gone(bdf))?;
        if f.driver.as_deref() != Some("vfio-pci") {
            return Err(errno_error(bdf, "vfio", libc::ENODEV));
        }
        s.holders.entry(bdf).or_default().push(holder);
        Ok(())
    }

    /// Process `pid` closes `bdf`.
    pub fn close(&self, bdf: Bdf, pid: u32) {
        let mut s = self.lock();
        if let Some(h) = s.holders.get_mut(&bdf) {
            h.retain(|h| h.pid != pid);
        }
    }

    /// The next `op` (on `bdf`, or on any device) fails as `fault` says.
    pub fn inject(&self, op: SimOp, bdf: Option<Bdf>, fault: SimFault) {
        self.lock().faults.push_back((op, bdf, fault));
    }

    /// Every write carried out, in order (`0000:01:00.0 sriov_numvfs=2`).
    pub fn writes(&self) -> Vec<String> {
        self.lock().writes.clone()
    }

    fn take_fault(s: &mut State, op: SimOp, bdf: Bdf) -> Option<SimFault> {
        let i = s
            .faults
            .iter()
            .position(|(o, b, _)| *o == op && b.is_none_or(|b| b == bdf))?;
        s.faults.remove(i).map(|(_, _, f)| f)
    }

    fn apply_fault(
        s: &mut State,
        op: SimOp,
        bdf: Bdf,
        attr: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<()> {
        match Self::take_fault(s, op, bdf) {
            None => Ok(()),
            Some(SimFault::Errno(code)) => Err(errno_error(bdf, attr, code)),
            Some(SimFault::Timeout) => Err(HalError::Timeout {
                path: path(bdf, attr),
                value: value.to_owned(),
                after: timeout,
            }),
            Some(SimFault::Vanish) => {
                remove_function(s, bdf);
                Err(gone(bdf))
            }
        }
    }

    fn power_of(s: &State, bdf: Bdf, f: &SimFunction) -> PowerState {
        let held = s.holders.get(&bdf).is_some_and(|h| !h.is_empty());
        if f.driver.as_deref() == Some("vfio-pci") && f.control == PowerControl::Auto && !held {
            if s.d3cold {
                PowerState::D3Cold
            } else {
                PowerState::D3Hot
            }
        } else {
            PowerState::D0
        }
    }

    fn write_numvfs(s: &mut State, pf: Bdf, n: u32, timeout: Duration) -> Result<()> {
        let f = s.functions.get(&pf).ok_or_else(|| gone(pf))?;
        let sriov = f.sriov.clone().ok_or(HalError::NotSriov { bdf: pf })?;
        if n > sriov.total {
            return Err(errno_error(pf, "sriov_numvfs", libc::ERANGE));
        }
        if n == sriov.num {
            return Ok(());
        }
        if f.driver.is_none() {
            return Err(errno_error(pf, "sriov_numvfs", libc::ENOENT));
        }
        if n != 0 && sriov.num != 0 {
            return Err(errno_error(pf, "sriov_numvfs", libc::EBUSY));
        }
        if n == 0 {
            let vfs = f.virtfns.clone();
            if vfs
                .iter()
                .any(|vf| s.holders.get(vf).is_some_and(|h| !h.is_empty()))
            {
                // vfio-pci's release waits for the VF's user: the write blocks.
                return Err(HalError::Timeout {
                    path: path(pf, "sriov_numvfs"),
                    value: "0".into(),
                    after: timeout,
                });
            }
            for vf in vfs {
                remove_function(s, vf);
            }
        } else {
            let base = u32::from(pf.device) * 8 + u32::from(pf.function);
            let mut vfs = Vec::new();
            for i in 0..n {
                let devfn = base + sriov.offset + i * sriov.stride;
                let bus = u32::from(pf.bus) + devfn / 256;
                let devfn = devfn % 256;
                let vf = u8::try_from(bus)
                    .ok()
                    .and_then(|bus| Bdf::new(pf.domain, bus, (devfn / 8) as u8, (devfn % 8) as u8))
                    .ok_or_else(|| errno_error(pf, "sriov_numvfs", libc::EINVAL))?;
                vfs.push(vf);
            }
            for vf in &vfs {
                let group = s.next_group;
                s.next_group += 1;
                s.functions.insert(
                    *vf,
                    SimFunction {
                        vendor: 0x1b36,
                        device: sriov.vf_device,
                        class: 0x010802,
                        driver: sriov.autoprobe.then(|| "nvme".to_owned()),
                        driver_override: None,
                        iommu_group: group,
                        sriov: None,
                        physfn: Some(pf),
                        virtfns: Vec::new(),
                        control: PowerControl::Auto,
                    },
                );
            }
            if let Some(f) = s.functions.get_mut(&pf) {
                f.virtfns = vfs;
            }
        }
        if let Some(sr) = s.functions.get_mut(&pf).and_then(|f| f.sriov.as_mut()) {
            sr.num = n;
        }
        Ok(())
    }
}

fn remove_function(s: &mut State, bdf: Bdf) {
    if let Some(f) = s.functions.remove(&bdf) {
        for vf in f.virtfns {
            s.functions.remove(&vf);
            s.holders.remove(&vf);
        }
        if let Some(pf) = f.physfn.and_then(|pf| s.functions.get_mut(&pf)) {
            pf.virtfns.retain(|v| *v != bdf);
        }
    }
    s.holders.remove(&bdf);
}

impl PciBackend for SimPci {
    fn functions(&self) -> Result<Vec<Bdf>> {
        Ok(self.lock().functions.keys().copied().collect())
    }

    fn function(&self, bdf: Bdf) -> Result<PciFunction> {
        let s = self.lock();
        let f = s.functions.get(&bdf).ok_or_else(|| gone(bdf))?;
        let power = Self::power_of(&s, bdf, f);
        Ok(PciFunction {
            bdf,
            vendor: f.vendor,
            device: f.device,
            class: f.class,
            subsystem_vendor: None,
            subsystem_device: None,
            driver: f.driver.clone(),
            driver_override: f.driver_override.clone(),
            iommu_group: Some(f.iommu_group),
            numa_node: Some(-1),
            sriov: f.sriov.as_ref().map(|sr| SriovInfo {
                total_vfs: sr.total,
                num_vfs: sr.num,
                offset: sr.offset,
                stride: sr.stride,
                drivers_autoprobe: sr.autoprobe,
                vf_device: Some(sr.vf_device),
            }),
            virtfns: f
                .virtfns
                .iter()
                .enumerate()
                .map(|(i, b)| (i as u32, *b))
                .collect(),
            physfn: f.physfn,
            runtime_status: Some(if power == PowerState::D0 {
                RuntimeStatus::Active
            } else {
                RuntimeStatus::Suspended
            }),
            power_state: Some(power),
            power_control: Some(f.control),
            d3cold_allowed: Some(true),
        })
    }

    fn power_state(&self, bdf: Bdf) -> Result<Option<PowerState>> {
        let s = self.lock();
        let f = s.functions.get(&bdf).ok_or_else(|| gone(bdf))?;
        Ok(Some(Self::power_of(&s, bdf, f)))
    }

    fn iommu_enabled(&self) -> bool {
        true
    }

    fn iommu_group_devices(&self, group: u32) -> Result<Vec<Bdf>> {
        Ok(self
            .lock()
            .functions
            .iter()
            .filter(|(_, f)| f.iommu_group == group)
            .map(|(b, _)| *b)
            .collect())
    }

    fn holders(&self, f: &PciFunction) -> Result<Vec<HolderInfo>> {
        Ok(self.lock().holders.get(&f.bdf).cloned().unwrap_or_default())
    }

    fn host_use(&self, bdf: Bdf) -> Result<Vec<HostUse>> {
        Ok(self.lock().host_use.get(&bdf).cloned().unwrap_or_default())
    }

    fn set_sriov_autoprobe(&self, pf: Bdf, on: bool) -> Result<()> {
        let mut s = self.lock();
        let f = s.functions.get_mut(&pf).ok_or_else(|| gone(pf))?;
        let sr = f.sriov.as_mut().ok_or(HalError::NotSriov { bdf: pf })?;
        sr.autoprobe = on;
        s.writes
            .push(format!("{pf} sriov_drivers_autoprobe={}", u8::from(on)));
        Ok(())
    }

    fn set_sriov_numvfs(&self, pf: Bdf, n: u32, timeout: Duration) -> Result<NumVfsChange> {
        let started = Instant::now();
        let mut s = self.lock();
        let f = s.functions.get(&pf).ok_or_else(|| gone(pf))?;
        let sr = f.sriov.as_ref().ok_or(HalError::NotSriov { bdf: pf })?;
        if n > sr.total {
            return Err(HalError::OutOfRange {
                bdf: pf,
                requested: n,
                total: sr.total,
            });
        }
        let from = sr.num;
        let steps = numvfs_steps(from, n);
        for step in &steps {
            Self::apply_fault(
                &mut s,
                SimOp::SetNumVfs,
                pf,
                "sriov_numvfs",
                &step.to_string(),
                timeout,
            )?;
            Self::write_numvfs(&mut s, pf, *step, timeout)?;
            s.writes.push(format!("{pf} sriov_numvfs={step}"));
        }
        Ok(NumVfsChange {
            from,
            to: n,
            steps,
            elapsed: started.elapsed(),
        })
    }

    fn bind_driver(&self, bdf: Bdf, driver: &str, timeout: Duration) -> Result<()> {
        super::validate_driver_name(driver)?;
        let mut s = self.lock();
        Self::apply_fault(&mut s, SimOp::Bind, bdf, "driver_override", driver, timeout)?;
        let held = s.holders.get(&bdf).is_some_and(|h| !h.is_empty());
        let f = s.functions.get_mut(&bdf).ok_or_else(|| gone(bdf))?;
        if f.driver.as_deref() != Some(driver) && held {
            // Unbinding a device in use blocks in the kernel.
            return Err(HalError::Timeout {
                path: path(bdf, "driver/unbind"),
                value: bdf.to_string(),
                after: timeout,
            });
        }
        f.driver_override = Some(driver.to_owned());
        f.driver = Some(driver.to_owned());
        s.writes.push(format!("{bdf} driver={driver}"));
        Ok(())
    }

    fn set_power_control(&self, bdf: Bdf, control: PowerControl, timeout: Duration) -> Result<()> {
        let mut s = self.lock();
        Self::apply_fault(
            &mut s,
            SimOp::PowerControl,
            bdf,
            "power/control",
            control.as_str(),
            timeout,
        )?;
        let f = s.functions.get_mut(&bdf).ok_or_else(|| gone(bdf))?;
        f.control = control;
        s.writes.push(format!("{bdf} power/control={control}"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn holder() -> HolderInfo {
        HolderInfo {
            pid: 7,
            comm: "qemu".into(),
            vm: Some("vm-a".into()),
        }
    }

    #[test]
    fn sriov_rules_match_the_kernel() {
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        let t = Duration::from_secs(1);
        assert_eq!(sim.set_sriov_numvfs(pf, 2, t).unwrap().steps, vec![2]);
        let f = sim.function(pf).unwrap();
        assert_eq!(
            f.virtfns,
            vec![(0, bdf("0000:01:00.1")), (1, bdf("0000:01:00.2"))]
        );
        assert_eq!(sim.function(bdf("0000:01:00.2")).unwrap().physfn, Some(pf));
        assert_eq!(sim.set_sriov_numvfs(pf, 4, t).unwrap().steps, vec![0, 4]);
        assert!(matches!(
            sim.set_sriov_numvfs(pf, 5, t),
            Err(HalError::OutOfRange { .. })
        ));
        // Raw kernel errors through fault-free paths:
        let mut s = sim.lock();
        assert_eq!(
            SimPci::write_numvfs(&mut s, pf, 3, t).unwrap_err().errno(),
            Some(Errno::Busy)
        );
        assert_eq!(
            SimPci::write_numvfs(&mut s, pf, 9, t).unwrap_err().errno(),
            Some(Errno::Range)
        );
        SimPci::write_numvfs(&mut s, pf, 0, t).unwrap();
        s.functions.get_mut(&pf).unwrap().driver = None;
        assert_eq!(
            SimPci::write_numvfs(&mut s, pf, 2, t).unwrap_err().errno(),
            Some(Errno::NoEnt)
        );
    }

    #[test]
    fn runtime_pm_and_vfio_holders() {
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        let t = Duration::from_secs(1);
        sim.set_sriov_numvfs(pf, 1, t).unwrap();
        let vf = bdf("0000:01:00.1");
        assert!(sim.open(vf, holder()).is_err(), "not bound to vfio-pci");
        sim.bind_driver(vf, "vfio-pci", t).unwrap();
        assert_eq!(
            sim.power_state(vf).unwrap(),
            Some(PowerState::D3Hot),
            "idle vfio-pci VF suspends"
        );
        sim.set_power_control(vf, PowerControl::On, t).unwrap();
        assert_eq!(sim.power_state(vf).unwrap(), Some(PowerState::D0));
        sim.set_power_control(vf, PowerControl::Auto, t).unwrap();
        sim.open(vf, holder()).unwrap();
        assert_eq!(
            sim.power_state(vf).unwrap(),
            Some(PowerState::D0),
            "open resumes"
        );
        // Removing a held VF blocks.
        assert!(matches!(
            sim.set_sriov_numvfs(pf, 0, t),
            Err(HalError::Timeout { .. })
        ));
        sim.close(vf, 7);
        sim.set_sriov_numvfs(pf, 0, t).unwrap();
        assert!(sim.function(vf).is_err());
        assert_eq!(
            sim.writes(),
            vec![
                "0000:01:00.0 sriov_numvfs=1",
                "0000:01:00.1 driver=vfio-pci",
                "0000:01:00.1 power/control=on",
                "0000:01:00.1 power/control=auto",
                "0000:01:00.0 sriov_numvfs=0",
            ]
        );
    }

    #[test]
    fn injected_faults_fire_once() {
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        let t = Duration::from_secs(1);
        sim.inject(SimOp::SetNumVfs, Some(pf), SimFault::Errno(libc::EBUSY));
        assert_eq!(
            sim.set_sriov_numvfs(pf, 2, t).unwrap_err().errno(),
            Some(Errno::Busy)
        );
        sim.set_sriov_numvfs(pf, 2, t).unwrap();
        sim.inject(SimOp::PowerControl, None, SimFault::Vanish);
        let vf = bdf("0000:01:00.1");
        assert!(matches!(
            sim.set_power_control(vf, PowerControl::On, t),
            Err(HalError::NoDevice { .. })
        ));
        assert!(sim.function(vf).is_err());
        assert_eq!(sim.function(pf).unwrap().virtfns.len(), 1);
    }
}
