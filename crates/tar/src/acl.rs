//! POSIX ACLs: the kernel's `system.posix_acl_*` xattr value and the text form GNU tar
//! stores in `SCHILY.acl.access` / `SCHILY.acl.default`.

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED: u32 = u32::MAX;

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    /// Tag (`USER_OBJ` ... `OTHER`).
    tag: u16,
    /// `rwx` bits.
    perm: u16,
    /// The user or group id of `USER`/`GROUP` entries.
    id: u32,
}

/// Decodes a `system.posix_acl_*` value; `None` if it is not a valid version-2 ACL.
pub fn decode(value: &[u8]) -> Option<Vec<AclEntry>> {
    let (head, rest) = value.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != VERSION || rest.len() % 8 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(8)
            .map(|c| AclEntry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

/// Encodes entries as a `system.posix_acl_*` value.
pub fn encode(entries: &[AclEntry]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for e in entries {
        v.extend_from_slice(&e.tag.to_le_bytes());
        v.extend_from_slice(&e.perm.to_le_bytes());
        v.extend_from_slice(&e.id.to_le_bytes());
    }
    v
}

fn perm_text(p: u16) -> String {
    [(4, 'r'), (2, 'w'), (1, 'x')]
        .iter()
        .map(|&(b, c)| if p & b != 0 { c } else { '-' })
        .collect()
}

/// The text form with numeric ids, one entry per line (`user::rw-\nuser:1234:rw-\n...`);
/// `map_uid`/`map_gid` translate the ids of named entries.
pub fn to_text(
    entries: &[AclEntry],
    map_uid: &dyn Fn(u32) -> u32,
    map_gid: &dyn Fn(u32) -> u32,
) -> String {
    let mut s = String::new();
    for e in entries {
        let (kind, id) = match e.tag {
            USER_OBJ => ("user", String::new()),
            USER => ("user", map_uid(e.id).to_string()),
            GROUP_OBJ => ("group", String::new()),
            GROUP => ("group", map_gid(e.id).to_string()),
            MASK => ("mask", String::new()),
            OTHER => ("other", String::new()),
            _ => continue,
        };
        s.push_str(&format!("{kind}:{id}:{}\n", perm_text(e.perm)));
    }
    s
}

/// Parses the text form (entries separated by newlines or commas, `#` comments, short or
/// long tag names, numeric ids or names resolved by `lookup_user`/`lookup_group`); ids are
/// translated by `map_uid`/`map_gid`. The entries come out in the kernel's order.
pub fn from_text(
    text: &str,
    lookup_user: &dyn Fn(&str) -> Option<u32>,
    lookup_group: &dyn Fn(&str) -> Option<u32>,
    map_uid: &dyn Fn(u32) -> Option<u32>,
    map_gid: &dyn Fn(u32) -> Option<u32>,
) -> Result<Vec<AclEntry>, String> {
    let mut out = Vec::new();
    for item in text.split(['\n', ',']) {
        let item = item.split('#').next().unwrap_or("").trim();
        if item.is_empty() {
            continue;
        }
        let mut parts = item.splitn(3, ':');
        let (kind, qual, perms) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(q), Some(p)) => (k, q, p),
            _ => return Err(format!("malformed ACL entry '{item}'")),
        };
        let mut perm = 0;
        for c in perms.trim().chars() {
            perm |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => return Err(format!("bad permission in ACL entry '{item}'")),
            };
        }
        let resolve = |lookup: &dyn Fn(&str) -> Option<u32>,
                       map: &dyn Fn(u32) -> Option<u32>|
         -> Result<u32, String> {
            let id = match qual.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    lookup(qual).ok_or_else(|| format!("unknown name in ACL entry '{item}'"))?
                }
            };
            map(id).ok_or_else(|| format!("id {id} of ACL entry '{item}' is not mapped"))
        };
        let (tag, id) = match (kind, qual.is_empty()) {
            ("user" | "u", true) => (USER_OBJ, UNDEFINED),
            ("user" | "u", false) => (USER, resolve(lookup_user, map_uid)?),
            ("group" | "g", true) => (GROUP_OBJ, UNDEFINED),
            ("group" | "g", false) => (GROUP, resolve(lookup_group, map_gid)?),
            ("mask" | "m", _) => (MASK, UNDEFINED),
            ("other" | "o", _) => (OTHER, UNDEFINED),
            _ => return Err(format!("unknown ACL entry type in '{item}'")),
        };
        out.push(AclEntry { tag, perm, id });
    }
    out.sort_by_key(|e| (e.tag, e.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_text_round_trip() {
        let entries = vec![
            AclEntry {
                tag: USER_OBJ,
                perm: 6,
                id: UNDEFINED,
            },
            AclEntry {
                tag: USER,
                perm: 6,
                id: 1234,
            },
            AclEntry {
                tag: GROUP_OBJ,
                perm: 4,
                id: UNDEFINED,
            },
            AclEntry {
                tag: MASK,
                perm: 6,
                id: UNDEFINED,
            },
            AclEntry {
                tag: OTHER,
                perm: 4,
                id: UNDEFINED,
            },
        ];
        let bin = encode(&entries);
        assert_eq!(decode(&bin).expect("valid"), entries);
        let text = to_text(&entries, &|u| u, &|g| g);
        assert_eq!(
            text,
            "user::rw-\nuser:1234:rw-\ngroup::r--\nmask::rw-\nother::r--\n"
        );
        let none = |_: &str| None;
        let back = from_text(&text, &none, &none, &|u| Some(u), &|g| Some(g)).expect("parse");
        assert_eq!(back, entries);
        let short = from_text(
            "u::rw-,u:1234:rw-,g::r--,m::rw-,o::r--",
            &none,
            &none,
            &|u| Some(u),
            &|g| Some(g),
        )
        .expect("short form");
        assert_eq!(short, entries);
        assert!(
            from_text("user:nobody-here:rw-", &none, &none, &|u| Some(u), &|g| {
                Some(g)
            })
            .is_err()
        );
        assert!(decode(&[1, 0, 0, 0]).is_none());
    }
}
