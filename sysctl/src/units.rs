//! Number formatting for reports: digit grouping and binary byte units, so a
//! reader can tell 1,000,000 from 10,000,000 at a glance.

/// `1234567` → `"1,234,567"`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in the largest binary unit that keeps the figure ≥ 1, one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", grouped(n))
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(10_485_760), "10,485,760");
    }

    #[test]
    fn picks_a_binary_unit() {
        assert_eq!(bytes(3712), "3.6 KiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(24 * 1024 * 1024 * 1024), "24.0 GiB");
    }
}
