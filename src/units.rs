//! Human units in flags and config: byte sizes (`64m`, `2g`) and durations (`5s`).

use std::time::Duration;

/// Parses a byte size the way `docker run --memory` does: a whole number with an
/// optional binary suffix `b`, `k`, `m`, `g`, `t` (case-insensitive, an optional
/// trailing `b` or `ib` accepted: `64m`, `64mb`, `64MiB`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, suffix) = lower.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "{trimmed:?} is not a size: expected a number with an optional unit, like 64m or 2g"
        ));
    }
    let shift = match suffix.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => {
            return Err(format!(
                "{trimmed:?} has an unknown unit {suffix:?}: use b, k, m, g or t"
            ));
        }
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{trimmed:?} is too large"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{trimmed:?} is too large"))
}

/// Parses a duration like `5s`, `250ms`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); use a unit, like 5s or 250ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("512", 512),
            ("1k", 1024),
            ("64m", 64 << 20),
            ("64MB", 64 << 20),
            ("64MiB", 64 << 20),
            ("2g", 2 << 30),
            ("1t", 1 << 40),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_bytes("").unwrap_err().contains("not a size"));
        assert!(parse_bytes("m").unwrap_err().contains("not a size"));
        assert!(parse_bytes("12q").unwrap_err().contains("unknown unit"));
        assert!(
            parse_bytes("99999999999t")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").unwrap_err().contains("use a unit"));
    }
}
