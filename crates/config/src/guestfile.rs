//! The line model shared by qemu-server and lxc configs.
//!
//! A guest config is a main section followed by optional `[name]` sections (snapshots),
//! `[PENDING]` and `[special:<what>]`. Every line keeps its exact text so the file writes back
//! byte for byte; only lines that were edited are re-rendered (`key: value`).

use std::collections::HashMap;
use std::fmt;

use crate::error::{Error, Result};

/// What a section is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionKind {
    /// The current configuration (before the first `[...]` header).
    Main,
    /// A snapshot `[name]`.
    Snapshot(String),
    /// `[PENDING]`: changes not yet applied to the running guest.
    Pending,
    /// `[special:<name>]`, e.g. `[special:cloudinit]`, `[special:fleecing]`.
    Special(String),
}

/// One line, its exact text and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// The text without the line terminator (a `\r` stays part of the text).
    pub raw: String,
    /// Whether a `\n` followed.
    pub eol: bool,
    /// 1-based line number in the source (0 for lines added by edits).
    pub no: usize,
    pub kind: LineKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineKind {
    Blank,
    /// `#...`; the text after `#`.
    Comment(String),
    Entry {
        key: String,
        value: String,
    },
}

/// A section: an optional header line and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub kind: SectionKind,
    pub header: Option<Line>,
    pub lines: Vec<Line>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Line> {
        self.lines
            .iter()
            .find(|l| matches!(&l.kind, LineKind::Entry { key: k, .. } if k == key))
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(|l| match &l.kind {
            LineKind::Entry { value, .. } => value.as_str(),
            _ => unreachable!("get only returns entries"),
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, usize)> {
        self.lines.iter().filter_map(|l| match &l.kind {
            LineKind::Entry { key, value } => Some((key.as_str(), value.as_str(), l.no)),
            _ => None,
        })
    }

    /// Replace or add `key: value`. A new line goes after the last entry of the section.
    pub fn set(&mut self, key: &str, value: &str) {
        let raw = format!("{key}: {value}");
        let kind = LineKind::Entry {
            key: key.to_string(),
            value: value.to_string(),
        };
        if let Some(line) = self
            .lines
            .iter_mut()
            .find(|l| matches!(&l.kind, LineKind::Entry { key: k, .. } if k == key))
        {
            if line.raw.ends_with('\r') {
                line.raw = format!("{raw}\r");
            } else {
                line.raw = raw;
            }
            line.kind = kind;
            return;
        }
        let pos = self
            .lines
            .iter()
            .rposition(|l| !matches!(l.kind, LineKind::Blank))
            .map_or(0, |p| p + 1);
        if pos > 0 && !self.lines[pos - 1].eol {
            self.lines[pos - 1].eol = true;
        }
        self.lines.insert(
            pos,
            Line {
                raw,
                eol: true,
                no: 0,
                kind,
            },
        );
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self
            .lines
            .iter()
            .position(|l| matches!(&l.kind, LineKind::Entry { key: k, .. } if k == key))?;
        match self.lines.remove(pos).kind {
            LineKind::Entry { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// A whole guest config file as sections of lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestFile {
    pub source: String,
    pub sections: Vec<Section>,
}

/// Whether `key` is a valid config key: a lowercase letter, then letters, digits, `_`, `-`, `.`
/// (lxc keys such as `lxc.cgroup2.devices.allow` have dots).
fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c))
}

fn parse_header(text: &str) -> Option<SectionKind> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    if inner == "PENDING" {
        return Some(SectionKind::Pending);
    }
    if let Some(name) = inner.strip_prefix("special:") {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
        return ok.then(|| SectionKind::Special(name.to_string()));
    }
    let mut chars = inner.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    ok.then(|| SectionKind::Snapshot(inner.to_string()))
}

impl GuestFile {
    /// Parse `text`; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut sections = vec![Section {
            kind: SectionKind::Main,
            header: None,
            lines: Vec::new(),
        }];
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut snapshots: HashMap<String, usize> = HashMap::new();
        let mut rest = text;
        let mut no = 0;
        while !rest.is_empty() {
            no += 1;
            let (raw, eol, next) = match rest.find('\n') {
                Some(p) => (&rest[..p], true, &rest[p + 1..]),
                None => (rest, false, ""),
            };
            rest = next;
            let trimmed = raw.trim();
            let mut line = Line {
                raw: raw.to_string(),
                eol,
                no,
                kind: LineKind::Blank,
            };
            if trimmed.is_empty() {
            } else if let Some(c) = trimmed.strip_prefix('#') {
                line.kind = LineKind::Comment(c.to_string());
            } else if trimmed.starts_with('[') {
                let kind = parse_header(trimmed).ok_or_else(|| {
                    Error::parse(source, no, format!("malformed section header '{trimmed}'"))
                })?;
                let name = match &kind {
                    SectionKind::Snapshot(n) => format!("[{n}]"),
                    SectionKind::Pending => "[PENDING]".into(),
                    SectionKind::Special(n) => format!("[special:{n}]"),
                    SectionKind::Main => unreachable!("headers are never main"),
                };
                if let Some(first) = snapshots.insert(name.clone(), no) {
                    return Err(Error::parse(
                        source,
                        no,
                        format!("duplicate section {name} (first at line {first})"),
                    ));
                }
                seen.clear();
                sections.push(Section {
                    kind,
                    header: Some(line),
                    lines: Vec::new(),
                });
                continue;
            } else {
                let Some((key, value)) = trimmed.split_once(':') else {
                    return Err(Error::parse(
                        source,
                        no,
                        format!("expected 'key: value', found '{trimmed}'"),
                    ));
                };
                let (key, value) = (key.trim_end(), value.trim());
                if !valid_key(key) {
                    return Err(Error::parse(source, no, format!("invalid key '{key}'")));
                }
                if value.is_empty() {
                    return Err(Error::parse(source, no, format!("empty value for '{key}'")));
                }
                if let Some(first) = seen.insert(key.to_string(), no) {
                    return Err(Error::parse(
                        source,
                        no,
                        format!("duplicate key '{key}' (first at line {first})"),
                    ));
                }
                line.kind = LineKind::Entry {
                    key: key.to_string(),
                    value: value.to_string(),
                };
            }
            sections
                .last_mut()
                .expect("there is always a main section")
                .lines
                .push(line);
        }
        Ok(GuestFile {
            source: source.to_string(),
            sections,
        })
    }

    pub fn main(&self) -> &Section {
        &self.sections[0]
    }

    pub fn main_mut(&mut self) -> &mut Section {
        &mut self.sections[0]
    }

    /// The description: `#` lines of the main section, percent-decoded, joined by `\n`.
    pub fn description(&self) -> String {
        let mut out = Vec::new();
        for l in &self.main().lines {
            if let LineKind::Comment(c) = &l.kind {
                if c.starts_with("qmdump#") || c.starts_with("vzdump#") {
                    continue;
                }
                out.push(percent_decode(c));
            }
        }
        out.join("\n")
    }

    /// The `[special:<name>]` section, if there is one.
    pub fn special(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| matches!(&s.kind, SectionKind::Special(n) if n == name))
    }

    /// The `[special:<name>]` section, added at the end (after a blank line) when missing.
    pub fn special_mut(&mut self, name: &str) -> &mut Section {
        let pos = self
            .sections
            .iter()
            .position(|s| matches!(&s.kind, SectionKind::Special(n) if n == name));
        let pos = match pos {
            Some(p) => p,
            None => {
                let last = self
                    .sections
                    .last_mut()
                    .expect("there is always a main section");
                if let Some(l) = last.lines.last_mut().or(last.header.as_mut()) {
                    l.eol = true;
                }
                let blank = |raw: &str| Line {
                    raw: raw.to_string(),
                    eol: true,
                    no: 0,
                    kind: LineKind::Blank,
                };
                if last
                    .lines
                    .last()
                    .is_some_and(|l| !matches!(l.kind, LineKind::Blank))
                {
                    last.lines.push(blank(""));
                }
                self.sections.push(Section {
                    kind: SectionKind::Special(name.to_string()),
                    header: Some(blank(&format!("[special:{name}]"))),
                    lines: Vec::new(),
                });
                self.sections.len() - 1
            }
        };
        &mut self.sections[pos]
    }

    /// Removes the `[special:<name>]` section and the blank lines before it; whether it
    /// existed.
    pub fn remove_special(&mut self, name: &str) -> bool {
        let Some(pos) = self
            .sections
            .iter()
            .position(|s| matches!(&s.kind, SectionKind::Special(n) if n == name))
        else {
            return false;
        };
        self.sections.remove(pos);
        let prev = &mut self.sections[pos - 1];
        while prev
            .lines
            .last()
            .is_some_and(|l| matches!(l.kind, LineKind::Blank) && l.raw.trim().is_empty())
        {
            prev.lines.pop();
        }
        true
    }

    /// Error anchored at the line of `key` in the main section.
    pub fn err_at(&self, key: &str, e: Error) -> Error {
        let no = self.main().get(key).map_or(0, |l| l.no);
        e.at(&self.source, no)
    }
}

impl fmt::Display for GuestFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.sections {
            for l in s.header.iter().chain(s.lines.iter()) {
                f.write_str(&l.raw)?;
                if l.eol {
                    f.write_str("\n")?;
                }
            }
        }
        Ok(())
    }
}

/// Decode `%XX` escapes (Proxmox encodes description lines that way); invalid escapes stay.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%"), "a b%");
        assert_eq!(percent_decode("100%zz"), "100%zz");
        assert_eq!(percent_decode("x%41"), "xA");
    }

    #[test]
    fn missing_trailing_newline_round_trips() {
        let text = "memory: 512\ncores: 2";
        let f = GuestFile::parse(text, "t").unwrap();
        assert_eq!(f.to_string(), text);
    }

    #[test]
    fn set_appends_after_last_entry() {
        let text = "memory: 512\n\n[snap]\ncores: 1\n";
        let mut f = GuestFile::parse(text, "t").unwrap();
        f.main_mut().set("cores", "4");
        assert_eq!(f.to_string(), "memory: 512\ncores: 4\n\n[snap]\ncores: 1\n");
        let text = "memory: 512";
        let mut f = GuestFile::parse(text, "t").unwrap();
        f.main_mut().set("cores", "4");
        assert_eq!(f.to_string(), "memory: 512\ncores: 4\n");
    }
}
