//! Tuning profiles in sysctl.d(5) format, and the profiles shipped with the
//! tool.
//!
//! Accepted syntax, as systemd-sysctl reads it:
//! - `key = value` (spaces around `=` optional); keys dotted or slashed
//!   (`net.ipv4.tcp_mem` or `net/ipv4/tcp_mem`);
//! - a leading `-` on the key marks it optional: skipped where the kernel
//!   lacks it (e.g. nf_conntrack not loaded) instead of failing;
//! - lines starting with `#` or `;` are comments, blank lines are ignored.
//!
//! Stricter than systemd-sysctl, on purpose: a key missing from the
//! [catalogue](crate::catalogue), a value outside its bounds, a duplicate key
//! or a glob is an error naming the file and line, and the whole profile is
//! refused, so nothing is ever written from a half-understood profile.
//!
//! The comment block right above a key is kept as that key's `why`; the
//! shipped profiles give every key one (a test checks), and `explain` prints
//! them.

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::catalogue;
use crate::value::ValueError;

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Dotted key, without the optional marker.
    pub key: String,
    /// Canonical value (see [`crate::value`]).
    pub value: String,
    /// 1-based line number in the profile.
    pub line: usize,
    /// `-key`: skip when the kernel lacks the key.
    pub optional: bool,
    /// The comment block right above the line, `#` stripped.
    pub why: String,
}

/// A parsed profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// File name (shipped profile) or path as given; used in messages.
    pub name: String,
    pub entries: Vec<Entry>,
}

impl Profile {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.key == key)
    }
}

/// Why a profile was refused. Every variant names the file (and line).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProfileError {
    #[error("{name}: no such file, and not a shipped profile (shipped: {shipped})")]
    NotFound { name: String, shipped: String },
    #[error("{name}: cannot read: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error("{name}:{line}: malformed line `{text}`: {reason}")]
    Malformed {
        name: String,
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error("{name}:{line}: unknown key `{key}`{hint} (`c10m-sysctl explain --list` shows the known keys)")]
    UnknownKey {
        name: String,
        line: usize,
        key: String,
        hint: String,
    },
    #[error("{name}:{line}: bad value for {key}: {source}")]
    BadValue {
        name: String,
        line: usize,
        key: String,
        source: ValueError,
    },
    #[error("{name}:{line}: {key} is set twice (first on line {first})")]
    Duplicate {
        name: String,
        line: usize,
        key: String,
        first: usize,
    },
}

/// The profiles shipped in `sysctl/profiles/`, compiled into the binary so
/// the tool works from any directory.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "loopback-testbed.conf",
        include_str!("../profiles/loopback-testbed.conf"),
    ),
    (
        "c10m-server.conf",
        include_str!("../profiles/c10m-server.conf"),
    ),
    ("loadgen.conf", include_str!("../profiles/loadgen.conf")),
];

/// Every shipped profile, parsed.
pub fn shipped() -> Result<Vec<Profile>, ProfileError> {
    SHIPPED
        .iter()
        .map(|(name, text)| parse(name, text))
        .collect()
}

/// Load a profile: a file path if one exists, else a shipped profile by name
/// (`loopback-testbed` or `loopback-testbed.conf`).
pub fn load(arg: &str) -> Result<Profile, ProfileError> {
    let path = Path::new(arg);
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            name: arg.to_string(),
            source,
        })?;
        return parse(arg, &text);
    }
    let wanted = arg.strip_suffix(".conf").unwrap_or(arg);
    SHIPPED
        .iter()
        .find(|(name, _)| name.strip_suffix(".conf") == Some(wanted))
        .map(|(name, text)| parse(name, text))
        .unwrap_or_else(|| {
            Err(ProfileError::NotFound {
                name: arg.to_string(),
                shipped: shipped_names(),
            })
        })
}

/// "a, b, c" list of shipped profile names without `.conf`.
pub fn shipped_names() -> String {
    SHIPPED
        .iter()
        .map(|(name, _)| name.trim_end_matches(".conf"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parse sysctl.d text. `name` is used in error messages.
pub fn parse(name: &str, text: &str) -> Result<Profile, ProfileError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut comment: Vec<&str> = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw_line.trim();
        if trimmed.is_empty() {
            comment.clear();
            continue;
        }
        if let Some(rest) = trimmed
            .strip_prefix('#')
            .or_else(|| trimmed.strip_prefix(';'))
        {
            comment.push(rest.trim());
            continue;
        }
        let malformed = |reason| ProfileError::Malformed {
            name: name.to_string(),
            line,
            text: trimmed.to_string(),
            reason,
        };
        let (raw_key, raw_value) = trimmed
            .split_once('=')
            .ok_or_else(|| malformed("expected `key = value`"))?;
        let (optional, key) = match raw_key.trim().strip_prefix('-') {
            Some(rest) => (true, rest.trim()),
            None => (false, raw_key.trim()),
        };
        if key.is_empty() {
            return Err(malformed("missing key before `=`"));
        }
        if key.contains(['*', '?', '[']) {
            return Err(malformed("globs are not supported; name each key"));
        }
        if key.contains(char::is_whitespace) {
            return Err(malformed("a key cannot contain spaces"));
        }
        let key = dotted(key);
        let spec = catalogue::lookup(&key).ok_or_else(|| ProfileError::UnknownKey {
            name: name.to_string(),
            line,
            hint: catalogue::suggest(&key)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default(),
            key: key.clone(),
        })?;
        let value =
            spec.kind
                .canonical(raw_value.trim())
                .map_err(|source| ProfileError::BadValue {
                    name: name.to_string(),
                    line,
                    key: key.clone(),
                    source,
                })?;
        if let Some(first) = entries.iter().find(|entry| entry.key == key) {
            return Err(ProfileError::Duplicate {
                name: name.to_string(),
                line,
                key,
                first: first.line,
            });
        }
        entries.push(Entry {
            key,
            value,
            line,
            optional,
            why: comment.join("\n"),
        });
        comment.clear();
    }
    Ok(Profile {
        name: name.to_string(),
        entries,
    })
}

/// `net/ipv4/tcp_mem` → `net.ipv4.tcp_mem`; dotted keys pass through.
fn dotted(key: &str) -> String {
    if key.contains('.') {
        key.to_string()
    } else {
        key.replace('/', ".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_values_comments_and_optional_marker() {
        let text = "# header\n\n# why one\n# figure 2\nnet.core.somaxconn=65535\n\
                    ; other\n-net/netfilter/nf_conntrack_max = 10\n";
        let profile = parse("t.conf", text).unwrap();
        assert_eq!(profile.entries.len(), 2);
        let first = &profile.entries[0];
        assert_eq!(
            (first.key.as_str(), first.value.as_str(), first.line),
            ("net.core.somaxconn", "65535", 5)
        );
        assert_eq!(first.why, "why one\nfigure 2");
        assert!(!first.optional);
        let second = &profile.entries[1];
        assert_eq!(second.key, "net.netfilter.nf_conntrack_max");
        assert!(second.optional);
        assert_eq!(second.why, "other");
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            ("# x\n\nnet.core.somaxconn 5\n", "t.conf:3: malformed line"),
            (
                "net.ipv4.tcp_rmen = 1 2 3\n",
                "t.conf:1: unknown key `net.ipv4.tcp_rmen` (did you mean `net.ipv4.tcp_rmem`?)",
            ),
            (
                "\nfs.nr_open = 12\n",
                "t.conf:2: bad value for fs.nr_open: 12 is out of range: allowed 64..=2147483584",
            ),
            (
                "net.ipv4.tcp_mem = 3 2 1\n",
                "t.conf:1: bad value for net.ipv4.tcp_mem: values must not decrease",
            ),
            (
                "fs.nr_open = 100\nfs/nr_open = 200\n",
                "t.conf:2: fs.nr_open is set twice (first on line 1)",
            ),
            (
                "net.ipv4.conf.*.rp_filter = 1\n",
                "t.conf:1: malformed line",
            ),
            (" = 1\n", "t.conf:1: malformed line"),
        ];
        for (text, expected) in cases {
            let message = parse("t.conf", text).unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message:?} vs {expected:?}");
        }
    }

    #[test]
    fn shipped_profiles_parse_and_explain_every_key_with_a_figure() {
        for profile in shipped().unwrap() {
            assert!(!profile.entries.is_empty(), "{} is empty", profile.name);
            for entry in &profile.entries {
                assert!(
                    entry.why.len() > 40 && entry.why.contains(|c: char| c.is_ascii_digit()),
                    "{}:{}: {} needs a comment saying why, with its figure",
                    profile.name,
                    entry.line,
                    entry.key
                );
            }
        }
    }

    #[test]
    fn load_finds_shipped_profiles_by_name() {
        assert_eq!(load("loadgen").unwrap().name, "loadgen.conf");
        assert_eq!(load("loadgen.conf").unwrap().name, "loadgen.conf");
        let err = load("no-such-profile").unwrap_err().to_string();
        assert!(
            err.contains("loopback-testbed, c10m-server, loadgen"),
            "{err}"
        );
    }
}
