//! Freeze windows (`policy.freeze`): is `now` inside one, and until when?
//!
//! Semantics, decided here and documented for `convoy.yml` users:
//! - An absolute window `{from, to}` covers `from <= t < to` (UTC instants).
//! - A weekly window `{weekly: [days], from, to, tz}` starts on each listed
//!   day at local time `from` in `tz`. When `to` is later than `from` it ends
//!   the same day at `to`; when `to` is earlier than *or equal to* `from` it
//!   spans midnight and ends at `to` on the following day (so `from == to`
//!   means a whole 24 hours). The listed day is the day the window *starts*:
//!   `{weekly: [fri], from: "22:00", to: "06:00"}` covers Friday night into
//!   Saturday morning.
//! - Daylight saving time: local times are resolved in `tz` for the date in
//!   question, so a `16:00` window starts at 16:00 local on both sides of a
//!   change. A local time that does not exist (skipped by a spring-forward
//!   change) resolves to the first instant after the gap; one that exists
//!   twice (fall-back) resolves to the earlier instant for `from` and the
//!   later one for `to`, so the window is never shorter than written.
//! - Windows that touch or overlap chain: "until" is the end of the whole
//!   contiguous frozen period, so a rollout waits once, not once per window.

use chrono::{
    DateTime, Datelike, Duration as ChronoDuration, LocalResult, NaiveDate, NaiveTime, TimeZone,
    Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::plan::model::FreezeWindow;

/// The freeze in force at some instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveFreeze {
    /// When the contiguous frozen period ends (exclusive).
    pub until: DateTime<Utc>,
    /// The reason of the window in force at the instant asked about.
    pub reason: Option<String>,
}

/// How many chained windows we follow before giving up on finding an end; a
/// freeze covering every day of the week would otherwise never end.
const MAX_CHAIN: usize = 64;

/// The freeze in force at `now`, if any, with the end of the contiguous
/// frozen period. A weekly window with an unknown time zone never matches
/// (the parser rejects those; the engine must not panic on stored data).
pub fn active_freeze(windows: &[FreezeWindow], now: DateTime<Utc>) -> Option<ActiveFreeze> {
    let (first_end, reason) = windows
        .iter()
        .filter_map(|w| window_at(w, now).map(|end| (end, window_reason(w))))
        .max_by_key(|(end, _)| *end)?;
    let mut until = first_end;
    for _ in 0..MAX_CHAIN {
        let next = windows.iter().filter_map(|w| window_at(w, until)).max();
        match next {
            Some(end) if end > until => until = end,
            _ => break,
        }
    }
    Some(ActiveFreeze { until, reason })
}

/// When the freeze in force at `now` ends, for a timer; `None` when no
/// freeze is in force.
pub fn freeze_ends(windows: &[FreezeWindow], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    active_freeze(windows, now).map(|f| f.until)
}

fn window_reason(w: &FreezeWindow) -> Option<String> {
    match w {
        FreezeWindow::Absolute { reason, .. } | FreezeWindow::Weekly { reason, .. } => {
            reason.clone()
        }
    }
}

/// If `w` covers `t`, the end of that occurrence.
fn window_at(w: &FreezeWindow, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match w {
        FreezeWindow::Absolute { from, to, .. } => (*from <= t && t < *to).then_some(*to),
        FreezeWindow::Weekly {
            days, from, to, tz, ..
        } => {
            let tz: Tz = tz.parse().ok()?;
            let local_date = t.with_timezone(&tz).date_naive();
            // An occurrence lasts at most 24 hours, so only occurrences that
            // start today or yesterday (local) can cover `t`.
            let mut best: Option<DateTime<Utc>> = None;
            for back in 0..=1 {
                let Some(start_date) = local_date.checked_sub_signed(ChronoDuration::days(back))
                else {
                    continue;
                };
                if !days.contains(&start_date.weekday()) {
                    continue;
                }
                let (start, end) = occurrence(&tz, start_date, *from, *to)?;
                if start <= t && t < end {
                    best = Some(best.map_or(end, |b| b.max(end)));
                }
            }
            best
        }
    }
}

/// The UTC instants of one weekly occurrence starting on `date`.
fn occurrence(
    tz: &Tz,
    date: NaiveDate,
    from: NaiveTime,
    to: NaiveTime,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let end_date = if to > from { date } else { date.succ_opt()? };
    let start = resolve_local(tz, date, from, Side::Start)?;
    let end = resolve_local(tz, end_date, to, Side::End)?;
    Some((start, end))
}

#[derive(Clone, Copy)]
enum Side {
    Start,
    End,
}

fn resolve_local(tz: &Tz, date: NaiveDate, time: NaiveTime, side: Side) -> Option<DateTime<Utc>> {
    let naive = date.and_time(time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(early, late) => Some(match side {
            Side::Start => early.with_timezone(&Utc),
            Side::End => late.with_timezone(&Utc),
        }),
        LocalResult::None => {
            // Inside a spring-forward gap: walk forward to the first local
            // minute that exists, which is the instant of the change. Gaps
            // are at most a few hours anywhere in the tz database.
            (1..=240).find_map(|m| {
                let later = naive + ChronoDuration::minutes(m);
                match tz.from_local_datetime(&later) {
                    LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                    LocalResult::Ambiguous(early, _) => Some(early.with_timezone(&Utc)),
                    LocalResult::None => None,
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Weekday;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hm(s: &str) -> NaiveTime {
        NaiveTime::parse_from_str(s, "%H:%M").unwrap()
    }

    fn weekly(days: &[Weekday], from: &str, to: &str, tz: &str) -> FreezeWindow {
        FreezeWindow::Weekly {
            days: days.to_vec(),
            from: hm(from),
            to: hm(to),
            tz: tz.into(),
            reason: Some("weekend".into()),
        }
    }

    #[test]
    fn absolute_window_is_half_open() {
        let w = [FreezeWindow::Absolute {
            from: utc("2026-12-24T00:00:00Z"),
            to: utc("2026-12-27T00:00:00Z"),
            reason: Some("holidays".into()),
        }];
        assert_eq!(active_freeze(&w, utc("2026-12-23T23:59:59Z")), None);
        let f = active_freeze(&w, utc("2026-12-24T00:00:00Z")).unwrap();
        assert_eq!(f.until, utc("2026-12-27T00:00:00Z"));
        assert_eq!(f.reason.as_deref(), Some("holidays"));
        assert_eq!(active_freeze(&w, utc("2026-12-27T00:00:00Z")), None);
    }

    #[test]
    fn weekly_window_in_local_time() {
        // Friday 2026-11-27, Berlin is UTC+1 in winter.
        let w = [weekly(&[Weekday::Fri], "16:00", "23:59", "Europe/Berlin")];
        assert_eq!(active_freeze(&w, utc("2026-11-27T14:59:00Z")), None);
        let f = active_freeze(&w, utc("2026-11-27T15:00:00Z")).unwrap();
        assert_eq!(f.until, utc("2026-11-27T22:59:00Z"));
        assert_eq!(active_freeze(&w, utc("2026-11-27T22:59:00Z")), None);
        // Thursday at the same hour: not listed.
        assert_eq!(active_freeze(&w, utc("2026-11-26T16:00:00Z")), None);
    }

    #[test]
    fn weekly_window_across_dst_change_in_berlin() {
        // Sunday 2026-03-29 02:00 CET → 03:00 CEST. A Saturday-night window
        // 22:00 → 06:00 spans the change: 21:00Z Saturday to 04:00Z Sunday
        // (06:00 CEST = 04:00 UTC), 7 hours of real time.
        let w = [weekly(&[Weekday::Sat], "22:00", "06:00", "Europe/Berlin")];
        let f = active_freeze(&w, utc("2026-03-28T21:00:00Z")).unwrap();
        assert_eq!(f.until, utc("2026-03-29T04:00:00Z"));
        assert!(active_freeze(&w, utc("2026-03-29T03:59:00Z")).is_some());
        assert_eq!(active_freeze(&w, utc("2026-03-29T04:00:00Z")), None);
        // The same window a week earlier (winter) ends at 05:00Z.
        let f = active_freeze(&w, utc("2026-03-21T23:00:00Z")).unwrap();
        assert_eq!(f.until, utc("2026-03-22T05:00:00Z"));
        // 16:00 local stays 16:00 local: 15:00Z in winter, 14:00Z in summer.
        let w = [weekly(&[Weekday::Fri], "16:00", "23:59", "Europe/Berlin")];
        assert!(active_freeze(&w, utc("2026-03-27T15:00:00Z")).is_some());
        assert!(active_freeze(&w, utc("2026-03-27T14:30:00Z")).is_none());
        assert!(active_freeze(&w, utc("2026-04-03T14:00:00Z")).is_some());
    }

    #[test]
    fn nonexistent_local_start_resolves_to_the_change() {
        // 02:30 does not exist in Berlin on 2026-03-29; the window starts at
        // the change, 01:00Z (03:00 CEST).
        let w = [weekly(&[Weekday::Sun], "02:30", "05:00", "Europe/Berlin")];
        assert!(active_freeze(&w, utc("2026-03-29T00:59:00Z")).is_none());
        let f = active_freeze(&w, utc("2026-03-29T01:00:00Z")).unwrap();
        assert_eq!(f.until, utc("2026-03-29T03:00:00Z"));
    }

    #[test]
    fn ambiguous_local_end_takes_the_later_instant() {
        // 2026-10-25: 03:00 CEST → 02:00 CET, so 02:30 happens twice (00:30Z
        // and 01:30Z). A window ending at 02:30 ends at the later one.
        let w = [weekly(&[Weekday::Sat], "23:00", "02:30", "Europe/Berlin")];
        let f = active_freeze(&w, utc("2026-10-24T22:00:00Z")).unwrap();
        assert_eq!(f.until, utc("2026-10-25T01:30:00Z"));
    }

    #[test]
    fn adjacent_windows_chain() {
        let w = [
            weekly(&[Weekday::Sat, Weekday::Sun], "00:00", "00:00", "UTC"),
            FreezeWindow::Absolute {
                from: utc("2026-11-30T00:00:00Z"),
                to: utc("2026-11-30T08:00:00Z"),
                reason: None,
            },
        ];
        // Saturday 2026-11-28 noon: frozen through Sunday and into Monday.
        let f = active_freeze(&w, utc("2026-11-28T12:00:00Z")).unwrap();
        assert_eq!(f.until, utc("2026-11-30T08:00:00Z"));
        assert_eq!(f.reason.as_deref(), Some("weekend"));
    }

    #[test]
    fn always_frozen_terminates() {
        let all = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ];
        let w = [weekly(&all, "00:00", "00:00", "UTC")];
        let f = active_freeze(&w, utc("2026-11-28T12:00:00Z")).unwrap();
        assert!(f.until > utc("2026-12-01T00:00:00Z"));
    }

    #[test]
    fn unknown_time_zone_never_matches() {
        let w = [weekly(&[Weekday::Sat], "00:00", "00:00", "Mars/Olympus")];
        assert_eq!(active_freeze(&w, utc("2026-11-28T12:00:00Z")), None);
    }
}
