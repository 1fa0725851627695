//! Source text of a configuration: the files it was read from and positions in them.
//!
//! Owns [`SourceMap`] (every file read, in reading order), [`Span`] (a byte range in one file)
//! and the [`FileSystem`] seam through which the loader reads files and expands `include`
//! globs. Tests use [`MemFs`]; the CLI uses [`RealFs`]. Nothing here interprets directives.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Largest configuration file we read, in bytes. PowerMTA configs of tens of thousands of
/// lines are a few MiB; anything far beyond that is a mistake (a log file named by `include`).
pub const FILE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u32);

/// A byte range `start..end` in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span {
            file,
            start: u32::try_from(start).expect("file size is capped below 4 GiB"),
            end: u32::try_from(end).expect("file size is capped below 4 GiB"),
        }
    }

    /// The smallest span covering both `self` and `other` (same file).
    pub fn to(self, other: Span) -> Span {
        debug_assert_eq!(self.file, other.file);
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// A value with the span it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// One file's text and where its lines start.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The path as the user would recognise it (as given, or joined to the including file).
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    fn new(path: PathBuf, text: String) -> SourceFile {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            path,
            text,
            line_starts,
        }
    }

    /// Number of lines, counting a last line without a newline.
    pub fn line_count(&self) -> usize {
        if self.text.ends_with('\n') {
            self.line_starts.len() - 1
        } else {
            self.line_starts.len()
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn location(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let line_start = self.line_starts[line_index];
        let column = self.text[line_start..floor_char_boundary(&self.text, offset)]
            .chars()
            .count();
        (line_index + 1, column + 1)
    }

    /// The text of a 1-based line, without its line terminator.
    pub fn line_text(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        self.text[start..end].trim_end_matches(['\n', '\r'])
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Every file read while loading a configuration, in the order they were read.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, path: PathBuf, text: String) -> FileId {
        let id = FileId(u32::try_from(self.files.len()).expect("file count is capped"));
        self.files.push(SourceFile::new(path, text));
        id
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId(i as u32), f))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The text a span covers.
    pub fn text(&self, span: Span) -> &str {
        &self.file(span.file).text[span.start as usize..span.end as usize]
    }

    /// `FILE:LINE:COL` of the start of a span.
    pub fn position(&self, span: Span) -> Position<'_> {
        let file = self.file(span.file);
        let (line, column) = file.location(span.start as usize);
        Position {
            path: &file.path,
            line,
            column,
        }
    }
}

/// A human position in a source file; displays as `FILE:LINE:COL`.
#[derive(Clone, Copy, Debug)]
pub struct Position<'a> {
    pub path: &'a Path,
    pub line: usize,
    pub column: usize,
}

impl Position<'_> {
    /// `FILE:LINE`, the form used for provenance in `check --explain`.
    pub fn file_line(&self) -> String {
        format!("{}:{}", self.path.display(), self.line)
    }
}

impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// How the loader reads files. A trait so tests can load multi-file configs from memory.
pub trait FileSystem {
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Paths matching a glob pattern (`*`, `?`, `[..]` in any component), sorted.
    fn glob(&self, pattern: &Path) -> Result<Vec<PathBuf>, String>;
    /// A key that is equal for two paths naming the same file, for include-cycle detection.
    fn identity(&self, path: &Path) -> PathBuf;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

/// Reads a whole file that must be a regular file of at most `max_bytes`. Anything else (a
/// directory, a FIFO, `/dev/zero`, a socket) is refused before it is opened, so a wrong path
/// can neither block nor fill memory; the size is checked while reading, not only from the
/// metadata, since a file may grow (or a special file report 0) after it is looked at.
pub fn read_regular(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let metadata = std::fs::metadata(path)?;
    if metadata.is_dir() {
        return Err(io::Error::other("is a directory"));
    }
    if !metadata.is_file() {
        return Err(io::Error::other(
            "is not a regular file (a pipe, socket or device); pmta-sim reads only files",
        ));
    }
    let too_large = |size: u64| {
        io::Error::other(format!(
            "file is {size} bytes or more, larger than the {max_bytes} byte limit"
        ))
    };
    if metadata.len() > max_bytes {
        return Err(too_large(metadata.len()));
    }
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("is not a regular file"));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

impl FileSystem for RealFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        read_regular(path, FILE_SIZE_MAX_BYTES as u64)
    }

    fn glob(&self, pattern: &Path) -> Result<Vec<PathBuf>, String> {
        let pattern = pattern.to_str().ok_or("include path is not valid UTF-8")?;
        let paths = glob::glob(pattern).map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        for entry in paths {
            let path = entry.map_err(|e| e.to_string())?;
            if path.is_file() {
                found.push(path);
            }
        }
        found.sort();
        Ok(found)
    }

    fn identity(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

/// An in-memory file system: path → contents. Used by tests and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct MemFs {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl MemFs {
    pub fn new() -> MemFs {
        MemFs::default()
    }

    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<Vec<u8>>) -> MemFs {
        self.files.insert(normalize(&path.into()), text.into());
        self
    }
}

impl FileSystem for MemFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn glob(&self, pattern: &Path) -> Result<Vec<PathBuf>, String> {
        let text = pattern.to_str().ok_or("include path is not valid UTF-8")?;
        let matcher = glob::Pattern::new(text).map_err(|e| e.to_string())?;
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::default()
        };
        Ok(self
            .files
            .keys()
            .filter(|p| matcher.matches_path_with(p, options))
            .cloned()
            .collect())
    }

    fn identity(&self, path: &Path) -> PathBuf {
        normalize(path)
    }
}

/// Removes `.` components and folds `dir/..`, without touching a disk.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let mut map = SourceMap::default();
        let id = map.add("a.conf".into(), "one\r\ntwö x\nthree".into());
        let file = map.file(id);
        assert_eq!(file.location(0), (1, 1));
        assert_eq!(file.location(5), (2, 1));
        // "twö " is 5 bytes but 4 characters: `x` is column 5.
        assert_eq!(file.location(10), (2, 5));
        assert_eq!(file.line_text(1), "one");
        assert_eq!(file.line_text(3), "three");
        assert_eq!(file.line_count(), 3);
    }

    #[test]
    fn mem_fs_globs_one_directory_level() {
        let fs = MemFs::new()
            .with("/etc/pmta/conf.d/b.conf", "")
            .with("/etc/pmta/conf.d/a.conf", "")
            .with("/etc/pmta/conf.d/sub/c.conf", "");
        let found = fs.glob(Path::new("/etc/pmta/conf.d/*.conf")).unwrap();
        assert_eq!(
            found,
            vec![
                PathBuf::from("/etc/pmta/conf.d/a.conf"),
                PathBuf::from("/etc/pmta/conf.d/b.conf")
            ]
        );
        assert_eq!(
            fs.identity(Path::new("/etc/pmta/./conf.d/../conf.d/a.conf")),
            PathBuf::from("/etc/pmta/conf.d/a.conf")
        );
    }
}
