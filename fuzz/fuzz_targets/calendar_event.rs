//! Calendar events: hostile text never panics; an accepted event's next run is strictly after
//! the start, matches again from one second before it (the search is stable), and its
//! systemd form parses back to an event with the same next run.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use vmdump_schedule::CalendarEvent;

fuzz_target!(|data: &[u8]| {
    let Some((start, text)) = data.split_at_checked(4) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(ev) = CalendarEvent::parse(text) else {
        return;
    };
    // Start somewhere in 2000..2136.
    let secs = 946_684_800 + i64::from(u32::from_le_bytes(start.try_into().expect("4 bytes")));
    let from = Utc.timestamp_opt(secs, 0).single().expect("in range");
    if let Some(next) = ev.next_after(&from) {
        assert!(next > from);
        let before = next - chrono::Duration::seconds(1);
        assert_eq!(ev.next_after(&before), Some(next));
        let systemd = ev.to_systemd();
        // systemd's spelling is ours too (with the year field always present).
        if let Ok(again) = CalendarEvent::parse(&systemd) {
            assert_eq!(
                again.next_after(&from),
                Some(next),
                "{text:?} -> {systemd:?}"
            );
        }
    }
});
