//! Wording shared by the command line and the console: counts with their noun
//! (`1 instance`, `2 instances`) and durations short enough to read at a glance
//! (`12.3s`, `4m05s`). Making untrusted text safe for a terminal is the command line's
//! own concern: `cli/text.rs`.

/// `1 instance`, `2 instances`.
pub(crate) fn plural(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `12.3s`, `4m05s`, `2h03m`: short and readable at a glance.
pub(crate) fn seconds(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}
