//! The HTML report in a real browser: Debian's headless Chromium (installed by
//! `scripts/test.sh`) loads `report.html` from disk with no console messages, and its
//! screenshot shows the charts (not a blank page).

use std::path::Path;
use std::process::Command;

/// Runs headless Chromium on `page` with `extra` arguments and a profile of its own.
fn chromium(page: &Path, profile: &Path, extra: &[String]) -> std::process::Output {
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
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs (scripts/test.sh installs Debian's chromium)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Loads `page` in headless Chromium; returns the console lines it logged and the
/// screenshot.
fn load(page: &Path, shot: &Path, profile: &Path) -> (Vec<String>, image::RgbImage) {
    let output = chromium(
        page,
        profile,
        &[
            "--enable-logging=stderr".to_string(),
            "--v=0".to_string(),
            "--window-size=1200,2000".to_string(),
            format!("--screenshot={}", shot.display()),
        ],
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

/// The DOM Chromium builds from `page` (`--dump-dom`).
fn dom(page: &Path, profile: &Path) -> String {
    let output = chromium(page, profile, &["--dump-dom".to_string()]);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `warmup check`'s report.html: Chromium loads it without console messages, and the DOM it
/// builds has the warmup section with its facts: the risk day with reason and change, the
/// daily chart (one planned and one delivered bar per day), the IP's standing, the warm day.
#[test]
fn the_warmup_section_renders_with_its_facts() {
    let dir = std::env::temp_dir().join(format!("pmta-sim-browser-warmup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("input.toml");
    std::fs::write(
        &input,
        "target_per_day = 1000\nnew_ips = [\"192.0.2.11\"]\nmail_from = \"news@sender.example\"\nengagement = 0.3\n\n[providers]\ngmail = 1.0\n",
    )
    .unwrap();
    let schedule = dir.join("schedule.csv");
    std::fs::write(
        &schedule,
        "day,provider,ip,messages\n1,gmail,192.0.2.11,100\n2,gmail,192.0.2.11,400\n",
    )
    .unwrap();
    let out = dir.join("check");
    let run = Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
        .args(["warmup", "check"])
        .arg(&schedule)
        .arg("--input")
        .arg(&input)
        .args(["--days", "2", "--out"])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let page = out.join("report.html");
    let (console, _) = load(&page, &dir.join("warmup.png"), &dir.join("profile-shot"));
    assert!(console.is_empty(), "console: {console:?}");
    let dom = dom(&page, &dir.join("profile-dom"));
    let section = &dom[dom
        .find("<section id=\"warmup\">")
        .expect("a warmup section")..];
    // 100 then 400 to a cold Gmail IP (20 an hour): day 2 is throttled at Gmail.
    assert!(
        section.contains("<tr class=\"throttled\"><th>2</th><td>gmail</td><td>throttled:"),
        "{section}"
    );
    assert!(section.contains("send at most"), "{section}");
    assert!(section.contains("4.7.28"), "{section}");
    let chart = &section[section
        .find("id=\"warmup-chart-gmail\"")
        .expect("gmail's chart")..];
    assert_eq!(
        chart.matches("class=\"planned\"").count(),
        2,
        "one bar a day"
    );
    assert!(chart.contains("day 2: 400 planned"), "{chart}");
    assert!(
        section.contains("<td>gmail</td><td>192.0.2.11</td><td>0.500</td><td>20</td>"),
        "day 1's standing: {section}"
    );
    assert!(section.contains("id=\"warmup-warm\""), "{section}");
    let _ = std::fs::remove_dir_all(&dir);
}
