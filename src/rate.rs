//! Sliding-window rate limits: "at most N events in any window of S seconds", shared by the
//! engine (PowerMTA's limits) and the simulated receivers (providers' limits). Pure.
//!
//! PowerMTA's `max-msg-rate 100/15m` means no 15-minute window ever holds more than 100
//! attempted recipients, so the limiter keeps the times of recent events rather than a
//! token bucket (which would allow a burst of 2N across a window boundary). Events are kept
//! as runs: those of one millisecond share a run, and when a window would need more than
//! [`WINDOW_RUNS_MAX`] runs, events within the horizon's share of a run's first event join
//! it. A run leaves the window with its latest event, so a joined event leaves a little
//! later than it happened, never earlier: every limit, whatever its count (`2000000/h`
//! included), is enforced exactly or slightly under, never over, in bounded memory.

use std::collections::VecDeque;

use crate::config::value::Rate;
use crate::time::Time;

/// Most (time, count) runs one window keeps.
pub const WINDOW_RUNS_MAX: usize = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Runs of events, oldest first: (time of the first event of the run, time of its
    /// latest, events). A run counts as of its latest event.
    runs: VecDeque<(Time, Time, u64)>,
    /// Events in `runs`.
    total: u64,
    /// The longest window any limit asks about, so old events can be dropped.
    horizon_ms: u64,
}

impl Window {
    /// Remembers events for at least `horizon_ms`.
    pub fn new(horizon_ms: u64) -> Window {
        Window {
            runs: VecDeque::new(),
            total: 0,
            horizon_ms,
        }
    }

    /// Events closer together than this join one run: 1 ms unless the horizon holds more
    /// milliseconds than [`WINDOW_RUNS_MAX`] runs.
    fn run_ms(&self) -> u64 {
        (self.horizon_ms / (WINDOW_RUNS_MAX as u64 / 2)).max(1)
    }

    fn prune(&mut self, now: Time) {
        while let Some((_, at, n)) = self.runs.front() {
            if now.since(*at) >= self.horizon_ms {
                self.total -= n;
                self.runs.pop_front();
            } else {
                break;
            }
        }
    }

    /// Events in the last `window_ms` before `now` (after pruning to the horizon).
    fn in_window(&self, now: Time, window_ms: u64) -> u64 {
        if window_ms >= self.horizon_ms {
            return self.total;
        }
        self.runs
            .iter()
            .rev()
            .take_while(|(_, at, _)| now.since(*at) < window_ms)
            .map(|(_, _, n)| n)
            .sum()
    }

    /// How many events `rate` still allows at `now` (`u64::MAX` when unlimited).
    pub fn allowance(&mut self, rate: Rate, now: Time) -> u64 {
        self.prune(now);
        match rate {
            Rate::Unlimited => u64::MAX,
            Rate::Limit { count, per_seconds } => {
                count.saturating_sub(self.in_window(now, per_seconds * 1000))
            }
        }
    }

    /// When `rate` next allows one event, if it allows none now.
    pub fn next_allowed(&mut self, rate: Rate, now: Time) -> Option<Time> {
        if self.allowance(rate, now) > 0 {
            return None;
        }
        let Rate::Limit { count, per_seconds } = rate else {
            return None;
        };
        // Counting back from the newest run, the run that brings the total to `count`:
        // once it ages out, fewer than `count` remain in the window.
        let mut total = 0;
        for (_, at, n) in self.runs.iter().rev() {
            total += n;
            if total >= count {
                return Some(at.plus_secs(per_seconds));
            }
        }
        None
    }

    pub fn record(&mut self, now: Time, events: u64) {
        if events == 0 {
            return;
        }
        let run_ms = self.run_ms();
        self.total += events;
        match self.runs.back_mut() {
            Some((first, last, n)) if now.since(*first) < run_ms => {
                *last = now;
                *n += events;
            }
            _ => self.runs.push_back((now, now, events)),
        }
        self.prune(now);
    }

    /// Runs kept (for memory checks).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_ever_holds_more_than_the_count() {
        let rate = Rate::Limit {
            count: 3,
            per_seconds: 60,
        };
        let mut window = Window::new(60_000);
        let t0 = Time::from_secs(1_000);
        assert_eq!(window.allowance(rate, t0), 3);
        window.record(t0, 2);
        window.record(t0.plus_secs(10), 1);
        assert_eq!(window.allowance(rate, t0.plus_secs(59)), 0);
        assert_eq!(
            window.next_allowed(rate, t0.plus_secs(59)),
            Some(t0.plus_secs(60))
        );
        // At t0+60 the first two age out together.
        assert_eq!(window.allowance(rate, t0.plus_secs(60)), 2);
        assert_eq!(window.allowance(rate, t0.plus_secs(70)), 3);
    }

    #[test]
    fn unlimited_allows_everything() {
        let mut window = Window::new(1000);
        window.record(Time::from_secs(1), 1000);
        assert_eq!(
            window.allowance(Rate::Unlimited, Time::from_secs(1)),
            u64::MAX
        );
        assert_eq!(
            window.next_allowed(Rate::Unlimited, Time::from_secs(1)),
            None
        );
    }

    /// Issue 13 item 4: a rate above 1,048,576 per window is enforced, not silently
    /// unlimited (reference §2.2: `max-msg-rate` counts attempted recipients per interval,
    /// whatever N is).
    #[test]
    fn a_limit_above_a_million_per_window_is_enforced_in_bounded_memory() {
        let rate = Rate::Limit {
            count: 1_500_000,
            per_seconds: 3600,
        };
        let mut window = Window::new(3_600_000);
        let t0 = Time::from_secs(10_000);
        // 1,800,000 attempts, one every 2 ms for an hour: the last 300,000 are refused.
        let mut allowed = 0u64;
        for step in 0..1_800_000u64 {
            let now = t0.plus_ms(step * 2);
            if window.allowance(rate, now) > 0 {
                window.record(now, 1);
                allowed += 1;
            }
        }
        // Events sharing a run leave the window with its latest: a few fewer may be let
        // through, never more.
        assert!(
            (1_499_990..=1_500_000).contains(&allowed),
            "{allowed} allowed"
        );
        assert!(window.runs() <= WINDOW_RUNS_MAX, "{} runs", window.runs());
        assert_eq!(window.allowance(rate, t0.plus_ms(3_599_999)), 0);
        // Once the first hour has passed, room again.
        assert!(window.allowance(rate, t0.plus_secs(3600 + 10)) > 0);
    }
}
