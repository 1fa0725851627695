//! Daily shapes of a workload stream: a volume per sending day (`daily = [..]`, the last
//! value repeating, or a `growth` rule), sent inside a window of local time (`window`, `tz`)
//! on chosen weekdays, the engaged segment of each day's list first.
//!
//! Owns turning those settings into a plan: one `DayPlan` per sending day, its messages
//! evenly spaced over that day's window. Pure arithmetic on seconds since the epoch; it must
//! not draw random numbers (the stream's generator does) or know any provider.

use super::interval;

/// Most sending days one stream may plan (a year and a day: `duration` is at most a year).
pub const DAYS_MAX: usize = 367;
/// Largest volume of one day of one stream.
pub const DAY_MESSAGES_MAX: u64 = 50_000_000;

/// One sending day of a stream: `count` messages from message `first` on, evenly spaced over
/// `span_ms` from `at_ms` (milliseconds after the run's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayPlan {
    pub at_ms: u64,
    pub span_ms: u64,
    pub count: u64,
    pub first: u64,
}

impl DayPlan {
    /// When message `first + j` of the day is due, after the run's start.
    pub fn offset_ms(&self, j: u64) -> u64 {
        self.at_ms + (j as u128 * self.span_ms as u128 / self.count.max(1) as u128) as u64
    }

    /// How many of the day's messages are due at or before `end_ms` after the run's start.
    pub fn due_by_ms(&self, end_ms: u64) -> u64 {
        if self.at_ms > end_ms {
            return 0;
        }
        if self.span_ms == 0 {
            return self.count;
        }
        // Message j is due when j × span / count ≤ end − at, i.e. j × span < (end − at + 1) × count.
        let bound = (end_ms - self.at_ms + 1) as u128 * self.count as u128;
        bound.div_ceil(self.span_ms as u128).min(self.count as u128) as u64
    }

    /// The most of the day's messages inside any `window_ms`.
    pub fn most_within_ms(&self, window_ms: u64) -> u64 {
        if self.span_ms == 0 {
            return self.count;
        }
        let bound = (window_ms as u128 + 1) * self.count as u128;
        bound.div_ceil(self.span_ms as u128).min(self.count as u128) as u64
    }
}

/// The volume of sending day `n` (0-based, counting only days the stream sends).
#[derive(Clone, Debug, PartialEq)]
pub enum Daily {
    /// The list's value for the day; the last value repeats.
    List(Vec<u64>),
    /// `start × factor^n`, rounded, at most `max`.
    Growth { start: u64, factor: f64, max: u64 },
}

impl Daily {
    pub fn volume(&self, n: usize) -> u64 {
        match self {
            Daily::List(list) => list[n.min(list.len() - 1)],
            Daily::Growth { start, factor, max } => {
                let v = *start as f64 * factor.powi(n.min(100_000) as i32);
                if v >= *max as f64 {
                    *max
                } else {
                    v.round() as u64
                }
            }
        }
    }
}

/// `HH:MM-HH:MM` as seconds of the local day; the end may be `24:00`.
pub fn parse_window(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("window `{text}` is not a time range of the day such as \"08:00-20:00\"");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let clock = |t: &str| -> Option<u64> {
        let (h, m) = t.trim().split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 3600 + m * 60)
    };
    let (from, to) = (clock(a).ok_or_else(bad)?, clock(b).ok_or_else(bad)?);
    if from >= to {
        return Err(format!(
            "window `{text}` ends before it starts; a window stays inside one local day"
        ));
    }
    Ok((from, to))
}

/// A fixed offset from UTC: `UTC`, `Z`, `+02:00`, `-0500`, `UTC+2`. Seconds east of UTC.
pub fn parse_tz(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "tz `{text}` is not an offset from UTC such as \"UTC\", \"+02:00\" or \"-05:00\" (named zones and daylight saving time are not modelled)"
        )
    };
    let rest = text
        .strip_prefix("UTC")
        .or_else(|| text.strip_prefix("GMT"))
        .unwrap_or(text);
    if rest.is_empty() || rest == "Z" || text == "Z" {
        return Ok(0);
    }
    let (sign, digits) = match rest.as_bytes()[0] {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = match digits.split_once(':') {
        Some((h, m)) => (h, m),
        None if digits.len() == 4 => digits.split_at(2),
        None => (digits, "0"),
    };
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) || h.to_string().len() > 2 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// Weekday names as a bit set, Monday bit 0.
pub fn parse_weekdays(names: &[String]) -> Result<u8, String> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let mut mask = 0u8;
    for name in names {
        let lower = name.to_ascii_lowercase();
        let i = NAMES
            .iter()
            .position(|n| lower.starts_with(n) && lower.len() <= 9)
            .ok_or_else(|| {
                format!("weekday `{name}` is not one of mon, tue, wed, thu, fri, sat, sun")
            })?;
        mask |= 1 << i;
    }
    if mask == 0 {
        return Err("weekdays names no day: the stream would send nothing".into());
    }
    Ok(mask)
}

/// The stream's sending days from `first_s` (seconds since the epoch, the stream's start) to
/// `end_s` (the run's end): each local day of `tz_offset_s` whose weekday is in `weekdays`,
/// the window's part after the stream's start; `run_start_s` is what offsets count from.
pub fn plan(
    daily: &Daily,
    window: (u64, u64),
    tz_offset_s: i64,
    weekdays: u8,
    run_start_s: u64,
    first_s: u64,
    end_s: u64,
) -> Vec<DayPlan> {
    let mut days = Vec::new();
    let mut first = 0u64;
    let mut sending_day = 0usize;
    let local_start = first_s as i64 + tz_offset_s;
    let mut local_day = local_start.div_euclid(86_400);
    while days.len() < DAYS_MAX {
        let midnight = local_day * 86_400 - tz_offset_s;
        let open = (midnight + window.0 as i64).max(first_s as i64);
        let close = midnight + window.1 as i64;
        if open >= end_s as i64 {
            break;
        }
        // 1970-01-01 was a Thursday (Monday = 0).
        let weekday = (local_day + 3).rem_euclid(7);
        if close > open && weekdays & (1 << weekday) != 0 {
            let count = daily.volume(sending_day);
            sending_day += 1;
            if count > 0 {
                days.push(DayPlan {
                    at_ms: (open as u64 - run_start_s) * 1000,
                    span_ms: (close - open) as u64 * 1000,
                    count,
                    first,
                });
                first += count;
            }
        }
        local_day += 1;
    }
    days
}

/// A growth rule `{ start = 200, factor = 1.4, max = 100000 }` checked.
pub fn growth(start: u64, factor: f64, max: u64) -> Result<Daily, String> {
    if start == 0 || max < start || max > DAY_MESSAGES_MAX {
        return Err(format!(
            "growth needs 1 ≤ start ≤ max ≤ {DAY_MESSAGES_MAX}, not start = {start}, max = {max}"
        ));
    }
    if !(factor.is_finite() && (1.0..=10.0).contains(&factor)) {
        return Err(format!("growth factor is between 1 and 10, not {factor}"));
    }
    Ok(Daily::Growth { start, factor, max })
}

/// A `daily` list checked.
pub fn list(values: &[u64]) -> Result<Daily, String> {
    if values.is_empty() || values.len() > DAYS_MAX {
        return Err(format!("daily is a list of 1 to {DAYS_MAX} day volumes"));
    }
    if let Some(v) = values.iter().find(|v| **v > DAY_MESSAGES_MAX) {
        return Err(format!(
            "a day of {v} messages is over the limit of {DAY_MESSAGES_MAX}"
        ));
    }
    Ok(Daily::List(values.to_vec()))
}

/// `start`, as an interval after the run's start.
pub fn start_s(text: Option<&str>) -> Result<u64, String> {
    text.map_or(Ok(0), interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-09-21 is a Monday.
    const MONDAY_S: u64 = 1_789_948_800;

    #[test]
    fn days_follow_the_list_the_window_and_the_weekdays() {
        let daily = list(&[100, 200]).unwrap();
        let window = parse_window("08:00-20:00").unwrap();
        let weekdays = parse_weekdays(&["mon".into(), "tue".into(), "fri".into()]).unwrap();
        let tz = parse_tz("-05:00").unwrap();
        let days = plan(
            &daily,
            window,
            tz,
            weekdays,
            MONDAY_S,
            MONDAY_S,
            MONDAY_S + 7 * 86_400,
        );
        let at: Vec<(u64, u64, u64)> = days
            .iter()
            .map(|d| (d.at_ms / 1000, d.count, d.first))
            .collect();
        // Monday 08:00 in UTC−5 is 13:00 UTC; Tuesday; then Friday; the last value repeats.
        assert_eq!(
            at,
            vec![
                (13 * 3600, 100, 0),
                (86_400 + 13 * 3600, 200, 100),
                (4 * 86_400 + 13 * 3600, 200, 300),
            ]
        );
        assert_eq!(days[0].span_ms, 12 * 3600 * 1000);
        assert_eq!(days[0].offset_ms(50), 13 * 3600 * 1000 + 6 * 3600 * 1000);
    }

    #[test]
    fn growth_rounds_and_caps() {
        let g = growth(20, 1.4, 100).unwrap();
        let v: Vec<u64> = (0..7).map(|n| g.volume(n)).collect();
        assert_eq!(v, vec![20, 28, 39, 55, 77, 100, 100]);
        assert!(growth(0, 1.4, 10).is_err());
        assert!(growth(10, 0.5, 100).is_err());
    }

    #[test]
    fn bad_windows_zones_and_days_say_why() {
        assert!(
            parse_window("20:00-08:00")
                .unwrap_err()
                .contains("ends before")
        );
        assert!(parse_window("8-20").is_err());
        assert_eq!(parse_window("00:00-24:00").unwrap(), (0, 86_400));
        assert_eq!(parse_tz("UTC+2").unwrap(), 7200);
        assert_eq!(parse_tz("+0530").unwrap(), 19_800);
        assert!(parse_tz("Europe/Paris").unwrap_err().contains("offset"));
        assert!(parse_weekdays(&["funday".into()]).is_err());
    }
}
