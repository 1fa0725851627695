//! The PowerMTA configuration language: reading, checking and querying a configuration.
//!
//! Rooms, in pipeline order: [`source`] (files and positions), [`syntax`] (lines, blocks,
//! includes), [`directives`] (the vocabulary), [`value`] (value grammars), [`lower`] (typed
//! [`Config`] with cross-checks), [`queue`] (a queue's effective settings), [`diag`]
//! (diagnostics). This room is pure: it reads files only through a [`FileSystem`], and never
//! the clock, the network or an async runtime.

pub mod diag;
pub mod directives;
mod lower;
pub mod model;
pub mod queue;
pub mod source;
pub mod syntax;
pub mod value;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use diag::{Diagnostic, Severity};
pub use lower::{Options, parse_domain_pattern};
pub use model::Config;
pub use source::{FileSystem, MemFs, RealFs};

/// The root configuration file could not be read at all (exit status 2 at the CLI).
#[derive(Debug, Error)]
#[error("cannot read `{}`: {source}", path.display())]
pub struct Unreadable {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A configuration and everything found wrong with it.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    /// Errors and warnings, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// Reads `path` and everything it includes, and checks it all.
pub fn load(path: &Path, fs: &dyn FileSystem, options: Options) -> Result<Checked, Unreadable> {
    let bytes = fs.read(path).map_err(|source| Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config = Config::default();
    let mut diagnostics = Vec::new();
    let items =
        syntax::Parser::new(fs, &mut config.sources, &mut diagnostics).parse_root(path, bytes);
    lower::lower(&items, &mut config, fs, options, &mut diagnostics);
    // Report in reading order (syntax and meaning are checked in separate passes).
    diagnostics.sort_by_key(|d| d.span.map(|s| (s.file, s.start)));
    Ok(Checked {
        config,
        diagnostics,
    })
}
