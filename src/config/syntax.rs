//! The shape of a PowerMTA configuration file: lines, blocks, tokens, includes.
//!
//! Owns the line-oriented grammar and nothing of its meaning. A file is a sequence of lines;
//! each line is blank, a `#` comment, an opening tag `<tag arg>`, a closing tag `</tag>` or a
//! directive `name value...`. Values are whitespace-separated words, `"quoted strings"` and,
//! inside pattern blocks, `/regular expressions/` (which may contain spaces and `#`).
//! `include PATH` is expanded here, in place, so later stages see one tree.
//!
//! The parser never gives up: a malformed line becomes a diagnostic and parsing goes on, so
//! every mistake in a file is reported in one pass. It must never panic on any input bytes.

use std::path::{Path, PathBuf};

use super::diag::{Diagnostic, did_you_mean};
use super::directives::{BlockKind, invented_block};
use super::source::{FileId, FileSystem, SourceMap, Span, Spanned};

/// Deepest include nesting we follow; deeper is almost certainly a mistake.
pub const INCLUDE_DEPTH_MAX: usize = 32;
/// Most files one configuration may read through `include`.
pub const FILES_MAX: usize = 4096;
/// Longest line we accept, in bytes.
pub const LINE_LENGTH_MAX_BYTES: usize = 64 * 1024;
/// Deepest block nesting (PowerMTA itself nests at most two levels).
const BLOCK_DEPTH_MAX: usize = 8;

/// How a value token was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Word,
    /// `"..."`; the token text has the quotes removed and `\"`, `\\` unescaped.
    Quoted,
    /// `/.../`; the token text is the pattern between the slashes.
    Regex,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub text: String,
    pub span: Span,
}

/// `name value...` on one line.
#[derive(Clone, Debug)]
pub struct DirectiveLine {
    /// The first token; for a `<bounce-category-patterns>` line this is the `/regex/`.
    pub name: Token,
    pub args: Vec<Token>,
    /// The whole line, without leading whitespace or a trailing comment.
    pub span: Span,
}

impl DirectiveLine {
    /// The span of all arguments, or of the name when there are none.
    pub fn value_span(&self) -> Span {
        match (self.args.first(), self.args.last()) {
            (Some(first), Some(last)) => first.span.to(last.span),
            _ => self.name.span,
        }
    }

    /// The arguments joined with single spaces, as PowerMTA reads a multi-word value.
    pub fn value_text(&self) -> String {
        let words: Vec<&str> = self.args.iter().map(|t| t.text.as_str()).collect();
        words.join(" ")
    }
}

/// `<tag arg> ... </tag>`.
#[derive(Clone, Debug)]
pub struct Block {
    pub kind: BlockKind,
    pub tag: Spanned<String>,
    /// Everything between the tag name and `>`, trimmed; `None` when empty.
    pub arg: Option<Spanned<String>>,
    pub open: Span,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub enum Item {
    Directive(DirectiveLine),
    Block(Block),
}

/// Reads a configuration file and everything it includes into one item tree.
pub struct Parser<'a> {
    fs: &'a dyn FileSystem,
    sources: &'a mut SourceMap,
    diagnostics: &'a mut Vec<Diagnostic>,
    /// Identities of the files being read, outermost first, for cycle detection.
    include_stack: Vec<PathBuf>,
}

/// An open block while its file is being read.
struct OpenBlock {
    block: Block,
    /// The items of the enclosing level, restored when this block closes.
    outer: Vec<Item>,
}

impl<'a> Parser<'a> {
    pub fn new(
        fs: &'a dyn FileSystem,
        sources: &'a mut SourceMap,
        diagnostics: &'a mut Vec<Diagnostic>,
    ) -> Parser<'a> {
        Parser {
            fs,
            sources,
            diagnostics,
            include_stack: Vec::new(),
        }
    }

    /// Adds an already-read root file and parses it. Reading the root is the caller's job so
    /// that an unreadable root can be told apart (exit status 2) from a bad include (1).
    pub fn parse_root(&mut self, path: &Path, bytes: Vec<u8>) -> Vec<Item> {
        let identity = self.fs.identity(path);
        self.include_stack.push(identity);
        let file = self.add_file(path.to_path_buf(), bytes, None);
        let items = self.parse_text(file, &[]);
        self.include_stack.pop();
        items
    }

    fn add_file(&mut self, path: PathBuf, bytes: Vec<u8>, included_at: Option<Span>) -> FileId {
        match String::from_utf8(bytes) {
            Ok(text) => self.sources.add(path, text),
            Err(err) => {
                let valid_up_to = err.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(err.as_bytes()).into_owned();
                let file = self.sources.add(path, text);
                // The lossy text is identical up to the first bad byte, which became one
                // U+FFFD replacement character.
                let at = Span::new(file, valid_up_to, valid_up_to + '\u{FFFD}'.len_utf8());
                let mut diag = Diagnostic::error(at, "file is not valid UTF-8")
                    .with_help("save the file as UTF-8 (PowerMTA directives are ASCII)");
                if let Some(include) = included_at {
                    diag = diag.with_note(include, "included from here");
                }
                self.diagnostics.push(diag);
                file
            }
        }
    }

    /// Parses one file. `context` is the stack of blocks open around an `include` line.
    fn parse_text(&mut self, file: FileId, context: &[BlockKind]) -> Vec<Item> {
        let text = self.sources.file(file).text.clone();
        let mut stack: Vec<OpenBlock> = Vec::new();
        let mut items: Vec<Item> = Vec::new();
        let mut line_start = 0;
        while line_start < text.len() {
            let line_end = text[line_start..]
                .find('\n')
                .map_or(text.len(), |i| line_start + i);
            let line = text[line_start..line_end].trim_end_matches('\r');
            let enclosing = stack
                .last()
                .map(|open| open.block.kind)
                .or_else(|| context.last().copied());
            if line.len() > LINE_LENGTH_MAX_BYTES {
                self.diagnostics.push(Diagnostic::error(
                    Span::new(file, line_start, line_start + 1),
                    format!(
                        "line is {} bytes long, over the {LINE_LENGTH_MAX_BYTES} byte limit",
                        line.len()
                    ),
                ));
            } else {
                let parsed = self.parse_line(file, line_start, line, enclosing);
                self.place_line(file, parsed, context, &mut stack, &mut items);
            }
            line_start = line_end + 1;
        }
        while let Some(open) = stack.pop() {
            self.diagnostics.push(
                Diagnostic::error(
                    open.block.open,
                    format!("`<{}>` is never closed", open_tag_text(&open.block)),
                )
                .with_help(format!(
                    "add `</{}>` after the block's last line",
                    open.block.tag.value
                )),
            );
            let mut block = open.block;
            block.items = std::mem::take(&mut items);
            items = open.outer;
            items.push(Item::Block(block));
        }
        items
    }

    /// Files a parsed line into the tree: opens or closes blocks, expands includes.
    fn place_line(
        &mut self,
        file: FileId,
        parsed: Line,
        context: &[BlockKind],
        stack: &mut Vec<OpenBlock>,
        items: &mut Vec<Item>,
    ) {
        match parsed {
            Line::Empty => {}
            Line::Open { tag, arg, span } => {
                let parent = stack
                    .last()
                    .map(|open| open.block.kind)
                    .or_else(|| context.last().copied());
                let kind = match BlockKind::from_tag(&tag.value) {
                    Some(kind) => kind,
                    None => {
                        let mut diag =
                            Diagnostic::error(tag.span, format!("unknown block `<{}>`", tag.value));
                        if let Some(help) = invented_block(&tag.value) {
                            diag = diag.with_help(help);
                        } else if let Some(known) =
                            did_you_mean(&tag.value, BlockKind::ALL.iter().map(|k| k.tag()))
                        {
                            diag = diag.with_help(format!("did you mean `<{known}>`?"));
                        }
                        self.diagnostics.push(diag);
                        BlockKind::Unknown
                    }
                };
                if kind != BlockKind::Unknown && !kind.allowed_in(parent) {
                    let where_ = match parent {
                        Some(p) => format!("inside `<{}>`", p.tag()),
                        None => "at the top level".to_string(),
                    };
                    let help = match kind.parents() {
                        [] => "it belongs at the top level".to_string(),
                        parents => format!(
                            "it may appear {}",
                            parents
                                .iter()
                                .map(|p| match p {
                                    None => "at the top level".to_string(),
                                    Some(k) => format!("inside `<{}>`", k.tag()),
                                })
                                .collect::<Vec<_>>()
                                .join(" or ")
                        ),
                    };
                    self.diagnostics.push(
                        Diagnostic::error(
                            tag.span,
                            format!("`<{}>` is not allowed {where_}", tag.value),
                        )
                        .with_help(help),
                    );
                }
                if stack.len() + context.len() >= BLOCK_DEPTH_MAX {
                    self.diagnostics.push(Diagnostic::error(
                        span,
                        format!("blocks nested more than {BLOCK_DEPTH_MAX} deep"),
                    ));
                }
                let block = Block {
                    kind,
                    tag,
                    arg,
                    open: span,
                    items: Vec::new(),
                };
                stack.push(OpenBlock {
                    block,
                    outer: std::mem::take(items),
                });
            }
            Line::Close { tag, span } => self.close_block(tag, span, stack, items),
            Line::Directive(line) if line.name.text.eq_ignore_ascii_case("include") => {
                let enclosing: Vec<BlockKind> = context
                    .iter()
                    .copied()
                    .chain(stack.iter().map(|open| open.block.kind))
                    .collect();
                let included = self.include(file, &line, &enclosing);
                items.extend(included);
            }
            Line::Directive(line) => items.push(Item::Directive(line)),
        }
    }

    fn close_block(
        &mut self,
        tag: Spanned<String>,
        span: Span,
        stack: &mut Vec<OpenBlock>,
        items: &mut Vec<Item>,
    ) {
        let matching = stack
            .iter()
            .rposition(|open| open.block.tag.value.eq_ignore_ascii_case(&tag.value));
        let Some(index) = matching else {
            let Some(open) = stack.last() else {
                self.diagnostics.push(Diagnostic::error(
                    span,
                    format!("`</{}>` closes a block that is not open", tag.value),
                ));
                return;
            };
            // Most likely a misspelt closing tag: report both lines and close the innermost
            // block, so the lines after it are read at the right level.
            self.diagnostics.push(
                Diagnostic::error(
                    span,
                    format!(
                        "mismatched closing tag `</{}>` for `<{}>`",
                        tag.value,
                        open_tag_text(&open.block)
                    ),
                )
                .with_note(open.block.open, "the open block starts here")
                .with_help(format!("write `</{}>`", open.block.tag.value)),
            );
            let open = stack.pop().expect("stack is not empty");
            let mut block = open.block;
            block.items = std::mem::take(items);
            *items = open.outer;
            items.push(Item::Block(block));
            return;
        };
        // Blocks opened after the one being closed were never closed: report each, naming
        // both lines, then close them so the rest of the file still parses.
        while stack.len() > index + 1 {
            let open = stack.pop().expect("stack is longer than index + 1");
            self.diagnostics.push(
                Diagnostic::error(
                    span,
                    format!(
                        "mismatched closing tag `</{}>`: `<{}>` is still open",
                        tag.value,
                        open_tag_text(&open.block)
                    ),
                )
                .with_note(open.block.open, "the open block starts here")
                .with_help(format!(
                    "close it with `</{}>` before this line",
                    open.block.tag.value
                )),
            );
            let mut outer = open.outer;
            let mut block = open.block;
            block.items = std::mem::take(items);
            outer.push(Item::Block(block));
            *items = outer;
        }
        let open = stack.pop().expect("index is within the stack");
        let mut block = open.block;
        block.items = std::mem::take(items);
        *items = open.outer;
        items.push(Item::Block(block));
    }

    fn include(&mut self, file: FileId, line: &DirectiveLine, context: &[BlockKind]) -> Vec<Item> {
        let [target] = line.args.as_slice() else {
            self.diagnostics.push(
                Diagnostic::error(line.span, "`include` takes exactly one path").with_help(
                    "quote a path that contains spaces: include \"/etc/pmta/my file.conf\"",
                ),
            );
            return Vec::new();
        };
        if self.include_stack.len() >= INCLUDE_DEPTH_MAX {
            self.diagnostics.push(Diagnostic::error(
                target.span,
                format!("includes nested more than {INCLUDE_DEPTH_MAX} deep"),
            ));
            return Vec::new();
        }
        let including = &self.sources.file(file).path;
        let base = including.parent().unwrap_or(Path::new(""));
        let path = base.join(&target.text);
        let is_glob = target.text.contains(['*', '?', '[']);
        let paths = if is_glob {
            match self.fs.glob(&path) {
                Ok(paths) if paths.is_empty() => {
                    self.diagnostics.push(Diagnostic::warning(
                        target.span,
                        format!("`include {}` matches no file", target.text),
                    ));
                    return Vec::new();
                }
                Ok(paths) => paths,
                Err(err) => {
                    self.diagnostics.push(Diagnostic::error(
                        target.span,
                        format!("bad include pattern `{}`: {err}", target.text),
                    ));
                    return Vec::new();
                }
            }
        } else {
            vec![path]
        };
        let mut items = Vec::new();
        for path in paths {
            if self.sources.len() >= FILES_MAX {
                self.diagnostics.push(Diagnostic::error(
                    target.span,
                    format!("more than {FILES_MAX} files included"),
                ));
                break;
            }
            let identity = self.fs.identity(&path);
            if let Some(pos) = self.include_stack.iter().position(|p| *p == identity) {
                let chain: Vec<String> = self.include_stack[pos..]
                    .iter()
                    .chain(std::iter::once(&identity))
                    .map(|p| p.display().to_string())
                    .collect();
                self.diagnostics.push(Diagnostic::error(
                    target.span,
                    format!("include cycle: {}", chain.join(" -> ")),
                ));
                continue;
            }
            let bytes = match self.fs.read(&path) {
                Ok(bytes) => bytes,
                Err(err) => {
                    self.diagnostics.push(Diagnostic::error(
                        target.span,
                        format!("cannot read included file `{}`: {err}", path.display()),
                    ));
                    continue;
                }
            };
            let included = self.add_file(path, bytes, Some(target.span));
            self.include_stack.push(identity);
            items.extend(self.parse_text(included, context));
            self.include_stack.pop();
        }
        items
    }

    fn parse_line(
        &mut self,
        file: FileId,
        offset: usize,
        line: &str,
        enclosing: Option<BlockKind>,
    ) -> Line {
        let indent = line.len() - line.trim_start().len();
        let body = &line[indent..];
        let at = offset + indent;
        if body.is_empty() || body.starts_with('#') {
            return Line::Empty;
        }
        if let Some(rest) = body.strip_prefix("</") {
            return self.parse_close(file, at, body, rest);
        }
        if body.starts_with('<') {
            return self.parse_open(file, at, body);
        }
        let regex_allowed = enclosing.is_some_and(BlockKind::has_regex_lines);
        let tokens = self.tokenize(file, at, body, regex_allowed);
        let mut tokens = tokens.into_iter();
        let Some(name) = tokens.next() else {
            return Line::Empty;
        };
        let args: Vec<Token> = tokens.collect();
        let end = args.last().map_or(name.span.end, |t| t.span.end);
        Line::Directive(DirectiveLine {
            span: Span { end, ..name.span },
            name,
            args,
        })
    }

    fn parse_open(&mut self, file: FileId, at: usize, body: &str) -> Line {
        let Some(close) = body.find('>') else {
            self.diagnostics.push(
                Diagnostic::error(
                    Span::new(file, at, at + body.len()),
                    "opening tag is missing its `>`",
                )
                .with_help(format!("write `{}>`", body.trim_end())),
            );
            return Line::Empty;
        };
        let inner = &body[1..close];
        let name_len = inner
            .find(|c: char| c.is_whitespace())
            .unwrap_or(inner.len());
        let name = &inner[..name_len];
        let tag = Spanned {
            value: name.to_ascii_lowercase(),
            span: Span::new(file, at + 1, at + 1 + name_len),
        };
        if name.is_empty() {
            self.diagnostics.push(Diagnostic::error(
                Span::new(file, at, at + close + 1),
                "empty tag `<>`",
            ));
            return Line::Empty;
        }
        let arg_text = &inner[name_len..];
        let arg_trimmed = arg_text.trim();
        let arg = (!arg_trimmed.is_empty()).then(|| {
            let arg_start = at + 1 + name_len + (arg_text.len() - arg_text.trim_start().len());
            Spanned {
                value: arg_trimmed.to_string(),
                span: Span::new(file, arg_start, arg_start + arg_trimmed.len()),
            }
        });
        self.reject_trailing(file, at + close + 1, &body[close + 1..], name);
        Line::Open {
            tag,
            arg,
            span: Span::new(file, at, at + close + 1),
        }
    }

    fn parse_close(&mut self, file: FileId, at: usize, body: &str, rest: &str) -> Line {
        let Some(close) = rest.find('>') else {
            self.diagnostics.push(Diagnostic::error(
                Span::new(file, at, at + body.len()),
                "closing tag is missing its `>`",
            ));
            return Line::Empty;
        };
        let name = rest[..close].trim();
        let name_start = at + 2 + (rest.len() - rest.trim_start().len());
        if name.is_empty() || name.contains(char::is_whitespace) {
            self.diagnostics.push(Diagnostic::error(
                Span::new(file, at, at + 2 + close + 1),
                format!("malformed closing tag `{}`", &body[..2 + close + 1]),
            ));
            return Line::Empty;
        }
        self.reject_trailing(file, at + 2 + close + 1, &rest[close + 1..], name);
        Line::Close {
            tag: Spanned {
                value: name.to_ascii_lowercase(),
                span: Span::new(file, name_start, name_start + name.len()),
            },
            span: Span::new(file, at, at + 2 + close + 1),
        }
    }

    /// Text after a tag's `>` must be nothing or a comment: PowerMTA reads one item per line.
    fn reject_trailing(&mut self, file: FileId, at: usize, trailing: &str, tag: &str) {
        let trimmed = trailing.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return;
        }
        let start = at + (trailing.len() - trimmed.len());
        let end = start + trimmed.trim_end().len();
        self.diagnostics.push(
            Diagnostic::error(
                Span::new(file, start, end),
                format!("unexpected text after the `{tag}` tag"),
            )
            .with_help("put each tag and directive on its own line"),
        );
    }

    /// Splits a directive line into tokens. Never fails: a broken token is reported and the
    /// rest of the line is kept as well as can be.
    fn tokenize(&mut self, file: FileId, at: usize, body: &str, regex_allowed: bool) -> Vec<Token> {
        let bytes = body.as_bytes();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_whitespace() {
                i += 1;
                continue;
            }
            if c == b'#' {
                break;
            }
            let start = i;
            if c == b'"' {
                let mut text = String::new();
                i += 1;
                let mut closed = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if matches!(bytes.get(i + 1), Some(b'"' | b'\\')) => {
                            text.push(bytes[i + 1] as char);
                            i += 2;
                        }
                        b'"' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        _ => {
                            let ch = body[i..].chars().next().expect("i is a char boundary");
                            text.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                if !closed {
                    self.diagnostics.push(
                        Diagnostic::error(
                            Span::new(file, at + start, at + bytes.len()),
                            "unterminated quoted string",
                        )
                        .with_help("add the closing `\"`"),
                    );
                }
                tokens.push(Token {
                    kind: TokenKind::Quoted,
                    text,
                    span: Span::new(file, at + start, at + i),
                });
                continue;
            }
            if c == b'/' && regex_allowed {
                i += 1;
                let mut closed = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'/' => {
                            closed = true;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                let end = i.min(bytes.len());
                if !closed {
                    self.diagnostics.push(
                        Diagnostic::error(
                            Span::new(file, at + start, at + bytes.len()),
                            "unterminated regular expression",
                        )
                        .with_help("end the pattern with `/` (write `\\/` for a literal slash)"),
                    );
                }
                let text = body
                    .get(start + 1..end)
                    .unwrap_or(&body[start + 1..])
                    .to_string();
                i = (end + 1).min(bytes.len());
                tokens.push(Token {
                    kind: TokenKind::Regex,
                    text,
                    span: Span::new(file, at + start, at + i),
                });
                continue;
            }
            // `#` ends a word as well as a line: PowerMTA treats it as a comment anywhere
            // outside a quoted string or a regular expression.
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'#' {
                i += 1;
            }
            tokens.push(Token {
                kind: TokenKind::Word,
                text: body[start..i].to_string(),
                span: Span::new(file, at + start, at + i),
            });
        }
        tokens
    }
}

fn open_tag_text(block: &Block) -> String {
    match &block.arg {
        Some(arg) => format!("{} {}", block.tag.value, arg.value),
        None => block.tag.value.clone(),
    }
}

/// One classified line.
enum Line {
    Empty,
    Open {
        tag: Spanned<String>,
        arg: Option<Spanned<String>>,
        span: Span,
    },
    Close {
        tag: Spanned<String>,
        span: Span,
    },
    Directive(DirectiveLine),
}
