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
use crate::engine::classify::{self, Classifier};
use crate::printable;
use crate::report;
use crate::rundir;
use crate::scenario::Mode;

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
enum WarmupCommand {
    /// Search the fastest schedule the models allow; write schedule.csv, replay.toml and
    /// pmta-warmup.conf into --out.
    Plan {
        /// The planner input (target_per_day, new_ips, mail_from, [providers] shares, list quality).
        input: PathBuf,
        #[arg(long, default_value = "warmup-plan")]
        out: PathBuf,
        /// Where the provider models are.
        #[arg(long, default_value = "isp-models")]
        models: PathBuf,
    },
    /// Replay a schedule CSV (with the planner input it was made for) or a scenario in fast
    /// mode and report each day at each provider, risk days with their reason.
    Check {
        /// schedule.csv (day,provider,ip,messages) or a scenario (.toml).
        schedule: PathBuf,
        /// With a CSV: the planner input (mail_from, providers, list quality).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Replay only the first N days, 1 to 366 (no more than the schedule has; with
        /// --adaptive the schedule's last day repeats after its end).
        #[arg(long, default_value_t = 7,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(CHECK_DAYS_MAX)))]
        days: u32,
        #[arg(long, default_value = "isp-models")]
        models: PathBuf,
        #[arg(long, default_value = "warmup-check")]
        out: PathBuf,
        /// With a CSV: run it in closed loop, one day at a time, each IP × provider's next
        /// day decided from what its day did (advance, hold, step back, overflow; the rules
        /// in plan.txt).
        #[arg(long)]
        adaptive: bool,
        /// With a CSV: also write the replay scenario with `[[expect]]` tables pinning what
        /// the check found per day and provider (as examples/warmup/published/ ships them).
        #[arg(long, value_name = "FILE")]
        write_scenario: Option<PathBuf>,
    },
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
    /// Run a scenario in the network simulator and write its accounting file; with --live,
    /// send real mail with a PowerMTA configuration until SIGTERM or SIGINT.
    Run {
        /// The scenario file (scenarios/*.toml); with --live, the PowerMTA configuration.
        scenario: PathBuf,
        /// Live mode: listen, spool and deliver for real with the configuration given.
        #[arg(long, conflicts_with_all = ["seed", "out", "json", "junit", "seeds", "memory_limit", "mode"])]
        live: bool,
        /// With --live: ask this DNS server (IP:PORT) instead of the system's resolver.
        #[arg(long, value_name = "IP:PORT", requires = "live")]
        resolver: Option<String>,
        /// With --live: send mail for DOMAIN to HOST:PORT without DNS (repeatable).
        #[arg(long, value_name = "DOMAIN=HOST:PORT", requires = "live")]
        route: Vec<String>,
        /// With --live: the spool directory instead of the configuration's `spool`.
        #[arg(long, value_name = "DIR", requires = "live")]
        spool: Option<PathBuf>,
        /// With --live: how long a stop (SIGTERM, SIGINT) waits for transfers and
        /// transactions in flight, as a PowerMTA interval (`30s`, `2m`).
        #[arg(
            long,
            value_name = "INTERVAL",
            requires = "live",
            default_value = "30s"
        )]
        stop_grace: String,
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
        /// Refuse a run estimated to need more memory than this (default: the memory
        /// available now).
        #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
        memory_limit: Option<u64>,
        /// Run under turmoil (`network`) or in virtual time (`fast`), whatever the scenario
        /// says.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Mode>,
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
        /// Memory all runs together may use (default: the memory available now).
        #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
        memory_limit: Option<u64>,
        /// Run every scenario under turmoil (`network`) or in virtual time (`fast`).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Mode>,
    },
    /// Control a live daemon over its management API with PowerMTA's `pmta` verbs:
    /// show status, show queues [--mode=backoff] [Q], show topdomains,
    /// set queue --mode=normal|backoff Q, pause queue Q, resume queue Q, schedule Q,
    /// delete --queue=Q, reload.
    Ctl {
        /// The management API (the daemon's `http-mgmt-port`).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
        api: std::net::SocketAddr,
        /// Connect from this address (its `http-access` level is the one that counts).
        #[arg(long, value_name = "IP")]
        bind: Option<std::net::IpAddr>,
        /// The verb and its arguments, as `pmta` takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        words: Vec<String>,
    },
    /// Compare two run directories: metric deltas per provider and queue, and the first line
    /// where their accounting files differ.
    Diff { a: PathBuf, b: PathBuf },
    /// Rebuild a run directory's report (summary.json, report.html, charts) from its
    /// acct.csv and run.json.
    Report {
        /// A directory `pmta-sim run` or `pmta-sim warmup check` wrote.
        dir: PathBuf,
    },
    /// Plan an IP warmup against the provider models, or replay a schedule and judge it.
    Warmup {
        #[command(subcommand)]
        command: WarmupCommand,
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
            live: true,
            resolver,
            route,
            spool,
            stop_grace,
            ..
        } => ExitCode::from(live(
            &scenario,
            resolver.as_deref(),
            &route,
            spool,
            &stop_grace,
        )),
        Command::Run {
            scenario,
            seed,
            out,
            quiet,
            json,
            junit,
            seeds,
            memory_limit,
            mode,
            ..
        } => {
            let show = if quiet {
                Show::Quiet
            } else if json {
                Show::Json
            } else {
                Show::Table
            };
            ExitCode::from(run(
                &scenario,
                seed,
                seeds,
                out,
                show,
                junit,
                memory_limit,
                mode,
            ))
        }
        Command::Test {
            paths,
            out,
            junit,
            memory_limit,
            mode,
        } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from("scenarios")]
            } else {
                paths
            };
            ExitCode::from(test(&paths, out, junit, memory_limit, mode))
        }
        Command::Ctl { api, bind, words } => {
            ExitCode::from(crate::ctl::main(crate::ctl::Target { api, bind }, &words))
        }
        Command::Diff { a, b } => ExitCode::from(diff(&a, &b)),
        Command::Report { dir } => ExitCode::from(rebuild_report(&dir)),
        Command::Warmup { command } => ExitCode::from(match command {
            WarmupCommand::Plan { input, out, models } => warmup_plan(&input, &out, &models),
            WarmupCommand::Check {
                schedule,
                input,
                days,
                models,
                out,
                adaptive,
                write_scenario,
            } => warmup_check(
                &schedule,
                input.as_deref(),
                days,
                &models,
                &out,
                adaptive,
                write_scenario.as_deref(),
            ),
        }),
    }
}

/// How much `run_one` prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Show {
    /// The terminal table and a progress bar.
    Table,
    /// summary.json on stdout.
    Json,
    /// Nothing but errors (and what a run refused: that is never silent).
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

/// Largest `acct.csv` and `run.json` read back (a report is built in memory).
pub const ACCT_FILE_MAX_BYTES: u64 = 4 << 30;
pub const RUN_JSON_MAX_BYTES: u64 = 1 << 30;
/// Largest `summary.json` compared by `diff`.
pub const SUMMARY_FILE_MAX_BYTES: u64 = 64 << 20;

/// The memory a run may use: `--memory-limit`, else what the machine has available now
/// (`MemAvailable`), else no limit where the machine does not say.
fn memory_limit(given: Option<u64>) -> u64 {
    if let Some(bytes) = given {
        return bytes;
    }
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib * 1024)
}

/// `--mode fast`.
fn parse_mode(text: &str) -> Result<Mode, String> {
    Mode::parse(text).ok_or_else(|| format!("`{text}` is not a mode: `network` or `fast`"))
}

/// `--memory-limit 2G`.
fn parse_memory(text: &str) -> Result<u64, String> {
    match config::value::parse_size(text) {
        Ok(size) if size.bytes > 0 => Ok(size.bytes),
        _ => Err(format!("`{text}` is not a size such as 2G or 512M")),
    }
}

/// `run` for one scenario and seed: loads and checks, refuses what cannot fit, runs, writes
/// the run directory whole, builds the report and checks the expectations.
fn run_one(
    path: &std::path::Path,
    seed: Option<u64>,
    mode: Option<Mode>,
    out: Option<PathBuf>,
    show: Show,
    memory_bytes: u64,
) -> RunResult {
    let unreadable = |m: String| (EXIT_UNREADABLE, m);
    let loaded = driver::load(path)
        .map_err(|e| unreadable(printable::escape(&e.to_string()).into_owned()))?;
    let driver::Loaded {
        mut scenario,
        checked,
        problems,
    } = loaded;
    if let Some(seed) = seed {
        scenario.seed = seed;
    }
    if let Some(mode) = mode {
        scenario.mode = mode;
    }
    let rendered = render_diagnostics(&checked);
    if checked.error_count() > 0 {
        // Printed once, by the caller, with the verdict.
        return Err(unreadable(format!(
            "{rendered}error: the scenario's configuration is invalid"
        )));
    }
    let (errors, warnings): (Vec<_>, Vec<_>) = problems.iter().partition(|p| p.is_error());
    if show != Show::Quiet {
        eprint!("{rendered}{}", render_problems(&warnings));
    }
    if !errors.is_empty() {
        return Err(unreadable(format!(
            "{}error: {} does not fit its configuration ({} error{})",
            render_problems(&errors),
            printable::path(path),
            errors.len(),
            plural(errors.len())
        )));
    }
    // The output is checked, and the cost estimated, before anything runs.
    let dir = out.unwrap_or_else(|| {
        PathBuf::from("reports").join(format!("{}-{}", scenario.name, scenario.seed))
    });
    let staging = rundir::Staging::begin(&dir).map_err(|e| unreadable(format!("error: {e}")))?;
    let source_ips = checked
        .config
        .virtual_mtas
        .values()
        .flat_map(|v| v.source_hosts().into_iter().map(|h| h.ip))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let bounce_after_s = crate::engine::settings::longest_bounce_after_s(&checked.config);
    let estimate = driver::estimate::Estimate::of(&scenario, source_ips, bounce_after_s);
    if estimate.memory_bytes > memory_bytes {
        return Err(unreadable(format!(
            "error: {} needs about {} of memory ({} messages, {} recipients), more than the {} this run may use\n  = help: send fewer messages (`messages`), end sooner (`duration`), or raise --memory-limit",
            printable::path(path),
            driver::estimate::bytes_text(estimate.memory_bytes),
            estimate.messages,
            estimate.recipients,
            driver::estimate::bytes_text(memory_bytes)
        )));
    }
    if estimate.is_long() && show != Show::Quiet {
        match scenario.mode {
            Mode::Network => eprintln!(
                "warning: {} will take about {:.0} minutes ({} steps of {} ms for {} hosts, {} recipients)\n  = help: a larger tick_ms takes fewer steps, and `--mode fast` skips idle time",
                printable::path(path),
                (estimate.wall_s / 60.0).ceil(),
                estimate.steps,
                scenario.tick_ms,
                estimate.hosts,
                estimate.recipients
            ),
            Mode::Fast => eprintln!(
                "warning: {} will take about {:.0} minutes ({} recipients)",
                printable::path(path),
                (estimate.wall_s / 60.0).ceil(),
                estimate.recipients
            ),
        }
    }
    let config_sha256 = driver::config_sha256(&checked.config.sources);
    let mut bar = driver::progress::Bar::new(show != Show::Table);
    // The accounting records go to the file as they come: a long run never holds them.
    let acct_path = staging.dir().join("acct.csv");
    let acct_file = std::fs::File::create(&acct_path).map_err(|e| {
        unreadable(format!(
            "error: cannot write `{}`: {e}",
            printable::path(&acct_path)
        ))
    })?;
    let options = crate::sim::RunOptions {
        trace: false,
        records: false,
        acct: Some(Box::new(Synced(std::io::BufWriter::new(acct_file)))),
    };
    let ran = match scenario.mode {
        Mode::Network => {
            driver::network::run_with_progress(&scenario, checked.config, options, &mut |p| {
                bar.update(p)
            })
        }
        Mode::Fast => {
            driver::fast::run_with_progress(&scenario, checked.config, options, &mut |p| {
                bar.update(p)
            })
        }
    };
    bar.finish();
    let output = ran.map_err(|e| unreadable(format!("error: {e}")))?;
    let staged = staging.dir().to_path_buf();
    let mut data = output.data;
    data.config_sha256 = config_sha256;
    let outcomes = output.outcomes;
    let json_text = serde_json::to_string(&data).expect("run data always serializes");
    std::fs::write(staged.join("run.json"), json_text + "\n").map_err(|e| {
        unreadable(format!(
            "error: cannot write `{}`: {e}",
            printable::path(&staged.join("run.json"))
        ))
    })?;
    // The report is built from the file just written, exactly as `pmta-sim report` does.
    let summary = write_report(&staged).map_err(|e| unreadable(format!("error: {e}")))?;
    staging
        .commit()
        .map_err(|e| unreadable(format!("error: {e}")))?;
    // What the run could not do is printed whatever else is: never silent.
    eprint!("{}", run_warnings(path, &summary));
    match show {
        Show::Json => print!("{}", report::summary_json(&summary)),
        Show::Table => {
            let colour = std::io::stdout().is_terminal();
            print!("{}", report::terminal::table(&summary, colour));
            if !outcomes.is_empty() {
                print!("{}", report::expect::table(&scenario.name, &outcomes));
            }
            println!("report: {}", printable::path(&dir.join("report.html")));
        }
        Show::Quiet => {
            for o in outcomes.iter().filter(|o| !o.passed) {
                eprintln!(
                    "{}: line {}: expectation failed: {} ({})",
                    printable::path(path),
                    o.line,
                    printable::escape(&o.text),
                    o.error.as_ref().map_or_else(
                        || format!("measured {}", o.measured),
                        |e| printable::escape(e).into_owned()
                    )
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

/// A scenario's problems, at most [`DIAGNOSTICS_SHOWN_MAX`], then "… and N more".
fn render_problems(problems: &[&crate::scenario::ScenarioError]) -> String {
    let mut out: String = problems
        .iter()
        .take(DIAGNOSTICS_SHOWN_MAX)
        .map(|p| format!("{}\n", printable::escape(&p.to_string())))
        .collect();
    if problems.len() > DIAGNOSTICS_SHOWN_MAX {
        let _ = writeln!(out, "… and {} more", problems.len() - DIAGNOSTICS_SHOWN_MAX);
    }
    out
}

/// What a run refused, could not evaluate or did not send, as warnings.
fn run_warnings(path: &std::path::Path, summary: &report::Summary) -> String {
    let mut out = String::new();
    let shown = printable::path(path);
    let refused = &summary.refused;
    if refused.messages > 0 {
        let reasons: Vec<String> = refused
            .by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "warning: {shown}: the engine refused {} message{} ({} recipients) at injection: {}",
            refused.messages,
            plural(refused.messages as usize),
            refused.recipients,
            reasons.join(", ")
        );
        if let Some(first) = refused.first.first() {
            let _ = writeln!(
                out,
                "  = note: the first, message {} of {}: {} (all are listed in run.json and counted in summary.json)",
                printable::escape(&first.env_id),
                printable::escape(&first.job_id),
                printable::escape(&first.reason)
            );
        }
    }
    for failure in &summary.pattern_failures {
        let _ = writeln!(
            out,
            "warning: {}: pattern /{}/ could not be evaluated on `{}` ({}, {}): matches it decides are unknown",
            printable::escape(&failure.position),
            printable::escape(&failure.pattern),
            printable::escape(&failure.subject),
            printable::escape(&failure.context),
            failure.error
        );
    }
    let run = &summary.run;
    let records = run.delivered + run.bounced + run.transient_by_class.values().sum::<u64>();
    if run.injected == Some(0) {
        let _ = writeln!(
            out,
            "warning: {shown}: nothing was sent: no message was injected before the run ended"
        );
    } else if records == 0 {
        let _ = writeln!(
            out,
            "warning: {shown}: nothing was sent: the {} injected recipients are all still queued (see what held each queue back)",
            run.injected.unwrap_or(0)
        );
    }
    out
}

fn write_junit(
    file: &std::path::Path,
    suites: &[(String, Vec<report::expect::Outcome>)],
) -> Result<(), String> {
    rundir::replace_file(file, report::expect::junit(suites).as_bytes())
        .map_err(|e| format!("error: {e}"))
}

/// `pmta-sim run`.
#[allow(clippy::too_many_arguments)]
fn run(
    path: &std::path::Path,
    seed: Option<u64>,
    seeds: Option<(u64, u64)>,
    out: Option<PathBuf>,
    show: Show,
    junit: Option<PathBuf>,
    memory: Option<u64>,
    mode: Option<Mode>,
) -> u8 {
    let memory_bytes = memory_limit(memory);
    let Some((first, last)) = seeds else {
        return match run_one(path, seed, mode, out, show, memory_bytes) {
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
        match run_one(path, Some(seed), mode, Some(dir), Show::Quiet, memory_bytes) {
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
            printable::path(path)
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
                "  {:>3}%  line {line:<4} {}  ({passed}/{runs}){seeds_text}",
                passed * 100 / runs,
                printable::escape(text)
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

/// The scenario files `test` runs: the `*.toml` of each folder (sorted) and each file given.
fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        let shown = printable::path(path);
        let meta =
            std::fs::metadata(path).map_err(|e| format!("error: cannot read `{shown}`: {e}"))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("error: cannot read `{shown}`: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        return Err(format!(
            "error: no scenario to run: no *.toml file in {}",
            paths
                .iter()
                .map(|p| format!("`{}`", printable::path(p)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(files)
}

/// The run directory of each scenario file: its stem, or, when two files share a stem, the
/// stem and a hash of its path, so no two runs ever write (or read back) the same directory.
fn run_directories(base: &std::path::Path, files: &[PathBuf]) -> Vec<PathBuf> {
    let stem = |f: &PathBuf| {
        f.file_stem()
            .map_or("run".into(), |s| s.to_string_lossy().to_string())
    };
    files
        .iter()
        .map(|file| {
            let name = stem(file);
            let shared = files.iter().filter(|f| stem(f) == name).count() > 1;
            if !shared {
                return base.join(name);
            }
            let digest = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                file.to_string_lossy().as_bytes(),
            );
            let short: String = digest.as_ref()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            base.join(format!("{name}-{short}"))
        })
        .collect()
}

/// `pmta-sim test`: every scenario of the folders and files given, in parallel.
fn test(
    paths: &[PathBuf],
    out: Option<PathBuf>,
    junit: Option<PathBuf>,
    memory: Option<u64>,
    mode: Option<Mode>,
) -> u8 {
    let files = match scenario_files(paths) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_UNREADABLE;
        }
    };
    let base = out.unwrap_or_else(|| PathBuf::from("reports"));
    let dirs = run_directories(&base, &files);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    // Runs share the machine's memory.
    let memory_bytes = memory_limit(memory) / workers as u64;
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
                    let result = run_one(
                        file,
                        None,
                        mode,
                        Some(dirs[i].clone()),
                        Show::Quiet,
                        memory_bytes,
                    );
                    results.lock().expect("no worker panics while holding it")[i] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().expect("workers are done");
    let mut suites = Vec::new();
    let (mut failed, mut broken) = (0, 0);
    for ((file, dir), result) in files.iter().zip(&dirs).zip(results) {
        match result.expect("every file ran") {
            Ok(finished) => {
                let bad = finished.outcomes.iter().filter(|o| !o.passed).count();
                println!(
                    "{}  {}  {} expectations, {bad} failed  ({})",
                    if bad == 0 { "pass" } else { "FAIL" },
                    printable::path(file),
                    finished.outcomes.len(),
                    printable::path(dir)
                );
                if bad > 0 {
                    failed += 1;
                }
                suites.push((finished.scenario, finished.outcomes));
            }
            Err((_, message)) => {
                println!("ERROR {}", printable::path(file));
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

/// Reads a run directory's file as text, a regular file of at most `max_bytes`.
fn read_run_file(dir: &std::path::Path, name: &str, max_bytes: u64) -> Result<String, String> {
    let path = dir.join(name);
    let shown = printable::path(&path);
    let bytes = config::source::read_regular(&path, max_bytes)
        .map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("`{shown}` is not UTF-8 text"))
}

/// A run directory's `summary.json`, checked for the shape `pmta-sim` writes.
fn read_summary(dir: &std::path::Path) -> Result<serde_json::Value, String> {
    let shown = printable::path(&dir.join("summary.json"));
    let text = read_run_file(dir, "summary.json", SUMMARY_FILE_MAX_BYTES)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("`{shown}`: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err(format!("`{shown}` is not a summary (not a JSON object)"));
    };
    match object
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
    {
        Some(v) if v == u64::from(report::SCHEMA_VERSION) => {}
        other => {
            return Err(format!(
                "`{shown}` has schema version {}; this pmta-sim reads version {}",
                other.map_or("(none)".to_string(), |v| v.to_string()),
                report::SCHEMA_VERSION
            ));
        }
    }
    for key in ["run", "providers", "queues", "source_ips"] {
        if !object.get(key).is_some_and(serde_json::Value::is_object) {
            return Err(format!("`{shown}` has no `{key}` object: not a summary"));
        }
    }
    Ok(value)
}

/// `pmta-sim diff A B`: 0 when the runs are the same, 1 when they differ, 2 when a run
/// directory cannot be read.
fn diff(a: &std::path::Path, b: &std::path::Path) -> u8 {
    let loaded = (|| -> Result<_, String> {
        Ok((
            read_summary(a)?,
            read_summary(b)?,
            read_run_file(a, "acct.csv", ACCT_FILE_MAX_BYTES)?,
            read_run_file(b, "acct.csv", ACCT_FILE_MAX_BYTES)?,
        ))
    })();
    let (sa, sb, acct_a, acct_b) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
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
            println!("report: {}", printable::path(&dir.join("report.html")));
            EXIT_VALID
        }
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_UNREADABLE
        }
    }
}

/// Reads `run.json` in `dir`, writes `summary.json`, `report.html` and the charts
/// (`charts/*.svg`, `charts/*.png`), each replacing its previous version whole, and returns
/// the summary.
///
/// A `run.json` a warmup check wrote also holds the judged warmup (`warmup`): then
/// `summary.json` is the warmup's, `warmup.txt` its table, and `report.html` has the warmup
/// section before the charts.
fn write_report(dir: &std::path::Path) -> Result<report::Summary, String> {
    let run_json = printable::path(&dir.join("run.json"));
    let text = read_run_file(dir, "run.json", RUN_JSON_MAX_BYTES)?;
    let at = |e: serde_json::Error| format!("`{run_json}`:{}:{}: {e}", e.line(), e.column());
    let data: report::RunData = serde_json::from_str(&text).map_err(at)?;
    data.validate()
        .map_err(|e| format!("`{run_json}` is not a pmta-sim run: {e}"))?;
    let warmup = serde_json::from_str::<WarmupPart>(&text)
        .map_err(at)?
        .warmup;
    if let Some(w) = &warmup {
        w.validate()
            .map_err(|e| format!("`{run_json}` is not a pmta-sim run: {e}"))?;
    }
    let built = report::build(&data);
    let charts = report::charts::render(&built);
    write_charts(dir, &charts)?;
    let page = report::html::page(&built, &charts);
    match &warmup {
        None => {
            rundir::replace_file(
                &dir.join("summary.json"),
                report::summary_json(&built.summary).as_bytes(),
            )?;
            rundir::replace_file(&dir.join("report.html"), page.as_bytes())?;
        }
        Some(w) => {
            let json = serde_json::to_string_pretty(&crate::warmup::summary_json(&w.judgement))
                .expect("a judgement always serializes");
            rundir::replace_file(&dir.join("summary.json"), (json + "\n").as_bytes())?;
            rundir::replace_file(
                &dir.join("warmup.txt"),
                crate::warmup::table(&w.judgement).as_bytes(),
            )?;
            rundir::replace_file(
                &dir.join("report.html"),
                with_warmup_section(page, w).as_bytes(),
            )?;
        }
    }
    Ok(built.summary)
}

/// Writes `charts/*.svg` and `charts/*.png` into `dir`, each replacing its previous version.
fn write_charts(dir: &std::path::Path, charts: &[report::charts::Chart]) -> Result<(), String> {
    let chart_dir = dir.join("charts");
    std::fs::create_dir_all(&chart_dir)
        .map_err(|e| format!("cannot create `{}`: {e}", printable::path(&chart_dir)))?;
    for chart in charts {
        rundir::replace_file(
            &chart_dir.join(format!("{}.svg", chart.name)),
            chart.svg.as_bytes(),
        )?;
        rundir::replace_file(&chart_dir.join(format!("{}.png", chart.name)), &chart.png)?;
    }
    Ok(())
}

/// The accounting file: buffered, and synced to disk when flushed at the end of the run
/// (the run directory is renamed into place only after).
struct Synced(std::io::BufWriter<std::fs::File>);

impl std::io::Write for Synced {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.0.get_ref().sync_all()
    }
}

fn classify(reply_text: &str, config_path: Option<&std::path::Path>, json: bool) -> u8 {
    let reply = match crate::smtp::parse_reply_text(reply_text) {
        Ok(reply) => reply,
        Err(err) => {
            eprintln!(
                "error: `{}` is not an SMTP reply: {err}",
                printable::escape(reply_text)
            );
            eprintln!("  = help: write the code first, as in \"550 5.1.1 user unknown\"");
            return EXIT_UNREADABLE;
        }
    };
    let checked = match config_path {
        Some(path) => match config::load(path, &RealFs, Options::default()) {
            Ok(checked) if checked.error_count() == 0 => checked,
            Ok(checked) => {
                eprint!("{}", render_diagnostics(&checked));
                return EXIT_INVALID;
            }
            Err(err) => {
                eprintln!("error: {}", printable::escape(&err.to_string()));
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
    let mut failures = classification.failures.clone();
    let action = config.smtp_pattern_lists.values().find_map(|list| {
        classify::matching_rule(list, &reply, &mut failures).map(|rule| {
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
        let _ = writeln!(out, "reply:       {}", printable::escape(&reply.one_line()));
        let _ = writeln!(out, "disposition: {}", classification.disposition.name());
        let _ = writeln!(
            out,
            "category:    {} ({})",
            classification.category,
            printable::escape(category_from.as_deref().unwrap_or("no rule matched"))
        );
        match &action {
            Some((list, actions, line)) => {
                let _ = writeln!(
                    out,
                    "action:      {actions} (smtp-pattern-list {list}, {})",
                    printable::escape(line)
                );
            }
            None => {
                let _ = writeln!(out, "action:      none");
            }
        }
        out
    };
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    if failures.is_empty() {
        return EXIT_VALID;
    }
    // A pattern that could not be evaluated leaves the verdict unknown: an error, not a
    // quiet "no match".
    for failure in &failures {
        eprintln!(
            "error: {}: pattern /{}/ could not be evaluated on this reply ({}); whether it matches is unknown",
            printable::escape(&classifier.rule_position(config, failure.origin, failure.span)),
            printable::escape(&failure.pattern),
            failure.error
        );
    }
    eprintln!(
        "  = help: simplify the pattern (backreferences and lookarounds run on a backtracking engine with a step limit)"
    );
    EXIT_INVALID
}

fn check(path: &std::path::Path, explain: Option<&str>, json: bool, options: Options) -> u8 {
    let checked = match config::load(path, &RealFs, options) {
        Ok(checked) => checked,
        Err(err) => {
            eprintln!("error: {}", printable::escape(&err.to_string()));
            return EXIT_UNREADABLE;
        }
    };
    let (stderr, warnings) = diagnostics_report(&checked, path);
    eprint!("{stderr}");
    if checked.error_count() > 0 {
        return EXIT_INVALID;
    }
    let stdout = match explain {
        Some(queue) => match queue::explain(&checked.config, queue) {
            Ok(view) if json => explain_json(&checked, &view),
            Ok(view) => escape_lines(&explain_text(&checked, &view)),
            Err(err) => {
                eprintln!("error: {}", printable::escape(&err.to_string()));
                return EXIT_INVALID;
            }
        },
        None => escape_lines(&summary(&checked, path, warnings)),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(stdout.as_bytes());
    EXIT_VALID
}

/// `run --live CONFIG`: checks the configuration as `check --live` does, then runs live
/// mode until SIGTERM or SIGINT. Exit 0 after a clean stop, 1 when the configuration has
/// errors or live mode cannot start (a port taken, an unwritable spool), 2 for an
/// unreadable configuration or a bad `--resolver` / `--route` / `--stop-grace`.
fn live(
    path: &std::path::Path,
    resolver: Option<&str>,
    routes: &[String],
    spool: Option<PathBuf>,
    stop_grace: &str,
) -> u8 {
    use crate::driver::live::{dns, run};
    let resolver = match resolver.map(dns::parse_server).transpose() {
        Ok(resolver) => resolver,
        Err(err) => {
            eprintln!("error: --resolver: {}", printable::escape(&err.to_string()));
            return EXIT_UNREADABLE;
        }
    };
    let mut parsed = Vec::new();
    for route in routes {
        match route.parse::<dns::Route>() {
            Ok(route) => parsed.push(route),
            Err(err) => {
                eprintln!("error: --route: {}", printable::escape(&err.to_string()));
                return EXIT_UNREADABLE;
            }
        }
    }
    let stop_grace = match config::value::parse_interval(stop_grace) {
        Ok(interval) => std::time::Duration::from_secs(interval.seconds),
        Err(err) => {
            eprintln!(
                "error: --stop-grace: {}",
                printable::escape(&err.to_string())
            );
            return EXIT_UNREADABLE;
        }
    };
    let checked = match config::load(path, &RealFs, Options { live: true }) {
        Ok(checked) => checked,
        Err(err) => {
            eprintln!("error: {}", printable::escape(&err.to_string()));
            return EXIT_UNREADABLE;
        }
    };
    eprint!("{}", render_diagnostics(&checked));
    if checked.error_count() > 0 {
        return EXIT_INVALID;
    }
    let reload_path = path.to_path_buf();
    let reloader = crate::driver::live::mgmt::Reloader(std::sync::Arc::new(move || {
        reload_config(&reload_path)
    }));
    let options = run::LiveOptions {
        resolver,
        routes: parsed,
        spool_dir: spool,
        reloader: Some(reloader),
        stop_grace,
        ..run::LiveOptions::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return EXIT_INVALID;
        }
    };
    let result = runtime.block_on(run::run(checked.config, options, stop_signal()));
    match result {
        Ok(summary) => {
            eprintln!(
                "pmta-sim: stopped: {} recovered, {} accepted, {} recipients delivered, {} bounced; {} messages left in the spool",
                summary.recovered,
                summary.accepted,
                summary.delivered,
                summary.bounced,
                summary.queued_at_stop
            );
            EXIT_VALID
        }
        Err(err) => {
            eprintln!("error: {}", printable::escape(&err.to_string()));
            EXIT_INVALID
        }
    }
}

/// The management API's reload: the configuration read and checked as `check --live`
/// does, or every mistake as `check` prints them.
fn reload_config(path: &std::path::Path) -> Result<config::model::Config, String> {
    let checked = config::load(path, &RealFs, Options { live: true })
        .map_err(|err| printable::escape(&err.to_string()).into_owned())?;
    if checked.error_count() > 0 {
        return Err(diagnostics_report(&checked, path).0);
    }
    Ok(checked.config)
}

/// `check`'s diagnostics, closed by the `FILE: N errors, M warnings` line when there are
/// errors; and the number of warnings.
fn diagnostics_report(checked: &Checked, path: &std::path::Path) -> (String, usize) {
    let mut text = render_diagnostics(checked);
    let errors = checked.error_count();
    let warnings = checked.diagnostics.len() - errors;
    if errors > 0 {
        let _ = writeln!(
            text,
            "{}: {errors} error{}, {warnings} warning{}",
            printable::path(path),
            plural(errors),
            plural(warnings)
        );
    }
    (text, warnings)
}

/// SIGTERM or SIGINT, whichever comes first.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process stops as the default action says.
        return std::future::pending().await;
    };
    tokio::select! {
        biased;
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Most diagnostics printed; the rest are counted, so a broken 10,000-line config does not
/// flood the terminal.
pub const DIAGNOSTICS_SHOWN_MAX: usize = 100;

/// The diagnostics of a configuration, at most [`DIAGNOSTICS_SHOWN_MAX`] of them, then "… and
/// N more".
fn render_diagnostics(checked: &Checked) -> String {
    let mut out: String = checked
        .diagnostics
        .iter()
        .take(DIAGNOSTICS_SHOWN_MAX)
        .map(|d| d.render(&checked.config.sources))
        .collect();
    let hidden = checked
        .diagnostics
        .len()
        .saturating_sub(DIAGNOSTICS_SHOWN_MAX);
    if hidden > 0 {
        let _ = writeln!(out, "… and {hidden} more");
    }
    out
}

/// Text made of lines, with the control characters of each line escaped (names and values
/// come from the user's files).
fn escape_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(body) => format!("{}\n", printable::escape(body)),
            None => printable::escape(line).into_owned(),
        })
        .collect()
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

/// The provider models a warmup input names, loaded from `dir`.
fn warmup_models(
    dir: &std::path::Path,
    names: &[String],
) -> Result<Vec<crate::scenario::IspSpec>, String> {
    let mut out = Vec::new();
    for name in names {
        let file = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("{}: cannot read: {e}", printable::path(&file)))?;
        let mut spec = crate::scenario::parse_model(&file, &text).map_err(|e| e.to_string())?;
        spec.name = name.clone();
        out.push(spec);
    }
    Ok(out)
}

fn warmup_input(
    path: &std::path::Path,
    models: &std::path::Path,
) -> Result<crate::warmup::Input, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", printable::path(path)))?;
    let known = |name: &str| {
        crate::scenario::is_safe_name(name) && models.join(format!("{name}.toml")).is_file()
    };
    crate::warmup::Input::parse(&printable::path(path), &text, &known).map_err(|e| e.to_string())
}

fn warmup_plan(input: &std::path::Path, out: &std::path::Path, models: &std::path::Path) -> u8 {
    let result = (|| -> Result<String, String> {
        let input = warmup_input(input, models)?;
        let names: Vec<String> = input.providers.iter().map(|(n, _)| n.clone()).collect();
        let specs = warmup_models(models, &names)?;
        let plan = crate::warmup::plan(&input, &specs);
        let days = plan.schedule.days();
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", printable::path(out)))?;
        let write = |name: &str, text: &str| {
            std::fs::write(out.join(name), text).map_err(|e| format!("{name}: {e}"))
        };
        write("schedule.csv", &plan.schedule.to_csv())?;
        write(
            "replay.toml",
            &crate::warmup::replay_scenario(&input, &plan.schedule, &specs, days, 1),
        )?;
        write(
            "pmta-warmup.conf",
            &crate::warmup::pmta_snippet(&input, &plan.schedule, &specs),
        )?;
        let mut text = format!(
            "plan: {} IPs to {} a day in {days} days (deferral bound {:.0}% a day){}\n",
            input.new_ips.len(),
            input.target_per_day,
            crate::warmup::DEFERRAL_BOUND * 100.0,
            if input.warm_ips.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} warm IPs sending what the new IPs cannot yet",
                    input.warm_ips.len()
                )
            }
        );
        for (name, day) in &plan.warm_day {
            let _ = writeln!(
                text,
                "  {name:<10} warm on day {}",
                day.map_or("(not within 90 days)".to_string(), |d| (d + 1).to_string())
            );
        }
        text.push_str("rules:\n");
        for rule in crate::warmup::RULES {
            let _ = writeln!(text, "  - {rule}");
        }
        write("plan.txt", &text)?;
        let _ = writeln!(
            text,
            "wrote {}/schedule.csv, replay.toml, pmta-warmup.conf",
            printable::path(out)
        );
        Ok(text)
    })();
    match result {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

fn warmup_check(
    schedule: &std::path::Path,
    input: Option<&std::path::Path>,
    days: u32,
    models: &std::path::Path,
    out: &std::path::Path,
    adaptive: bool,
    write_scenario: Option<&std::path::Path>,
) -> u8 {
    let schedule_path = schedule;
    let input_path = input;
    let result = (|| -> Result<(String, bool), String> {
        let text = std::fs::read_to_string(schedule)
            .map_err(|e| format!("{}: cannot read: {e}", printable::path(schedule)))?;
        let csv = is_schedule_csv(schedule, &text);
        if write_scenario.is_some() && !csv {
            return Err(format!(
                "{}: --write-scenario needs a schedule CSV (a scenario is its own replay)",
                printable::path(schedule)
            ));
        }
        let replay = if csv {
            replay_schedule_csv(schedule, &text, input, days, models, out, adaptive)?
        } else if adaptive {
            return Err("--adaptive runs a schedule CSV (with --input), not a scenario".into());
        } else {
            replay_scenario_file(schedule, days, models)?
        };
        let WarmupReplay {
            input,
            schedule: sched,
            specs,
            output,
            outcomes,
            adapted,
            replay,
        } = replay;
        let start = input.start_s;
        let standings = crate::warmup::standings_by_day(
            start,
            output
                .receivers
                .iter()
                .flat_map(|(name, log)| log.standings.iter().map(move |s| (name.as_str(), s))),
        );
        let mut judgement = crate::warmup::judge(&input, &sched, &specs, &outcomes, standings);
        if let Some(adapted) = adapted {
            judgement.adaptive = true;
            judgement.decisions = adapted.decisions;
            judgement.carried = adapted.carried;
        }
        if let (Some(file), Some((scenario, days))) = (write_scenario, &replay) {
            let header = format!(
                "Written by `pmta-sim warmup check {} --input {} --days {days} --write-scenario THIS.toml`:\nthe replay of the schedule's first {days} days, then what the check found per day and\nprovider as [[expect]] tables (regenerate it the same way; do not edit it by hand).\n",
                printable::path(schedule_path),
                input_path.map_or_else(String::new, printable::path),
            );
            let text = crate::warmup::scenario_with_expectations(&header, scenario, &judgement);
            rundir::replace_file(file, text.as_bytes())?;
        }
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", printable::path(out)))?;
        let risky = judgement.risky();
        let table = crate::warmup::table(&judgement);
        let warmup = crate::warmup::Replayed {
            judgement,
            schedule: sched,
        };
        // run.json holds the replay's figures and the judged warmup; the report is built from
        // the file just written, exactly as `pmta-sim report DIR` rebuilds it.
        let json_text = serde_json::to_string(&WarmupRunData {
            run: &output.data,
            warmup: &warmup,
        })
        .expect("run data always serializes");
        rundir::replace_file(&out.join("run.json"), (json_text + "\n").as_bytes())?;
        write_report(out)?;
        Ok((table, risky))
    })();
    match result {
        Ok((table, risky)) => {
            print!("{table}");
            u8::from(risky)
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// A warmup check's `run.json`: the replay's run data with the judged warmup beside it
/// (`warmup`, which `pmta-sim run` never writes).
#[derive(serde::Serialize)]
struct WarmupRunData<'a> {
    #[serde(flatten)]
    run: &'a report::RunData,
    warmup: &'a crate::warmup::Replayed,
}

/// The `warmup` object of a `run.json`, if it has one (the run's own fields are read as
/// [`report::RunData`]).
#[derive(serde::Deserialize)]
struct WarmupPart {
    #[serde(default)]
    warmup: Option<crate::warmup::Replayed>,
}

/// The report page with the warmup section of `warmup` before the charts.
fn with_warmup_section(mut page: String, warmup: &crate::warmup::Replayed) -> String {
    let section = crate::warmup::html_section(&warmup.judgement, &warmup.schedule);
    let at = page
        .find("<h2>Charts</h2>")
        .or_else(|| page.find("</body>"))
        .unwrap_or(page.len());
    page.insert_str(at, &section);
    page
}

/// A replayed warmup: what the judge needs, and for a schedule CSV the replay scenario and
/// the days it covers.
struct WarmupReplay {
    input: crate::warmup::Input,
    schedule: crate::warmup::Schedule,
    specs: Vec<crate::scenario::IspSpec>,
    output: crate::sim::output::RunOutput,
    /// The replay's accounting records, folded (see [`ReplayFold`]).
    outcomes: Vec<crate::warmup::Outcome>,
    /// The closed loop, when the replay ran in one (`--adaptive`).
    adapted: Option<crate::warmup::Loop>,
    /// A schedule CSV's replay scenario and the days it runs (for `--write-scenario`).
    replay: Option<(String, u32)>,
}

/// A warmup replay's accounting records folded as they come, so a replay of a whole ramp
/// (millions of messages) keeps no list of them: per (day queued, provider, disposition,
/// reply, sender domain) a count for the judgement, and per (day, provider, source IP) what
/// the closed loop reads. A recipient counts as deferred once, however many retries it takes.
struct ReplayFold<'a> {
    start_s: u64,
    specs: &'a [crate::scenario::IspSpec],
    /// Each replay stream's provider and source IP (`job_id` `streamN`); empty for a
    /// scenario's replay.
    streams: &'a [(String, std::net::Ipv4Addr)],
    /// Recipients deferred and not final yet: each leaves at its final record.
    deferred: std::collections::BTreeSet<(String, crate::time::Time)>,
    outcomes:
        std::collections::BTreeMap<(u32, String, crate::warmup::OutcomeKind, String, String), u64>,
    pairs: std::collections::BTreeMap<(u32, String, std::net::Ipv4Addr), crate::warmup::Observed>,
}

impl<'a> ReplayFold<'a> {
    fn new(
        start_s: u64,
        specs: &'a [crate::scenario::IspSpec],
        streams: &'a [(String, std::net::Ipv4Addr)],
    ) -> ReplayFold<'a> {
        ReplayFold {
            start_s,
            specs,
            streams,
            deferred: std::collections::BTreeSet::new(),
            outcomes: std::collections::BTreeMap::new(),
            pairs: std::collections::BTreeMap::new(),
        }
    }

    fn fold(&mut self, records: &[crate::engine::accounting::AcctRecord]) {
        use crate::engine::accounting::RecordType;
        use crate::warmup::OutcomeKind;
        for r in records {
            let key = (r.rcpt.clone(), r.time_queued);
            let kind = match r.record_type {
                RecordType::Delivered => {
                    self.deferred.remove(&key);
                    OutcomeKind::Delivered
                }
                RecordType::Bounced => {
                    self.deferred.remove(&key);
                    OutcomeKind::Bounced
                }
                RecordType::Transient if self.deferred.insert(key) => OutcomeKind::Deferred,
                _ => continue,
            };
            let day = (r.time_queued.unix_secs().saturating_sub(self.start_s) / 86_400) as u32;
            if let Some((provider, ip)) = r
                .job_id
                .strip_prefix("stream")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| self.streams.get(n))
            {
                let t = self.pairs.entry((day, provider.clone(), *ip)).or_default();
                match kind {
                    OutcomeKind::Delivered => t.delivered += 1,
                    OutcomeKind::Deferred => t.deferred += 1,
                    OutcomeKind::Bounced => t.bounced += 1,
                }
            }
            let domain = r.rcpt.rsplit_once('@').map_or("", |(_, d)| d);
            let Some(provider) = self
                .specs
                .iter()
                .find(|s| s.domains.iter().any(|d| d == domain))
            else {
                continue;
            };
            let sender_domain = r
                .orig
                .rsplit_once('@')
                .map_or(String::new(), |(_, d)| d.to_ascii_lowercase());
            *self
                .outcomes
                .entry((
                    day,
                    provider.name.clone(),
                    kind,
                    r.dsn_diag.clone(),
                    sender_domain,
                ))
                .or_default() += 1;
        }
    }

    /// What each pair's `day` did, for the closed loop.
    fn day(
        &self,
        day: u32,
    ) -> std::collections::BTreeMap<(String, std::net::Ipv4Addr), crate::warmup::Observed> {
        self.pairs
            .range((day, String::new(), std::net::Ipv4Addr::UNSPECIFIED)..)
            .take_while(|((d, _, _), _)| *d == day)
            .map(|((_, p, ip), o)| ((p.clone(), *ip), *o))
            .collect()
    }

    fn outcomes(self) -> Vec<crate::warmup::Outcome> {
        self.outcomes
            .into_iter()
            .map(
                |((day, provider, kind, diag, sender_domain), count)| crate::warmup::Outcome {
                    day,
                    provider,
                    kind,
                    diag,
                    sender_domain,
                    count,
                },
            )
            .collect()
    }
}

/// Whether `warmup check` was given a schedule CSV (by its extension, else by its first
/// line: `day,…` or a number) rather than a scenario.
fn is_schedule_csv(path: &std::path::Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("csv") => true,
        Some(e) if e.eq_ignore_ascii_case("toml") => false,
        _ => text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .is_some_and(|l| l.starts_with("day,") || l.starts_with(|c: char| c.is_ascii_digit())),
    }
}

/// The most days `warmup check --days` takes: a year, however far behind its schedule a
/// closed-loop replay falls (a larger value is a usage error, exit 2).
const CHECK_DAYS_MAX: u32 = 366;

/// Replays the first `days` days of a schedule CSV made for the planner input `input`.
fn replay_schedule_csv(
    schedule: &std::path::Path,
    text: &str,
    input: Option<&std::path::Path>,
    days: u32,
    models: &std::path::Path,
    out: &std::path::Path,
    adaptive: bool,
) -> Result<WarmupReplay, String> {
    let input_path =
        input.ok_or("a schedule CSV needs --input (the planner input it was made for)")?;
    let input = warmup_input(input_path, models)?;
    let names: Vec<String> = input.providers.iter().map(|(n, _)| n.clone()).collect();
    let specs = warmup_models(models, &names)?;
    let known = |name: &str| names.iter().any(|n| n == name);
    let sched = crate::warmup::Schedule::parse_csv(&printable::path(schedule), text, &known)
        .map_err(|e| e.to_string())?;
    // Open loop replays the schedule as written, so no further than its last day; the closed
    // loop may fall behind it (a held stage), so it may run on, the last day repeating.
    let days = if adaptive {
        days
    } else {
        days.min(sched.days().max(1))
    };
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", printable::path(out)))?;
    let scenario_path = out.join("replay.toml");
    let mut closed = adaptive.then(|| crate::warmup::Loop::new(&input, &sched, &specs));
    let pairs = closed
        .as_ref()
        .map_or(Vec::new(), crate::warmup::Loop::pairs);
    let (scenario_text, streams) =
        crate::warmup::replay_streams(&input, &sched, &specs, days, 1, &pairs);
    std::fs::write(&scenario_path, &scenario_text).map_err(|e| e.to_string())?;
    // The replay's models come from --models: copy none, load them from there.
    let loaded = driver::load_with_models(&scenario_path, models).map_err(|e| e.to_string())?;
    let mut fold = ReplayFold::new(input.start_s, &specs, &streams);
    let output = replay_stepped(
        &input,
        &specs,
        &loaded.scenario,
        loaded.checked.config,
        &streams,
        &mut fold,
        closed.as_mut(),
    )?;
    let outcomes = fold.outcomes();
    let schedule = match &closed {
        Some(closed) => closed.executed.clone(),
        None => {
            let mut judged = sched;
            judged.rows.retain(|r| r.day < days);
            judged
        }
    };
    Ok(WarmupReplay {
        input,
        schedule,
        specs,
        output,
        outcomes,
        adapted: closed,
        replay: Some((scenario_text, days)),
    })
}

/// Runs the replay an hour at a time, folding its records as they come (so its memory does
/// not grow with its messages). In closed loop, at each midnight what each stream's day did
/// and each provider's standing of the IPs, /24s and DKIM domain (a copy of its ledger) go to
/// the loop, whose volumes for the day become the streams' day.
fn replay_stepped(
    input: &crate::warmup::Input,
    specs: &[crate::scenario::IspSpec],
    scenario: &crate::scenario::Scenario,
    config: crate::config::Config,
    streams: &[(String, std::net::Ipv4Addr)],
    fold: &mut ReplayFold<'_>,
    mut closed: Option<&mut crate::warmup::Loop>,
) -> Result<crate::sim::output::RunOutput, String> {
    const STEP_MS: u64 = 3_600_000;
    let start = input.start_s;
    let domain = input
        .mail_from
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_string());
    let (w0, w1) = input.window;
    let mut failed = None;
    let mut at_step = |now: crate::time::Time,
                       run: &mut crate::sim::SimRun,
                       world: &crate::sim::world::World| {
        fold.fold(&run.take_records());
        let since_start_s = now.unix_secs().saturating_sub(start);
        let Some(closed) = closed.as_deref_mut() else {
            return;
        };
        if !since_start_s.is_multiple_of(86_400) {
            return;
        }
        let day = (since_start_s / 86_400) as u32;
        let observed = if day > 0 {
            fold.day(day - 1)
        } else {
            std::collections::BTreeMap::new()
        };
        let mut views = std::collections::BTreeMap::new();
        for (spec, provider) in scenario.isps.iter().zip(&world.providers) {
            let Some(model) = specs.iter().find(|s| s.name == spec.name) else {
                continue;
            };
            let ips: Vec<std::net::Ipv4Addr> = streams
                .iter()
                .filter(|(p, _)| *p == spec.name)
                .map(|(_, ip)| *ip)
                .collect();
            views.insert(
                spec.name.clone(),
                crate::warmup::view(provider.borrow().ledger(), model, &ips, &domain, now),
            );
        }
        let at_ms = (u64::from(day) * 86_400 + w0) * 1000;
        for (provider, ip, messages) in closed.day(day, &observed, &views) {
            let Some(stream) = streams.iter().position(|s| s.0 == provider && s.1 == ip) else {
                continue;
            };
            if !run.set_day_volume(stream, at_ms, (w1 - w0) * 1000, messages) && failed.is_none() {
                failed = Some(format!(
                    "the closed loop could not set day {} of {provider} {ip}",
                    day + 1
                ));
            }
        }
    };
    let mut output = driver::fast::run_stepped(
        scenario,
        config,
        crate::sim::RunOptions::records_only(),
        STEP_MS,
        &mut at_step,
    )
    .map_err(|e| e.to_string())?;
    fold.fold(&std::mem::take(&mut output.records));
    match failed {
        Some(e) => Err(e),
        None => Ok(output),
    }
}

/// Replays any scenario (its first `days` days at most) in fast mode; what it queued per
/// day, provider and source IP is the schedule judged.
fn replay_scenario_file(
    path: &std::path::Path,
    days: u32,
    models: &std::path::Path,
) -> Result<WarmupReplay, String> {
    let loaded = driver::load_with_models(path, models)
        .map_err(|e| printable::escape(&e.to_string()).into_owned())?;
    let driver::Loaded {
        mut scenario,
        checked,
        problems,
    } = loaded;
    if checked.error_count() > 0 {
        return Err(format!(
            "{}error: the scenario's configuration is invalid",
            render_diagnostics(&checked)
        ));
    }
    let errors: Vec<_> = problems.iter().filter(|p| p.is_error()).collect();
    if !errors.is_empty() {
        return Err(render_problems(&errors));
    }
    scenario.duration_s = scenario.duration_s.min(u64::from(days) * 86_400);
    let output = driver::fast::run(&scenario, checked.config).map_err(|e| e.to_string())?;
    let start = scenario.start.unix_secs();
    let start = start - start % 86_400;
    let provider_of = |rcpt: &str| {
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        scenario
            .isps
            .iter()
            .find(|s| s.domains.iter().any(|d| d == domain))
            .map(|s| s.name.clone())
    };
    // Each recipient once: the day its message was queued, its provider, the source IP that
    // last tried it.
    let mut recipients: std::collections::BTreeMap<
        (&str, crate::time::Time),
        (u32, String, std::net::Ipv4Addr),
    > = std::collections::BTreeMap::new();
    for r in &output.records {
        let Some(provider) = provider_of(&r.rcpt) else {
            continue;
        };
        let day = (r.time_queued.unix_secs().saturating_sub(start) / 86_400) as u32;
        let ip = r.dlv_source_ip.parse().ok();
        let e = recipients
            .entry((r.rcpt.as_str(), r.time_queued))
            .or_insert((day, provider, std::net::Ipv4Addr::UNSPECIFIED));
        if let Some(ip) = ip {
            e.2 = ip;
        }
    }
    let mut rows: std::collections::BTreeMap<(u32, String, std::net::Ipv4Addr), u64> =
        std::collections::BTreeMap::new();
    for (day, provider, ip) in recipients.into_values() {
        *rows.entry((day, provider, ip)).or_default() += 1;
    }
    let schedule = crate::warmup::Schedule {
        rows: rows
            .into_iter()
            .map(|((day, provider, ip), messages)| crate::warmup::Row {
                day,
                provider,
                ip,
                messages,
            })
            .collect(),
    };
    let input = crate::warmup::scenario_input(&scenario, &schedule);
    let mut fold = ReplayFold::new(input.start_s, &scenario.isps, &[]);
    fold.fold(&output.records);
    let outcomes = fold.outcomes();
    Ok(WarmupReplay {
        input,
        schedule,
        specs: scenario.isps.clone(),
        output,
        outcomes,
        adapted: None,
        replay: None,
    })
}
