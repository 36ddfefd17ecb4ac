//! API tokens: `<root>/tokens.cfg`, one line per token, `<name> <sha256 of the secret>
//! <rw|ro> <created>`, readable by root only (mode 0600, written atomically). The secret is
//! shown once, when the token is made; only its hash is kept.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The file name under the config root.
pub const TOKENS_FILE: &str = "tokens.cfg";

/// One token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its name (`[A-Za-z][A-Za-z0-9_.-]*`, at most 64 characters).
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// Read-only tokens list and read, never change.
    pub read_only: bool,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

impl Token {
    /// The task-log user of requests made with it: `<name>@token`.
    pub fn user(&self) -> String {
        format!("{}@token", self.name)
    }
}

/// Whether `name` is a valid token name.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The token store of a config root.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    /// The store at `<root dir>/tokens.cfg`.
    pub fn new(root_dir: &Path) -> Self {
        TokenStore {
            path: root_dir.join(TOKENS_FILE),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every token (none when the file does not exist).
    pub fn list(&self) -> Result<Vec<Token>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.path, e)),
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let bad = || Error::TokenFile {
                path: self.path.clone(),
                line: n + 1,
            };
            if f.len() != 4 || !valid_name(f[0]) || f[1].len() != 64 {
                return Err(bad());
            }
            out.push(Token {
                name: f[0].to_string(),
                hash: f[1].to_string(),
                read_only: match f[2] {
                    "ro" => true,
                    "rw" => false,
                    _ => return Err(bad()),
                },
                created: f[3].parse().map_err(|_| bad())?,
            });
        }
        Ok(out)
    }

    fn save(&self, tokens: &[Token]) -> Result<()> {
        let mut text = String::from("# vmdump API tokens: name sha256(secret) rw|ro created\n");
        for t in tokens {
            text.push_str(&format!(
                "{} {} {} {}\n",
                t.name,
                t.hash,
                if t.read_only { "ro" } else { "rw" },
                t.created
            ));
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        let tmp = self.path.with_extension("cfg.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io("rename", &tmp, e))
    }

    /// Makes a token and returns its secret (shown once; only the hash is stored).
    pub fn add(&self, name: &str, read_only: bool) -> Result<String> {
        if !valid_name(name) {
            return Err(Error::Invalid(format!(
                "invalid token name '{name}' (a letter, then letters, digits, '_', '.', '-'; \
                 at most 64)"
            )));
        }
        let mut tokens = self.list()?;
        if tokens.iter().any(|t| t.name == name) {
            return Err(Error::Invalid(format!("token '{name}' already exists")));
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = format!("vmdump_{}", hex::encode(raw));
        tokens.push(Token {
            name: name.to_string(),
            hash: hash(&secret),
            read_only,
            created: chrono::Utc::now().timestamp(),
        });
        self.save(&tokens)?;
        Ok(secret)
    }

    /// Removes a token; false if there was none of that name.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let mut tokens = self.list()?;
        let before = tokens.len();
        tokens.retain(|t| t.name != name);
        if tokens.len() == before {
            return Ok(false);
        }
        self.save(&tokens)?;
        Ok(true)
    }

    /// The token whose secret this is.
    pub fn verify(&self, secret: &str) -> Result<Option<Token>> {
        let h = hash(secret);
        Ok(self.list()?.into_iter().find(|t| t.hash == h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_stored_hashed_root_only_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let rw = store.add("admin", false).unwrap();
        let ro = store.add("viewer", true).unwrap();
        assert!(store.add("admin", true).is_err(), "names are unique");
        assert!(store.add("../x", true).is_err());
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains(&rw) && !text.contains(&ro), "{text}");
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!store.verify(&rw).unwrap().unwrap().read_only);
        assert!(store.verify(&ro).unwrap().unwrap().read_only);
        assert!(store.verify("vmdump_00").unwrap().is_none());
        assert!(store.remove("viewer").unwrap());
        assert!(store.verify(&ro).unwrap().is_none());
        assert!(!store.remove("viewer").unwrap());
    }
}
