//! The retention planner: Proxmox VE's `prune_mark_backup_group`, pure.
//!
//! Input: one backup group (same guest type and VMID), each backup with its local start time
//! (from its name) or none for a renamed one, and whether it is protected. Output: a mark per
//! backup, in input order, with the rule that kept it.
//!
//! The algorithm, exactly as Proxmox: protected and renamed backups are marked first and
//! count for no rule. The rest, newest first, go through keep-last (the exact time), keep-hourly,
//! keep-daily, keep-weekly (ISO week and ISO week-year), keep-monthly, keep-yearly. A rule with
//! `N > 0` first collects the periods already holding a kept backup; then, walking unmarked
//! backups newest to oldest, it skips covered periods, keeps the first backup of a new period
//! (stopping once it has `N` periods) and marks later backups of a period it kept `remove`.
//! What is still unmarked at the end is removed. `keep-all`, or no rule above 0, keeps all.
//!
//! Periods come from the wall-clock fields in the name (which is local time), so the planner
//! needs no time zone.

use chrono::{Datelike, NaiveDateTime, Timelike};
use serde::Serialize;
use vmdump_config::KeepOptions;

/// What happens to a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Kept by a rule.
    Keep,
    /// Not covered by any rule: deleted when the plan is applied.
    Remove,
    /// Protected: never deleted, counts for no rule.
    Protected,
    /// Non-standard name: never deleted, counts for no rule.
    Renamed,
}

impl Mark {
    /// `keep`, `remove`, `protected`, `renamed` (Proxmox's words).
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Keep => "keep",
            Mark::Remove => "remove",
            Mark::Protected => "protected",
            Mark::Renamed => "renamed",
        }
    }
}

/// The rule that kept a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Rule {
    /// `keep-last`.
    #[serde(rename = "keep-last")]
    Last,
    /// `keep-hourly`.
    #[serde(rename = "keep-hourly")]
    Hourly,
    /// `keep-daily`.
    #[serde(rename = "keep-daily")]
    Daily,
    /// `keep-weekly`.
    #[serde(rename = "keep-weekly")]
    Weekly,
    /// `keep-monthly`.
    #[serde(rename = "keep-monthly")]
    Monthly,
    /// `keep-yearly`.
    #[serde(rename = "keep-yearly")]
    Yearly,
    /// `keep-all` (or no rule set).
    #[serde(rename = "keep-all")]
    All,
}

impl Rule {
    /// The option name.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Last => "keep-last",
            Rule::Hourly => "keep-hourly",
            Rule::Daily => "keep-daily",
            Rule::Weekly => "keep-weekly",
            Rule::Monthly => "keep-monthly",
            Rule::Yearly => "keep-yearly",
            Rule::All => "keep-all",
        }
    }

    /// The period a time falls in, for this rule.
    fn period(self, t: &NaiveDateTime) -> (i32, u32, u32, u32, i64) {
        match self {
            // The exact time (seconds since an epoch of the wall clock).
            Rule::Last | Rule::All => (0, 0, 0, 0, t.and_utc().timestamp()),
            Rule::Hourly => (t.year(), t.month(), t.day(), t.hour(), 0),
            Rule::Daily => (t.year(), t.month(), t.day(), 0, 0),
            Rule::Weekly => {
                let w = t.iso_week();
                (w.year(), w.week(), 0, 0, 0)
            }
            Rule::Monthly => (t.year(), t.month(), 0, 0, 0),
            Rule::Yearly => (t.year(), 0, 0, 0, 0),
        }
    }
}

/// One backup as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Start time from the name (local wall clock); `None` for a renamed backup.
    pub time: Option<NaiveDateTime>,
    /// Whether a `.protected` marker exists.
    pub protected: bool,
}

/// The decision for one backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What happens.
    pub mark: Mark,
    /// The rule that kept it (only with [`Mark::Keep`]).
    pub rule: Option<Rule>,
}

/// Plans one backup group; the result is in input order.
pub fn plan(group: &[Candidate], keep: &KeepOptions) -> Vec<Decision> {
    let mut out: Vec<Option<Decision>> = group
        .iter()
        .map(|c| {
            if c.protected {
                Some(Decision {
                    mark: Mark::Protected,
                    rule: None,
                })
            } else if c.time.is_none() {
                Some(Decision {
                    mark: Mark::Renamed,
                    rule: None,
                })
            } else {
                None
            }
        })
        .collect();
    if keep.is_keep_all() {
        return out
            .into_iter()
            .map(|d| {
                d.unwrap_or(Decision {
                    mark: Mark::Keep,
                    rule: Some(Rule::All),
                })
            })
            .collect();
    }
    // Newest first; ties keep input order.
    let mut order: Vec<usize> = (0..group.len()).filter(|&i| out[i].is_none()).collect();
    order.sort_by(|&a, &b| group[b].time.cmp(&group[a].time).then(a.cmp(&b)));
    let rules = [
        (Rule::Last, keep.keep_last),
        (Rule::Hourly, keep.keep_hourly),
        (Rule::Daily, keep.keep_daily),
        (Rule::Weekly, keep.keep_weekly),
        (Rule::Monthly, keep.keep_monthly),
        (Rule::Yearly, keep.keep_yearly),
    ];
    for (rule, count) in rules {
        let count = count.unwrap_or(0);
        if count == 0 {
            continue;
        }
        let period =
            |i: usize| rule.period(&group[i].time.expect("only dated backups are planned"));
        let covered: std::collections::HashSet<_> = order
            .iter()
            .filter(|&&i| {
                matches!(
                    out[i],
                    Some(Decision {
                        mark: Mark::Keep,
                        ..
                    })
                )
            })
            .map(|&i| period(i))
            .collect();
        let mut newly = std::collections::HashSet::new();
        for &i in &order {
            if out[i].is_some() {
                continue;
            }
            let p = period(i);
            if covered.contains(&p) {
                continue;
            }
            if newly.contains(&p) {
                out[i] = Some(Decision {
                    mark: Mark::Remove,
                    rule: None,
                });
            } else {
                if newly.len() as u64 >= count {
                    break;
                }
                newly.insert(p);
                out[i] = Some(Decision {
                    mark: Mark::Keep,
                    rule: Some(rule),
                });
            }
        }
    }
    out.into_iter()
        .map(|d| {
            d.unwrap_or(Decision {
                mark: Mark::Remove,
                rule: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Option<NaiveDateTime> {
        Some(NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("valid"))
    }

    #[test]
    fn reports_the_rule_that_kept_each_backup() {
        let group = [
            Candidate {
                time: t("2025-01-05 02:00"),
                protected: false,
            },
            Candidate {
                time: t("2025-01-04 02:00"),
                protected: false,
            },
            Candidate {
                time: t("2025-01-04 01:00"),
                protected: false,
            },
            Candidate {
                time: t("2024-12-20 02:00"),
                protected: true,
            },
            Candidate {
                time: None,
                protected: false,
            },
        ];
        let keep = KeepOptions::parse("keep-last=1,keep-daily=5").expect("valid");
        let p = plan(&group, &keep);
        assert_eq!(
            p[0],
            Decision {
                mark: Mark::Keep,
                rule: Some(Rule::Last)
            }
        );
        assert_eq!(
            p[1],
            Decision {
                mark: Mark::Keep,
                rule: Some(Rule::Daily)
            }
        );
        assert_eq!(p[2].mark, Mark::Remove);
        assert_eq!(p[3].mark, Mark::Protected);
        assert_eq!(p[4].mark, Mark::Renamed);
        let all = plan(&group, &KeepOptions::keep_all());
        assert_eq!(
            all[2],
            Decision {
                mark: Mark::Keep,
                rule: Some(Rule::All)
            }
        );
        assert_eq!(all[3].mark, Mark::Protected);
    }

    #[test]
    fn weeks_are_iso_weeks_across_the_year_end() {
        // 2024-12-30 (Mon) and 2025-01-05 (Sun) are the same ISO week 2025-W01.
        let group = [
            Candidate {
                time: t("2025-01-05 10:00"),
                protected: false,
            },
            Candidate {
                time: t("2024-12-30 10:00"),
                protected: false,
            },
            Candidate {
                time: t("2024-12-29 10:00"),
                protected: false,
            },
        ];
        let keep = KeepOptions::parse("keep-weekly=2").expect("valid");
        let marks: Vec<_> = plan(&group, &keep).iter().map(|d| d.mark).collect();
        assert_eq!(marks, [Mark::Keep, Mark::Remove, Mark::Keep]);
    }
}
