//! Drivers: the only room that runs the engine against a clock and a network.
//!
//! Owns the event loops that turn engine actions into I/O and I/O into engine inputs. The
//! network driver ([`network`]) runs everything inside tokio's turmoil: the engine, one host
//! per source IP (so receivers see each source IP as its own address), one host per MX, in
//! simulated time with seeded latency and scheduled faults. This room may import tokio and
//! turmoil; every `select!` in it is `biased;`, and it reads time only from the simulation.

pub mod estimate;
pub mod fast;
pub mod live;
pub mod network;
pub mod progress;

use std::path::{Path, PathBuf};

use crate::scenario::{ConfigSource, IspSpec, Scenario, ScenarioError, parse_model};

/// Where `model = "NAME"` is looked up: `isp-models/` beside the scenario's directory
/// (`scenarios/x.toml` → `isp-models/`), else `isp-models/` in the working directory.
pub fn models_dir(scenario: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(scenario).unwrap_or_else(|_| scenario.to_path_buf());
    let beside = absolute
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("isp-models"));
    match beside {
        Some(dir) if dir.is_dir() => dir,
        _ => PathBuf::from("isp-models"),
    }
}

/// Largest scenario file read.
pub const SCENARIO_FILE_MAX_BYTES: u64 = 16 << 20;
/// Largest provider model file read.
pub const MODEL_FILE_MAX_BYTES: u64 = 1 << 20;

/// Reads a text file that must be a regular file of at most `max_bytes`, as UTF-8.
fn read_text(path: &Path, max_bytes: u64) -> Result<String, ScenarioError> {
    let bytes = crate::config::source::read_regular(path, max_bytes)
        .map_err(|e| ScenarioError::in_file(path, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        ScenarioError::in_file(
            path,
            format!(
                "is not UTF-8 text (byte {} is not)",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Reads a scenario file and the provider models it names.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    read_scenario(path).map(|(scenario, _)| scenario)
}

/// [`load_scenario`], with the scenario's text.
fn read_scenario(path: &Path) -> Result<(Scenario, String), ScenarioError> {
    read_scenario_with(path, &models_dir(path))
}

fn read_scenario_with(path: &Path, dir: &Path) -> Result<(Scenario, String), ScenarioError> {
    let text = read_text(path, SCENARIO_FILE_MAX_BYTES)?;
    let load = |name: &str| -> Result<IspSpec, ScenarioError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ScenarioError::in_file(
                path,
                format!("`{name}` is not a model name (letters, digits, - and _)"),
            ));
        }
        let file = dir.join(format!("{name}.toml"));
        let text = read_text(&file, MODEL_FILE_MAX_BYTES)?;
        parse_model(&file, &text)
    };
    let scenario = Scenario::parse_with(path, &text, &load)?;
    Ok((scenario, text))
}

/// Reads a scenario's PowerMTA configuration (its file, or its inline text, which is named
/// `SCENARIO.inline.conf` in messages).
pub fn load_config(
    scenario: &Scenario,
    scenario_path: &Path,
) -> Result<crate::config::Checked, crate::config::Unreadable> {
    use crate::config::{self, MemFs, Options, RealFs};
    match &scenario.config {
        ConfigSource::Path(path) => config::load(path, &RealFs, Options::default()),
        ConfigSource::Inline(text) => {
            let inline = scenario_path.with_extension("inline.conf");
            config::load(
                &inline,
                &MemFs::new().with(&inline, text.as_bytes()),
                Options::default(),
            )
        }
    }
}

/// A scenario and its configuration, read and checked against each other.
#[derive(Debug)]
pub struct Loaded {
    pub scenario: Scenario,
    pub checked: crate::config::Checked,
    /// The scenario's warnings, then (when the configuration has no error of its own) every
    /// place where the scenario names something the configuration does not have.
    pub problems: Vec<ScenarioError>,
}

/// Why a scenario could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Scenario(#[from] ScenarioError),
    #[error("error: {0}")]
    Config(#[from] crate::config::Unreadable),
}

/// Reads a scenario, its models and its configuration, and checks them against each other.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    load_with_models(path, &models_dir(path))
}

/// [`load`], with the provider models from `models`.
pub fn load_with_models(path: &Path, models: &Path) -> Result<Loaded, LoadError> {
    let (scenario, text) = read_scenario_with(path, models)?;
    let checked = load_config(&scenario, path)?;
    let mut problems = scenario.warnings.clone();
    if checked.error_count() == 0 {
        problems.extend(crate::scenario::check_against(
            path,
            &text,
            &scenario,
            &checked.config,
        ));
    }
    Ok(Loaded {
        scenario,
        checked,
        problems,
    })
}

/// SHA-256 over the configuration's files (name and text, in load order), hex.
pub fn config_sha256(sources: &crate::config::source::SourceMap) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (_, file) in sources.files() {
        context.update(file.path.to_string_lossy().as_bytes());
        context.update(&[0]);
        context.update(file.text.as_bytes());
        context.update(&[0]);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
