//! Next-run computation in a real time zone with daylight saving time: `TZ` is pinned for this
//! test binary (every test sets the same value, so the order does not matter), and the result
//! goes through `chrono::Local` as the scheduler uses it.

use chrono::{DateTime, Local, TimeZone, Utc};
use vmdump_schedule::CalendarEvent;

fn berlin() {
    std::env::set_var("TZ", "Europe/Berlin");
}

fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Local> {
    Local
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .earliest()
        .expect("valid local time")
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("valid")
}

fn next(ev: &str, from: DateTime<Local>) -> DateTime<Utc> {
    CalendarEvent::parse(ev)
        .expect("parses")
        .next_after(&from)
        .expect("fires again")
        .with_timezone(&Utc)
}

#[test]
fn daily_job_follows_the_wall_clock_across_spring_forward() {
    berlin();
    // 2025-03-30: 02:00 CET becomes 03:00 CEST.
    assert_eq!(
        next("01:00", local(2025, 3, 29, 12, 0)),
        utc(2025, 3, 30, 0, 0)
    );
    // After the change the same wall-clock time is an hour earlier in UTC.
    assert_eq!(
        next("01:00", local(2025, 3, 30, 12, 0)),
        utc(2025, 3, 30, 23, 0)
    );
    // 02:30 does not exist that day: it runs at 03:30 CEST, once.
    let gap = next("02:30", local(2025, 3, 29, 12, 0));
    assert_eq!(gap, utc(2025, 3, 30, 1, 30));
    assert_eq!(
        next("02:30", gap.with_timezone(&Local)),
        utc(2025, 3, 31, 0, 30)
    );
}

#[test]
fn fall_back_runs_a_repeated_time_once() {
    berlin();
    // 2025-10-26: 03:00 CEST becomes 02:00 CET; 02:30 exists twice.
    let first = next("02:30", local(2025, 10, 25, 12, 0));
    assert_eq!(first, utc(2025, 10, 26, 0, 30));
    assert_eq!(
        next("02:30", first.with_timezone(&Local)),
        utc(2025, 10, 27, 1, 30)
    );
    // An hourly job keeps its wall-clock hours; the repeated hour is not run twice.
    let h = next("hourly", local(2025, 10, 26, 1, 30));
    assert_eq!(h, utc(2025, 10, 26, 0, 0));
    assert_eq!(
        next("hourly", h.with_timezone(&Local)),
        utc(2025, 10, 26, 2, 0)
    );
}

#[test]
fn weekly_across_the_change_keeps_local_time() {
    berlin();
    assert_eq!(
        next("sat 02:00", local(2025, 3, 23, 0, 0)),
        utc(2025, 3, 29, 1, 0)
    );
    assert_eq!(
        next("sat 02:00", local(2025, 3, 30, 0, 0)),
        utc(2025, 4, 5, 0, 0)
    );
}
