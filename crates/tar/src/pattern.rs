//! vzdump's exclude patterns with GNU tar's matching rules: shell globs where `*` also
//! matches `/`; a pattern starting with `/` is anchored at the container root (tar:
//! `--anchored --exclude=./<p>`), any other matches at any directory level
//! (`--no-anchored`). A pattern ending in `/` never matches in tar (vzdump warns).

/// vzdump's standard excludes (`stdexcludes`).
pub const STD_EXCLUDES: [&str; 3] = ["/tmp/?*", "/var/tmp/?*", "/var/run/?*.pid"];

/// Shell-style match of `name` against `pat` (`*`, `?`, `[...]`, `[!...]`, `\` escapes);
/// `*` and `?` match `/` too (GNU tar's default for excludes).
pub fn glob_match(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((ok, next)) = class(&pat[p..], name[n]) {
                        if ok {
                            p += next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pat.len() => {
                    if pat[p + 1] == name[n] {
                        p += 2;
                        n += 1;
                        continue;
                    }
                }
                c => {
                    if c == name[n] {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a bracket expression at the start of `pat`; returns whether it
/// matched and the expression's length, or `None` if `pat` is not a complete expression.
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pat.len() {
        let a = pat[i];
        if a == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' {
            if a <= c && c <= pat[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if a == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// A set of exclude patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excludes {
    anchored: Vec<Vec<u8>>,
    unanchored: Vec<Vec<u8>>,
}

impl Excludes {
    /// vzdump's `exclude-path` values (plus [`STD_EXCLUDES`] if `stdexcludes`); returns the
    /// warnings vzdump logs for patterns tar cannot match.
    pub fn vzdump(patterns: &[String], stdexcludes: bool) -> (Self, Vec<String>) {
        let mut ex = Excludes::default();
        let mut warnings = Vec::new();
        let std = STD_EXCLUDES.iter().map(|s| s.to_string());
        let all: Vec<String> = patterns
            .iter()
            .cloned()
            .chain(std.filter(|_| stdexcludes))
            .collect();
        for p in all {
            if p.is_empty() {
                continue;
            }
            if p.ends_with('/') {
                warnings.push(format!(
                    "tar does not match exclusion with a trailing slash '{p}'"
                ));
                continue;
            }
            ex.add(&p);
        }
        (ex, warnings)
    }

    /// Adds one pattern with vzdump's anchoring rule.
    pub fn add(&mut self, pattern: &str) {
        if let Some(rest) = pattern.strip_prefix('/') {
            self.anchored.push(format!("./{rest}").into_bytes());
        } else {
            self.unanchored.push(pattern.as_bytes().to_vec());
        }
    }

    /// Adds a pattern that matches at any level (`--no-anchored`), e.g. `lost+found`.
    pub fn add_unanchored(&mut self, pattern: &str) {
        self.unanchored.push(pattern.as_bytes().to_vec());
    }

    /// Whether `name` (a member name such as `./var/tmp/x`) is excluded.
    pub fn matches(&self, name: &[u8]) -> bool {
        let name = name.strip_suffix(b"/").unwrap_or(name);
        if self.anchored.iter().any(|p| glob_match(p, name)) {
            return true;
        }
        if self.unanchored.is_empty() {
            return false;
        }
        let mut starts = vec![0];
        starts.extend(
            name.iter()
                .enumerate()
                .filter(|(_, &c)| c == b'/')
                .map(|(i, _)| i + 1),
        );
        starts
            .iter()
            .any(|&s| self.unanchored.iter().any(|p| glob_match(p, &name[s..])))
    }

    /// Whether no pattern is set.
    pub fn is_empty(&self) -> bool {
        self.anchored.is_empty() && self.unanchored.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"./tmp/?*", b"./tmp/a"));
        assert!(glob_match(b"./tmp/?*", b"./tmp/a/b"));
        assert!(!glob_match(b"./tmp/?*", b"./tmp"));
        assert!(glob_match(b"./var/run/?*.pid", b"./var/run/foo.pid"));
        assert!(!glob_match(b"./var/run/?*.pid", b"./var/run/keep.txt"));
        assert!(glob_match(b"*.log", b"a/b.log"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[!a-c]x", b"bx"));
        assert!(glob_match(b"a\\*", b"a*"));
        assert!(!glob_match(b"a\\*", b"ab"));
    }

    #[test]
    fn vzdump_anchoring() {
        let (ex, warn) = Excludes::vzdump(
            &["/data/skip".into(), "*.cache".into(), "cachedir/".into()],
            true,
        );
        assert_eq!(warn.len(), 1);
        assert!(ex.matches(b"./tmp/junk"));
        assert!(!ex.matches(b"./tmp/"));
        assert!(ex.matches(b"./var/tmp/vt"));
        assert!(ex.matches(b"./data/skip"));
        assert!(!ex.matches(b"./x/data/skip"), "anchored at the root only");
        assert!(ex.matches(b"./x/y/z.cache"), "unanchored at any level");
        assert!(ex.matches(b"./z.cache"));
        assert!(!ex.matches(b"./cachedir"));
        let (none, _) = Excludes::vzdump(&[], false);
        assert!(!none.matches(b"./tmp/junk"));
    }
}
