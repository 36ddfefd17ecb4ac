//! Choosing between KVM and TCG.
//!
//! Order of decision:
//! 1. an explicit choice ([`crate::StartOptions::accel`]);
//! 2. `$VMDUMP_ACCEL` = `kvm` | `tcg` (`auto` or unset: continue);
//! 3. `kvm: 0` in the guest config → TCG (as Proxmox);
//! 4. auto: KVM when `/dev/kvm` opens read-write **and** the host CPU does not carry the
//!    `hypervisor` flag; otherwise TCG. Nested KVM (we are ourselves a guest) starts QEMU but
//!    has been seen to hang booting Linux, so a nested host runs guests under TCG unless told
//!    otherwise. Paused-only users (a backup of a stopped VM never runs the guest) may force
//!    KVM safely.

use std::fmt;

/// The accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// Environment variable forcing the accelerator (`kvm`, `tcg`, `auto`).
pub const ACCEL_ENV: &str = "VMDUMP_ACCEL";

impl Accel {
    /// Parse `kvm` / `tcg`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    /// The `accel=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The automatic choice for this host (step 4 above).
    pub fn detect() -> Self {
        if kvm_usable() && !host_is_guest() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// Apply steps 1-4: explicit, environment, config (`kvm_enabled`), detection.
    pub fn choose(explicit: Option<Accel>, kvm_enabled: bool) -> Self {
        if let Some(a) = explicit {
            return a;
        }
        if let Some(a) = std::env::var(ACCEL_ENV).ok().and_then(|v| Accel::parse(&v)) {
            return a;
        }
        if !kvm_enabled {
            return Accel::Tcg;
        }
        Accel::detect()
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `/dev/kvm` can be opened read-write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Whether this host is itself a virtual machine (`hypervisor` CPU flag).
pub fn host_is_guest() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
        })
        .unwrap_or(false)
}
