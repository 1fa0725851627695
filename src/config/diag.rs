//! Diagnostics: what is wrong with a configuration, where, and what to do about it.
//!
//! The loader never stops at the first mistake: it collects every [`Diagnostic`] in one pass
//! and the caller decides what an error means (the CLI exits 1). Rendering follows the
//! compiler convention operators already read: `FILE:LINE:COL: error: MESSAGE`, the offending
//! line quoted, a caret under the offending text, then notes and a suggestion.

use std::fmt::Write as _;

use super::source::{SourceMap, Span};
use crate::printable::escape;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One finding about the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Where the problem is; `None` for findings about the whole configuration.
    pub span: Option<Span>,
    /// Lowercase, no trailing period; quotes the offending value.
    pub message: String,
    /// Other places that explain this one (e.g. where a block was opened).
    pub notes: Vec<(Span, String)>,
    /// What to write instead, when we can tell.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            span: Some(span),
            message: message.into(),
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn warning(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, message)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(mut self, span: Span, note: impl Into<String>) -> Diagnostic {
        self.notes.push((span, note.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic for a terminal or a log.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        match self.span {
            Some(span) => {
                let _ = writeln!(
                    out,
                    "{}: {}: {}",
                    escape(&sources.position(span).to_string()),
                    self.severity.label(),
                    escape(&self.message)
                );
                quote(&mut out, sources, span);
            }
            None => {
                let _ = writeln!(out, "{}: {}", self.severity.label(), escape(&self.message));
            }
        }
        for (span, note) in &self.notes {
            let _ = writeln!(
                out,
                "{}: note: {}",
                escape(&sources.position(*span).to_string()),
                escape(note)
            );
            quote(&mut out, sources, *span);
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "  = help: {}", escape(help));
        }
        out
    }
}

/// Writes the first line of `span` with a caret row under the spanned characters. Control
/// characters in the line are shown escaped, and the caret follows the escaped text.
fn quote(out: &mut String, sources: &SourceMap, span: Span) {
    let file = sources.file(span.file);
    let position = sources.position(span);
    let line_text = file.line_text(position.line).replace('\t', " ");
    let before: String = line_text.chars().take(position.column - 1).collect();
    let spanned = sources.text(span).replace('\t', " ");
    let first_line = spanned.split(['\r', '\n']).next().unwrap_or("");
    let width = escape(first_line).chars().count().max(1);
    let gutter = position.line.to_string();
    let pad = " ".repeat(gutter.len());
    let _ = writeln!(out, " {gutter} | {}", escape(&line_text));
    let _ = writeln!(
        out,
        " {pad} | {}{}",
        " ".repeat(escape(&before).chars().count()),
        "^".repeat(width)
    );
}

/// The closest known word to `word`, if one is close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for candidate in known {
        let score = strsim::jaro_winkler(&word, candidate);
        let close_edit = strsim::levenshtein(&word, candidate) <= 2.max(candidate.len() / 5);
        let contained = word.len() >= 5 && (candidate.contains(&word) || word.contains(candidate));
        if (score >= 0.88 || close_edit || contained) && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_quote_and_caret() {
        let mut sources = SourceMap::default();
        let file = sources.add(
            "main.conf".into(),
            "<domain *>\n  max-smtp-outt 20\n".into(),
        );
        let diag = Diagnostic::error(Span::new(file, 13, 26), "unknown directive `max-smtp-outt`")
            .with_help("did you mean `max-smtp-out`?");
        assert_eq!(
            diag.render(&sources),
            "main.conf:2:3: error: unknown directive `max-smtp-outt`\n \
             2 |   max-smtp-outt 20\n   |   ^^^^^^^^^^^^^\n  = help: did you mean `max-smtp-out`?\n"
        );
    }

    #[test]
    fn suggests_close_words_only() {
        let known = [
            "max-smtp-out",
            "max-msg-rate",
            "retry-after",
            "bounce-after",
        ];
        assert_eq!(did_you_mean("max-smtp-outt", known), Some("max-smtp-out"));
        assert_eq!(did_you_mean("retry-afer", known), Some("retry-after"));
        assert_eq!(did_you_mean("MAX-MSG-RATE", known), Some("max-msg-rate"));
        assert_eq!(did_you_mean("hostname", known), None);
    }
}
