//! Proxmox property strings: `[default=]value,key=value,...`.
//!
//! Used by drive definitions (`local:100/vm-100-disk-0.qcow2,size=32G`), `agent`, `netN`,
//! `prune-backups`, `fleecing`, `performance` and many more. Order is kept so an untouched or
//! minimally edited value formats back to the same text. Values containing `,` or `"` are
//! double-quoted with `\"`/`\\` escapes, as newer Proxmox versions write them.

use std::fmt;

use crate::error::{Error, Result};

/// One `key=value` part. `implicit` marks the default key written without `key=`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    key: String,
    value: String,
    implicit: bool,
}

/// A parsed property string, in its original order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyString {
    parts: Vec<Part>,
}

impl PropertyString {
    /// An empty property string.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse `text`. A part without `=` is the value of `default_key`; without a default key
    /// (or when the default key is already set) it is an error. Duplicate keys and empty values
    /// are errors.
    pub fn parse(text: &str, default_key: Option<&str>) -> Result<Self> {
        let err = |msg: String| Error::PropertyString {
            text: text.to_string(),
            msg,
        };
        let mut out = PropertyString::new();
        if text.trim().is_empty() {
            return Err(err("empty".into()));
        }
        for raw in split_parts(text).map_err(|m| err(m.into()))? {
            let (key, value, implicit) = match find_unquoted_eq(&raw) {
                Some(pos) => (raw[..pos].to_string(), unquote(&raw[pos + 1..]), false),
                None => match default_key {
                    Some(k) => (k.to_string(), unquote(&raw), true),
                    None => return Err(err(format!("'{raw}' is not key=value"))),
                },
            };
            let value = value.map_err(|m| err(m.into()))?;
            if key.is_empty() {
                return Err(err(format!("empty key in '{raw}'")));
            }
            if value.is_empty() {
                return Err(err(format!("empty value for '{key}'")));
            }
            if out.get(&key).is_some() {
                return Err(err(format!("duplicate key '{key}'")));
            }
            out.parts.push(Part {
                key,
                value,
                implicit,
            });
        }
        Ok(out)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Set `key` to `value`, keeping its position if present, else appending it.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.parts.iter_mut().find(|p| p.key == key) {
            Some(p) => p.value = value,
            None => self.parts.push(Part {
                key: key.to_string(),
                value,
                implicit: false,
            }),
        }
    }

    /// Set the default key (written without `key=`, first), keeping its position if present.
    pub fn set_default(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.parts.iter_mut().find(|p| p.key == key) {
            Some(p) => p.value = value,
            None => self.parts.insert(
                0,
                Part {
                    key: key.to_string(),
                    value,
                    implicit: true,
                },
            ),
        }
    }

    /// Remove `key`; returns its old value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self.parts.iter().position(|p| p.key == key)?;
        Some(self.parts.remove(pos).value)
    }

    /// `(key, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parts
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
    }

    /// Number of parts.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether there are no parts.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// A boolean property (`1|0|on|off|yes|no|true|false`); `None` when absent.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                parse_bool(v).ok_or_else(|| Error::value(key, format!("'{v}' is not a boolean")))
            })
            .transpose()
    }

    /// An unsigned integer property; `None` when absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| Error::value(key, format!("'{v}' is not a non-negative integer")))
            })
            .transpose()
    }
}

impl fmt::Display for PropertyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if p.implicit {
                // An unkeyed value with '=' would read back as key=value: quote it.
                if p.value.contains('=') && !p.value.contains([',', '"', '\\']) {
                    write!(f, "\"{}\"", p.value)?;
                    continue;
                }
            } else {
                write!(f, "{}=", p.key)?;
            }
            f.write_str(&quote(&p.value))?;
        }
        Ok(())
    }
}

/// Proxmox booleans.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Split at commas outside double quotes.
fn split_parts(text: &str) -> std::result::Result<Vec<String>, &'static str> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_quote = !in_quote;
                cur.push(c);
            }
            '\\' if in_quote => {
                cur.push(c);
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err("dangling backslash"),
                }
            }
            ',' if !in_quote => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if in_quote {
        return Err("unterminated quote");
    }
    parts.push(cur);
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty part (stray comma)");
    }
    Ok(parts)
}

fn find_unquoted_eq(part: &str) -> Option<usize> {
    let quote = part.find('"').unwrap_or(part.len());
    part[..quote].find('=')
}

fn unquote(v: &str) -> std::result::Result<String, &'static str> {
    if !v.starts_with('"') {
        if v.contains('"') {
            return Err("quote in the middle of a value");
        }
        return Ok(v.to_string());
    }
    if v.len() < 2 || !v.ends_with('"') {
        return Err("unterminated quote");
    }
    let inner = &v[1..v.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("dangling backslash")?),
            '"' => return Err("text after closing quote"),
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn quote(v: &str) -> String {
    if !v.contains([',', '"', '\\']) {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_string_round_trips() {
        let text = "local:100/vm-100-disk-0.qcow2,cache=none,size=32G,backup=0";
        let p = PropertyString::parse(text, Some("file")).unwrap();
        assert_eq!(p.get("file"), Some("local:100/vm-100-disk-0.qcow2"));
        assert_eq!(p.get("size"), Some("32G"));
        assert_eq!(p.get_bool("backup").unwrap(), Some(false));
        assert_eq!(p.to_string(), text);
    }

    #[test]
    fn explicit_default_key_keeps_its_form() {
        let text = "file=local:100/vm-100-disk-0.raw,size=1G";
        let p = PropertyString::parse(text, Some("file")).unwrap();
        assert_eq!(p.get("file"), Some("local:100/vm-100-disk-0.raw"));
        assert_eq!(p.to_string(), text);
    }

    #[test]
    fn quoted_values_with_commas() {
        let text = r#"enabled=1,note="a,b \"c\"""#;
        let p = PropertyString::parse(text, None).unwrap();
        assert_eq!(p.get("note"), Some(r#"a,b "c""#));
        assert_eq!(p.to_string(), text);
    }

    #[test]
    fn edits_keep_order() {
        let mut p = PropertyString::parse("a:1,size=4G,format=raw", Some("file")).unwrap();
        p.set_default("file", "b:2");
        p.remove("format");
        p.set("backup", "0");
        assert_eq!(p.to_string(), "b:2,size=4G,backup=0");
    }

    #[test]
    fn malformed_strings_are_errors() {
        for bad in [
            "",
            "a,,b",
            "a,",
            "x=1,x=2",
            "size=",
            "=3",
            r#"k="open"#,
            r#"k=a"b"#,
        ] {
            let e = PropertyString::parse(bad, Some("file"));
            assert!(e.is_err(), "{bad:?} parsed: {e:?}");
        }
        // Two unkeyed parts: the second has no key to go to.
        let e = PropertyString::parse("a,b", Some("file")).unwrap_err();
        assert!(e.to_string().contains("duplicate key 'file'"), "{e}");
        let e = PropertyString::parse("1", None).unwrap_err();
        assert!(e.to_string().contains("not key=value"), "{e}");
    }

    #[test]
    fn booleans() {
        let p = PropertyString::parse("enabled=on,x=maybe", None).unwrap();
        assert_eq!(p.get_bool("enabled").unwrap(), Some(true));
        assert!(p.get_bool("x").is_err());
        assert_eq!(p.get_bool("missing").unwrap(), None);
    }
}
