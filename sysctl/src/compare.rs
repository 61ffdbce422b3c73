//! `check` (a profile against a running kernel) and `diff` (a profile
//! against another profile, or against the kernel).
//!
//! Values are compared in canonical form (see [`crate::value`]), so tabs
//! versus spaces or the order of a port list never count as a difference.
//! A key the kernel lacks is a mismatch, unless the profile marks it
//! optional (`-key`), in which case it is reported as absent and passes.

use serde::Serialize;

use crate::catalogue;
use crate::procfs::{ProcError, SysctlStore};
use crate::profile::{Entry, Profile};
use crate::table::Table;
use crate::value::canonical_lenient;

/// A value read from a kernel, in canonical form when it parses as `key`'s
/// kind (kernel values are reported, never rejected).
pub fn canonical_kernel(key: &str, raw: &str) -> String {
    canonical_lenient(catalogue::lookup(key).map(|spec| &spec.kind), raw)
}

/// The kernel's value for `key`, canonicalised; `None` when absent.
pub fn kernel_value(store: &dyn SysctlStore, key: &str) -> Result<Option<String>, ProcError> {
    match store.read(key) {
        Ok(raw) => Ok(Some(canonical_kernel(key, &raw))),
        Err(ProcError::Missing { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// One key of `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRow {
    pub key: String,
    pub want: String,
    /// `None`: the kernel lacks the key.
    pub have: Option<String>,
    pub optional: bool,
    pub ok: bool,
}

/// Result of `check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub profile: String,
    pub proc_root: String,
    pub ok: bool,
    pub keys: Vec<CheckRow>,
}

/// Compare every key of `profile` with `store`.
pub fn check(profile: &Profile, store: &dyn SysctlStore) -> Result<CheckReport, ProcError> {
    let keys = profile
        .entries
        .iter()
        .map(|entry: &Entry| {
            let have = kernel_value(store, &entry.key)?;
            let ok = match &have {
                Some(value) => *value == entry.value,
                None => entry.optional,
            };
            Ok(CheckRow {
                key: entry.key.clone(),
                want: entry.value.clone(),
                have,
                optional: entry.optional,
                ok,
            })
        })
        .collect::<Result<Vec<_>, ProcError>>()?;
    Ok(CheckReport {
        profile: profile.name.clone(),
        proc_root: store.location(),
        ok: keys.iter().all(|row| row.ok),
        keys,
    })
}

impl CheckReport {
    pub fn render(&self) -> String {
        let mut table = Table::new(&["key", "want", "have", "ok"]);
        for row in &self.keys {
            let have = match (&row.have, row.optional) {
                (Some(value), _) => value.clone(),
                (None, true) => "(absent, optional)".to_string(),
                (None, false) => "(absent)".to_string(),
            };
            let ok = if row.ok { "ok" } else { "MISMATCH" };
            table.row(vec![
                row.key.clone(),
                row.want.clone(),
                have,
                ok.to_string(),
            ]);
        }
        let mismatches = self.keys.iter().filter(|row| !row.ok).count();
        let verdict = if self.ok {
            format!("all {} keys match", self.keys.len())
        } else {
            format!("{mismatches} of {} keys differ", self.keys.len())
        };
        format!(
            "check {} against {}\n{}{verdict}\n",
            self.profile,
            self.proc_root,
            table.render(2)
        )
    }
}

/// One differing key of `diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffRow {
    pub key: String,
    /// `None`: not set in that profile / absent from that kernel.
    pub a: Option<String>,
    pub b: Option<String>,
}

/// Result of `diff`.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    /// Keys compared.
    pub compared: usize,
    pub differences: Vec<DiffRow>,
}

/// Compare two profiles over the union of their keys (a's order first).
pub fn diff_profiles(a: &Profile, b: &Profile) -> DiffReport {
    let mut keys: Vec<&str> = a.entries.iter().map(|e| e.key.as_str()).collect();
    for entry in &b.entries {
        if a.get(&entry.key).is_none() {
            keys.push(&entry.key);
        }
    }
    let value = |profile: &Profile, key: &str| profile.get(key).map(|e| e.value.clone());
    let differences = keys
        .iter()
        .map(|key| DiffRow {
            key: key.to_string(),
            a: value(a, key),
            b: value(b, key),
        })
        .filter(|row| row.a != row.b)
        .collect();
    DiffReport {
        a: a.name.clone(),
        b: b.name.clone(),
        compared: keys.len(),
        differences,
    }
}

/// Compare a profile with the running kernel, over the profile's keys.
pub fn diff_kernel(a: &Profile, store: &dyn SysctlStore) -> Result<DiffReport, ProcError> {
    let rows = check(a, store)?.keys;
    Ok(DiffReport {
        a: a.name.clone(),
        b: format!("kernel ({})", store.location()),
        compared: rows.len(),
        differences: rows
            .into_iter()
            .filter(|row| Some(&row.want) != row.have.as_ref())
            .map(|row| DiffRow {
                key: row.key,
                a: Some(row.want),
                b: row.have,
            })
            .collect(),
    })
}

impl DiffReport {
    pub fn render(&self) -> String {
        if self.differences.is_empty() {
            return format!(
                "{} and {}: all {} keys equal\n",
                self.a, self.b, self.compared
            );
        }
        let unset = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_string());
        let mut table = Table::new(&["key", &self.a, &self.b]);
        for row in &self.differences {
            table.row(vec![row.key.clone(), unset(&row.a), unset(&row.b)]);
        }
        format!(
            "{}{} of {} keys differ\n",
            table.render(2),
            self.differences.len(),
            self.compared
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcRoot;
    use crate::profile::parse;

    fn stand_in(values: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (key, value) in values {
            let path = ProcRoot::new(dir.path()).path_of(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{value}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn check_compares_canonical_values_and_handles_optional_keys() {
        let dir = stand_in(&[
            ("net.ipv4.tcp_mem", "1\t2\t3"),
            ("net.core.somaxconn", "4096"),
        ]);
        let profile = parse(
            "p.conf",
            "net.ipv4.tcp_mem = 1 2 3\nnet.core.somaxconn = 65535\n\
             -net.netfilter.nf_conntrack_max = 10\nfs.nr_open = 100\n",
        )
        .unwrap();
        let report = check(&profile, &ProcRoot::new(dir.path())).unwrap();
        let oks: Vec<bool> = report.keys.iter().map(|row| row.ok).collect();
        assert_eq!(oks, [true, false, true, false]);
        assert!(!report.ok);
        let text = report.render();
        assert!(text.contains("(absent, optional)") && text.contains("2 of 4 keys differ"));
    }

    #[test]
    fn diff_of_two_profiles_lists_only_differences() {
        let a = parse("a.conf", "fs.nr_open = 100\nnet.core.somaxconn = 5\n").unwrap();
        let b = parse("b.conf", "fs.nr_open = 100\nfs.file-max = 7\n").unwrap();
        let report = diff_profiles(&a, &b);
        assert_eq!(report.compared, 3);
        let keys: Vec<&str> = report.differences.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["net.core.somaxconn", "fs.file-max"]);
        assert!(report.render().contains("(unset)"));
    }

    #[test]
    fn diff_against_the_kernel() {
        let dir = stand_in(&[("fs.nr_open", "1048576")]);
        let a = parse("a.conf", "fs.nr_open = 1048576\n").unwrap();
        let report = diff_kernel(&a, &ProcRoot::new(dir.path())).unwrap();
        assert!(report.differences.is_empty());
        assert!(report.render().contains("all 1 keys equal"));
    }
}
