//! Reading and writing sysctls: the one seam between this crate and the
//! kernel.
//!
//! [`SysctlStore`] is what check, diff, apply and rollback talk to.
//! [`ProcRoot`] implements it over a directory laid out like `/proc/sys`
//! (`net.ipv4.tcp_mem` ↔ `<root>/net/ipv4/tcp_mem`): the real one, or a
//! temporary directory standing in for it in tests.
//!
//! Contracts:
//! - a write opens the existing file (never creates one: a missing key is an
//!   error, as on the real /proc/sys) and writes the value and a newline in
//!   one `write`, which is how proc sysctl handlers expect it;
//! - a read is bounded to one page plus one byte (a sysctl value is at most a
//!   page) and the trailing newline is dropped;
//! - errors carry the key, the path and a readable reason (never a bare
//!   `os error N`).

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The real sysctl tree.
pub const LIVE_ROOT: &str = "/proc/sys";

/// Longest value read from a key: a sysctl value fits in a page.
const MAX_VALUE_BYTES: u64 = 4096;

/// Reading or writing one key failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProcError {
    #[error("{key}: not present ({path} does not exist; kernel module not loaded or key unknown to this kernel?)")]
    Missing { key: String, path: PathBuf },
    #[error("reading {key} from {path}: {reason}")]
    Read {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("writing {key} = `{value}` to {path}: {reason}")]
    Write {
        key: String,
        value: String,
        path: PathBuf,
        reason: String,
    },
}

/// Something that holds sysctl values.
pub trait SysctlStore {
    /// The current value of `key`, trailing newline removed.
    fn read(&self, key: &str) -> Result<String, ProcError>;
    /// Set `key` to `value`.
    fn write(&self, key: &str, value: &str) -> Result<(), ProcError>;
    /// Where the values live, for messages and the state file.
    fn location(&self) -> String;
    /// Whether this is the running kernel's tree (writes need root).
    fn is_live(&self) -> bool;
}

/// A directory laid out like `/proc/sys`.
#[derive(Debug, Clone)]
pub struct ProcRoot {
    dir: PathBuf,
}

impl ProcRoot {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ProcRoot { dir: dir.into() }
    }

    /// The running kernel's `/proc/sys`.
    pub fn live() -> Self {
        ProcRoot::new(LIVE_ROOT)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File holding `key`: dots become directory separators.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(key.replace('.', "/"))
    }
}

impl SysctlStore for ProcRoot {
    fn read(&self, key: &str) -> Result<String, ProcError> {
        let path = self.path_of(key);
        let fail = |err: std::io::Error| io_error(key, &path, None, &err);
        let file = std::fs::File::open(&path).map_err(fail)?;
        let mut bytes = Vec::new();
        file.take(MAX_VALUE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(fail)?;
        let bad = |reason: &str| ProcError::Read {
            key: key.to_string(),
            path: path.clone(),
            reason: reason.to_string(),
        };
        if bytes.len() as u64 > MAX_VALUE_BYTES {
            return Err(bad("value longer than a page; not a sysctl value"));
        }
        let text = String::from_utf8(bytes).map_err(|_| bad("value is not UTF-8 text"))?;
        Ok(text.trim_end_matches('\n').to_string())
    }

    fn write(&self, key: &str, value: &str) -> Result<(), ProcError> {
        let path = self.path_of(key);
        let fail = |err: std::io::Error| io_error(key, &path, Some(value), &err);
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(fail)?;
        file.write_all(format!("{value}\n").as_bytes())
            .map_err(fail)
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn is_live(&self) -> bool {
        is_live_dir(&self.dir)
    }
}

/// An I/O error on `key`: `Missing` for a file that does not exist, else a
/// read error, or a write error when `value` was being written.
fn io_error(key: &str, path: &Path, value: Option<&str>, err: &std::io::Error) -> ProcError {
    let (key, path, reason) = (key.to_string(), path.to_path_buf(), describe_io(err));
    match (err.kind(), value) {
        (ErrorKind::NotFound, _) => ProcError::Missing { key, path },
        (_, None) => ProcError::Read { key, path, reason },
        (_, Some(value)) => ProcError::Write {
            key,
            value: value.to_string(),
            path,
            reason,
        },
    }
}

/// Whether `dir` is the running kernel's `/proc/sys` (symlinks resolved).
pub fn is_live_dir(dir: &Path) -> bool {
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    resolved == Path::new(LIVE_ROOT)
}

/// A reason a person can act on, with the errno kept for searching.
pub fn describe_io(err: &std::io::Error) -> String {
    let hint = match err.kind() {
        ErrorKind::PermissionDenied => "permission denied (read-only key, or not root)",
        ErrorKind::InvalidInput => "the kernel rejected the value (out of range for this kernel)",
        ErrorKind::IsADirectory => "is a directory, not a sysctl value",
        ErrorKind::NotFound => "no such file",
        _ => "",
    };
    match (hint, err.raw_os_error()) {
        ("", _) => err.to_string(),
        (hint, Some(code)) => format!("{hint} [errno {code}]"),
        (hint, None) => hint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_a_stand_in_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = ProcRoot::new(dir.path());
        std::fs::create_dir_all(dir.path().join("net/core")).unwrap();
        std::fs::write(dir.path().join("net/core/somaxconn"), "4096\n").unwrap();
        assert_eq!(root.read("net.core.somaxconn").unwrap(), "4096");
        root.write("net.core.somaxconn", "65535").unwrap();
        assert_eq!(root.read("net.core.somaxconn").unwrap(), "65535");
        assert!(!root.is_live());
    }

    #[test]
    fn missing_keys_are_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = ProcRoot::new(dir.path());
        assert!(matches!(
            root.read("fs.nr_open"),
            Err(ProcError::Missing { .. })
        ));
        assert!(matches!(
            root.write("fs.nr_open", "1"),
            Err(ProcError::Missing { .. })
        ));
        assert!(!dir.path().join("fs/nr_open").exists());
    }

    #[test]
    fn a_directory_in_place_of_a_key_gives_a_readable_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("fs/nr_open")).unwrap();
        let err = ProcRoot::new(dir.path())
            .write("fs.nr_open", "1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
        assert!(err.contains("fs.nr_open"), "{err}");
    }

    #[test]
    fn the_live_root_is_recognised() {
        assert!(ProcRoot::live().is_live());
    }
}
