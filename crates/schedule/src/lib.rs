//! Calendar events as Proxmox VE schedules them (`sat 02:00`, `*/2:00`, `mon..fri 21:30`,
//! `monthly`, ...) and the next run after a given instant.
//!
//! Syntax (pve-docs `calendar-events.adoc`, the parser of proxmox-time):
//! `[WEEKDAY] [[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:SECONDS]]`. Every field is a list of
//! `*`, `N`, `a..b`, `N/step`, `a..b/step` or `*/step`; weekdays are names (`mon`, `monday`)
//! and ranges of names. A time without `:` is minutes. What is left out: any weekday, any
//! date, and `00:00` (a date or weekday alone), hour `*` (minutes alone); seconds are `0`
//! unless given. Shorthands: `minutely`, `hourly`, `daily`, `weekly`, `monthly`,
//! `yearly`/`annually`, `quarterly`, `semiannually`.
//!
//! Non-goals: no I/O, no clock. [`CalendarEvent::next_after`] is generic over a chrono
//! `TimeZone`; callers pass `chrono::Local` (which follows `TZ`).
//!
//! Invariants: matching is done on the local wall clock. A wall-clock time that does not exist
//! (spring-forward gap) runs right after the gap at the same distance past the hour's start
//! (02:30 → 03:30), as `mktime` normalises it; a time that exists twice (fall-back) runs at its
//! first occurrence only. The result is always strictly after the given instant.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! let ev: vmdump_schedule::CalendarEvent = "mon..fri 21:30".parse().unwrap();
//! let sat = Utc.with_ymd_and_hms(2025, 1, 4, 12, 0, 0).unwrap();
//! assert_eq!(ev.next_after(&sat).unwrap(), Utc.with_ymd_and_hms(2025, 1, 6, 21, 30, 0).unwrap());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod event;

pub use event::{CalendarEvent, Error};
