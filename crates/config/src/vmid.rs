//! Guest ids: one vocabulary for every command and file name (`qemu-server/<vmid>.conf`,
//! `vzdump-qemu-<vmid>-...`, run directories). Proxmox allows 100 to 999999999; ids below 100
//! are reserved.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A guest id in `100..=999999999`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(u32);

impl VmId {
    /// The smallest guest id.
    pub const MIN: u32 = 100;
    /// The largest guest id.
    pub const MAX: u32 = 999_999_999;

    /// `id` if it is in range.
    pub fn new(id: u32) -> Result<Self> {
        if (Self::MIN..=Self::MAX).contains(&id) {
            Ok(VmId(id))
        } else {
            Err(Error::value(
                "vmid",
                format!("{id} is not a guest id ({}..{})", Self::MIN, Self::MAX),
            ))
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for VmId {
    type Err = Error;

    /// Decimal digits only, no sign or leading zeros (the id is part of file names).
    fn from_str(s: &str) -> Result<Self> {
        s.parse::<u32>()
            .ok()
            .filter(|n| n.to_string() == s)
            .and_then(|n| VmId::new(n).ok())
            .ok_or_else(|| {
                Error::value(
                    "vmid",
                    format!("'{s}' is not a guest id ({}..{})", Self::MIN, Self::MAX),
                )
            })
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<VmId> for u32 {
    fn from(v: VmId) -> u32 {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_spelling() {
        assert_eq!("100".parse::<VmId>().expect("100").get(), 100);
        assert_eq!("999999999".parse::<VmId>().expect("max").get(), 999_999_999);
        for bad in [
            "0",
            "99",
            "1000000000",
            "0100",
            "+100",
            "-1",
            "",
            "abc",
            "1e3",
        ] {
            assert!(bad.parse::<VmId>().is_err(), "{bad} accepted");
        }
        assert!(VmId::new(99).is_err());
    }
}
