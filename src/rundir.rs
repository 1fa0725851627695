//! Run directories on disk: written whole, then put in place.
//!
//! Owns the one way a run's files reach their directory: everything is written into a
//! staging directory beside the target (`.NAME.partial-PID-N`), synced, and renamed into
//! place only when complete, so an interrupted run leaves the previous complete directory or
//! none — never a half-written report, never a new `acct.csv` beside an old `summary.json`.
//! A target that exists must look like a run directory (only the files a run writes), so a
//! mistyped `--out` can never replace a directory of the user's. Also owns file replacement
//! for `pmta-sim report` (each file written beside itself and renamed). This is the edge: it
//! touches the real file system and must not decide what goes in the files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What a run directory holds; a target holding anything else is not replaced.
pub const RUN_FILES: &[&str] = &[
    "acct.csv",
    "run.json",
    "summary.json",
    "report.html",
    "charts",
];

/// Distinguishes the staging directories of one process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A run directory being written. Dropped without [`Staging::commit`], it removes itself.
#[derive(Debug)]
pub struct Staging {
    target: PathBuf,
    dir: PathBuf,
    committed: bool,
}

fn name_of(target: &Path) -> Result<String, String> {
    target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .filter(|n| n != "." && n != "..")
        .ok_or_else(|| {
            format!(
                "`{}` does not name a directory (give a path ending in a name)",
                crate::printable::path(target)
            )
        })
}

/// Whether `dir` holds nothing but what a run writes.
fn is_run_directory(dir: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if !RUN_FILES.iter().any(|f| name == *f) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a process with this id is running (Linux: its `/proc` entry). Elsewhere every
/// process counts as running, so nothing is removed that might be in use.
fn running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

impl Staging {
    /// Checks that `target` can be written (before any simulation runs) and creates the
    /// staging directory beside it. Staging directories left by interrupted runs of this
    /// target (whose process is gone) are removed.
    pub fn begin(target: &Path) -> Result<Staging, String> {
        let shown = crate::printable::path(target);
        let name = name_of(target)?;
        match std::fs::symlink_metadata(target) {
            Ok(meta) if !meta.is_dir() => {
                return Err(format!(
                    "`{shown}` exists and is not a directory; choose another --out"
                ));
            }
            Ok(_) => match is_run_directory(target) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "`{shown}` exists and holds files a run does not write; choose another --out or empty it"
                    ));
                }
                Err(e) => return Err(format!("cannot read `{shown}`: {e}")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot use `{shown}`: {e}")),
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot create `{}`: {e}", crate::printable::path(&parent)))?;
        Staging::sweep(&parent, &name);
        let pid = std::process::id();
        let dir = parent.join(format!(
            ".{name}.partial-{pid}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).map_err(|e| {
            format!(
                "cannot write beside `{shown}` (creating `{}`): {e}",
                crate::printable::path(&dir)
            )
        })?;
        Ok(Staging {
            target: target.to_path_buf(),
            dir,
            committed: false,
        })
    }

    /// Removes `.NAME.partial-PID-N` and `.NAME.old-PID-N` directories whose process is gone.
    fn sweep(parent: &Path, name: &str) {
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().to_string();
            let rest = file
                .strip_prefix(&format!(".{name}.partial-"))
                .or_else(|| file.strip_prefix(&format!(".{name}.old-")));
            let pid = rest
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !running(pid)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Where the files go until the run is complete.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Puts the complete directory in place of the target (and the previous run away).
    pub fn commit(mut self) -> Result<(), String> {
        sync_tree(&self.dir).map_err(|e| format!("cannot sync the run's files: {e}"))?;
        let shown = crate::printable::path(&self.target);
        let old = if self.target.exists() {
            // Checked again: the target may have changed while the simulation ran.
            if !is_run_directory(&self.target).unwrap_or(false) {
                return Err(format!(
                    "`{shown}` now holds files a run does not write; the run is left in `{}`",
                    crate::printable::path(&self.dir)
                ));
            }
            let name = name_of(&self.target)?;
            let old = self.dir.with_file_name(format!(
                ".{name}.old-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::rename(&self.target, &old)
                .map_err(|e| format!("cannot move the previous `{shown}` aside: {e}"))?;
            Some(old)
        } else {
            None
        };
        std::fs::rename(&self.dir, &self.target)
            .map_err(|e| format!("cannot put the run in `{shown}`: {e}"))?;
        self.committed = true;
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    Ok(())
}

/// Replaces one file: writes `bytes` beside it and renames over it, so a reader sees the old
/// file or the new one, never a part.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let shown = crate::printable::path(path);
    let name = name_of(path)?;
    let temp = path.with_file_name(format!(
        ".{name}.partial-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&temp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(format!("cannot write `{shown}`: {e}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pmta-sim-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_run_appears_whole_and_replaces_the_previous_one() {
        let base = temp("whole");
        let target = base.join("run-1");
        let first = Staging::begin(&target).unwrap();
        std::fs::write(first.dir().join("acct.csv"), "one").unwrap();
        assert!(
            !target.exists(),
            "nothing at the target until the run is complete"
        );
        first.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("acct.csv")).unwrap(),
            "one"
        );
        let second = Staging::begin(&target).unwrap();
        std::fs::write(second.dir().join("summary.json"), "two").unwrap();
        second.commit().unwrap();
        assert!(
            !target.join("acct.csv").exists(),
            "nothing of the old run is mixed in"
        );
        assert_eq!(
            std::fs::read_dir(&base).unwrap().count(),
            1,
            "no staging or old directory is left"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn an_abandoned_run_leaves_the_previous_directory() {
        let base = temp("abandoned");
        let target = base.join("run");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("acct.csv"), "previous").unwrap();
        let staging = Staging::begin(&target).unwrap();
        std::fs::write(staging.dir().join("acct.csv"), "half").unwrap();
        drop(staging);
        assert_eq!(
            std::fs::read_to_string(target.join("acct.csv")).unwrap(),
            "previous"
        );
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_directory_of_the_users_is_never_replaced() {
        let base = temp("users");
        std::fs::write(base.join("notes.txt"), "mine").unwrap();
        let err = Staging::begin(&base).unwrap_err();
        assert!(err.contains("holds files a run does not write"), "{err}");
        let file = base.join("notes.txt");
        let err = Staging::begin(&file).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
