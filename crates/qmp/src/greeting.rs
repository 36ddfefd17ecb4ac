//! The QMP greeting QEMU sends on connect.

use serde_json::Value;

/// QEMU's version triple from the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major version (7 for 7.2.22).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// `{"QMP": {"version": {...}, "capabilities": [...]}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version.
    pub version: Version,
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7+deb12u18`.
    pub package: String,
    /// Capabilities offered (e.g. `oob`); the client enables none of them.
    pub capabilities: Vec<String>,
}

impl Greeting {
    /// Parses the greeting object; the error names what is missing.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let qmp = value
            .get("QMP")
            .ok_or_else(|| "first message is not a QMP greeting".to_string())?;
        let num = |key: &str| {
            qmp.pointer(&format!("/version/qemu/{key}"))
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("greeting lacks version.qemu.{key}"))
        };
        let version = Version {
            major: num("major")?,
            minor: num("minor")?,
            micro: num("micro")?,
        };
        let package = qmp
            .pointer("/version/package")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_string();
        let capabilities = qmp
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|caps| {
                caps.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            version,
            package,
            capabilities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_7_2_greeting() {
        let v: Value = serde_json::from_str(
            r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#,
        )
        .expect("json");
        let g = Greeting::parse(&v).expect("greeting");
        assert_eq!(g.version.to_string(), "7.2.22");
        assert_eq!(g.capabilities, vec!["oob".to_string()]);
        assert!(g.package.starts_with("Debian"));
        assert!(Greeting::parse(&serde_json::json!({"return": {}})).is_err());
    }
}
