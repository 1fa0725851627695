//! Repository rules that the compiler cannot check.
//!
//! - The pure rooms (`engine`, `isp`, `smtp`, `config`, `scenario`, `report`, `auth`, `inbound`, `sim`, and the
//!   shared `time.rs`, `rate.rs` and `printable.rs`) import no async runtime or simulator,
//!   read no clock and draw no unseeded randomness, and use no `HashMap`/`HashSet`
//!   (iteration order must be deterministic).
//! - The repository's top level holds only known entries.
//! - Every source file opens with a `//!` comment saying what it owns.
//! - ARCHITECTURE.md names every room and file under `src/`.

use std::fs;
use std::path::{Path, PathBuf};

const PURE_ROOMS: &[&str] = &[
    "engine",
    "isp",
    "smtp",
    "config",
    "scenario",
    "report",
    "auth",
    "inbound",
    "sim",
    "warmup",
    "time.rs",
    "rate.rs",
    "printable.rs",
];
const FORBIDDEN: &[&str] = &[
    "tokio",
    "turmoil",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "rand::rng(",
    "HashMap",
    "HashSet",
    "std::time::Instant",
];

/// Named exceptions, each with its reason. mail-auth's resolver cache trait takes an expiry
/// `std::time::Instant` in its signature; the simulated zone's cache ignores it and never
/// reads a clock (`Instant::now` stays forbidden there too).
const ALLOWED: &[(&str, &str)] = &[("src/sim/mailauth.rs", "std::time::Instant")];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.map(|e| e.expect("readable dir").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn pure_rooms_stay_pure() {
    let mut violations = Vec::new();
    for room in PURE_ROOMS {
        let mut files = Vec::new();
        let path = root().join("src").join(room);
        if path.is_file() {
            files.push(path);
        } else {
            rust_files(&path, &mut files);
        }
        for file in files {
            let text = fs::read_to_string(&file).expect("readable");
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in FORBIDDEN {
                    let allowed = ALLOWED
                        .iter()
                        .any(|(suffix, w)| file.ends_with(suffix) && w == word);
                    if code.contains(word) && !allowed {
                        violations.push(format!("{}:{}: `{word}`", file.display(), number + 1));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "pure rooms must not use:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_pure_room_exists() {
    // A renamed room must not silently drop out of the purity check.
    for room in PURE_ROOMS {
        let path = root().join("src").join(room);
        assert!(
            path.exists(),
            "{} is listed as pure but missing",
            path.display()
        );
    }
}

/// What may sit at the top of the repository. Anything else (a stray shell redirect once
/// committed files named `0`, `{` and `true,`) is a mistake.
const TOP_LEVEL: &[&str] = &[
    ".ci",
    ".git",
    ".gitignore",
    "ARCHITECTURE.md",
    "Cargo.lock",
    "Cargo.toml",
    "README.md",
    "assets",
    "benches",
    "docs",
    "examples",
    "isp-models",
    "reports",
    "scenarios",
    "scripts",
    "src",
    "target",
    "tests",
];

#[test]
fn the_top_level_holds_only_known_entries() {
    let mut unknown: Vec<String> = fs::read_dir(root())
        .expect("the root is readable")
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .filter(|name| !TOP_LEVEL.contains(&name.as_str()))
        .collect();
    unknown.sort();
    assert!(
        unknown.is_empty(),
        "unexpected entries at the repository root: {unknown:?} (add real ones to TOP_LEVEL)"
    );
}

#[test]
fn the_tidy_check_can_fail() {
    // Guard against a vacuous check: the config room exists and is scanned.
    let mut files = Vec::new();
    rust_files(&root().join("src/config"), &mut files);
    assert!(files.len() >= 5);
    assert!("let x = std::time::Instant::now();".contains(FORBIDDEN[2]));
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for file in files {
        let text = fs::read_to_string(&file).expect("readable");
        assert!(
            text.starts_with("//!"),
            "{} must open with a `//!` comment",
            file.display()
        );
    }
}

#[test]
fn architecture_md_maps_every_source_file() {
    let map = fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md exists");
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for file in files {
        let relative = file.strip_prefix(root()).expect("under root");
        let name = relative.to_string_lossy().replace('\\', "/");
        assert!(
            map.contains(&name),
            "ARCHITECTURE.md does not mention `{name}`"
        );
    }
}

#[test]
fn every_select_is_biased() {
    // An unbiased `select!` polls its branches in a random order, which breaks replay.
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut selects = 0;
    for file in files {
        let text = fs::read_to_string(&file).expect("readable");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("select! {") {
            selects += 1;
            let after = rest[at + "select! {".len()..].trim_start();
            assert!(
                after.starts_with("biased;"),
                "{}: a select! without `biased;`",
                file.display()
            );
            rest = &rest[at + 1..];
        }
    }
    assert!(
        selects > 0,
        "the check found no select! at all: is the pattern stale?"
    );
}

#[test]
fn the_engine_reads_directives_only_through_its_settings_reader() {
    // `engine::settings::simulated` is what `check` trusts: a directive read anywhere else
    // in the engine (`settings.get("max-smtp-out")`) would escape it.
    let mut files = Vec::new();
    rust_files(&root().join("src/engine"), &mut files);
    rust_files(&root().join("src/auth"), &mut files);
    let mut violations = Vec::new();
    let mut scanned = 0;
    for file in files {
        if file.ends_with("settings.rs") {
            continue;
        }
        scanned += 1;
        let text = fs::read_to_string(&file).expect("readable");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for call in [".get(\"", ".get_all(\""] {
                if let Some(at) = code.find(call) {
                    let name: String = code[at + call.len()..]
                        .chars()
                        .take_while(|c| *c != '"')
                        .collect();
                    if pmta_sim::config::directives::lookup(&name).is_some() {
                        violations.push(format!("{}:{}: `{name}`", file.display(), number + 1));
                    }
                }
            }
        }
    }
    assert!(scanned >= 4, "the engine's files were not found");
    assert!(
        violations.is_empty(),
        "read these through engine::settings:\n{}",
        violations.join("\n")
    );
}
