//! `rollback`: restore the values saved by [`crate::apply`].
//!
//! Every saved value is written back, newest first, then the state file is
//! deleted; with no state file rollback does nothing, so running it twice is
//! safe. A key already at its saved value is left alone; one changed by
//! someone else since apply is restored anyway and reported. A restore that
//! fails leaves that key (only) in the state file for another try, and the
//! error lists each key and why.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::apply::{reason_of, require_privilege, write_checked, ApplyError, Change, Privilege};
use crate::compare::kernel_value;
use crate::procfs::SysctlStore;
use crate::state;

/// What rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub state_path: PathBuf,
    /// Keys written back to their saved value.
    pub restored: Vec<Change>,
    /// Keys that already had their saved value.
    pub already: Vec<String>,
    /// Keys someone changed after apply (restored anyway), with the value found.
    pub changed_since: Vec<Change>,
    /// No state file: nothing to do.
    pub nothing_saved: bool,
}

impl RollbackReport {
    pub fn render(&self) -> String {
        if self.nothing_saved {
            return format!(
                "nothing to roll back: no saved state at {}\n",
                self.state_path.display()
            );
        }
        let mut out = String::new();
        for change in &self.changed_since {
            out.push_str(&format!(
                "note: {} was changed after apply (found {}, apply had set {})\n",
                change.key, change.old, change.new
            ));
        }
        for change in &self.restored {
            out.push_str(&format!(
                "restored {} = {} (was {})\n",
                change.key, change.new, change.old
            ));
        }
        for key in &self.already {
            out.push_str(&format!("unchanged {key} (already at the saved value)\n"));
        }
        out.push_str(&format!(
            "rolled back {} keys; removed {}\n",
            self.restored.len() + self.already.len(),
            self.state_path.display()
        ));
        out
    }
}

/// Restore the values saved in `state_path`.
pub fn rollback(
    store: &dyn SysctlStore,
    state_path: &Path,
    privilege: Privilege,
) -> Result<RollbackReport, ApplyError> {
    let mut report = RollbackReport {
        state_path: state_path.to_path_buf(),
        restored: Vec::new(),
        already: Vec::new(),
        changed_since: Vec::new(),
        nothing_saved: false,
    };
    let Some(mut saved) = state::load(state_path, &store.location())? else {
        report.nothing_saved = true;
        return Ok(report);
    };
    require_privilege(store, privilege)?;
    let mut failures = Vec::new();
    let mut kept = Vec::new();
    for entry in saved.entries.iter().rev() {
        let now = match kernel_value(store, &entry.key) {
            Ok(now) => now,
            Err(err) => {
                failures.push(format!("{}: {}", entry.key, reason_of(&err)));
                kept.push(entry.clone());
                continue;
            }
        };
        if now.as_deref() == Some(entry.old.as_str()) {
            report.already.push(entry.key.clone());
            continue;
        }
        let found = now.unwrap_or_else(|| "(absent)".to_string());
        if found != entry.new {
            report.changed_since.push(Change {
                key: entry.key.clone(),
                old: found.clone(),
                new: entry.new.clone(),
            });
        }
        match write_checked(store, &entry.key, &entry.old) {
            Ok(()) => report.restored.push(Change {
                key: entry.key.clone(),
                old: found,
                new: entry.old.clone(),
            }),
            Err(reason) => {
                failures.push(format!("{}: {reason}", entry.key));
                kept.push(entry.clone());
            }
        }
    }
    if failures.is_empty() {
        state::remove(state_path)?;
        return Ok(report);
    }
    kept.reverse();
    saved.entries = kept;
    state::save(state_path, &saved)?;
    Err(ApplyError::RollbackIncomplete {
        failures,
        state_path: state_path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::mem_store::MemStore;
    use crate::profile::parse;
    use std::cell::RefCell;

    #[test]
    fn failed_restore_keeps_the_state_for_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.json");
        let store = MemStore::new(&[("fs.nr_open", "1000"), ("fs.file-max", "1000")], vec![]);
        let profile = parse("p.conf", "fs.nr_open = 2000\nfs.file-max = 3000\n").unwrap();
        apply(&profile, &store, &state_path, Privilege::Root, false).unwrap();
        let stuck = MemStore {
            values: RefCell::new(store.values.borrow().clone()),
            fail_keys: vec!["fs.file-max"],
            live: false,
        };
        let err = rollback(&stuck, &state_path, Privilege::Root).unwrap_err();
        assert!(err.to_string().contains("fs.file-max: injected failure"));
        let kept = state::load(&state_path, "/mem").unwrap().unwrap();
        assert_eq!(kept.entries.len(), 1);
        assert_eq!(stuck.get("fs.nr_open"), "1000");
    }
}
