//! The retention planner against Proxmox's own expectations (the cases of pve-storage's
//! `test/prune_backups_test.pm`, which the PBS prune simulator reproduces), and its invariants
//! as property tests.

use chrono::NaiveDateTime;
use proptest::prelude::*;
use vmdump_config::KeepOptions;
use vmdump_store::retention::{plan, Candidate, Mark, Rule};

fn at(s: &str) -> Candidate {
    Candidate {
        time: Some(NaiveDateTime::parse_from_str(s, "%Y_%m_%d-%H_%M_%S").expect("valid")),
        protected: false,
    }
}

/// The VM group of the pve-storage test (the container backup is its own group and is kept
/// by every policy that keeps anything).
fn default_group() -> Vec<Candidate> {
    [
        "2018_05_26-11_18_21",
        "2019_12_31-11_18_21",
        "2019_12_31-11_19_21",
        "2020_01_01-11_18_21",
        "2020_01_01-12_18_21",
    ]
    .into_iter()
    .map(at)
    .collect()
}

fn marks(group: &[Candidate], keep: &str) -> Vec<&'static str> {
    let keep = if keep.is_empty() {
        KeepOptions::default()
    } else {
        KeepOptions::parse(keep).expect("valid keep options")
    };
    plan(group, &keep).iter().map(|d| d.mark.as_str()).collect()
}

#[test]
fn proxmox_cases() {
    let g = default_group();
    let cases: [(&str, [&str; 5]); 14] = [
        ("keep-last=3", ["remove", "remove", "keep", "keep", "keep"]),
        (
            "keep-weekly=2",
            ["keep", "remove", "remove", "remove", "keep"],
        ),
        (
            "keep-hourly=0,keep-daily=1,keep-weekly=1,keep-monthly=1",
            ["keep", "remove", "keep", "remove", "keep"],
        ),
        (
            "keep-hourly=4,keep-daily=0",
            ["keep", "remove", "keep", "keep", "keep"],
        ),
        (
            "keep-hourly=0,keep-daily=0,keep-weekly=0,keep-monthly=0,keep-yearly=2",
            ["remove", "remove", "keep", "remove", "keep"],
        ),
        (
            "keep-last=2,keep-hourly=2",
            ["keep", "remove", "keep", "keep", "keep"],
        ),
        (
            "keep-last=1,keep-monthly=2",
            ["keep", "remove", "keep", "remove", "keep"],
        ),
        (
            "keep-monthly=3",
            ["keep", "remove", "keep", "remove", "keep"],
        ),
        (
            "keep-last=1,keep-daily=1,keep-weekly=1",
            ["keep", "remove", "keep", "remove", "keep"],
        ),
        (
            "keep-daily=2",
            ["remove", "remove", "keep", "remove", "keep"],
        ),
        (
            "keep-weekly=1,keep-monthly=1",
            ["keep", "remove", "remove", "remove", "keep"],
        ),
        (
            "keep-weekly=1,keep-yearly=1",
            ["keep", "remove", "remove", "remove", "keep"],
        ),
        (
            "keep-last=0,keep-daily=0",
            ["keep", "keep", "keep", "keep", "keep"],
        ),
        ("", ["keep", "keep", "keep", "keep", "keep"]),
    ];
    for (keep, expected) in cases {
        assert_eq!(marks(&g, keep), expected, "{keep}");
    }
    // A lone container backup of the same guest is its own group.
    assert_eq!(marks(&[at("2020_01_01-12_18_21")], "keep-last=1"), ["keep"]);
}

#[test]
fn proxmox_year_boundary_and_week_boundary_cases() {
    // keep-yearly=1 with backups 100 years apart.
    let g = [at("1970_01_01-00_01_23"), at("2070_01_01-00_01_00")];
    assert_eq!(marks(&g, "keep-yearly=1"), ["remove", "keep"]);
    // The month is already covered by the backup keep-weekly kept.
    let g = [
        at("2019_12_25-12_18_21"),
        at("2019_12_31-12_18_21"),
        at("2020_01_01-12_18_21"),
    ];
    assert_eq!(
        marks(&g, "keep-daily=1,keep-weekly=1,keep-monthly=1"),
        ["keep", "remove", "keep"]
    );
    // Thursday and Friday share a week; the next Monday starts a new one.
    let g = [
        at("2020_12_03-12_18_21"),
        at("2020_12_04-12_18_21"),
        at("2020_12_07-12_18_21"),
    ];
    assert_eq!(
        marks(&g, "keep-daily=1,keep-weekly=1"),
        ["remove", "keep", "keep"]
    );
}

#[test]
fn protected_and_renamed_count_for_no_rule() {
    let mut g = default_group();
    g[4].protected = true;
    g.push(Candidate {
        time: None,
        protected: false,
    });
    // keep-last=3 keeps the three newest unprotected ones.
    assert_eq!(
        marks(&g, "keep-last=3"),
        ["remove", "keep", "keep", "keep", "protected", "renamed"]
    );
}

fn keep_strategy() -> impl Strategy<Value = KeepOptions> {
    prop::collection::vec(prop::option::of(0u64..4), 6).prop_map(|v| KeepOptions {
        keep_all: None,
        keep_last: v[0],
        keep_hourly: v[1],
        keep_daily: v[2],
        keep_weekly: v[3],
        keep_monthly: v[4],
        keep_yearly: v[5],
    })
}

fn group_strategy() -> impl Strategy<Value = Vec<Candidate>> {
    // Times within about three years, minutes apart to years apart; some protected, some
    // renamed.
    prop::collection::vec((0i64..100_000_000, any::<bool>(), 0u8..10), 0..40).prop_map(|v| {
        let base = NaiveDateTime::parse_from_str("2023_01_01-00_00_00", "%Y_%m_%d-%H_%M_%S")
            .expect("valid");
        v.into_iter()
            .map(|(secs, protected, r)| Candidate {
                time: (r != 0).then(|| base + chrono::Duration::seconds(secs)),
                protected: protected && r % 3 == 0,
            })
            .collect()
    })
}

fn kept(group: &[Candidate], keep: &KeepOptions) -> Vec<Candidate> {
    group
        .iter()
        .zip(plan(group, keep))
        .filter(|(_, d)| d.mark != Mark::Remove)
        .map(|(c, _)| *c)
        .collect()
}

proptest! {
    #[test]
    fn protected_never_removed_and_every_backup_decided(
        group in group_strategy(), keep in keep_strategy()
    ) {
        let p = plan(&group, &keep);
        // kept ∪ removed = input: one decision per backup, nothing invented.
        prop_assert_eq!(p.len(), group.len());
        for (c, d) in group.iter().zip(&p) {
            if c.protected {
                prop_assert_eq!(d.mark, Mark::Protected);
            } else if c.time.is_none() {
                prop_assert_eq!(d.mark, Mark::Renamed);
            } else {
                prop_assert!(matches!(d.mark, Mark::Keep | Mark::Remove));
            }
            prop_assert_eq!(d.rule.is_some(), d.mark == Mark::Keep);
        }
    }

    #[test]
    fn planning_what_a_plan_kept_keeps_everything(
        group in group_strategy(), keep in keep_strategy()
    ) {
        let once = kept(&group, &keep);
        let p = plan(&once, &keep);
        prop_assert!(p.iter().all(|d| d.mark != Mark::Remove));
    }

    #[test]
    fn fewer_rules_never_keep_more(
        group in group_strategy(), keep in keep_strategy(), drop in 0usize..6
    ) {
        let mut fewer = keep;
        match drop {
            0 => fewer.keep_last = None,
            1 => fewer.keep_hourly = None,
            2 => fewer.keep_daily = None,
            3 => fewer.keep_weekly = None,
            4 => fewer.keep_monthly = None,
            _ => fewer.keep_yearly = None,
        }
        // Dropping the last rule turns the policy into keep-all; that keeps more by design.
        prop_assume!(!fewer.is_keep_all());
        prop_assert!(kept(&group, &fewer).len() <= kept(&group, &keep).len());
    }
}

#[test]
fn rule_names_are_proxmox_option_names_in_text_and_json() {
    let rules = [
        Rule::Last,
        Rule::Hourly,
        Rule::Daily,
        Rule::Weekly,
        Rule::Monthly,
        Rule::Yearly,
        Rule::All,
    ];
    let names = rules.map(Rule::as_str);
    assert_eq!(
        names.join(" "),
        "keep-last keep-hourly keep-daily keep-weekly keep-monthly keep-yearly keep-all"
    );
    for r in rules {
        assert_eq!(serde_json::to_value(r).expect("json"), r.as_str());
    }
}
