//! Sysctl values: what shape each key takes, validation, and the canonical
//! form used to compare a profile's value with what the kernel prints.
//!
//! Contract: two values are equal when their canonical forms are equal. The
//! kernel prints multi-number values with tabs (`32768\t60999`) and merges
//! port lists (`7000-7099`); profiles use spaces and may list ports in any
//! order. [`ValueKind::canonical`] maps both to one spelling, so `check`
//! never reports a difference that is only whitespace or ordering.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest value a kernel `int` sysctl accepts.
pub const INT_MAX: u64 = i32::MAX as u64;
/// Largest value a kernel `long` sysctl accepts (64-bit).
pub const LONG_MAX: u64 = i64::MAX as u64;

/// The shape of a key's value, with the bounds the kernel enforces (or that
/// make sense for this project where the kernel enforces none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Whitespace-separated integers.
    Numbers(NumberSpec),
    /// Two ports `low high` with `1 ≤ low ≤ high ≤ 65535`.
    PortRange,
    /// Comma-separated ports and `a-b` ranges; may be empty.
    PortList,
}

/// `count` integers, each in `min..=max`; `ordered` demands non-decreasing
/// values (tcp_mem's min ≤ pressure ≤ max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberSpec {
    pub count: usize,
    pub min: u64,
    pub max: u64,
    pub ordered: bool,
}

impl NumberSpec {
    fn describe(&self) -> String {
        let NumberSpec {
            count,
            min,
            max,
            ordered,
        } = *self;
        if count == 1 {
            return format!("one integer in {min}..={max}");
        }
        let order = if ordered { ", non-decreasing" } else { "" };
        format!("{count} integers, each in {min}..={max}{order}")
    }

    fn canonical(&self, raw: &str) -> Result<String, ValueError> {
        let values = parse_numbers(raw, self.count, self.min, self.max, &self.describe())?;
        if self.ordered && values.windows(2).any(|w| w[0] > w[1]) {
            return Err(ValueError::NotOrdered {
                values: join(&values),
            });
        }
        Ok(join(&values))
    }
}

/// Why a value does not fit its key. Carries the actual and allowed figures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ValueError {
    #[error("empty value (expected {expected})")]
    Empty { expected: String },
    #[error("`{token}` is not a non-negative integer")]
    NotANumber { token: String },
    #[error("{value} is out of range: allowed {min}..={max}")]
    OutOfRange { value: u64, min: u64, max: u64 },
    #[error("expected {expected} numbers, found {found}")]
    WrongCount { expected: usize, found: usize },
    #[error("values must not decrease (min <= middle <= max), found `{values}`")]
    NotOrdered { values: String },
    #[error("port range {low}-{high} is inverted (low > high)")]
    InvertedRange { low: u64, high: u64 },
}

impl ValueKind {
    /// One integer in `min..=max`.
    pub const fn int(min: u64, max: u64) -> Self {
        ValueKind::Numbers(NumberSpec {
            count: 1,
            min,
            max,
            ordered: false,
        })
    }

    /// Three non-decreasing integers in `min..=max` (tcp_mem, tcp_rmem).
    pub const fn triple(min: u64, max: u64) -> Self {
        ValueKind::Numbers(NumberSpec {
            count: 3,
            min,
            max,
            ordered: true,
        })
    }

    /// A short description of the expected shape, for messages and `explain`.
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Numbers(spec) => spec.describe(),
            ValueKind::PortRange => "two ports `low high`, 1 <= low <= high <= 65535".to_string(),
            ValueKind::PortList => {
                "comma-separated ports or ranges `a-b`, may be empty".to_string()
            }
        }
    }

    /// Validate `raw` and return its canonical spelling.
    pub fn canonical(&self, raw: &str) -> Result<String, ValueError> {
        match self {
            ValueKind::Numbers(spec) => spec.canonical(raw),
            ValueKind::PortRange => {
                let range = PortRange::parse(raw)?;
                Ok(format!("{} {}", range.low, range.high))
            }
            ValueKind::PortList => Ok(PortSet::parse(raw)?.to_string()),
        }
    }
}

/// Canonical form when the kind is known and the value parses; otherwise
/// whitespace-normalised text. Used on values read from a kernel, which may
/// hold anything (we report them, we do not reject them).
pub fn canonical_lenient(kind: Option<&ValueKind>, raw: &str) -> String {
    kind.and_then(|k| k.canonical(raw).ok())
        .unwrap_or_else(|| raw.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_number(token: &str) -> Result<u64, ValueError> {
    token.parse().map_err(|_| ValueError::NotANumber {
        token: token.to_string(),
    })
}

fn parse_numbers(
    raw: &str,
    count: usize,
    min: u64,
    max: u64,
    expected: &str,
) -> Result<Vec<u64>, ValueError> {
    let tokens: Vec<&str> = raw.split_whitespace().collect();
    if tokens.is_empty() {
        return Err(ValueError::Empty {
            expected: expected.to_string(),
        });
    }
    if tokens.len() != count {
        return Err(ValueError::WrongCount {
            expected: count,
            found: tokens.len(),
        });
    }
    tokens
        .into_iter()
        .map(|token| {
            let value = parse_number(token)?;
            if value < min || value > max {
                return Err(ValueError::OutOfRange { value, min, max });
            }
            Ok(value)
        })
        .collect()
}

/// Parse whitespace-separated unsigned integers (kernel output such as
/// tcp_mem or file-nr), with no bounds.
pub fn numbers(raw: &str) -> Result<Vec<u64>, ValueError> {
    raw.split_whitespace().map(parse_number).collect()
}

/// `net.ipv4.ip_local_port_range`: the ephemeral ports `connect()` picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let values = parse_numbers(raw, 2, 1, 65535, &ValueKind::PortRange.describe())?;
        let (low, high) = (values[0], values[1]);
        if low > high {
            return Err(ValueError::InvertedRange { low, high });
        }
        // Both are ≤ 65535 (checked above), so the narrowing cannot fail.
        Ok(PortRange {
            low: u16::try_from(low).unwrap_or(u16::MAX),
            high: u16::try_from(high).unwrap_or(u16::MAX),
        })
    }

    /// Number of ports in the range.
    pub fn port_count(&self) -> u64 {
        u64::from(self.high) - u64::from(self.low) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

/// `net.ipv4.ip_local_reserved_ports`: sorted, merged, inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSet {
    pub ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let mut ranges = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (low, high) = match item.split_once('-') {
                Some((a, b)) => (parse_port(a.trim())?, parse_port(b.trim())?),
                None => {
                    let port = parse_port(item)?;
                    (port, port)
                }
            };
            if low > high {
                return Err(ValueError::InvertedRange {
                    low: low.into(),
                    high: high.into(),
                });
            }
            ranges.push((low, high));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (low, high) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(low) <= u32::from(last.1) + 1 => last.1 = last.1.max(high),
                _ => merged.push((low, high)),
            }
        }
        Ok(PortSet { ranges: merged })
    }

    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// How many ports of `range` this set reserves.
    pub fn count_within(&self, range: PortRange) -> u64 {
        self.ranges
            .iter()
            .map(|&(a, b)| {
                let low = a.max(range.low);
                let high = b.min(range.high);
                if low > high {
                    0
                } else {
                    u64::from(high) - u64::from(low) + 1
                }
            })
            .sum()
    }
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self
            .ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

fn parse_port(token: &str) -> Result<u16, ValueError> {
    let value = parse_number(token)?;
    u16::try_from(value).map_err(|_| ValueError::OutOfRange {
        value,
        min: 0,
        max: 65535,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIPLE: ValueKind = ValueKind::triple(1, LONG_MAX);

    #[test]
    fn canonical_joins_kernel_tabs_and_profile_spaces() {
        assert_eq!(TRIPLE.canonical("1\t2   3").unwrap(), "1 2 3");
        assert_eq!(
            ValueKind::PortRange.canonical("32768\t60999").unwrap(),
            "32768 60999"
        );
    }

    #[test]
    fn out_of_range_names_actual_and_allowed() {
        let kind = ValueKind::int(64, 100);
        let err = kind.canonical("12").unwrap_err();
        assert_eq!(err.to_string(), "12 is out of range: allowed 64..=100");
    }

    #[test]
    fn triples_must_have_three_ordered_numbers() {
        assert_eq!(
            TRIPLE.canonical("1 2").unwrap_err(),
            ValueError::WrongCount {
                expected: 3,
                found: 2
            }
        );
        assert!(matches!(
            TRIPLE.canonical("3 2 1"),
            Err(ValueError::NotOrdered { .. })
        ));
        assert!(matches!(
            TRIPLE.canonical("1 x 3"),
            Err(ValueError::NotANumber { .. })
        ));
        assert!(matches!(
            TRIPLE.canonical("  "),
            Err(ValueError::Empty { .. })
        ));
    }

    #[test]
    fn port_range_rejects_inverted_and_zero() {
        assert!(matches!(
            PortRange::parse("2000 1000"),
            Err(ValueError::InvertedRange { .. })
        ));
        assert!(PortRange::parse("0 100").is_err());
        assert_eq!(PortRange::parse("32768 60999").unwrap().port_count(), 28232);
    }

    #[test]
    fn port_lists_merge_sort_and_count() {
        let set = PortSet::parse("8080, 7000-7049,7050-7099,7010").unwrap();
        assert_eq!(set.to_string(), "7000-7099,8080");
        assert_eq!(ValueKind::PortList.canonical("").unwrap(), "");
        let range = PortRange {
            low: 7050,
            high: 9000,
        };
        assert_eq!(set.count_within(range), 51);
        assert!(set.contains(7000) && !set.contains(6999));
        assert!(PortSet::parse("70000").is_err());
    }

    #[test]
    fn lenient_canonical_keeps_unparseable_kernel_text() {
        assert_eq!(canonical_lenient(Some(&TRIPLE), "a\tb"), "a b");
        assert_eq!(canonical_lenient(None, " 7 "), "7");
    }
}
