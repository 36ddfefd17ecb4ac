//! The device map of `vma extract -r <fifo>`, the protocol qmrestore speaks: after the
//! listing, one line per device, `[format=F:][throttling.bps=N:][throttling.group=G:]
//! [cache=C:]<0|1>:<devname>=<path>` or `skip=<devname>`, until `done`, an empty line or the
//! end of the input.

use std::collections::HashMap;
use std::io::BufRead;

use crate::error::{Error, Result};

/// Where `vma extract -r` puts one device, from one line of the device map.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// Target path (`None` for `skip=`).
    pub path: Option<String>,
    /// `format=` (QEMU format name), if given.
    pub format: Option<String>,
    /// `1:`: write zeros for blocks the archive does not store.
    pub write_zero: bool,
    /// `skip=<dev>`: do not extract the device.
    pub skip: bool,
}

/// Parse a map line: `[format=F:][throttling.bps=N:][throttling.group=G:][cache=C:]<0|1>:<dev>=<path>`
/// or `skip=<dev>`. Returns the device name and the entry.
pub fn parse_map_line(line: &str) -> Result<(String, MapEntry)> {
    if let Some(rest) = line.strip_prefix("skip") {
        let Some(dev) = rest.strip_prefix('=').filter(|d| !d.is_empty()) else {
            return Err(Error::DeviceMap(format!(
                "option 'skip' has no value ('{line}')"
            )));
        };
        return Ok((
            dev.to_string(),
            MapEntry {
                skip: true,
                ..Default::default()
            },
        ));
    }
    let mut rest = line;
    let mut opts: HashMap<&str, String> = HashMap::new();
    'options: loop {
        for opt in ["format", "throttling.bps", "throttling.group", "cache"] {
            if let Some(v) = rest.strip_prefix(opt).and_then(|r| r.strip_prefix('=')) {
                let Some((value, tail)) = v.split_once(':') else {
                    return Err(Error::DeviceMap(format!(
                        "option '{opt}' not terminated ('{line}')"
                    )));
                };
                if opts.insert(opt, value.to_string()).is_some() {
                    return Err(Error::DeviceMap(format!(
                        "duplicate value for option '{opt}'"
                    )));
                }
                rest = tail;
                continue 'options;
            }
        }
        break;
    }
    if let Some(bps) = opts.get("throttling.bps") {
        let parsed = if let Some(hex) = bps.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).ok()
        } else {
            bps.parse::<u64>().ok()
        };
        if parsed.is_none() {
            return Err(Error::DeviceMap(format!("not a number: {bps}")));
        }
    }
    let (write_zero, target) = if let Some(t) = rest.strip_prefix("0:") {
        (false, t)
    } else if let Some(t) = rest.strip_prefix("1:") {
        (true, t)
    } else {
        return Err(Error::DeviceMap(format!("parse error ('{line}')")));
    };
    let Some((dev, path)) = target.split_once('=') else {
        return Err(Error::DeviceMap(format!(
            "no dev name specified ('{line}')"
        )));
    };
    Ok((
        dev.to_string(),
        MapEntry {
            path: Some(path.to_string()),
            format: opts.remove("format"),
            write_zero,
            skip: false,
        },
    ))
}

/// Read map lines until `done`, an empty line or the end; device name → entry.
pub fn read_device_map(input: impl BufRead) -> Result<HashMap<String, MapEntry>> {
    let mut map = HashMap::new();
    for line in input.lines() {
        let line = line.map_err(|source| Error::DeviceMapRead { source })?;
        if line.is_empty() || line == "done" {
            break;
        }
        let (dev, entry) = parse_map_line(&line)?;
        map.insert(dev, entry);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines() {
        let (d, e) = parse_map_line("format=raw:0:drive-scsi0=/dev/pve/vm-1-disk-0").unwrap();
        assert_eq!(d, "drive-scsi0");
        assert_eq!(e.path.as_deref(), Some("/dev/pve/vm-1-disk-0"));
        assert_eq!(e.format.as_deref(), Some("raw"));
        assert!(!e.write_zero);
        let (d, e) =
            parse_map_line("format=qcow2:throttling.bps=0x100:cache=none:1:drive-x=/a/b=c")
                .unwrap();
        assert_eq!(d, "drive-x");
        assert_eq!(e.path.as_deref(), Some("/a/b=c"));
        assert!(e.write_zero);
        let (d, e) = parse_map_line("skip=drive-efidisk0").unwrap();
        assert_eq!(d, "drive-efidisk0");
        assert!(e.skip);
        assert!(parse_map_line("skip=").is_err());
        assert!(parse_map_line("2:x=y").is_err());
        assert!(parse_map_line("0:/no/devname").is_err());
        assert!(parse_map_line("format=raw").is_err());
        assert!(parse_map_line("format=raw:format=raw:0:a=b").is_err());
        assert!(parse_map_line("throttling.bps=abc:0:a=b").is_err());
    }

    #[test]
    fn map_stops_at_done() {
        let input = &b"0:a=/x\nskip=b\ndone\n1:c=/y\n"[..];
        let map = read_device_map(input).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["a"].path.as_deref(), Some("/x"));
        assert!(map["b"].skip);
        let e = read_device_map(&b"2:a=/x\n"[..]).unwrap_err();
        assert_eq!(e.to_string(), "read map failed - parse error ('2:a=/x')");
    }
}
