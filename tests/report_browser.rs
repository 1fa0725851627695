//! The HTML report in a real browser: Debian's headless Chromium (installed by
//! `scripts/test.sh`) loads `report.html` from disk with no console messages, and its
//! screenshot shows the charts (not a blank page).

use std::path::Path;
use std::process::Command;

/// Loads `page` in headless Chromium; returns the console lines it logged and the
/// screenshot.
fn load(page: &Path, shot: &Path, profile: &Path) -> (Vec<String>, image::RgbImage) {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs (scripts/test.sh installs Debian's chromium)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let console = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    let image = image::open(shot).expect("a PNG screenshot").to_rgb8();
    (console, image)
}

/// Share of pixels that are not (nearly) white, and how many distinct colours there are.
fn ink(image: &image::RgbImage) -> (f64, usize) {
    let mut colours = std::collections::BTreeSet::new();
    let mut inked = 0usize;
    for p in image.pixels() {
        colours.insert(p.0);
        if p.0.iter().any(|c| *c < 235) {
            inked += 1;
        }
    }
    (
        inked as f64 / (image.width() * image.height()) as f64,
        colours.len(),
    )
}

#[test]
fn the_report_loads_without_console_errors_and_its_charts_render() {
    let dir = std::env::temp_dir().join(format!("pmta-sim-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The detector itself: a planted console error and a blank page are caught.
    let control = dir.join("control.html");
    std::fs::write(
        &control,
        "<html><body><script>console.error('planted')</script></body></html>",
    )
    .unwrap();
    let (console, blank) = load(
        &control,
        &dir.join("control.png"),
        &dir.join("profile-control"),
    );
    assert!(console.iter().any(|l| l.contains("planted")), "{console:?}");
    assert!(ink(&blank).0 < 0.001, "an empty page is blank");

    // The run gets a directory of its own: `run` replaces only a directory of run files.
    let run_dir = dir.join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
        .args(["run", "scenarios/gmail-patient.toml", "--quiet", "--out"])
        .arg(&run_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    for external in ["<script", "http://", "https://", "<link", "@import", "url("] {
        let outside_svg = html.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !outside_svg.contains(external),
            "self-contained: found `{external}`"
        );
    }
    let (console, shot) = load(
        &run_dir.join("report.html"),
        &dir.join("report.png"),
        &dir.join("profile"),
    );
    assert!(console.is_empty(), "console: {console:?}");
    let (share, colours) = ink(&shot);
    assert!(
        share > 0.05 && colours > 20,
        "{share} inked, {colours} colours"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
