//! Parsing calendar events and computing the next matching time.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike,
};

/// A calendar event that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a calendar event.
    #[error("invalid calendar event '{input}': {msg}")]
    Parse {
        /// The whole event text.
        input: String,
        /// What is wrong.
        msg: String,
    },
}

/// How far ahead [`CalendarEvent::next_after`] looks before giving up (an event such as
/// `2015-10-21` or `*-02-30` never matches again).
const HORIZON_YEARS: i32 = 400;

/// One item of a field list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// `N`.
    Single(u32),
    /// `a..b`.
    Range(u32, u32),
    /// `start[..end]/step` (`*/step` starts at the field's minimum).
    Repeat { start: u32, end: u32, step: u32 },
}

impl Item {
    fn matches(self, v: u32) -> bool {
        match self {
            Item::Single(n) => v == n,
            Item::Range(a, b) => (a..=b).contains(&v),
            Item::Repeat { start, end, step } => v >= start && v <= end && (v - start) % step == 0,
        }
    }
}

/// A field: `None` is `*` (anything).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Field(Option<Vec<Item>>);

impl Field {
    /// systemd's form: values zero-padded, `start/step` kept when it runs to the maximum,
    /// other repetitions spelled out.
    fn to_systemd(&self, max: u32) -> String {
        let Some(items) = &self.0 else {
            return "*".into();
        };
        let parts: Vec<String> = items
            .iter()
            .map(|i| match *i {
                Item::Single(n) => format!("{n:02}"),
                Item::Range(a, b) => format!("{a:02}..{b:02}"),
                Item::Repeat { start, end, step } if end == max => format!("{start:02}/{step}"),
                Item::Repeat { start, end, step } => (start..=end)
                    .step_by(step as usize)
                    .map(|n| format!("{n:02}"))
                    .collect::<Vec<_>>()
                    .join(","),
            })
            .collect();
        parts.join(",")
    }

    fn exactly(v: u32) -> Self {
        Field(Some(vec![Item::Single(v)]))
    }

    fn matches(&self, v: u32) -> bool {
        self.0
            .as_ref()
            .is_none_or(|items| items.iter().any(|i| i.matches(v)))
    }

    /// Parses `*`, `N`, `a..b`, `N/step`, `a..b/step`, `*/step`, comma-separated, with values
    /// in `min..=max`.
    fn parse(text: &str, what: &str, min: u32, max: u32) -> Result<Self, String> {
        if text == "*" {
            return Ok(Field(None));
        }
        let num = |s: &str| -> Result<u32, String> {
            let n: u32 = s
                .parse()
                .map_err(|_| format!("'{s}' is not a number ({what})"))?;
            if n < min || n > max {
                return Err(format!("{what} {n} is not in {min}..{max}"));
            }
            Ok(n)
        };
        let range = |s: &str| -> Result<(u32, u32), String> {
            if s == "*" {
                return Ok((min, max));
            }
            match s.split_once("..") {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("{what} range {a}..{b} is empty"));
                    }
                    Ok((a, b))
                }
                None => Ok((num(s)?, max)),
            }
        };
        let mut items = Vec::new();
        for part in text.split(',') {
            if part.is_empty() {
                return Err(format!("empty {what} in '{text}'"));
            }
            let item = match part.split_once('/') {
                Some((base, step)) => {
                    let (start, end) = range(base)?;
                    let step: u32 = step
                        .parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| format!("'{step}' is not a positive step ({what})"))?;
                    Item::Repeat { start, end, step }
                }
                None if part.contains("..") => {
                    let (a, b) = range(part)?;
                    Item::Range(a, b)
                }
                None if part == "*" => return Ok(Field(None)),
                None => Item::Single(num(part)?),
            };
            items.push(item);
        }
        Ok(Field(Some(items)))
    }
}

/// A parsed calendar event; see the crate docs for the syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarEvent {
    text: String,
    /// Bit `n` set: weekday `n` (0 = Monday) allowed; 0x7f = any.
    weekdays: u8,
    years: Field,
    months: Field,
    days: Field,
    hours: Field,
    minutes: Field,
    seconds: Field,
}

const WEEKDAYS: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

fn weekday(name: &str) -> Option<u8> {
    let name = name.to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .position(|(short, long)| name == *short || name == *long)
        .map(|i| i as u8)
}

fn parse_weekdays(text: &str) -> Result<u8, String> {
    let mut mask = 0u8;
    for part in text.split(',') {
        match part.split_once("..") {
            Some((a, b)) => {
                let a = weekday(a).ok_or_else(|| format!("unknown weekday '{a}'"))?;
                let b = weekday(b).ok_or_else(|| format!("unknown weekday '{b}'"))?;
                // A range may wrap (`sat..mon`).
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => {
                mask |= 1 << weekday(part).ok_or_else(|| format!("unknown weekday '{part}'"))?;
            }
        }
    }
    Ok(mask)
}

fn shorthand(text: &str) -> Option<&'static str> {
    Some(match text {
        "minutely" => "*-*-* *:*:00",
        "hourly" => "*-*-* *:00:00",
        "daily" => "*-*-* 00:00:00",
        "weekly" => "mon *-*-* 00:00:00",
        "monthly" => "*-*-01 00:00:00",
        "yearly" | "annually" => "*-01-01 00:00:00",
        "quarterly" => "*-01,04,07,10-01 00:00:00",
        "semiannually" => "*-01,07-01 00:00:00",
        _ => return None,
    })
}

impl CalendarEvent {
    /// Parses an event (see the crate docs).
    pub fn parse(input: &str) -> Result<Self, Error> {
        let text = input.trim();
        let err = |msg: String| Error::Parse {
            input: input.to_string(),
            msg,
        };
        if text.is_empty() {
            return Err(err("empty".into()));
        }
        let lower = text.to_ascii_lowercase();
        let expanded = shorthand(&lower).unwrap_or(&lower);
        let mut tokens: Vec<&str> = expanded.split_whitespace().collect();
        let mut ev = CalendarEvent {
            text: text.to_string(),
            weekdays: 0x7f,
            years: Field::default(),
            months: Field::default(),
            days: Field::default(),
            hours: Field::exactly(0),
            minutes: Field::exactly(0),
            seconds: Field::exactly(0),
        };
        if tokens
            .first()
            .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_alphabetic()))
        {
            ev.weekdays = parse_weekdays(tokens.remove(0)).map_err(err)?;
        }
        if let Some(t) = tokens.first().copied() {
            if t.contains('-') {
                tokens.remove(0);
                let parts: Vec<&str> = t.split('-').collect();
                let (y, m, d) = match parts.as_slice() {
                    [m, d] => (None, *m, *d),
                    [y, m, d] => (Some(*y), *m, *d),
                    _ => return Err(err(format!("'{t}' is not [YEARS-]MONTHS-DAYS"))),
                };
                if let Some(y) = y {
                    ev.years = Field::parse(y, "year", 1970, 9999).map_err(err)?;
                }
                ev.months = Field::parse(m, "month", 1, 12).map_err(err)?;
                ev.days = Field::parse(d, "day", 1, 31).map_err(err)?;
            }
        }
        if let Some(t) = tokens.first().copied() {
            tokens.remove(0);
            let parts: Vec<&str> = t.split(':').collect();
            match parts.as_slice() {
                [m] => {
                    ev.hours = Field(None);
                    ev.minutes = Field::parse(m, "minute", 0, 59).map_err(err)?;
                }
                [h, m] => {
                    ev.hours = Field::parse(h, "hour", 0, 23).map_err(err)?;
                    ev.minutes = Field::parse(m, "minute", 0, 59).map_err(err)?;
                }
                [h, m, s] => {
                    ev.hours = Field::parse(h, "hour", 0, 23).map_err(err)?;
                    ev.minutes = Field::parse(m, "minute", 0, 59).map_err(err)?;
                    ev.seconds = Field::parse(s, "second", 0, 59).map_err(err)?;
                }
                _ => return Err(err(format!("'{t}' is not HOURS:MINUTES[:SECONDS]"))),
            }
        }
        if let Some(t) = tokens.first() {
            return Err(err(format!("unexpected '{t}'")));
        }
        Ok(ev)
    }

    /// The event as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The same event in systemd's `OnCalendar=` syntax (fully spelled out:
    /// `Sat *-*-* 02:00:00`).
    pub fn to_systemd(&self) -> String {
        let mut out = String::new();
        if self.weekdays != 0x7f {
            let names: Vec<String> = WEEKDAYS
                .iter()
                .enumerate()
                .filter(|(i, _)| self.weekdays & (1 << i) != 0)
                .map(|(_, (short, _))| {
                    let mut c = short.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            out.push_str(&names.join(","));
            out.push(' ');
        }
        out.push_str(&format!(
            "{}-{}-{} {}:{}:{}",
            self.years.to_systemd(9999),
            self.months.to_systemd(12),
            self.days.to_systemd(31),
            self.hours.to_systemd(23),
            self.minutes.to_systemd(59),
            self.seconds.to_systemd(59)
        ));
        out
    }

    fn date_matches(&self, d: NaiveDate) -> bool {
        self.weekdays & (1 << d.weekday().num_days_from_monday()) != 0
            && self.days.matches(d.day())
            && self.months.matches(d.month())
            && u32::try_from(d.year()).is_ok_and(|y| self.years.matches(y))
    }

    /// The first wall-clock time at or after `t` that matches, within the horizon.
    fn next_naive(&self, mut t: NaiveDateTime) -> Option<NaiveDateTime> {
        let last_year = t.year().saturating_add(HORIZON_YEARS);
        let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight exists");
        loop {
            if t.year() > last_year {
                return None;
            }
            if !u32::try_from(t.year()).is_ok_and(|y| self.years.matches(y)) {
                t = midnight(NaiveDate::from_ymd_opt(t.year() + 1, 1, 1)?);
                continue;
            }
            if !self.months.matches(t.month()) {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = midnight(NaiveDate::from_ymd_opt(y, m, 1)?);
                continue;
            }
            if !self.date_matches(t.date()) {
                t = midnight(t.date().succ_opt()?);
                continue;
            }
            if !self.hours.matches(t.hour()) {
                t = t.with_minute(0)?.with_second(0)? + Duration::hours(1);
                continue;
            }
            if !self.minutes.matches(t.minute()) {
                t = t.with_second(0)? + Duration::minutes(1);
                continue;
            }
            if !self.seconds.matches(t.second()) {
                t += Duration::seconds(1);
                continue;
            }
            return Some(t);
        }
    }

    /// The first time strictly after `after` (whole seconds) at which the event fires, in
    /// `after`'s time zone; `None` if it never fires again.
    pub fn next_after<Tz: TimeZone>(&self, after: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        let tz = after.timezone();
        let mut t = after.naive_local().with_nanosecond(0)? + Duration::seconds(1);
        // Each pass moves `t` forward; the horizon in `next_naive` ends the loop.
        loop {
            let n = self.next_naive(t)?;
            // Only instants that read back as `n` count (time zone libraries disagree at
            // the exact transition instant).
            let reads_as = |x: &DateTime<Tz>, wall: NaiveDateTime| {
                tz.from_utc_datetime(&x.naive_utc()).naive_local() == wall
            };
            let exact = |x: &DateTime<Tz>| reads_as(x, n);
            let instant = match tz.from_local_datetime(&n) {
                LocalResult::Single(x) => Some(x).filter(exact),
                // Fall-back: the first occurrence only.
                LocalResult::Ambiguous(a, b) => [a, b].into_iter().filter(exact).min(),
                LocalResult::None => None,
            }
            .or_else(|| {
                // Spring-forward gap: the same wall-clock distance past the gap.
                (1..=3).find_map(|h| {
                    let shifted = n + Duration::hours(h);
                    tz.from_local_datetime(&shifted)
                        .earliest()
                        .filter(|x| reads_as(x, shifted))
                })
            });
            match instant {
                Some(x) if x > *after => return Some(x),
                _ => t = n + Duration::seconds(1),
            }
        }
    }
}

impl FromStr for CalendarEvent {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        CalendarEvent::parse(s)
    }
}

impl fmt::Display for CalendarEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    /// A UTC instant written `YYYY-MM-DD HH:MM:SS`.
    fn at(s: &str) -> DateTime<Utc> {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
            .expect("valid instant")
            .and_utc()
    }

    fn next(ev: &str, from: &str) -> Option<DateTime<Utc>> {
        CalendarEvent::parse(ev)
            .expect("parses")
            .next_after(&at(from))
    }

    /// Each case: event, the instant after which it is asked, its next run (`None`: never).
    fn expect_next(cases: &[(&str, &str, Option<&str>)]) {
        for (ev, from, want) in cases {
            assert_eq!(next(ev, from), want.map(at), "{ev:?} after {from}");
        }
    }

    #[test]
    fn documented_examples() {
        // 2025-01-04 is a Saturday.
        let sat_noon = "2025-01-04 12:00:00";
        expect_next(&[
            ("sat 02:00", sat_noon, Some("2025-01-11 02:00:00")),
            ("mon..fri 22:30", sat_noon, Some("2025-01-06 22:30:00")),
            ("*/2:00", sat_noon, Some("2025-01-04 14:00:00")),
            ("*/2:00", "2025-01-04 13:05:00", Some("2025-01-04 14:00:00")),
            ("*/5", "2025-01-04 12:03:00", Some("2025-01-04 12:05:00")),
            ("12,14,16:05", sat_noon, Some("2025-01-04 12:05:00")),
            (
                "12,14,16:05",
                "2025-01-04 16:05:00",
                Some("2025-01-05 12:05:00"),
            ),
            // First Saturday of the month.
            ("Sat *-1..7 15:00", sat_noon, Some("2025-01-04 15:00:00")),
            (
                "Sat *-1..7 15:00",
                "2025-01-04 15:00:00",
                Some("2025-02-01 15:00:00"),
            ),
            (
                "2015-10-21",
                "2015-01-01 00:00:00",
                Some("2015-10-21 00:00:00"),
            ),
            ("2015-10-21", sat_noon, None),
            ("mon", sat_noon, Some("2025-01-06 00:00:00")),
            (
                "sat..mon 03:00",
                "2025-01-06 04:00:00",
                Some("2025-01-11 03:00:00"),
            ),
        ]);
    }

    #[test]
    fn shorthands() {
        let t = "2025-05-17 10:20:30";
        expect_next(&[
            ("minutely", t, Some("2025-05-17 10:21:00")),
            ("hourly", t, Some("2025-05-17 11:00:00")),
            ("daily", t, Some("2025-05-18 00:00:00")),
            ("weekly", t, Some("2025-05-19 00:00:00")),
            ("monthly", t, Some("2025-06-01 00:00:00")),
            ("yearly", t, Some("2026-01-01 00:00:00")),
            ("annually", t, Some("2026-01-01 00:00:00")),
            ("quarterly", t, Some("2025-07-01 00:00:00")),
            ("semiannually", t, Some("2025-07-01 00:00:00")),
        ]);
    }

    #[test]
    fn strictly_after_and_seconds() {
        expect_next(&[
            ("02:00", "2025-01-01 02:00:00", Some("2025-01-02 02:00:00")),
            (
                "*:*:0/20",
                "2025-01-01 02:00:00",
                Some("2025-01-01 02:00:20"),
            ),
            ("0/30", "2025-01-01 02:10:00", Some("2025-01-01 02:30:00")),
        ]);
    }

    #[test]
    fn month_ends_and_leap_days() {
        expect_next(&[
            // Day 31 skips the months without one.
            (
                "*-*-31 01:00",
                "2025-01-31 02:00:00",
                Some("2025-03-31 01:00:00"),
            ),
            (
                "*-*-31 01:00",
                "2025-04-01 00:00:00",
                Some("2025-05-31 01:00:00"),
            ),
            // The 29th of February only in leap years.
            (
                "*-02-29",
                "2025-01-01 00:00:00",
                Some("2028-02-29 00:00:00"),
            ),
            (
                "*-02-29",
                "2024-02-28 23:00:00",
                Some("2024-02-29 00:00:00"),
            ),
            // Every day at 23:30 crosses from the 28th of February to the 1st of March.
            ("23:30", "2025-02-28 23:30:00", Some("2025-03-01 23:30:00")),
            (
                "monthly",
                "2024-12-31 23:59:59",
                Some("2025-01-01 00:00:00"),
            ),
            // Never: the 30th of February.
            ("*-02-30", "2025-01-01 00:00:00", None),
        ]);
    }

    #[test]
    fn rejects_bad_events() {
        for bad in [
            "",
            "funday",
            "25:00",
            "12:60",
            "*-13-01",
            "*-0-01",
            "1..",
            "*/0",
            "mon 1 2",
            "5..3",
            "1:2:3:4",
            "*-1-2-3-4",
            "a,",
            "12:00 x",
        ] {
            assert!(
                CalendarEvent::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let e = CalendarEvent::parse("25:00").expect_err("bad hour");
        assert!(e.to_string().contains("hour 25"), "{e}");
    }

    #[test]
    fn systemd_form() {
        let sd = |s: &str| CalendarEvent::parse(s).expect("parses").to_systemd();
        assert_eq!(sd("sat 02:00"), "Sat *-*-* 02:00:00");
        assert_eq!(sd("mon..fri 21:30"), "Mon,Tue,Wed,Thu,Fri *-*-* 21:30:00");
        assert_eq!(sd("*/2:00"), "*-*-* 00/2:00:00");
        assert_eq!(sd("monthly"), "*-*-01 00:00:00");
        assert_eq!(sd("Sat *-1..7 15:00"), "Sat *-*-01..07 15:00:00");
        assert_eq!(sd("8..17/3:00"), "*-*-* 08,11,14,17:00:00");
        assert_eq!(sd("*/5"), "*-*-* *:00/5:00");
        // Our parser reads systemd's spelling back to the same event.
        let t = at("2025-05-17 10:20:30");
        for ev in [
            "sat 02:00",
            "mon..fri 21:30",
            "*/2:00",
            "quarterly",
            "Sat *-1..7 15:00",
            "8..17/3:00",
            "*/5",
            "2030-02-29",
        ] {
            let a = CalendarEvent::parse(ev).expect("parses");
            let b = CalendarEvent::parse(&a.to_systemd()).expect("systemd form parses");
            assert_eq!(a.next_after(&t), b.next_after(&t), "{ev}");
        }
    }

    #[test]
    fn keeps_its_text() {
        let ev = CalendarEvent::parse(" sat 02:00 ").expect("parses");
        assert_eq!(ev.to_string(), "sat 02:00");
    }
}
