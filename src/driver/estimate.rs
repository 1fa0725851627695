//! What a run will cost, known before it runs: memory and wall time from the scenario's
//! volume, hosts, duration and tick.
//!
//! Owns the cost model and its constants, each measured as `docs/performance.md` shows (a
//! release build on the 2-core CI machine kind). The estimate is an upper bound for memory
//! (so a run it admits does not abort) and a rough figure for time (so a long run is
//! announced). Pure arithmetic: it reads no clock and no machine state; the caller compares
//! it with the memory there is.

use crate::scenario::{Mode, Scenario};

/// Memory of the process before any mail: the engine, the providers, turmoil.
pub const BASE_BYTES: u64 = 48 << 20;
/// Kept per queued message: its header block, envelope and queue entry (the body is shared
/// by the stream). Measured: 200,000 queued messages, 212 MB peak; 2,000,000, 2.0 GB.
pub const QUEUED_MESSAGE_BYTES: u64 = 1_000;
/// Kept per recipient beyond the first of a message, while queued.
pub const EXTRA_RECIPIENT_BYTES: u64 = 80;
/// Turmoil's cost of one step for one host (it steps every host every tick).
pub const STEP_HOST_SECONDS: f64 = 1.5e-6;
/// The engine's, the network's and the provider's work for one recipient's delivery.
pub const RECIPIENT_SECONDS: f64 = 30e-6;
/// The same in fast mode, where no tick is stepped and idle time costs nothing.
pub const FAST_RECIPIENT_SECONDS: f64 = 10e-6;
/// Runs estimated longer than this are announced before they start.
pub const LONG_RUN_SECONDS: f64 = 60.0;

/// A run's estimated cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub messages: u64,
    pub recipients: u64,
    /// Turmoil hosts: one per source IP and MX, and the engine.
    pub hosts: u64,
    /// Simulation steps: the duration over the tick (none in fast mode).
    pub steps: u64,
    /// Most memory the run may use.
    pub memory_bytes: u64,
    /// Wall time in a release build.
    pub wall_s: f64,
}

impl Estimate {
    /// The cost of `scenario` with `source_ips` source IPs in its configuration, whose
    /// longest `bounce-after` is `bounce_after_s`. Only the messages due before the run
    /// ends count, and for memory only those that can be queued at once: a finished
    /// recipient costs nothing (its accounting record is written as it comes and only
    /// counted in the report's figures), and none stays queued past `bounce-after`.
    pub fn of(scenario: &Scenario, source_ips: usize, bounce_after_s: u64) -> Estimate {
        let (mut messages, mut recipients, mut queued_bytes) = (0u64, 0u64, 0u64);
        for w in &scenario.workloads {
            let sent = w.due_by(scenario.duration_s);
            let per_message = u64::from(w.recipients_per_message);
            messages = messages.saturating_add(sent);
            recipients = recipients.saturating_add(sent.saturating_mul(per_message));
            // The messages of any `bounce-after` window bound those queued at once.
            let at_once = w.most_due_within(bounce_after_s, scenario.duration_s);
            let each = QUEUED_MESSAGE_BYTES.saturating_add(
                per_message
                    .saturating_sub(1)
                    .saturating_mul(EXTRA_RECIPIENT_BYTES),
            );
            queued_bytes = queued_bytes.saturating_add(at_once.saturating_mul(each));
        }
        let mx_hosts: usize = scenario.isps.iter().map(|i| i.mx.len()).sum();
        let hosts = (source_ips + mx_hosts + 1) as u64;
        let steps = match scenario.mode {
            Mode::Network => scenario.duration_s.saturating_mul(1000) / scenario.tick_ms.max(1),
            Mode::Fast => 0,
        };
        let memory_bytes = BASE_BYTES.saturating_add(queued_bytes);
        let wall_s = match scenario.mode {
            Mode::Network => {
                steps as f64 * hosts as f64 * STEP_HOST_SECONDS
                    + recipients as f64 * RECIPIENT_SECONDS
            }
            Mode::Fast => recipients as f64 * FAST_RECIPIENT_SECONDS,
        };
        Estimate {
            messages,
            recipients,
            hosts,
            steps,
            memory_bytes,
            wall_s,
        }
    }

    pub fn is_long(&self) -> bool {
        self.wall_s > LONG_RUN_SECONDS
    }
}

/// `1.4 GiB`, `310 MiB`.
pub fn bytes_text(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn scenario(messages: u64, duration: &str, tick_ms: u64, over: &str) -> Scenario {
        let text = format!(
            "name = \"e\"\nseed = 1\nduration = \"{duration}\"\nstart_time = \"2026-09-21T12:00:00Z\"\ntick_ms = {tick_ms}\nconfig = \"c.conf\"\n[isps.a]\ndomains = [\"a.example\"]\n[[workload]]\nvmta = \"v\"\nmail_from = \"n@s.example\"\nmessages = {messages}\nover = \"{over}\"\nrecipients_per_message = 2\ndomains = {{ \"a.example\" = 1.0 }}\n"
        );
        Scenario::parse(Path::new("e.toml"), &text).unwrap()
    }

    const DAY_S: u64 = 86_400;

    #[test]
    fn the_estimate_follows_volume_duration_and_tick() {
        let small = Estimate::of(&scenario(1_000, "1h", 10, "10m"), 2, DAY_S);
        assert_eq!(
            (small.messages, small.recipients, small.hosts),
            (1_000, 2_000, 4)
        );
        assert_eq!(small.steps, 360_000);
        assert_eq!(
            small.memory_bytes,
            BASE_BYTES + 1_000 * (QUEUED_MESSAGE_BYTES + EXTRA_RECIPIENT_BYTES)
        );
        let big = Estimate::of(&scenario(2_000_000, "1h", 10, "10m"), 2, DAY_S);
        assert!(
            big.memory_bytes > 2 << 30,
            "two million queued messages: over 2 GiB"
        );
        let fine = Estimate::of(&scenario(1_000, "1h", 1, "10m"), 2, DAY_S);
        assert_eq!(fine.steps, 10 * small.steps);
        assert!(fine.wall_s > small.wall_s);
        // Messages due after the end are never sent, so they cost nothing.
        let short = Estimate::of(&scenario(1_000, "5m", 10, "10m"), 2, DAY_S);
        assert_eq!(short.messages, 501);
    }

    /// A long run holds at most the messages of one `bounce-after` window at once: thirty
    /// days at a million a day with a one-day `bounce-after` is about a million messages'
    /// memory, not thirty.
    #[test]
    fn a_long_run_is_bounded_by_its_bounce_after_window() {
        let month = scenario(30_000_000, "30d", 1000, "30d");
        let day = Estimate::of(&month, 10, DAY_S);
        assert_eq!(day.messages, 30_000_000);
        let per_message = QUEUED_MESSAGE_BYTES + EXTRA_RECIPIENT_BYTES;
        let at_once = (day.memory_bytes - BASE_BYTES) / per_message;
        assert!((1_000_000..=1_000_002).contains(&at_once), "{at_once}");
        let week = Estimate::of(&month, 10, 7 * DAY_S);
        assert!(week.memory_bytes > 6 * day.memory_bytes);
    }
}
