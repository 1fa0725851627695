//! Sliding-window rate limits: "at most N events in any window of S seconds", shared by the
//! engine (PowerMTA's limits) and the simulated receivers (providers' limits). Pure.
//!
//! PowerMTA's `max-msg-rate 100/15m` means no 15-minute window ever holds more than 100
//! attempted recipients, so the limiter keeps the times of recent events rather than a
//! token bucket (which would allow a burst of 2N across a window boundary). Memory is
//! bounded by the largest count it is asked to enforce, capped at [`WINDOW_EVENTS_MAX`].

use std::collections::VecDeque;

use crate::config::value::Rate;
use crate::time::Time;

/// Most event times one window keeps. A limit above this is enforced as "unlimited" would
/// be for memory's sake; configs with such limits are rare and `check` shows them.
pub const WINDOW_EVENTS_MAX: usize = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct Window {
    events: VecDeque<Time>,
    /// The longest window any limit asks about, so old events can be dropped.
    horizon_ms: u64,
}

impl Window {
    /// Remembers events for at least `horizon_ms`.
    pub fn new(horizon_ms: u64) -> Window {
        Window {
            events: VecDeque::new(),
            horizon_ms,
        }
    }

    fn prune(&mut self, now: Time) {
        while let Some(front) = self.events.front() {
            if now.since(*front) >= self.horizon_ms || self.events.len() > WINDOW_EVENTS_MAX {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// How many events `rate` still allows at `now` (`u64::MAX` when unlimited).
    pub fn allowance(&mut self, rate: Rate, now: Time) -> u64 {
        self.prune(now);
        match rate {
            Rate::Unlimited => u64::MAX,
            Rate::Limit { count, per_seconds } => {
                let window_ms = per_seconds * 1000;
                let in_window = self
                    .events
                    .iter()
                    .rev()
                    .take_while(|t| now.since(**t) < window_ms)
                    .count() as u64;
                count.saturating_sub(in_window)
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
        // The window holds `count` events; one frees when the oldest of them ages out.
        let index = self.events.len().checked_sub(count as usize)?;
        let oldest_counted = self.events.get(index)?;
        Some(oldest_counted.plus_secs(per_seconds))
    }

    pub fn record(&mut self, now: Time, events: u64) {
        for _ in 0..events.min(WINDOW_EVENTS_MAX as u64) {
            self.events.push_back(now);
        }
        self.prune(now);
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
}
