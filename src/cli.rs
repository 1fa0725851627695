//! The command line: argument parsing, output formatting and exit statuses.
//!
//! This is the edge: it may print and touch the real file system. It holds no
//! logic of its own beyond presentation; what a command computes lives in the library rooms.
//!
//! Exit statuses (documented in the README):
//! - 0: the configuration is valid (warnings allowed); a run's expectations all hold; two
//!   runs are the same (`diff`);
//! - 1: the configuration has errors (all of them are printed); an expectation failed; two
//!   runs differ;
//! - 2: the input could not be read, or the command line is wrong.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Checked, Options, RealFs, queue};
use crate::driver;
use crate::engine::accounting::CsvWriter;
use crate::engine::classify::{self, Classifier};
use crate::report;
use crate::scenario::ConfigSource;

#[derive(Parser, Debug)]
#[command(
    name = "pmta-sim",
    version,
    about = "PowerMTA configurations, simulated and checked"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a PowerMTA configuration and summarize it, or explain one queue's settings.
    Check {
        /// The configuration file (includes are followed).
        config: PathBuf,
        /// Print the effective settings of queue DOMAIN/VMTA and where each came from.
        #[arg(long, value_name = "DOMAIN/VMTA")]
        explain: Option<String>,
        /// With --explain: print one JSON object (the format is documented in the README).
        #[arg(long, requires = "explain")]
        json: bool,
        /// Check for live sending: unreadable DKIM keys become errors.
        #[arg(long)]
        live: bool,
    },
    /// Run a scenario in the network simulator and write its accounting file.
    Run {
        /// The scenario file (scenarios/*.toml).
        scenario: PathBuf,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write the run's files (default: reports/<scenario-name>-<seed>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print nothing but errors (no progress, no summary table).
        #[arg(long)]
        quiet: bool,
        /// Print summary.json to stdout instead of the table.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
        /// Write the expectations' results as JUnit XML.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Run every seed of A..B (e.g. 1..20), each into DIR/<name>-<seed>/, and report each
        /// expectation's pass rate.
        #[arg(long, value_name = "A..B", value_parser = parse_seeds, conflicts_with = "seed")]
        seeds: Option<(u64, u64)>,
    },
    /// Run every scenario of the given folders and files (default: scenarios/) in parallel and
    /// check their expectations.
    Test {
        /// Folders (their *.toml) and scenario files.
        paths: Vec<PathBuf>,
        /// Where the run directories go (default: reports/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write every expectation's result as JUnit XML.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Compare two run directories: metric deltas per provider and queue, and the first line
    /// where their accounting files differ.
    Diff { a: PathBuf, b: PathBuf },
    /// Rebuild a run directory's report (summary.json, report.html, charts) from its
    /// acct.csv and run.json.
    Report {
        /// A directory `pmta-sim run` wrote.
        dir: PathBuf,
    },
    /// Classify an SMTP reply as the engine would: disposition, bounce category, and the
    /// smtp-pattern-list action it would fire.
    Classify {
        /// The reply, e.g. "421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred".
        reply: String,
        /// Use this configuration's bounce categories and smtp pattern lists (default: the
        /// stock bounce-category list, no pattern lists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON object (the format is documented in the README).
        #[arg(long)]
        json: bool,
    },
}

pub const EXIT_VALID: u8 = 0;
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_UNREADABLE: u8 = 2;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                EXIT_UNREADABLE
            } else {
                EXIT_VALID
            });
        }
    };
    match cli.command {
        Command::Check {
            config,
            explain,
            json,
            live,
        } => ExitCode::from(check(&config, explain.as_deref(), json, Options { live })),
        Command::Classify {
            reply,
            config,
            json,
        } => ExitCode::from(classify(&reply, config.as_deref(), json)),
        Command::Run {
            scenario,
            seed,
            out,
            quiet,
            json,
            junit,
            seeds,
        } => {
            let show = if quiet {
                Show::Quiet
            } else if json {
                Show::Json
            } else {
                Show::Table
            };
            ExitCode::from(run(&scenario, seed, seeds, out, show, junit))
        }
        Command::Test { paths, out, junit } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from("scenarios")]
            } else {
                paths
            };
            ExitCode::from(test(&paths, out, junit))
        }
        Command::Diff { a, b } => ExitCode::from(diff(&a, &b)),
        Command::Report { dir } => ExitCode::from(rebuild_report(&dir)),
    }
}

/// How much `run_one` prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Show {
    /// The terminal table and a progress bar.
    Table,
    /// summary.json on stdout.
    Json,
    /// Nothing but errors.
    Quiet,
}

/// A finished run: where its files are, its summary and its expectations.
struct Finished {
    scenario: String,
    seed: u64,
    outcomes: Vec<report::expect::Outcome>,
}

/// A run's result: `Err` holds the exit status and the message for stderr.
type RunResult = Result<Finished, (u8, String)>;

/// `run` for one scenario and seed: runs, writes the run directory, builds the report and
/// checks the expectations. `Err` holds the exit status and the message for stderr.
fn run_one(
    path: &std::path::Path,
    seed: Option<u64>,
    out: Option<PathBuf>,
    show: Show,
) -> RunResult {
    let unreadable = |m: String| (EXIT_UNREADABLE, m);
    let mut scenario = driver::load_scenario(path).map_err(|e| unreadable(e.to_string()))?;
    if let Some(seed) = seed {
        scenario.seed = seed;
    }
    let checked = match &scenario.config {
        ConfigSource::Path(config_path) => config::load(config_path, &RealFs, Options::default()),
        ConfigSource::Inline(text) => {
            let inline = path.with_extension("inline.conf");
            config::load(
                &inline,
                &config::MemFs::new().with(&inline, text.as_bytes()),
                Options::default(),
            )
        }
    };
    let checked = checked.map_err(|e| unreadable(format!("error: {e}")))?;
    let rendered: String = checked
        .diagnostics
        .iter()
        .map(|d| d.render(&checked.config.sources))
        .collect();
    if checked.error_count() > 0 {
        // Printed once, by the caller, with the verdict.
        return Err(unreadable(format!(
            "{rendered}error: the scenario's configuration is invalid"
        )));
    }
    if show != Show::Quiet {
        eprint!("{rendered}");
    }
    let config_sha256 = driver::config_sha256(&checked.config.sources);
    let mut bar = driver::progress::Bar::new(show != Show::Table);
    let ran = driver::network::run_with_progress(&scenario, checked.config, &mut |p| bar.update(p));
    bar.finish();
    let output = ran.map_err(|e| unreadable(format!("error: {e}")))?;
    let dir = out.unwrap_or_else(|| {
        PathBuf::from("reports").join(format!("{}-{}", scenario.name, scenario.seed))
    });
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let file = std::fs::File::create(dir.join("acct.csv"))?;
        let mut writer = CsvWriter::new(std::io::BufWriter::new(file))?;
        for record in &output.records {
            writer.write(record)?;
        }
        writer
            .finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
    });
    written.map_err(|e| {
        unreadable(format!(
            "error: cannot write `{}`: {e}",
            dir.join("acct.csv").display()
        ))
    })?;
    let data = output.run_data(&scenario, config_sha256);
    let json_text = serde_json::to_string(&data).expect("run data always serializes");
    std::fs::write(dir.join("run.json"), json_text + "\n").map_err(|e| {
        unreadable(format!(
            "error: cannot write `{}`: {e}",
            dir.join("run.json").display()
        ))
    })?;
    // The report is built from the files just written, exactly as `pmta-sim report` does.
    let (summary, data, rows) =
        write_report(&dir).map_err(|e| unreadable(format!("error: {e}")))?;
    let outcomes = report::expect::evaluate(&scenario.expect, &data, &rows);
    match show {
        Show::Json => print!("{}", report::summary_json(&summary)),
        Show::Table => {
            let colour = std::io::stdout().is_terminal();
            print!("{}", report::terminal::table(&summary, colour));
            if !outcomes.is_empty() {
                print!("{}", report::expect::table(&scenario.name, &outcomes));
            }
            println!("report: {}", dir.join("report.html").display());
        }
        Show::Quiet => {
            for o in outcomes.iter().filter(|o| !o.passed) {
                eprintln!(
                    "{}: line {}: expectation failed: {} (measured {})",
                    path.display(),
                    o.line,
                    o.text,
                    o.measured
                );
            }
        }
    }
    Ok(Finished {
        scenario: scenario.name,
        seed: scenario.seed,
        outcomes,
    })
}

fn write_junit(
    file: &std::path::Path,
    suites: &[(String, Vec<report::expect::Outcome>)],
) -> Result<(), String> {
    std::fs::write(file, report::expect::junit(suites))
        .map_err(|e| format!("error: cannot write `{}`: {e}", file.display()))
}

/// `pmta-sim run`.
fn run(
    path: &std::path::Path,
    seed: Option<u64>,
    seeds: Option<(u64, u64)>,
    out: Option<PathBuf>,
    show: Show,
    junit: Option<PathBuf>,
) -> u8 {
    let Some((first, last)) = seeds else {
        return match run_one(path, seed, out, show) {
            Ok(finished) => {
                let suites = [(finished.scenario.clone(), finished.outcomes.clone())];
                if let Some(file) = junit
                    && let Err(e) = write_junit(&file, &suites)
                {
                    eprintln!("{e}");
                    return EXIT_UNREADABLE;
                }
                if finished.outcomes.iter().all(|o| o.passed) {
                    EXIT_VALID
                } else {
                    EXIT_INVALID
                }
            }
            Err((code, message)) => {
                eprintln!("{message}");
                code
            }
        };
    };
    // Many seeds: each run in its own directory; each expectation's pass rate.
    let mut rates: Vec<(usize, String, u64, Vec<u64>)> = Vec::new();
    let mut suites = Vec::new();
    let base = out.unwrap_or_else(|| PathBuf::from("reports"));
    for seed in first..=last {
        let name = path
            .file_stem()
            .map_or("run".into(), |s| s.to_string_lossy().to_string());
        let dir = base.join(format!("{name}-{seed}"));
        match run_one(path, Some(seed), Some(dir), Show::Quiet) {
            Ok(finished) => {
                for (i, o) in finished.outcomes.iter().enumerate() {
                    if rates.len() <= i {
                        rates.push((o.line, o.text.clone(), 0, Vec::new()));
                    }
                    if o.passed {
                        rates[i].2 += 1;
                    } else {
                        rates[i].3.push(finished.seed);
                    }
                }
                suites.push((
                    format!("{} seed {seed}", finished.scenario),
                    finished.outcomes,
                ));
            }
            Err((code, message)) => {
                eprintln!("{message}");
                return code;
            }
        }
    }
    let runs = last - first + 1;
    if show != Show::Quiet {
        println!(
            "{} over seeds {first}..{last} ({runs} runs)",
            path.display()
        );
        for (line, text, passed, failing) in &rates {
            let seeds_text = if failing.is_empty() {
                String::new()
            } else {
                format!(
                    "  failing seeds: {}",
                    failing
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            };
            println!(
                "  {:>3}%  line {line:<4} {text}  ({passed}/{runs}){seeds_text}",
                passed * 100 / runs
            );
        }
    }
    if let Some(file) = junit
        && let Err(e) = write_junit(&file, &suites)
    {
        eprintln!("{e}");
        return EXIT_UNREADABLE;
    }
    if rates.iter().all(|(_, _, passed, _)| *passed == runs) {
        EXIT_VALID
    } else {
        EXIT_INVALID
    }
}

/// `pmta-sim test`: every scenario of the folders and files given, in parallel.
fn test(paths: &[PathBuf], out: Option<PathBuf>, junit: Option<PathBuf>) -> u8 {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect(),
                Err(e) => {
                    eprintln!("error: cannot read `{}`: {e}", path.display());
                    return EXIT_UNREADABLE;
                }
            };
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let base = out.unwrap_or_else(|| PathBuf::from("reports"));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<RunResult>>> =
        std::sync::Mutex::new((0..files.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(file) = files.get(i) else {
                        break;
                    };
                    let stem = file
                        .file_stem()
                        .map_or("run".into(), |s| s.to_string_lossy().to_string());
                    let result = run_one(file, None, Some(base.join(stem)), Show::Quiet);
                    results.lock().expect("no worker panics while holding it")[i] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().expect("workers are done");
    let mut suites = Vec::new();
    let (mut failed, mut broken) = (0, 0);
    for (file, result) in files.iter().zip(results) {
        match result.expect("every file ran") {
            Ok(finished) => {
                let bad = finished.outcomes.iter().filter(|o| !o.passed).count();
                println!(
                    "{}  {}  {} expectations, {bad} failed",
                    if bad == 0 { "pass" } else { "FAIL" },
                    file.display(),
                    finished.outcomes.len()
                );
                if bad > 0 {
                    failed += 1;
                }
                suites.push((finished.scenario, finished.outcomes));
            }
            Err((_, message)) => {
                println!("ERROR {}", file.display());
                eprintln!("{message}");
                broken += 1;
            }
        }
    }
    println!(
        "{} scenarios: {} passed, {failed} failed, {broken} could not run",
        files.len(),
        files.len() - failed - broken
    );
    if let Some(file) = junit
        && let Err(e) = write_junit(&file, &suites)
    {
        eprintln!("{e}");
        return EXIT_UNREADABLE;
    }
    if broken > 0 {
        EXIT_UNREADABLE
    } else if failed > 0 {
        EXIT_INVALID
    } else {
        EXIT_VALID
    }
}

/// `A..B` (inclusive, at most 1,000 seeds).
fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not a seed range such as 1..20"))?;
    let (a, b): (u64, u64) = (
        a.parse().map_err(|_| format!("`{a}` is not a seed"))?,
        b.parse().map_err(|_| format!("`{b}` is not a seed"))?,
    );
    if a > b || b - a >= 1000 {
        return Err(format!(
            "`{text}`: the range must go up and hold at most 1,000 seeds"
        ));
    }
    Ok((a, b))
}

/// `pmta-sim diff A B`: 0 when the runs are the same, 1 when they differ, 2 when a run
/// directory cannot be read.
fn diff(a: &std::path::Path, b: &std::path::Path) -> u8 {
    let read = |dir: &std::path::Path, name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("error: cannot read `{}`: {e}", dir.join(name).display()))
    };
    let loaded = (|| -> Result<_, String> {
        let summary = |dir: &std::path::Path| -> Result<serde_json::Value, String> {
            serde_json::from_str(&read(dir, "summary.json")?)
                .map_err(|e| format!("error: `{}`: {e}", dir.join("summary.json").display()))
        };
        Ok((
            summary(a)?,
            summary(b)?,
            read(a, "acct.csv")?,
            read(b, "acct.csv")?,
        ))
    })();
    let (sa, sb, acct_a, acct_b) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_UNREADABLE;
        }
    };
    let deltas = report::diff::metric_deltas(&sa, &sb);
    let divergence = report::diff::first_divergence(&acct_a, &acct_b);
    print!(
        "{}",
        report::diff::render(a, b, &deltas, divergence.as_ref())
    );
    if deltas.is_empty() && divergence.is_none() {
        EXIT_VALID
    } else {
        EXIT_INVALID
    }
}

/// `pmta-sim report DIR`.
fn rebuild_report(dir: &std::path::Path) -> u8 {
    match write_report(dir) {
        Ok(_) => {
            println!("report: {}", dir.join("report.html").display());
            EXIT_VALID
        }
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_UNREADABLE
        }
    }
}

/// Reads `acct.csv` and `run.json` in `dir`, writes `summary.json`, `report.html` and the
/// charts (`charts/*.svg`, `charts/*.png`), and returns the summary.
fn write_report(
    dir: &std::path::Path,
) -> Result<(report::Summary, report::RunData, Vec<report::Row>), String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("cannot read `{}`: {e}", dir.join(name).display()))
    };
    let acct_path = dir.join("acct.csv").display().to_string();
    let rows = report::read_acct(&acct_path, &read("acct.csv")?).map_err(|e| e.to_string())?;
    let data: report::RunData = serde_json::from_str(&read("run.json")?).map_err(|e| {
        format!(
            "`{}`:{}:{}: {e}",
            dir.join("run.json").display(),
            e.line(),
            e.column()
        )
    })?;
    if data.schema_version != report::SCHEMA_VERSION {
        return Err(format!(
            "`{}` has schema version {}; this pmta-sim reads version {}",
            dir.join("run.json").display(),
            data.schema_version,
            report::SCHEMA_VERSION
        ));
    }
    let built = report::build(&data, &rows);
    let charts = report::charts::render(&built);
    let write = |name: &std::path::Path, bytes: &[u8]| {
        std::fs::write(name, bytes).map_err(|e| format!("cannot write `{}`: {e}", name.display()))
    };
    let chart_dir = dir.join("charts");
    std::fs::create_dir_all(&chart_dir)
        .map_err(|e| format!("cannot create `{}`: {e}", chart_dir.display()))?;
    for chart in &charts {
        write(
            &chart_dir.join(format!("{}.svg", chart.name)),
            chart.svg.as_bytes(),
        )?;
        write(&chart_dir.join(format!("{}.png", chart.name)), &chart.png)?;
    }
    write(
        &dir.join("summary.json"),
        report::summary_json(&built.summary).as_bytes(),
    )?;
    write(
        &dir.join("report.html"),
        report::html::page(&built, &charts).as_bytes(),
    )?;
    Ok((built.summary, data, rows))
}

fn classify(reply_text: &str, config_path: Option<&std::path::Path>, json: bool) -> u8 {
    let Some(reply) = crate::smtp::parse_reply_line(reply_text) else {
        eprintln!("error: `{reply_text}` is not an SMTP reply");
        eprintln!("  = help: write the code first, as in \"550 5.1.1 user unknown\"");
        return EXIT_UNREADABLE;
    };
    let checked = match config_path {
        Some(path) => match config::load(path, &RealFs, Options::default()) {
            Ok(checked) if checked.error_count() == 0 => checked,
            Ok(checked) => {
                for diagnostic in &checked.diagnostics {
                    eprint!("{}", diagnostic.render(&checked.config.sources));
                }
                return EXIT_INVALID;
            }
            Err(err) => {
                eprintln!("error: {err}");
                return EXIT_UNREADABLE;
            }
        },
        None => Checked {
            config: config::Config::default(),
            diagnostics: Vec::new(),
        },
    };
    let config = &checked.config;
    let classifier = Classifier::new(config);
    let classification = classifier.classify(&reply);
    let category_from = classification
        .category_rule
        .map(|(origin, span)| classifier.rule_position(config, origin, span));
    let action = config.smtp_pattern_lists.values().find_map(|list| {
        classify::matching_rule(list, &reply).map(|rule| {
            let actions: Vec<String> = rule.actions.iter().map(classify::action_text).collect();
            (
                list.name.clone(),
                actions.join(" "),
                config.sources.position(rule.span).file_line(),
            )
        })
    });
    let matched = action
        .as_ref()
        .map(|(_, _, line)| line.clone())
        .or_else(|| category_from.clone());
    let out = if json {
        let object = serde_json::json!({
            "disposition": classification.disposition.name(),
            "category": classification.category,
            "action": action.as_ref().map(|(_, a, _)| a.clone()),
            "matched": matched,
            "category_from": category_from,
            "smtp_pattern_list": action.as_ref().map(|(l, _, _)| l.clone()),
        });
        format!("{object}\n")
    } else {
        let mut out = String::new();
        let _ = writeln!(out, "reply:       {}", reply.one_line());
        let _ = writeln!(out, "disposition: {}", classification.disposition.name());
        let _ = writeln!(
            out,
            "category:    {} ({})",
            classification.category,
            category_from.as_deref().unwrap_or("no rule matched")
        );
        match &action {
            Some((list, actions, line)) => {
                let _ = writeln!(
                    out,
                    "action:      {actions} (smtp-pattern-list {list}, {line})"
                );
            }
            None => {
                let _ = writeln!(out, "action:      none");
            }
        }
        out
    };
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    EXIT_VALID
}

fn check(path: &std::path::Path, explain: Option<&str>, json: bool, options: Options) -> u8 {
    let checked = match config::load(path, &RealFs, options) {
        Ok(checked) => checked,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_UNREADABLE;
        }
    };
    let mut stderr = String::new();
    for diagnostic in &checked.diagnostics {
        stderr.push_str(&diagnostic.render(&checked.config.sources));
    }
    let errors = checked.error_count();
    let warnings = checked.diagnostics.len() - errors;
    if errors > 0 {
        let _ = writeln!(
            stderr,
            "{}: {errors} error{}, {warnings} warning{}",
            path.display(),
            plural(errors),
            plural(warnings)
        );
        eprint!("{stderr}");
        return EXIT_INVALID;
    }
    eprint!("{stderr}");
    let stdout = match explain {
        Some(queue) => match queue::explain(&checked.config, queue) {
            Ok(view) if json => explain_json(&checked, &view),
            Ok(view) => explain_text(&checked, &view),
            Err(err) => {
                eprintln!("error: {err}");
                return EXIT_INVALID;
            }
        },
        None => summary(&checked, path, warnings),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(stdout.as_bytes());
    EXIT_VALID
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn from_text(checked: &Checked, span: Option<config::source::Span>) -> String {
    match span {
        Some(span) => checked.config.sources.position(span).file_line(),
        None => "default".to_string(),
    }
}

/// The JSON promised in the README: `{"domain", "vmta", "queue", "settings"}`.
pub fn explain_json(checked: &Checked, view: &queue::QueueView) -> String {
    let mut settings = serde_json::Map::new();
    for (name, effective) in &view.settings {
        let value = effective
            .value
            .as_ref()
            .map_or(serde_json::Value::Null, |v| v.to_json());
        settings.insert(
            (*name).to_string(),
            serde_json::json!({"value": value, "from": from_text(checked, effective.from)}),
        );
    }
    let object = serde_json::json!({
        "domain": view.domain,
        "vmta": view.vmta,
        "queue": view.queue_name(),
        "settings": settings,
    });
    format!("{object}\n")
}

fn explain_text(checked: &Checked, view: &queue::QueueView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "queue {}", view.queue_name());
    if view.queue_domain != view.domain {
        let _ = writeln!(out, "  ({} joins it through queue-to)", view.domain);
    }
    let width = view.settings.keys().map(|k| k.len()).max().unwrap_or(0);
    for (name, effective) in &view.settings {
        let value = effective
            .value
            .as_ref()
            .map_or_else(|| "(unset)".to_string(), |v| v.to_config_text());
        let _ = writeln!(
            out,
            "  {name:<width$}  {value:<24}  {}",
            from_text(checked, effective.from)
        );
    }
    out
}

fn summary(checked: &Checked, path: &std::path::Path, warnings: usize) -> String {
    let config = &checked.config;
    let lines: usize = config.sources.files().map(|(_, f)| f.line_count()).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid ({} file{}, {lines} lines, {warnings} warning{})",
        path.display(),
        config.sources.len(),
        plural(config.sources.len()),
        plural(warnings)
    );
    let _ = writeln!(out, "virtual MTAs ({}):", config.virtual_mtas.len());
    for vmta in config.virtual_mtas.values() {
        let hosts: Vec<String> = vmta
            .source_hosts()
            .iter()
            .map(|h| format!("{} {}", h.ip, h.host))
            .collect();
        let nested = if vmta.domains.is_empty() {
            String::new()
        } else {
            format!(" ({} nested domain blocks)", vmta.domains.len())
        };
        let _ = writeln!(out, "  {}: {}{nested}", vmta.name, hosts.join(", "));
    }
    let _ = writeln!(out, "pools ({}):", config.pools.len());
    for pool in config.pools.values() {
        let members: Vec<&str> = pool.members.iter().map(|m| m.value.as_str()).collect();
        let _ = writeln!(out, "  {}: {}", pool.name, members.join(", "));
    }
    let patterns: Vec<String> = config
        .domains
        .iter()
        .map(|d| d.pattern.to_string())
        .collect();
    let _ = writeln!(
        out,
        "domain blocks ({}): {}",
        patterns.len(),
        patterns.join(" ")
    );
    let _ = writeln!(
        out,
        "smtp pattern lists ({}):",
        config.smtp_pattern_lists.len()
    );
    for list in config.smtp_pattern_lists.values() {
        let _ = writeln!(out, "  {}: {} reply patterns", list.name, list.rules.len());
    }
    let _ = writeln!(out, "bounce category rules: {}", config.bounce_rules.len());
    let _ = writeln!(out, "pattern lists ({}):", config.pattern_lists.len());
    for list in config.pattern_lists.values() {
        let _ = writeln!(out, "  {}: {} rules", list.name, list.rules.len());
    }
    let _ = writeln!(out, "dkim keys ({}):", config.dkim_keys.len());
    for key in &config.dkim_keys {
        let material = match &key.material {
            config::model::KeyMaterial::Pem(_) => "key file read".to_string(),
            config::model::KeyMaterial::StandIn { .. } => {
                "stand-in key (simulation only)".to_string()
            }
        };
        let _ = writeln!(
            out,
            "  {}._domainkey.{}: {material}",
            key.key.selector, key.key.domain
        );
    }
    let no_effect = config.no_effect_in_simulation(&crate::engine::settings::simulated());
    let _ = writeln!(
        out,
        "accepted, no effect in simulation ({}):",
        no_effect.len()
    );
    for item in &no_effect {
        let _ = writeln!(
            out,
            "  {}  {}",
            config.sources.position(item.span).file_line(),
            item.what
        );
    }
    out
}
