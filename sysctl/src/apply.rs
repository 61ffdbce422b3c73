//! `apply`: write a profile, saving the values it replaces.
//!
//! apply, in order:
//! 1. the profile is already parsed and validated (nothing written from a
//!    bad profile);
//! 2. read every key's current value; a key the kernel lacks stops here,
//!    unless it is optional (`-key`), which is skipped;
//! 3. with `dry_run`, stop and report what would change;
//! 4. refuse unless root, when the store is the live `/proc/sys` (see
//!    [`Privilege`]);
//! 5. save every value about to be replaced to the state file;
//! 6. write the changes in profile order, reading each back to check the
//!    kernel kept it. On the first failure, write back the old values of the
//!    keys already changed (newest first), put the state file back as it
//!    was, and report the key that failed, why, and what was restored.
//!
//! [`crate::rollback`] undoes a successful apply.
//!
//! Privilege: writes to the real `/proc/sys` need root, checked up front
//! with `geteuid()` for a clear message instead of a wall of EACCES. A
//! stand-in root needs no privilege (file permissions decide), which is how
//! the tests run apply and rollback unprivileged; the check itself takes the
//! privilege as an argument so a test can feed "not root".

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::compare::{canonical_kernel, kernel_value};
use crate::procfs::{ProcError, SysctlStore};
use crate::profile::Profile;
use crate::state::{self, State, StateError};

/// Whether this process may write the live `/proc/sys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Root,
    NotRoot { euid: u32 },
}

impl Privilege {
    /// This process's privilege, from its effective uid.
    pub fn current() -> Self {
        let euid = nix::unistd::geteuid();
        if euid.is_root() {
            Privilege::Root
        } else {
            Privilege::NotRoot {
                euid: euid.as_raw(),
            }
        }
    }
}

/// Why apply or rollback stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("writing {location} needs root (effective uid is {euid}, required 0); run with sudo, or use --proc-root for a stand-in tree")]
    NotRoot { location: String, euid: u32 },
    #[error("{0}; nothing was written")]
    Read(ProcError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("apply stopped at {key}: {reason}; {}", restore_summary(.restored, .restore_failures))]
    WriteFailed {
        key: String,
        reason: String,
        /// Keys written back to their old value.
        restored: Vec<String>,
        /// Keys that could not be written back, with why.
        restore_failures: Vec<String>,
    },
    #[error("rollback could not restore {}; they stay in {} for another try", .failures.join("; "), .state_path.display())]
    RollbackIncomplete {
        failures: Vec<String>,
        state_path: PathBuf,
    },
}

fn restore_summary(restored: &[String], failures: &[String]) -> String {
    let mut text = if restored.is_empty() {
        "no key had been changed yet, nothing to restore".to_string()
    } else {
        format!("restored the old value of {}", restored.join(", "))
    };
    if !failures.is_empty() {
        text.push_str(&format!(
            "; COULD NOT restore {} (the state file keeps them: run rollback)",
            failures.join("; ")
        ));
    }
    text
}

/// Refuse to write the live tree without root.
pub fn require_privilege(store: &dyn SysctlStore, privilege: Privilege) -> Result<(), ApplyError> {
    match privilege {
        Privilege::NotRoot { euid } if store.is_live() => Err(ApplyError::NotRoot {
            location: store.location(),
            euid,
        }),
        _ => Ok(()),
    }
}

/// One key apply looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

/// What apply did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub profile: String,
    pub dry_run: bool,
    pub changes: Vec<Change>,
    /// Keys already at the profile's value.
    pub unchanged: Vec<String>,
    /// Optional keys the kernel lacks.
    pub skipped: Vec<String>,
    pub state_path: PathBuf,
}

impl ApplyReport {
    pub fn render(&self) -> String {
        let verb = if self.dry_run { "would set" } else { "set" };
        let mut out = String::new();
        for change in &self.changes {
            out.push_str(&format!(
                "{verb} {} = {} (was {})\n",
                change.key, change.new, change.old
            ));
        }
        for key in &self.unchanged {
            out.push_str(&format!("unchanged {key} (already as in the profile)\n"));
        }
        for key in &self.skipped {
            out.push_str(&format!("skipped {key} (optional; not in this kernel)\n"));
        }
        let tail = match (self.dry_run, self.changes.is_empty()) {
            (_, true) => format!("{}: nothing to change\n", self.profile),
            (true, false) => format!(
                "dry run: {} keys would change; nothing written\n",
                self.changes.len()
            ),
            (false, false) => format!(
                "{}: {} keys changed; old values saved in {}\n",
                self.profile,
                self.changes.len(),
                self.state_path.display()
            ),
        };
        out.push_str(&tail);
        out
    }
}

/// Apply `profile` to `store`, saving old values in `state_path`.
pub fn apply(
    profile: &Profile,
    store: &dyn SysctlStore,
    state_path: &Path,
    privilege: Privilege,
    dry_run: bool,
) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport {
        profile: profile.name.clone(),
        dry_run,
        changes: Vec::new(),
        unchanged: Vec::new(),
        skipped: Vec::new(),
        state_path: state_path.to_path_buf(),
    };
    for entry in &profile.entries {
        match store.read(&entry.key) {
            Ok(raw) => {
                let old = canonical_kernel(&entry.key, &raw);
                if old == entry.value {
                    report.unchanged.push(entry.key.clone());
                } else {
                    report.changes.push(Change {
                        key: entry.key.clone(),
                        old,
                        new: entry.value.clone(),
                    });
                }
            }
            Err(ProcError::Missing { .. }) if entry.optional => {
                report.skipped.push(entry.key.clone());
            }
            Err(err) => return Err(ApplyError::Read(err)),
        }
    }
    if dry_run || report.changes.is_empty() {
        return Ok(report);
    }
    require_privilege(store, privilege)?;

    let previous = state::load(state_path, &store.location())?;
    let mut next = previous
        .clone()
        .unwrap_or_else(|| State::new(&store.location()));
    next.profiles.push(profile.name.clone());
    for change in &report.changes {
        next.record(&change.key, &change.old, &change.new);
    }
    state::save(state_path, &next)?;

    for (done, change) in report.changes.iter().enumerate() {
        if let Err(reason) = write_checked(store, &change.key, &change.new) {
            let (restored, restore_failures) = undo(store, &report.changes[..done]);
            if restore_failures.is_empty() {
                state::restore(state_path, previous.as_ref())?;
            }
            return Err(ApplyError::WriteFailed {
                key: change.key.clone(),
                reason,
                restored,
                restore_failures,
            });
        }
    }
    Ok(report)
}

/// Write `value` and read it back; the reason on failure.
pub(crate) fn write_checked(store: &dyn SysctlStore, key: &str, value: &str) -> Result<(), String> {
    store.write(key, value).map_err(|err| reason_of(&err))?;
    match kernel_value(store, key) {
        Ok(Some(back)) if back == value => Ok(()),
        Ok(Some(back)) => Err(format!(
            "the kernel accepted `{value}` but reads back `{back}`"
        )),
        Ok(None) => Err("the key vanished after the write".to_string()),
        Err(err) => Err(reason_of(&err)),
    }
}

/// The reason part of a proc error (the key is reported separately).
pub(crate) fn reason_of(err: &ProcError) -> String {
    match err {
        ProcError::Write { reason, .. } | ProcError::Read { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Write back `changes`' old values, newest first.
fn undo(store: &dyn SysctlStore, changes: &[Change]) -> (Vec<String>, Vec<String>) {
    let mut restored = Vec::new();
    let mut failures = Vec::new();
    for change in changes.iter().rev() {
        match write_checked(store, &change.key, &change.old) {
            Ok(()) => restored.push(change.key.clone()),
            Err(reason) => failures.push(format!("{}: {reason}", change.key)),
        }
    }
    (restored, failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_store::MemStore;
    use crate::profile::parse;
    use crate::rollback::rollback;

    const PROFILE: &str = "fs.nr_open = 2000\nfs.file-max = 3000\nnet.core.somaxconn = 4000\n";
    const BEFORE: [(&str, &str); 3] = [
        ("fs.nr_open", "1000"),
        ("fs.file-max", "1000"),
        ("net.core.somaxconn", "1000"),
    ];

    /// A temp dir (kept alive by the caller), a state path in it, a store at
    /// `BEFORE` whose writes to `fail_keys` fail, and the test profile.
    fn fixture(fail_keys: Vec<&'static str>) -> (tempfile::TempDir, PathBuf, MemStore, Profile) {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.json");
        let store = MemStore::new(&BEFORE, fail_keys);
        let profile = parse("p.conf", PROFILE).unwrap();
        (dir, state_path, store, profile)
    }

    #[test]
    fn apply_then_rollback_twice() {
        let (_dir, state_path, store, profile) = fixture(vec![]);
        let report = apply(&profile, &store, &state_path, Privilege::Root, false).unwrap();
        assert_eq!(report.changes.len(), 3);
        assert_eq!(store.get("fs.file-max"), "3000");
        let back = rollback(&store, &state_path, Privilege::Root).unwrap();
        assert_eq!(back.restored.len(), 3);
        for (key, value) in BEFORE {
            assert_eq!(store.get(key), value);
        }
        assert!(!state_path.exists());
        assert!(
            rollback(&store, &state_path, Privilege::Root)
                .unwrap()
                .nothing_saved
        );
    }

    #[test]
    fn dry_run_writes_nothing() {
        let (_dir, state_path, store, profile) = fixture(vec![]);
        let report = apply(&profile, &store, &state_path, Privilege::Root, true).unwrap();
        assert_eq!(report.changes.len(), 3);
        assert!(report
            .render()
            .contains("would set fs.nr_open = 2000 (was 1000)"));
        assert_eq!(store.get("fs.nr_open"), "1000");
        assert!(!state_path.exists());
    }

    #[test]
    fn failed_write_restores_earlier_keys_and_the_state_file() {
        let (_dir, state_path, store, profile) = fixture(vec!["fs.file-max"]);
        let err = apply(&profile, &store, &state_path, Privilege::Root, false).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("apply stopped at fs.file-max: injected failure"),
            "{message}"
        );
        assert!(message.contains("restored the old value of fs.nr_open"));
        for (key, value) in BEFORE {
            assert_eq!(store.get(key), value);
        }
        assert!(!state_path.exists());
    }

    #[test]
    fn missing_required_key_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemStore::new(&BEFORE[..2], vec![]);
        let profile = parse("p.conf", PROFILE).unwrap();
        let err = apply(
            &profile,
            &store,
            &dir.path().join("s"),
            Privilege::Root,
            false,
        );
        let message = err.unwrap_err().to_string();
        assert!(
            message.contains("net.core.somaxconn: not present"),
            "{message}"
        );
        assert!(message.ends_with("nothing was written"), "{message}");
        assert_eq!(store.get("fs.nr_open"), "1000");
    }

    #[test]
    fn non_root_is_refused_on_the_live_tree_only() {
        let (_dir, state_path, mut store, profile) = fixture(vec![]);
        let not_root = Privilege::NotRoot { euid: 1000 };
        store.live = true;
        let err = apply(&profile, &store, &state_path, not_root, false).unwrap_err();
        assert!(err
            .to_string()
            .contains("needs root (effective uid is 1000, required 0)"));
        assert_eq!(store.get("fs.nr_open"), "1000");
        store.live = false;
        apply(&profile, &store, &state_path, not_root, false).unwrap();
    }

    #[test]
    fn second_apply_keeps_the_first_old_values() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state.json");
        let store = MemStore::new(&BEFORE, vec![]);
        let first = parse("a.conf", "fs.nr_open = 2000\n").unwrap();
        let second = parse("b.conf", "fs.nr_open = 3000\nfs.file-max = 5000\n").unwrap();
        apply(&first, &store, &state_path, Privilege::Root, false).unwrap();
        apply(&second, &store, &state_path, Privilege::Root, false).unwrap();
        rollback(&store, &state_path, Privilege::Root).unwrap();
        for (key, value) in BEFORE {
            assert_eq!(store.get(key), value);
        }
    }
}
