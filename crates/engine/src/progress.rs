//! The exact text vzdump prints about a running backup: progress lines, sparse and
//! transferred summaries, sizes and durations. The lines go to a [`vmdump_task::Progress`],
//! the interface backup and restore share.

use std::time::Duration;

use vmdump_task::Transfer;

/// Binary units with `precision` decimals: `892.0 MiB`, `18.95 GiB`.
pub fn render_bytes(value: f64, precision: usize) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = value;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.precision$} {}", UNITS[i])
}

/// `1h 2m 3s` (`0s` for nothing), rounded to whole seconds.
pub fn render_duration(d: Duration) -> String {
    let mut rest = d.as_secs_f64().round() as u64;
    if rest == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [
        ("w", 7 * 86400),
        ("d", 86400),
        ("h", 3600),
        ("m", 60),
        ("s", 1),
    ] {
        let n = rest / len;
        if n > 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("{n}{unit}"));
            rest -= n * len;
        }
    }
    out
}

/// `archive file size:` style: integer KB or MB, GB or TB with 2 decimals.
pub fn format_size(bytes: u64) -> String {
    let kb = bytes as f64 / 1024.0;
    if kb < 1024.0 {
        return format!("{}KB", kb as u64);
    }
    let mb = kb / 1024.0;
    if mb < 1024.0 {
        return format!("{}MB", mb as u64);
    }
    let gb = mb / 1024.0;
    if gb < 1024.0 {
        return format!("{gb:.2}GB");
    }
    format!("{:.2}TB", gb / 1024.0)
}

/// `HH:MM:SS` of the `Finished Backup of VM` line.
pub fn format_hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

/// Produces vzdump's percentage lines from transfer counters: a line only when the percentage
/// changed and at least 2 s passed since the previous line, plus a last line if the job ends
/// before its 100% line was printed.
#[derive(Debug, Clone, Default)]
pub struct ProgressLines {
    last_percent: Option<u64>,
    last_at: Duration,
    last_transferred: u64,
    last_zero: u64,
}

impl ProgressLines {
    /// A fresh line generator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The line to print for these counters, if one is due.
    pub fn tick(&mut self, t: &Transfer) -> Option<String> {
        let percent = percent(t.transferred, t.total);
        if self.last_percent == Some(percent) {
            return None;
        }
        let since = t.elapsed.saturating_sub(self.last_at);
        if self.last_percent.is_some() && since < Duration::from_secs(2) {
            return None;
        }
        Some(self.line(t, percent))
    }

    /// The last line at the end of the transfer, unless 100% was already printed.
    pub fn finish(&mut self, t: &Transfer) -> Option<String> {
        let percent = percent(t.transferred, t.total);
        if self.last_percent == Some(percent) {
            return None;
        }
        Some(self.line(t, percent))
    }

    fn line(&mut self, t: &Transfer, percent: u64) -> String {
        let secs = t.elapsed.saturating_sub(self.last_at).as_secs_f64();
        let read = t.transferred.saturating_sub(self.last_transferred) as f64;
        let zero = t.zero.saturating_sub(self.last_zero) as f64;
        let (read_rate, write_rate) = if secs > 0.0 {
            (read / secs, (read - zero).max(0.0) / secs)
        } else {
            (0.0, 0.0)
        };
        self.last_percent = Some(percent);
        self.last_at = t.elapsed;
        self.last_transferred = t.transferred;
        self.last_zero = t.zero;
        format!(
            "{percent:3}% ({} of {}) in {}, read: {}/s, write: {}/s",
            render_bytes(t.transferred as f64, 1),
            render_bytes(t.total as f64, 1),
            render_duration(t.elapsed),
            render_bytes(read_rate, 1),
            render_bytes(write_rate, 1),
        )
    }
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (u128::from(done) * 100 / u128::from(total)) as u64
    }
}

/// The summary lines after a successful transfer: `backup is sparse: ...` (when there were
/// zeroes) and `transferred ... in N seconds (rate)`.
pub fn summary(t: &Transfer) -> Vec<String> {
    let mut lines = Vec::new();
    if t.zero > 0 {
        lines.push(format!(
            "backup is sparse: {} ({}%) total zero data",
            render_bytes(t.zero as f64, 2),
            percent(t.zero, t.total)
        ));
    }
    let secs = t.elapsed.as_secs();
    if secs == 0 {
        lines.push(format!(
            "transferred {} in <1 seconds",
            render_bytes(t.transferred as f64, 2)
        ));
    } else {
        lines.push(format!(
            "transferred {} in {secs} seconds ({}/s)",
            render_bytes(t.transferred as f64, 2),
            render_bytes(t.transferred as f64 / secs as f64, 1)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn units() {
        assert_eq!(render_bytes(892.0 * MIB as f64, 1), "892.0 MiB");
        assert_eq!(render_bytes(20.0 * GIB as f64, 1), "20.0 GiB");
        assert_eq!(render_bytes(18.95 * GIB as f64, 2), "18.95 GiB");
        assert_eq!(render_bytes(512.0, 1), "512.0 B");
        assert_eq!(render_duration(Duration::from_secs(185)), "3m 5s");
        assert_eq!(render_duration(Duration::from_secs(3723)), "1h 2m 3s");
        assert_eq!(render_duration(Duration::from_secs(9)), "9s");
        assert_eq!(render_duration(Duration::ZERO), "0s");
        assert_eq!(format_size(5_229_000_000), "4.87GB");
        assert_eq!(format_size(3 * 1024 * 1024 + 5), "3MB");
        assert_eq!(format_size(2048), "2KB");
        assert_eq!(format_hms(Duration::from_secs(192)), "00:03:12");
    }

    #[test]
    fn progress_line_matches_vzdump() {
        let mut p = ProgressLines::new();
        let t = Transfer {
            transferred: 892 * MIB,
            zero: 0,
            total: 20 * GIB,
            elapsed: Duration::from_secs(9),
        };
        let line = p.tick(&t).expect("first line");
        assert_eq!(
            line,
            "  4% (892.0 MiB of 20.0 GiB) in 9s, read: 99.1 MiB/s, write: 99.1 MiB/s"
        );
        // Same percentage: nothing.
        assert_eq!(
            p.tick(&Transfer {
                elapsed: Duration::from_secs(12),
                ..t
            }),
            None
        );
        // New percentage but under 2 s later: nothing.
        let soon = Transfer {
            transferred: 2 * GIB,
            elapsed: Duration::from_secs(10),
            ..t
        };
        assert_eq!(p.tick(&soon), None);
        let later = Transfer {
            transferred: 2 * GIB,
            zero: 100 * MIB,
            elapsed: Duration::from_secs(11),
            ..t
        };
        let line = p.tick(&later).expect("due");
        assert!(
            line.starts_with(" 10% (2.0 GiB of 20.0 GiB) in 11s, read: "),
            "{line}"
        );
        let done = Transfer {
            transferred: 20 * GIB,
            elapsed: Duration::from_secs(11),
            ..later
        };
        assert!(p.finish(&done).expect("final").starts_with("100% "));
        assert_eq!(p.finish(&done), None);
    }

    #[test]
    fn summary_lines() {
        let t = Transfer {
            transferred: 20 * GIB,
            zero: 18 * GIB + 973 * MIB,
            total: 20 * GIB,
            elapsed: Duration::from_secs(23),
        };
        assert_eq!(
            summary(&t),
            vec![
                "backup is sparse: 18.95 GiB (94%) total zero data".to_string(),
                "transferred 20.00 GiB in 23 seconds (890.4 MiB/s)".to_string(),
            ]
        );
        let quick = Transfer {
            zero: 0,
            elapsed: Duration::from_millis(300),
            ..t
        };
        assert_eq!(
            summary(&quick),
            vec!["transferred 20.00 GiB in <1 seconds".to_string()]
        );
    }
}
