//! The 512-byte POSIX ustar header and PAX extended records (POSIX.1-2001), as GNU tar writes
//! them with `--format=posix` (which `--acls`/`--xattrs` select).

pub(crate) const BLOCK: usize = 512;

/// Offsets and widths of the ustar fields.
pub(crate) mod field {
    pub const NAME: (usize, usize) = (0, 100);
    pub const MODE: (usize, usize) = (100, 8);
    pub const UID: (usize, usize) = (108, 8);
    pub const GID: (usize, usize) = (116, 8);
    pub const SIZE: (usize, usize) = (124, 12);
    pub const MTIME: (usize, usize) = (136, 12);
    pub const CHKSUM: (usize, usize) = (148, 8);
    pub const TYPE: usize = 156;
    pub const LINKNAME: (usize, usize) = (157, 100);
    pub const MAGIC: (usize, usize) = (257, 6);
    pub const VERSION: (usize, usize) = (263, 2);
    pub const DEVMAJOR: (usize, usize) = (329, 8);
    pub const DEVMINOR: (usize, usize) = (337, 8);
    pub const PREFIX: (usize, usize) = (345, 155);
}

/// The largest value an octal field of `width` bytes holds (width-1 digits and a NUL).
pub(crate) fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}

/// Writes `v` as zero-padded octal with a trailing NUL; `false` if it does not fit.
pub(crate) fn put_octal(h: &mut [u8; BLOCK], (at, width): (usize, usize), v: u64) -> bool {
    if v > octal_max(width) {
        return false;
    }
    let s = format!("{v:0w$o}", w = width - 1);
    h[at..at + width - 1].copy_from_slice(s.as_bytes());
    h[at + width - 1] = 0;
    true
}

/// Reads a numeric field: octal (space/NUL padded) or GNU base-256 (high bit set).
pub(crate) fn get_num(h: &[u8; BLOCK], (at, width): (usize, usize)) -> Option<u64> {
    let f = &h[at..at + width];
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = u64::from(f[0] & 0x3f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(&s).ok()?;
    u64::from_str_radix(s, 8).ok()
}

/// Puts `bytes` into a text field (NUL-padded); `false` if too long.
pub(crate) fn put_bytes(h: &mut [u8; BLOCK], (at, width): (usize, usize), bytes: &[u8]) -> bool {
    if bytes.len() > width {
        return false;
    }
    h[at..at + bytes.len()].copy_from_slice(bytes);
    true
}

/// A text field up to its first NUL.
pub(crate) fn get_bytes(h: &[u8; BLOCK], (at, width): (usize, usize)) -> &[u8] {
    let f = &h[at..at + width];
    let end = f.iter().position(|&b| b == 0).unwrap_or(width);
    &f[..end]
}

/// Header checksum: the byte sum with the checksum field read as spaces.
pub(crate) fn checksum(h: &[u8; BLOCK]) -> u64 {
    h.iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum()
}

/// Fills in magic, version and checksum.
pub(crate) fn seal(h: &mut [u8; BLOCK]) {
    put_bytes(h, field::MAGIC, b"ustar\0");
    put_bytes(h, field::VERSION, b"00");
    let sum = checksum(h);
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// Splits `name` into ustar `prefix` and `name` fields if possible.
pub(crate) fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    if name.len() > 256 {
        return None;
    }
    // The split must be at a '/', prefix ≤ 155, name ≤ 100 and not empty.
    (0..name.len())
        .rev()
        .filter(|&i| name[i] == b'/')
        .find(|&i| i <= 155 && name.len() - i - 1 <= 100 && i + 1 < name.len())
        .map(|i| (&name[..i], &name[i + 1..]))
}

/// One PAX record `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
pub(crate) fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    loop {
        let digits = len.to_string().len();
        if digits + body == len {
            break;
        }
        len = digits + body;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Parses PAX records. Values may contain any byte, newlines included (the length prefix
/// decides, as POSIX says; GNU's ACL texts contain newlines).
pub(crate) fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("pax record without a length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("pax record length is not a number")?;
        if len <= sp + 1 || len > data.len() {
            return Err(format!("pax record length {len} out of range"));
        }
        let rec = &data[sp + 1..len];
        let rec = rec
            .strip_suffix(b"\n")
            .ok_or("pax record does not end in a newline")?;
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("pax record without '='")?;
        let key = std::str::from_utf8(&rec[..eq])
            .map_err(|_| "pax key is not UTF-8")?
            .to_string();
        out.push((key, rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// Bytes of padding after `len` bytes of data.
pub(crate) fn padding(len: u64) -> usize {
    let r = (len % BLOCK as u64) as usize;
    if r == 0 {
        0
    } else {
        BLOCK - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut v = Vec::new();
        pax_record(&mut v, "path", b"./a");
        assert_eq!(v, b"12 path=./a\n");
        let mut v = Vec::new();
        let long = vec![b'x'; 95];
        pax_record(&mut v, "path", &long);
        assert_eq!(&v[..4], b"105 ");
        assert_eq!(v.len(), 105);
        let parsed = parse_pax(&v).expect("parse");
        assert_eq!(parsed, vec![("path".to_string(), long)]);
    }

    #[test]
    fn pax_values_keep_newlines() {
        let mut v = Vec::new();
        pax_record(&mut v, "SCHILY.acl.access", b"user::rw-\nuser:1234:rw-\n");
        pax_record(&mut v, "SCHILY.xattr.user.a", b"1");
        let p = parse_pax(&v).expect("parse");
        assert_eq!(p[0].1, b"user::rw-\nuser:1234:rw-\n");
        assert_eq!(p[1].0, "SCHILY.xattr.user.a");
    }

    #[test]
    fn numbers_octal_and_base256() {
        let mut h = [0u8; BLOCK];
        assert!(put_octal(&mut h, field::UID, 100123));
        assert_eq!(get_num(&h, field::UID), Some(100123));
        assert!(!put_octal(&mut h, field::UID, 1 << 21));
        let mut h = [0u8; BLOCK];
        h[124] = 0x80;
        h[135] = 1;
        h[134] = 2;
        assert_eq!(get_num(&h, field::SIZE), Some(513));
    }

    #[test]
    fn long_names_split_at_a_slash() {
        let name = format!("./{}/{}", "d".repeat(120), "f".repeat(50));
        let (p, n) = split_name(name.as_bytes()).expect("fits");
        assert_eq!(n, "f".repeat(50).as_bytes());
        assert_eq!(p.len(), 122);
        assert!(split_name(&[b'x'; 300]).is_none());
    }
}
