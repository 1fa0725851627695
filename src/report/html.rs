//! `report.html`: one self-contained page (no scripts, no external fonts, styles or images)
//! with the summary tables and every chart inlined as SVG.
//!
//! Owns the page layout. Pure: returns the page as a string.

use std::fmt::Write;

use super::charts::Chart;
use super::{Counts, Report};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn deferred(c: &Counts) -> u64 {
    super::total(c.transient_by_class.values().copied())
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| v.to_string())
}

const COLUMNS: [&str; 12] = [
    "injected",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "queued at end",
    "complaints",
    "latency p50/p95 s",
    "backoff entries",
    "backoff s",
    "max conns",
    "peak delivered/h",
];

fn row(out: &mut String, name: &str, c: &Counts) {
    let cells = [
        opt(c.injected),
        c.delivered.to_string(),
        deferred(c).to_string(),
        c.bounced.to_string(),
        c.expired.to_string(),
        opt(c.queued_at_end),
        c.complaints.to_string(),
        format!("{}/{}", c.delivery_latency_s.p50, c.delivery_latency_s.p95),
        c.backoff_entries.to_string(),
        c.backoff_time_s.to_string(),
        c.max_connections.to_string(),
        c.peak_delivered_per_hour.to_string(),
    ];
    let _ = write!(out, "<tr><th>{}</th>", escape(name));
    for cell in cells {
        let _ = write!(out, "<td>{cell}</td>");
    }
    out.push_str("</tr>\n");
}

fn table<'a>(out: &mut String, caption: &str, rows: impl Iterator<Item = (&'a str, &'a Counts)>) {
    let _ = write!(
        out,
        "<table><caption>{}</caption><tr><th></th>",
        escape(caption)
    );
    for c in COLUMNS {
        let _ = write!(out, "<th>{c}</th>");
    }
    out.push_str("</tr>\n");
    for (name, counts) in rows {
        row(out, name, counts);
    }
    out.push_str("</table>\n");
}

/// Where each provider said no: refusals per SMTP step, with the most frequent reply.
fn refusals(out: &mut String, report: &Report) {
    out.push_str("<table><caption>Where each provider said no (refusals by SMTP step)</caption><tr><th></th>");
    for phase in super::PHASES {
        let _ = write!(out, "<th>{phase}</th>");
    }
    out.push_str("</tr>\n");
    for (name, provider) in &report.summary.providers {
        let refusals = provider.refusals();
        let _ = write!(out, "<tr><th>{}</th>", escape(name));
        for phase in super::PHASES {
            match refusals.iter().find(|(p, _, _)| *p == phase) {
                Some((_, n, top)) => {
                    let _ = write!(out, "<td>{n} ({})</td>", escape(top));
                }
                None => out.push_str("<td></td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The daily aggregate spam rate each provider measures, and whether the sender hears of
/// complaints one by one (`reports`), as a daily rate only (`aggregate`) or not at all.
fn spam_rates(out: &mut String, report: &Report) {
    out.push_str("<table><caption>Daily spam rate (complaints ÷ delivered)</caption><tr><th></th><th>feedback</th><th>day</th><th>delivered</th><th>complaints</th><th>spam rate</th></tr>\n");
    for (name, provider) in &report.summary.providers {
        for day in &provider.spam_rate_daily {
            let _ = writeln!(
                out,
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}%</td></tr>",
                escape(name),
                escape(&provider.feedback),
                escape(&day.day),
                day.delivered,
                day.complaints,
                day.spam_rate * 100.0
            );
        }
    }
    out.push_str("</table>\n");
}

/// The page.
pub fn page(report: &Report, charts: &[Chart]) -> String {
    let s = &report.summary;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>pmta-sim: {name} (seed {seed})</title>\n<style>\nbody {{ font-family: sans-serif; margin: 1.5em; color: #222; }}\ntable {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}\ncaption {{ text-align: left; font-weight: bold; padding: 0.3em 0; }}\nth, td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }}\ntr th:first-child {{ text-align: left; }}\nfigure {{ margin: 1.5em 0; }}\nfigure svg {{ max-width: 100%; height: auto; }}\n.why {{ font-family: monospace; }}\n</style>\n</head>\n<body>\n<h1>{name}</h1>\n<p>seed {seed} · {duration} simulated from {start} · pmta-sim {version} · configuration sha256 {hash}</p>\n",
        name = escape(&s.scenario),
        seed = s.seed,
        duration = super::clock(s.duration_s),
        start = escape(&s.start),
        version = escape(&s.version),
        hash = escape(&s.config_sha256[..s.config_sha256.len().min(16)]),
    );
    table(&mut out, "Run", std::iter::once(("all", &s.run)));
    table(
        &mut out,
        "Providers",
        s.providers.iter().map(|(k, v)| (k.as_str(), &v.counts)),
    );
    refusals(&mut out, report);
    spam_rates(&mut out, report);
    table(
        &mut out,
        "Queues",
        s.queues.iter().map(|(k, v)| (k.as_str(), &v.counts)),
    );
    out.push_str("<h2>What held each queue back</h2>\n<ul>\n");
    for q in s.queues.values() {
        let _ = writeln!(
            out,
            "<li class=\"why\">{}</li>",
            escape(&q.binding.explanation)
        );
    }
    out.push_str("</ul>\n");
    table(
        &mut out,
        "Source IPs",
        s.source_ips.iter().map(|(k, v)| (k.as_str(), v)),
    );
    out.push_str("<h2>Charts</h2>\n");
    for chart in charts {
        let svg = chart
            .svg
            .split_once("<svg")
            .map_or(chart.svg.as_str(), |(_, rest)| rest);
        let _ = writeln!(
            out,
            "<figure id=\"{id}\"><svg role=\"img\" aria-label=\"{title}\"{svg}<figcaption>{title} ({id}.svg, {id}.png)</figcaption></figure>",
            id = escape(&chart.name),
            title = escape(&chart.title),
        );
    }
    out.push_str("</body>\n</html>\n");
    out
}
