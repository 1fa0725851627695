//! The terminal summary: one compact table per provider and per queue, then one line per
//! queue saying what held it back. Colour (ANSI) only when the caller says the output is a
//! terminal. Pure: returns the text.

use std::fmt::Write;

use super::{Counts, Summary};
use crate::printable::escape;

const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

fn line(out: &mut String, name: &str, c: &Counts, colour: bool) {
    let deferred = super::total(c.transient_by_class.values().copied());
    let paint = |text: String, code: &str, on: bool| {
        if colour && on {
            format!("{code}{text}{RESET}")
        } else {
            text
        }
    };
    let name = escape(name);
    let _ = writeln!(
        out,
        "  {name:<28} {:>9} {:>9} {} {} {:>7} {:>8} {:>9}",
        c.injected.map_or("-".into(), |v| v.to_string()),
        c.delivered,
        paint(format!("{deferred:>9}"), YELLOW, deferred > 0),
        paint(format!("{:>8}", c.bounced), RED, c.bounced > 0),
        c.queued_at_end.map_or("-".into(), |v| v.to_string()),
        c.backoff_entries,
        c.delivery_latency_s.p95,
    );
}

fn header(out: &mut String, title: &str, colour: bool) {
    let head = format!(
        "  {title:<28} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8} {:>9}",
        "injected", "delivered", "deferred", "bounced", "queued", "backoff", "p95 s"
    );
    if colour {
        let _ = writeln!(out, "{BOLD}{head}{RESET}");
    } else {
        let _ = writeln!(out, "{head}");
    }
}

/// The summary as the terminal shows it.
pub fn table(summary: &Summary, colour: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: seed {}, {} simulated",
        escape(&summary.scenario),
        summary.seed,
        super::clock(summary.duration_s)
    );
    header(&mut out, "provider", colour);
    for (name, provider) in &summary.providers {
        line(&mut out, name, &provider.counts, colour);
    }
    line(&mut out, "all", &summary.run, colour);
    for (name, provider) in &summary.providers {
        let refusals = provider.refusals();
        if refusals.is_empty() {
            continue;
        }
        let steps: Vec<String> = refusals
            .iter()
            .map(|(phase, n, top)| format!("{phase} {n} ({top})"))
            .collect();
        let _ = writeln!(out, "  {name} said no at: {}", steps.join(", "));
    }
    header(&mut out, "queue", colour);
    for (name, q) in &summary.queues {
        line(&mut out, name, &q.counts, colour);
    }
    for q in summary.queues.values() {
        // The explanation quotes the provider's reply: escaped like any text from outside.
        let _ = writeln!(out, "  {}", escape(&q.binding.explanation));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_when_asked_and_one_line_per_queue() {
        let mut summary = Summary {
            schema_version: 1,
            scenario: "s".into(),
            seed: 1,
            version: "0".into(),
            config_sha256: String::new(),
            start: String::new(),
            duration_s: 3600,
            run: Counts::default(),
            providers: Default::default(),
            queues: Default::default(),
            source_ips: Default::default(),
            refused: Default::default(),
            pattern_failures: Vec::new(),
        };
        let mut gmail = super::super::ProviderSummary::default();
        gmail
            .refusals_by_phase
            .entry("data_end".into())
            .or_default()
            .insert("421 4.7.28".into(), 12);
        gmail
            .refusals_by_phase
            .entry("rcpt".into())
            .or_default()
            .extend([("550 5.1.1".to_string(), 2), ("452 4.2.2".to_string(), 1)]);
        summary.providers.insert("gmail".into(), gmail);
        let mut q = super::super::QueueSummary::default();
        q.counts.bounced = 3;
        q.binding.explanation = "gmail.com/v: held back by max-msg-rate 10/m for 50%".into();
        summary.queues.insert("gmail.com/v".into(), q);
        let plain = table(&summary, false);
        assert!(!plain.contains('\x1b'));
        assert!(plain.contains("\n  gmail.com/v: held back by max-msg-rate 10/m for 50%\n"));
        // The steps in conversation order, each with its most frequent reply.
        assert!(
            plain.contains("\n  gmail said no at: rcpt 3 (550 5.1.1), data_end 12 (421 4.7.28)\n"),
            "{plain}"
        );
        let coloured = table(&summary, true);
        assert!(
            coloured.contains(&format!("{RED}       3{RESET}")),
            "{coloured}"
        );
    }
}
