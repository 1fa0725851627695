//! `pmta-sim diff`: what changed between two runs — every numeric figure of `summary.json`
//! that differs, by path (`providers.gmail.delivered`), and the first line where the two
//! accounting files part.
//!
//! Pure: takes the files' contents, returns text.

use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::printable::escape;

/// Most deltas listed.
pub const DELTAS_MAX: usize = 500;

/// A figure that differs: its path in summary.json, and both values.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    pub path: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
}

fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Delta>) {
    if out.len() >= DELTAS_MAX {
        return;
    }
    // Identity of the runs, not a figure of them.
    if [
        "seed",
        "scenario",
        "version",
        "config_sha256",
        "start",
        "schema_version",
    ]
    .contains(&path)
    {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(&child, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Object(x)), None) => {
            for (k, v) in x {
                walk(&format!("{path}.{k}"), Some(v), None, out);
            }
        }
        (None, Some(Value::Object(y))) => {
            for (k, v) in y {
                walk(&format!("{path}.{k}"), None, Some(v), out);
            }
        }
        (x, y) => {
            let (x, y) = (x.and_then(Value::as_f64), y.and_then(Value::as_f64));
            if x != y && (x.is_some() || y.is_some()) {
                out.push(Delta {
                    path: path.to_string(),
                    a: x,
                    b: y,
                });
            }
        }
    }
}

/// Every numeric figure that differs between two summaries, in path order.
pub fn metric_deltas(a: &Value, b: &Value) -> Vec<Delta> {
    let mut out = Vec::new();
    walk("", Some(a), Some(b), &mut out);
    out
}

/// The first line (1-based) where two accounting files differ, with both lines.
pub fn first_divergence(a: &str, b: &str) -> Option<(usize, String, String)> {
    let (mut x, mut y) = (a.lines(), b.lines());
    for n in 1.. {
        match (x.next(), y.next()) {
            (None, None) => return None,
            (l, r) if l == r => {}
            (l, r) => {
                return Some((
                    n,
                    l.unwrap_or("(end of file)").to_string(),
                    r.unwrap_or("(end of file)").to_string(),
                ));
            }
        }
    }
    None
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(
        || "–".to_string(),
        |v| {
            if v.fract() == 0.0 {
                format!("{}", v as i64)
            } else {
                format!("{v:.4}")
            }
        },
    )
}

pub fn render(
    a: &Path,
    b: &Path,
    deltas: &[Delta],
    divergence: Option<&(usize, String, String)>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A: {}\nB: {}",
        crate::printable::path(a),
        crate::printable::path(b)
    );
    if deltas.is_empty() {
        out.push_str("summary.json: the same figures\n");
    } else {
        let _ = writeln!(out, "summary.json: {} figures differ", deltas.len());
        for d in deltas {
            let change = match (d.a, d.b) {
                (Some(x), Some(y)) => format!("{:+}", y - x),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<60} {:>10} → {:<10} {change}",
                escape(&d.path),
                show(d.a),
                show(d.b)
            );
        }
    }
    match divergence {
        None => out.push_str("acct.csv: identical\n"),
        Some((line, x, y)) => {
            let _ = writeln!(
                out,
                "acct.csv: first difference at line {line}\n  A: {}\n  B: {}",
                escape(x),
                escape(y)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_and_the_first_divergence() {
        let a: Value =
            serde_json::json!({"seed": 1, "providers": {"gmail": {"delivered": 10, "bounced": 0}}});
        let b: Value = serde_json::json!({"seed": 2, "providers": {"gmail": {"delivered": 12, "bounced": 0}, "yahoo": {"delivered": 1}}});
        let deltas = metric_deltas(&a, &b);
        assert_eq!(
            deltas,
            vec![
                Delta {
                    path: "providers.gmail.delivered".into(),
                    a: Some(10.0),
                    b: Some(12.0)
                },
                Delta {
                    path: "providers.yahoo.delivered".into(),
                    a: None,
                    b: Some(1.0)
                },
            ]
        );
        assert_eq!(
            first_divergence("h\nx\ny\n", "h\nx\nz\n"),
            Some((3, "y".into(), "z".into()))
        );
        assert_eq!(first_divergence("h\n", "h\n"), None);
        assert_eq!(
            first_divergence("h\n", "h\nmore\n"),
            Some((2, "(end of file)".into(), "more".into()))
        );
    }
}
