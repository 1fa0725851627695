//! Time as the pure rooms see it: a number the driver passes in, never a clock they read.
//!
//! `Time` counts milliseconds since the Unix epoch. In simulation the driver starts it at
//! the scenario's epoch and advances it; live, the driver reads the wall clock. The engine
//! only compares and adds.

use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    pub ms: u64,
}

impl Time {
    pub const fn from_ms(ms: u64) -> Time {
        Time { ms }
    }

    pub const fn from_secs(seconds: u64) -> Time {
        Time {
            ms: seconds.saturating_mul(1000),
        }
    }

    pub const fn plus_ms(self, ms: u64) -> Time {
        Time {
            ms: self.ms.saturating_add(ms),
        }
    }

    pub const fn plus_secs(self, seconds: u64) -> Time {
        self.plus_ms(seconds.saturating_mul(1000))
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub const fn since(self, earlier: Time) -> u64 {
        self.ms.saturating_sub(earlier.ms)
    }

    /// Seconds since the Unix epoch, rounded down.
    pub const fn unix_secs(self) -> u64 {
        self.ms / 1000
    }

    /// PowerMTA's accounting-file timestamp: `2026-09-21 12:00:00+0000` (UTC).
    pub fn acct_format(self) -> String {
        let secs = self.unix_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rest = secs % 86_400;
        format!(
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}+0000",
            rest / 3600,
            rest / 60 % 60,
            rest % 60
        )
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.acct_format())
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acct_format_matches_powermta() {
        assert_eq!(Time::from_secs(0).acct_format(), "1970-01-01 00:00:00+0000");
        assert_eq!(
            Time::from_secs(1_789_992_000).acct_format(),
            "2026-09-21 12:00:00+0000"
        );
        assert_eq!(
            Time::from_secs(951_782_400).acct_format(),
            "2000-02-29 00:00:00+0000"
        );
    }
}
