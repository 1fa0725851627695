//! Helpers shared by the integration tests: load a configuration from disk or from text,
//! and list its diagnostics as `(file, line, severity, message)` for exact assertions.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use pmta_sim::config::{self, Checked, MemFs, Options, RealFs, Severity};

pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn load_file(relative: &str, options: Options) -> Checked {
    config::load(&fixture(relative), &RealFs, options).expect("fixture is readable")
}

/// Loads `text` as `/etc/pmta/config`, with `extra` files beside it.
pub fn load_text(text: &str, extra: &[(&str, &str)]) -> Checked {
    let mut fs = MemFs::new().with("/etc/pmta/config", text);
    for (path, body) in extra {
        fs = fs.with(*path, *body);
    }
    config::load(Path::new("/etc/pmta/config"), &fs, Options::default()).expect("in memory")
}

/// `(line, "error"|"warning", message)` for every diagnostic, in order.
pub fn diagnostics(checked: &Checked) -> Vec<(usize, &'static str, String)> {
    checked
        .diagnostics
        .iter()
        .map(|d| {
            let line = d
                .span
                .map_or(0, |s| checked.config.sources.position(s).line);
            let severity = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            (line, severity, d.message.clone())
        })
        .collect()
}

/// Asserts the diagnostics are exactly `expected`: one per entry, in order, each on the
/// given line with the given severity and containing the given text.
pub fn assert_diagnostics(checked: &Checked, expected: &[(usize, &str, &str)]) {
    let found = diagnostics(checked);
    let rendered: Vec<String> = checked
        .diagnostics
        .iter()
        .map(|d| d.render(&checked.config.sources))
        .collect();
    assert_eq!(
        found.len(),
        expected.len(),
        "diagnostic count differs; found:\n{}",
        rendered.join("")
    );
    for ((line, severity, message), (want_line, want_severity, want_text)) in
        found.iter().zip(expected)
    {
        assert!(
            line == want_line && severity == want_severity && message.contains(want_text),
            "expected line {want_line} {want_severity} containing `{want_text}`, found line {line} {severity}: {message}\nall:\n{}",
            rendered.join("")
        );
    }
}

/// Asserts there are no diagnostics at all.
pub fn assert_clean(checked: &Checked) {
    assert_diagnostics(checked, &[]);
}

pub mod checkers;
pub mod cli;
pub mod harness;
pub mod live;
pub mod runs;
