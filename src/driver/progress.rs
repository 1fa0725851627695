//! The terminal progress bar of a long run (indicatif, on stderr).
//!
//! Owns the only wall clock a run reads: how long the run has taken, to wait a couple of
//! seconds before showing the bar and to print messages per wall second. It must never feed
//! anything back into the simulation; the run's output does not depend on it.

use std::io::IsTerminal;

use crate::sim::Progress;

/// The progress bar of a long run: simulated time, messages accepted, speed. Shown only on a
/// terminal, and only once a run has taken a couple of seconds.
pub struct Bar {
    bar: Option<indicatif::ProgressBar>,
    hidden: bool,
    started: std::time::Instant,
}

/// Wall time before a run shows its progress bar.
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl Bar {
    pub fn new(hidden: bool) -> Bar {
        Bar {
            bar: None,
            hidden: hidden || !std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
        }
    }

    pub fn update(&mut self, p: Progress) {
        if self.hidden || self.started.elapsed() < PROGRESS_AFTER {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(p.duration_s);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {msg} [{elapsed_precise}]")
                    .expect("the template is valid"),
            );
            bar
        });
        bar.set_position(p.simulated_s);
        let wall = self.started.elapsed().as_secs_f64().max(0.001);
        bar.set_message(format!(
            "{} of {} simulated, {} messages accepted, {:.0} messages/s",
            crate::report::clock(p.simulated_s),
            crate::report::clock(p.duration_s),
            p.accepted,
            p.accepted as f64 / wall
        ));
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
