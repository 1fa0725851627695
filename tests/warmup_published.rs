//! The shipped warmup examples (`examples/warmup/published/`): each published schedule and
//! the planner's, replayed against the same list as a scenario with `[[expect]]` tables.
//! The shipped files are what the tool writes now (`scripts/warmup-examples.sh` rewrites
//! them), the README's first day over the deferral bound is what the replay finds, the
//! scenarios pass their own expectations, and `pmta-sim report DIR` rebuilds a check's
//! report, warmup section included, from the `run.json` the check wrote.

mod common;

use common::cli::{pmta_sim, scratch};

const EIGHT_IPS: &str = "examples/warmup/eight-ips-1m.toml";
const PUBLISHED: &str = "examples/warmup/published";

/// What the README says of a schedule's first day over the 5% deferral bound: the day, and
/// the providers over it with the risk kinds the check gives them.
type FirstDayOver = (u32, &'static [(&'static str, &'static [&'static str])]);

/// Each shipped schedule, the days its scenario replays (as in scripts/warmup-examples.sh:
/// through the first day over the bound), and that day (`None`: no day over it in those
/// days).
const SCHEDULES: &[(&str, u32, Option<FirstDayOver>)] = &[
    (
        "kumomta-aggressive",
        2,
        Some((2, &[("gmail", &["throttled"])])),
    ),
    (
        "kumomta-conservative",
        4,
        Some((4, &[("gmail", &["spike", "throttled"])])),
    ),
    ("sendgrid", 4, Some((4, &[("gmail", &["throttled"])]))),
    ("ses", 5, None),
    ("sparkpost", 2, Some((2, &[("gmail", &["throttled"])]))),
    (
        "warmup-plan",
        2,
        Some((2, &[("comcast", &["throttled"]), ("yahoo", &["throttled"])])),
    ),
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The SES ramp as documented (examples/warmup/published/README.md): 200 a day per IP on
/// day 1 growing geometrically to 50,000 on day 45, split 40/20/20/10/10 over the five
/// providers, each rounded half up, over the eight IPs.
#[test]
fn the_ses_schedule_is_the_documented_ramp() {
    let ips = [
        "192.0.2.11",
        "192.0.2.12",
        "192.0.2.13",
        "192.0.2.14",
        "198.51.100.15",
        "198.51.100.16",
        "198.51.100.17",
        "198.51.100.18",
    ];
    let shares = [
        ("gmail", 0.4),
        ("yahoo", 0.2),
        ("outlook", 0.2),
        ("icloud", 0.1),
        ("comcast", 0.1),
    ];
    let mut want = String::from("day,provider,ip,messages\n");
    for day in 1..=45u32 {
        let per_ip = (200.0 * 250f64.powf(f64::from(day - 1) / 44.0) + 0.5).floor();
        for (provider, share) in shares {
            for ip in ips {
                let n = (per_ip * share + 0.5).floor() as u64;
                want.push_str(&format!("{day},{provider},{ip},{n}\n"));
            }
        }
    }
    let shipped = std::fs::read_to_string(format!("{PUBLISHED}/ses.csv")).unwrap();
    assert!(shipped == want, "ses.csv is not the documented ramp");
    assert!(want.contains("45,gmail,192.0.2.11,20000\n"));
}

/// The shipped planner schedule is what `warmup plan` writes for the same input today.
#[test]
fn the_shipped_plan_is_the_planners() {
    let out = scratch("published-plan");
    let run = pmta_sim(&["warmup", "plan", EIGHT_IPS, "--out", out.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let planned = std::fs::read_to_string(out.join("schedule.csv")).unwrap();
    let shipped = std::fs::read_to_string(format!("{PUBLISHED}/warmup-plan.csv")).unwrap();
    assert!(
        planned == shipped,
        "{PUBLISHED}/warmup-plan.csv is not the planner's schedule: run scripts/warmup-examples.sh"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Each shipped scenario is what `warmup check NAME.csv --days N --write-scenario` writes now,
/// and the check finds the first day over the bound where the README says.
#[test]
fn each_shipped_scenario_is_what_the_check_writes() {
    let out = scratch("published-scenarios");
    let mut shipped_csvs: Vec<String> = std::fs::read_dir(PUBLISHED)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".csv").map(str::to_string)
        })
        .collect();
    shipped_csvs.sort();
    let mut listed: Vec<String> = SCHEDULES.iter().map(|s| s.0.to_string()).collect();
    listed.sort();
    assert_eq!(
        shipped_csvs, listed,
        "every shipped schedule is replayed here"
    );
    std::thread::scope(|threads| {
        for schedule in SCHEDULES {
            let out = &out;
            threads.spawn(move || check_one(out, schedule));
        }
    });
    let _ = std::fs::remove_dir_all(&out);
}

/// One schedule of [`SCHEDULES`]: its check writes the shipped scenario, finds the README's
/// first day over the bound, and its report rebuilds from `run.json`.
fn check_one(out: &std::path::Path, (name, days, first_over): &(&str, u32, Option<FirstDayOver>)) {
    let written = out.join(format!("{name}.toml"));
    let check = out.join(format!("check-{name}"));
    let run = pmta_sim(&[
        "warmup",
        "check",
        &format!("{PUBLISHED}/{name}.csv"),
        "--input",
        EIGHT_IPS,
        "--days",
        &days.to_string(),
        "--out",
        check.to_str().unwrap(),
        "--write-scenario",
        written.to_str().unwrap(),
    ]);
    let stdout = text(&run.stdout);
    // Exit 1: risk days (each schedule with a day over the bound has them); 0: none.
    assert_eq!(
        run.status.code(),
        Some(i32::from(first_over.is_some())),
        "{name}: {stdout}{}",
        text(&run.stderr)
    );
    let shipped = std::fs::read_to_string(format!("{PUBLISHED}/{name}.toml")).unwrap();
    assert!(
        std::fs::read_to_string(&written).unwrap() == shipped,
        "{PUBLISHED}/{name}.toml is not what the check writes now: run scripts/warmup-examples.sh"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(check.join("summary.json")).unwrap())
            .unwrap();
    let throttled = |d: &serde_json::Value| {
        d["risks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kind"] == "throttled")
    };
    let first = summary["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| throttled(d))
        .map(|d| d["day"].as_u64().unwrap());
    assert_eq!(
        first,
        first_over.map(|(day, _)| u64::from(day)),
        "{name}: {stdout}"
    );
    report_rebuilds_from_run_json(name, &check, &out.join(format!("rebuilt-{name}")));
    let Some((first_bad, over)) = *first_over else {
        return;
    };
    for (provider, kinds) in over {
        let day = summary["days"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["day"] == first_bad && d["provider"] == *provider)
            .unwrap_or_else(|| panic!("{name}: no day {first_bad} at {provider}"));
        for kind in *kinds {
            assert!(
                day["risks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"] == *kind),
                "{name}: day {first_bad} at {provider} is not {kind}: {stdout}"
            );
        }
    }
    let bad: Vec<&str> = summary["days"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["day"] == first_bad && throttled(d))
        .map(|d| d["provider"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = over.iter().map(|o| o.0).collect();
    assert_eq!(
        bad, want,
        "{name}: providers over the bound on day {first_bad}"
    );
    let page = std::fs::read_to_string(check.join("report.html")).unwrap();
    assert!(
        page.contains("<tr class=\"throttled\">"),
        "{name}: the report lists the day over the bound"
    );
}

/// `pmta-sim report DIR` on a directory holding only the `run.json` a check wrote rebuilds
/// the check's `summary.json`, `warmup.txt` and `report.html` (its warmup section included)
/// byte for byte; a `run.json` whose warmup results are out of order is refused.
fn report_rebuilds_from_run_json(name: &str, check: &std::path::Path, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(check.join("run.json"), dir.join("run.json")).unwrap();
    let run = pmta_sim(&["report", dir.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0), "{name}: {}", text(&run.stderr));
    for file in ["summary.json", "warmup.txt", "report.html"] {
        let written = std::fs::read(check.join(file)).unwrap();
        assert!(
            std::fs::read(dir.join(file)).unwrap() == written,
            "{name}: the rebuilt {file} differs from the check's"
        );
    }
    let page = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let section = &page[page
        .find("<section id=\"warmup\">")
        .expect("a warmup section")..];
    assert!(
        section.contains("id=\"warmup-risks\"") && section.contains("id=\"warmup-schedule\""),
        "{name}: the rebuilt warmup section has its risk days and schedule"
    );
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    json["warmup"]["judgement"]["days"]
        .as_array_mut()
        .unwrap()
        .reverse();
    std::fs::write(dir.join("run.json"), json.to_string()).unwrap();
    let run = pmta_sim(&["report", dir.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2), "{name}");
    assert!(
        text(&run.stderr).contains("comes after"),
        "{name}: {}",
        text(&run.stderr)
    );
}

/// Every shipped scenario holds its own `[[expect]]` tables (each a replay of the days its
/// schedule's check covered).
#[test]
fn the_shipped_scenarios_pass_their_expectations() {
    let out = scratch("published-test");
    let run = pmta_sim(&["test", PUBLISHED, "--out", out.to_str().unwrap()]);
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}{}", text(&run.stderr));
    assert!(stdout.contains("6 scenarios: 6 passed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}
