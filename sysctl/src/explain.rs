//! `explain KEY`: what a key does (from the catalogue), its value in each
//! shipped profile with that profile's reason, and the running kernel's
//! value. `explain --list` lists every known key.

use serde::Serialize;
use thiserror::Error;

use crate::catalogue::{self, CATALOGUE};
use crate::compare::kernel_value;
use crate::procfs::SysctlStore;
use crate::profile::Profile;

/// The key is not in the catalogue.
#[derive(Debug, Error)]
#[error("unknown key `{key}`{hint}; `c10m-sysctl explain --list` shows the {count} known keys")]
pub struct UnknownKey {
    pub key: String,
    pub hint: String,
    pub count: usize,
}

/// A profile's setting of the key.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSetting {
    pub profile: String,
    /// `None`: the profile leaves the key alone.
    pub value: Option<String>,
    pub why: Option<String>,
}

/// Everything `explain` says about one key.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub key: String,
    pub what: String,
    pub accepts: String,
    /// `None`: absent from (or unreadable in) this kernel.
    pub running: Option<String>,
    pub location: String,
    pub profiles: Vec<ProfileSetting>,
}

/// Explain `key` using `profiles` and the kernel in `store`.
pub fn explain(
    key: &str,
    profiles: &[Profile],
    store: &dyn SysctlStore,
) -> Result<Explanation, UnknownKey> {
    let key = key.trim().trim_start_matches('-').replace('/', ".");
    let spec = catalogue::lookup(&key).ok_or_else(|| UnknownKey {
        hint: catalogue::suggest(&key)
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default(),
        key: key.clone(),
        count: CATALOGUE.len(),
    })?;
    Ok(Explanation {
        key: key.clone(),
        what: squeeze(spec.what),
        accepts: spec.kind.describe(),
        running: kernel_value(store, &key).ok().flatten(),
        location: store.location(),
        profiles: profiles
            .iter()
            .map(|profile| {
                let entry = profile.get(&key);
                ProfileSetting {
                    profile: profile.name.clone(),
                    value: entry.map(|e| e.value.clone()),
                    why: entry.map(|e| e.why.clone()),
                }
            })
            .collect(),
    })
}

impl Explanation {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n\n{}\n\naccepts: {}\n",
            self.key,
            wrap(&self.what, 76, ""),
            self.accepts
        );
        out.push_str(&format!(
            "running ({}): {}\n",
            self.location,
            self.running.as_deref().unwrap_or("(absent)")
        ));
        for setting in &self.profiles {
            match (&setting.value, &setting.why) {
                (Some(value), why) => {
                    out.push_str(&format!("\n{}: {value}\n", setting.profile));
                    if let Some(why) = why.as_deref().filter(|w| !w.is_empty()) {
                        out.push_str(&wrap(&squeeze(why), 74, "  "));
                        out.push('\n');
                    }
                }
                (None, _) => out.push_str(&format!("\n{}: (not set)\n", setting.profile)),
            }
        }
        out
    }
}

/// Every known key and the first sentence of what it does.
pub fn list() -> String {
    let width = CATALOGUE
        .iter()
        .map(|spec| spec.key.len())
        .max()
        .unwrap_or(0);
    CATALOGUE
        .iter()
        .map(|spec| {
            let what = squeeze(spec.what);
            let first = what
                .split(". ")
                .next()
                .unwrap_or(&what)
                .trim_end_matches('.');
            format!("{:<width$}  {first}\n", spec.key)
        })
        .collect()
}

/// Collapse runs of whitespace (the catalogue's source line breaks).
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Greedy word wrap at `width` columns, each line prefixed with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(format!("{indent}{line}"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(format!("{indent}{line}"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcRoot;
    use crate::profile::shipped;

    #[test]
    fn explains_a_key_across_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let profiles = shipped().unwrap();
        let explanation = explain("fs/nr_open", &profiles, &ProcRoot::new(dir.path())).unwrap();
        assert_eq!(explanation.key, "fs.nr_open");
        assert_eq!(explanation.running, None);
        assert_eq!(explanation.profiles.len(), 3);
        assert!(explanation.profiles.iter().all(|p| p.value.is_some()));
        let text = explanation.render();
        assert!(text.contains("RLIMIT_NOFILE") && text.contains("c10m-server.conf: "));
    }

    #[test]
    fn unknown_keys_get_a_suggestion() {
        let dir = tempfile::tempdir().unwrap();
        let err = explain("fs.nr_opn", &[], &ProcRoot::new(dir.path())).unwrap_err();
        assert!(err.to_string().contains("did you mean `fs.nr_open`?"));
    }

    #[test]
    fn wraps_and_lists() {
        assert_eq!(wrap("aa bb cc", 5, "> "), "> aa bb\n> cc");
        assert!(list().lines().count() == CATALOGUE.len());
    }
}
