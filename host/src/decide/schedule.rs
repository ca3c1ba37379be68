//! Scaling schedules (`spec.autoscaling.schedules`): time windows that override
//! `minReplicas`/`maxReplicas` while they are active (office hours, a nightly batch, a known
//! Monday peak). Pure: the time is an argument, so tests run on a fake clock.
//!
//! A window starts at each time its cron expression names, in its IANA time zone (daylight
//! saving time included, by `jiff`), and lasts `durationSeconds`. Overlapping windows take the
//! largest minimum and the largest maximum; a window that leaves one bound out keeps the
//! spec's for it. Cron expressions are parsed by `jiff-cron` (a well-kept parser, not ours).

use std::str::FromStr;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// One window as the spec gives it, checked ([`Window::parse`]) but kept as text, so it can
/// live in plain comparable values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub name: String,
    /// As written: five fields (minute to day of week), six (with seconds first), or a
    /// nickname (`@daily`).
    pub cron: String,
    pub time_zone: String,
    pub duration: Duration,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

/// A window ready to be evaluated.
#[derive(Clone, Debug)]
pub struct Parsed {
    window: Window,
    schedule: jiff_cron::Schedule,
    zone: TimeZone,
}

/// The bounds in effect at one time, and the windows that set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub min: u32,
    pub max: u32,
    /// Names of the active windows, in the spec's order.
    pub active: Vec<String>,
}

impl Window {
    /// The window parsed, or what is wrong with its `cron` or `timeZone` (the caller names the
    /// field).
    pub fn parse(&self) -> Result<Parsed, (&'static str, String)> {
        let fields: Vec<&str> = self.cron.split_whitespace().collect();
        let expression = match fields.len() {
            1 if self.cron.trim_start().starts_with('@') => self.cron.trim().to_string(),
            5 => format!("0 {}", fields.join(" ")),
            6 => fields.join(" "),
            n => {
                return Err((
                    "cron",
                    format!(
                        "{:?} has {n} fields: give five (minute hour day-of-month month day-of-week, e.g. `0 9 * * Mon-Fri`), \
                         six (with seconds first) or a nickname (`@daily`)",
                        self.cron
                    ),
                ));
            }
        };
        // NB: cron dialects number the days of the week differently (0 or 7 is Sunday in
        // Vixie cron, 1 is in the parser's): a number could start a window on the wrong day.
        if let Some(days) = expression.split_whitespace().nth(5)
            && days.chars().any(|c| c.is_ascii_digit())
        {
            return Err((
                "cron",
                format!(
                    "{:?}: give the days of the week by name (`Mon-Fri`, `Sat,Sun`): cron dialects number them differently",
                    self.cron
                ),
            ));
        }
        let schedule = jiff_cron::Schedule::from_str(&expression).map_err(|e| ("cron", format!("{:?}: {e}", self.cron)))?;
        let zone = TimeZone::get(&self.time_zone).map_err(|e| {
            ("timeZone", format!("{:?} is not an IANA time zone (e.g. `Europe/Paris`, `UTC`): {e}", self.time_zone))
        })?;
        Ok(Parsed { window: self.clone(), schedule, zone })
    }
}

impl Parsed {
    /// Whether the window is active at `now`: its last start is at most `duration` ago.
    pub fn active(&self, now: Timestamp) -> bool {
        let duration = self.window.duration;
        // A start exactly now counts: look from just after now.
        let after = Zoned::new(now, self.zone.clone()).checked_add(jiff::Span::new().nanoseconds(1));
        let Ok(after) = after else { return false };
        let Some(start) = self.schedule.after(after).next_back() else { return false };
        let Ok(since) = now.since(start.timestamp()) else { return false };
        let since = Duration::try_from(since).unwrap_or(Duration::MAX);
        since < duration
    }
}

/// The bounds at `now` from the spec's `min`/`max` and the `windows`: the largest minimum and
/// the largest maximum of the active windows (each leaving a bound out keeps the spec's), and
/// never a maximum below the minimum.
pub fn bounds(now: Timestamp, min: u32, max: u32, windows: &[Parsed]) -> Effective {
    let active: Vec<&Parsed> = windows.iter().filter(|w| w.active(now)).collect();
    if active.is_empty() {
        return Effective { min, max, active: Vec::new() };
    }
    let lo = active.iter().map(|w| w.window.min.unwrap_or(min)).max().unwrap_or(min);
    let hi = active.iter().map(|w| w.window.max.unwrap_or(max)).max().unwrap_or(max);
    Effective { min: lo, max: hi.max(lo), active: active.iter().map(|w| w.window.name.clone()).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(name: &str, cron: &str, zone: &str, minutes: u64, min: Option<u32>, max: Option<u32>) -> Window {
        Window {
            name: name.into(),
            cron: cron.into(),
            time_zone: zone.into(),
            duration: Duration::from_secs(minutes * 60),
            min,
            max,
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    #[test]
    fn office_hours_in_their_time_zone() {
        // 09:00 to 18:00 in Paris, weekdays; 2026-12-03 is a Thursday, Paris is UTC+1 in winter.
        let office = window("office", "0 9 * * Mon-Fri", "Europe/Paris", 9 * 60, Some(4), None).parse().unwrap();
        assert!(!office.active(at("2026-12-03T07:59:59Z")));
        assert!(office.active(at("2026-12-03T08:00:00Z")), "a start exactly now counts");
        assert!(office.active(at("2026-12-03T16:59:59Z")));
        assert!(!office.active(at("2026-12-03T17:00:00Z")), "nine hours later it ends");
        assert!(!office.active(at("2026-12-05T10:00:00Z")), "Saturday");
        // In summer Paris is UTC+2.
        assert!(office.active(at("2026-07-01T07:00:00Z")));
        let e = bounds(at("2026-12-03T10:00:00Z"), 1, 10, std::slice::from_ref(&office));
        assert_eq!(e, Effective { min: 4, max: 10, active: vec!["office".into()] });
        assert_eq!(bounds(at("2026-12-03T20:00:00Z"), 1, 10, &[office]), Effective { min: 1, max: 10, active: vec![] });
    }

    #[test]
    fn overlapping_windows_take_the_largest_of_each_bound() {
        let day = window("day", "0 8 * * *", "UTC", 12 * 60, Some(3), Some(6)).parse().unwrap();
        let peak = window("peak", "0 9 * * Mon", "UTC", 60, Some(8), Some(5)).parse().unwrap();
        let night = window("night", "@daily", "UTC", 6 * 60, None, Some(2)).parse().unwrap();
        let windows = [day, peak, night];
        // Monday 2026-11-30 09:30: day and peak; the max is raised to the min.
        let e = bounds(at("2026-11-30T09:30:00Z"), 1, 10, &windows);
        assert_eq!(e, Effective { min: 8, max: 8, active: vec!["day".into(), "peak".into()] });
        // 02:00: the night window lowers the maximum only.
        let e = bounds(at("2026-11-30T02:00:00Z"), 1, 10, &windows);
        assert_eq!(e, Effective { min: 1, max: 2, active: vec!["night".into()] });
    }

    #[test]
    fn seconds_and_nicknames_are_taken_and_mistakes_named() {
        let mut every_minute = window("m", "30 * * * * *", "UTC", 0, Some(2), None);
        every_minute.duration = Duration::from_secs(10);
        let every_minute = every_minute.parse().unwrap();
        assert!(every_minute.active(at("2026-12-03T10:00:35Z")));
        assert!(!every_minute.active(at("2026-12-03T10:00:45Z")), "ten seconds from :30");
        assert!(!every_minute.active(at("2026-12-03T10:00:15Z")));
        let bad = |cron: &str, zone: &str| window("w", cron, zone, 1, None, None).parse().unwrap_err();
        assert_eq!(bad("0 9 * * 1-5", "UTC").0, "cron", "numbered days are refused");
        assert!(bad("0 9 * * 1-5", "UTC").1.contains("by name"));
        assert_eq!(bad("0 9 * *", "UTC").0, "cron");
        assert_eq!(bad("0 99 * * *", "UTC").0, "cron");
        let zone = bad("0 9 * * *", "Mars/Olympus");
        assert_eq!(zone.0, "timeZone");
        assert!(zone.1.starts_with("\"Mars/Olympus\" is not an IANA time zone"), "{}", zone.1);
    }
}
