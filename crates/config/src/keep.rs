//! Retention options: the `prune-backups` property string
//! (`keep-all=0|1,keep-last=N,keep-hourly=N,keep-daily=N,keep-weekly=N,keep-monthly=N,keep-yearly=N`).

use std::fmt;

use crate::error::{Error, Result};
use crate::propstring::PropertyString;

/// Parsed `prune-backups`. `None` fields were not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepOptions {
    /// `keep-all`.
    pub keep_all: Option<bool>,
    /// `keep-last`.
    pub keep_last: Option<u64>,
    /// `keep-hourly`.
    pub keep_hourly: Option<u64>,
    /// `keep-daily`.
    pub keep_daily: Option<u64>,
    /// `keep-weekly`.
    pub keep_weekly: Option<u64>,
    /// `keep-monthly`.
    pub keep_monthly: Option<u64>,
    /// `keep-yearly`.
    pub keep_yearly: Option<u64>,
}

impl KeepOptions {
    /// `keep-all=1`.
    pub fn keep_all() -> Self {
        KeepOptions {
            keep_all: Some(true),
            ..Default::default()
        }
    }

    /// Parse the property string. `keep-all=1` together with other rules is an error, as in
    /// Proxmox; unknown keys are errors.
    pub fn parse(text: &str) -> Result<Self> {
        let p = PropertyString::parse(text, None)?;
        let mut k = KeepOptions::default();
        for (key, _) in p.iter() {
            let slot = match key {
                "keep-all" => {
                    k.keep_all = p.get_bool(key)?;
                    continue;
                }
                "keep-last" => &mut k.keep_last,
                "keep-hourly" => &mut k.keep_hourly,
                "keep-daily" => &mut k.keep_daily,
                "keep-weekly" => &mut k.keep_weekly,
                "keep-monthly" => &mut k.keep_monthly,
                "keep-yearly" => &mut k.keep_yearly,
                other => {
                    return Err(Error::value(
                        "prune-backups",
                        format!("unknown option '{other}'"),
                    ))
                }
            };
            *slot = p.get_u64(key)?;
        }
        if k.keep_all == Some(true) && k.rules().iter().any(|(_, n)| *n > 0) {
            return Err(Error::value(
                "prune-backups",
                "keep-all=1 cannot be combined with other keep options",
            ));
        }
        Ok(k)
    }

    /// The numeric rules in Proxmox's fixed order, 0 for unset.
    pub fn rules(&self) -> [(&'static str, u64); 6] {
        [
            ("keep-last", self.keep_last.unwrap_or(0)),
            ("keep-hourly", self.keep_hourly.unwrap_or(0)),
            ("keep-daily", self.keep_daily.unwrap_or(0)),
            ("keep-weekly", self.keep_weekly.unwrap_or(0)),
            ("keep-monthly", self.keep_monthly.unwrap_or(0)),
            ("keep-yearly", self.keep_yearly.unwrap_or(0)),
        ]
    }

    /// Whether this keeps everything (`keep-all=1`, or no rule above 0).
    pub fn is_keep_all(&self) -> bool {
        self.keep_all == Some(true) || self.rules().iter().all(|(_, n)| *n == 0)
    }
}

impl fmt::Display for KeepOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(a) = self.keep_all {
            parts.push(format!("keep-all={}", u8::from(a)));
        }
        let opts = [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ];
        for (k, v) in opts {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let k = KeepOptions::parse("keep-last=3,keep-weekly=2").unwrap();
        assert_eq!(k.keep_last, Some(3));
        assert_eq!(k.keep_weekly, Some(2));
        assert!(!k.is_keep_all());
        assert_eq!(k.to_string(), "keep-last=3,keep-weekly=2");
        assert!(KeepOptions::parse("keep-all=1").unwrap().is_keep_all());
        assert!(KeepOptions::parse("keep-last=0").unwrap().is_keep_all());
        assert!(KeepOptions::parse("keep-all=1,keep-last=2").is_err());
        assert!(KeepOptions::parse("keep-forever=1").is_err());
        assert!(KeepOptions::parse("keep-last=-1").is_err());
    }
}
