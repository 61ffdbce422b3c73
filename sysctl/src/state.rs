//! The state file: the values `apply` replaced, so `rollback` can put them
//! back.
//!
//! Where it lives: `/var/lib/c10m/sysctl-backup.json` for the real
//! `/proc/sys`; `<proc-root>.backup.json` beside a stand-in root; `--state
//! FILE` overrides both.
//!
//! Contracts:
//! - it is written before the first sysctl write, atomically (temporary
//!   file in the same directory, fsync, rename), so a crash mid-apply leaves
//!   either the old state or the new one, never a torn file;
//! - a key keeps the value it had before the *first* apply: applying profile
//!   A then profile B and rolling back restores the host as it was before A;
//! - it records the proc root it belongs to, and rollback refuses a state
//!   file made for another root.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::procfs::is_live_dir;

/// State file for the real `/proc/sys`.
pub const LIVE_STATE: &str = "/var/lib/c10m/sysctl-backup.json";

/// Format version written in the file.
const VERSION: u32 = 1;

/// One replaced value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub key: String,
    /// Value before the first apply (what rollback restores).
    pub old: String,
    /// Value the last apply wrote.
    pub new: String,
}

/// Contents of the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The proc root these values belong to.
    pub proc_root: String,
    /// Profiles applied since the last rollback, in order.
    pub profiles: Vec<String>,
    /// In the order they were first written.
    pub entries: Vec<Saved>,
}

impl State {
    pub fn new(proc_root: &str) -> Self {
        State {
            version: VERSION,
            proc_root: proc_root.to_string(),
            profiles: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Record that `key` goes from `old` to `new`, keeping an older `old`.
    pub fn record(&mut self, key: &str, old: &str, new: &str) {
        match self.entries.iter_mut().find(|saved| saved.key == key) {
            Some(saved) => saved.new = new.to_string(),
            None => self.entries.push(Saved {
                key: key.to_string(),
                old: old.to_string(),
                new: new.to_string(),
            }),
        }
    }
}

/// The state file could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state file {path} has version {found}; this tool reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} belongs to proc root {recorded}, not {requested}; pass --proc-root {recorded} or another --state")]
    OtherRoot {
        path: PathBuf,
        recorded: String,
        requested: String,
    },
}

/// Default state file for a proc root.
pub fn default_path(proc_root: &Path) -> PathBuf {
    if is_live_dir(proc_root) {
        return PathBuf::from(LIVE_STATE);
    }
    let trimmed = proc_root
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
    PathBuf::from(format!("{trimmed}.backup.json"))
}

/// Load the state at `path`; `None` when there is none. A state for another
/// root than `proc_root` is an error.
pub fn load(path: &Path, proc_root: &str) -> Result<Option<State>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let state: State = serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    if state.version != VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: state.version,
        });
    }
    if state.proc_root != proc_root {
        return Err(StateError::OtherRoot {
            path: path.to_path_buf(),
            recorded: state.proc_root,
            requested: proc_root.to_string(),
        });
    }
    Ok(Some(state))
}

/// Write `state` to `path` atomically, creating the directory if needed.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let fail = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| fail(e.into()))?;
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary).map_err(fail)?;
    file.write_all(json.as_bytes()).map_err(fail)?;
    file.write_all(b"\n").map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

/// Remove the state file; a missing file is fine.
pub fn remove(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(StateError::Write {
            path: path.to_path_buf(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Put the state file back as it was: `previous` or no file at all.
pub fn restore(path: &Path, previous: Option<&State>) -> Result<(), StateError> {
    match previous {
        Some(state) => save(path, state),
        None => remove(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_sits_beside_a_stand_in_root() {
        assert_eq!(
            default_path(Path::new("/tmp/x/sys/")),
            PathBuf::from("/tmp/x/sys.backup.json")
        );
        assert_eq!(
            default_path(Path::new("/proc/sys")),
            PathBuf::from(LIVE_STATE)
        );
    }

    #[test]
    fn record_keeps_the_oldest_value() {
        let mut state = State::new("/r");
        state.record("k", "1", "2");
        state.record("k", "2", "3");
        assert_eq!(
            state.entries,
            [Saved {
                key: "k".into(),
                old: "1".into(),
                new: "3".into()
            }]
        );
    }

    #[test]
    fn save_load_round_trip_and_root_guard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/state.json");
        assert_eq!(load(&path, "/r").unwrap(), None);
        let mut state = State::new("/r");
        state.record("k", "1", "2");
        save(&path, &state).unwrap();
        assert_eq!(load(&path, "/r").unwrap(), Some(state));
        let err = load(&path, "/other").unwrap_err().to_string();
        assert!(err.contains("belongs to proc root /r"), "{err}");
        remove(&path).unwrap();
        remove(&path).unwrap();
    }

    #[test]
    fn corrupt_state_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, "{").unwrap();
        let err = load(&path, "/r").unwrap_err().to_string();
        assert!(err.contains("s.json is not valid"), "{err}");
    }
}
