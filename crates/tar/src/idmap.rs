//! User-namespace id maps of unprivileged containers: the archive holds the container's own
//! ids (0–65535), the host filesystem the mapped ones (`lxc.idmap = u 0 100000 65536`).

/// The id a host id without a mapping shows as inside a user namespace.
pub const OVERFLOW_ID: u64 = 65534;

/// One range: container ids `inside..inside+count` are host ids `host..host+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the container.
    pub inside: u64,
    /// First id on the host.
    pub host: u64,
    /// Number of ids.
    pub count: u64,
}

/// The uid and gid maps of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    /// User id ranges.
    pub uid: Vec<IdRange>,
    /// Group id ranges.
    pub gid: Vec<IdRange>,
}

fn to_inside(ranges: &[IdRange], host: u64) -> u64 {
    ranges
        .iter()
        .find(|r| host >= r.host && host - r.host < r.count)
        .map_or(OVERFLOW_ID, |r| r.inside + (host - r.host))
}

fn to_host(ranges: &[IdRange], inside: u64) -> Option<u64> {
    ranges
        .iter()
        .find(|r| inside >= r.inside && inside - r.inside < r.count)
        .map(|r| r.host + (inside - r.inside))
}

impl IdMap {
    /// Proxmox's default map of an unprivileged container: 0–65535 → 100000–165535.
    pub fn unprivileged() -> Self {
        let r = IdRange {
            inside: 0,
            host: 100_000,
            count: 65_536,
        };
        IdMap {
            uid: vec![r],
            gid: vec![r],
        }
    }

    /// The container uid of a host uid (unmapped ones read as [`OVERFLOW_ID`], as through
    /// the user namespace).
    pub fn uid_inside(&self, host: u64) -> u64 {
        to_inside(&self.uid, host)
    }

    /// The container gid of a host gid.
    pub fn gid_inside(&self, host: u64) -> u64 {
        to_inside(&self.gid, host)
    }

    /// The host uid of a container uid, if mapped.
    pub fn uid_host(&self, inside: u64) -> Option<u64> {
        to_host(&self.uid, inside)
    }

    /// The host gid of a container gid, if mapped.
    pub fn gid_host(&self, inside: u64) -> Option<u64> {
        to_host(&self.gid, inside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_map() {
        let m = IdMap::unprivileged();
        assert_eq!(m.uid_inside(100_033), 33);
        assert_eq!(m.uid_inside(0), OVERFLOW_ID);
        assert_eq!(m.gid_host(65_535), Some(165_535));
        assert_eq!(m.gid_host(65_536), None);
    }
}
