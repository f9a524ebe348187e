//! The values `hotpool`'s flags and config share: byte sizes (`64m`, `2g`),
//! durations (`5s`) and users (`1000:1000`). CPU quotas are the library's
//! [`hotpool::driver::Cpus`].

use std::time::Duration;

/// The longest a call, a queue wait, a shutdown or a client's request may be
/// given: a day. Longer would be a mistake, and far longer overflows clocks.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

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

/// A byte count in config syntax, in the largest unit that divides it: `64m`.
pub fn show_bytes(bytes: u64) -> String {
    let units = [(40, "t"), (30, "g"), (20, "m"), (10, "k")];
    for (shift, unit) in units {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a byte size of at least `min`.
pub fn parse_bytes_at_least(text: &str, min: u64) -> Result<u64, String> {
    bytes_at_least(text, parse_bytes(text)?, min)
}

/// Checks that `bytes`, parsed from `text`, is at least `min`; the error quotes
/// `text`.
pub fn bytes_at_least(text: &str, bytes: u64, min: u64) -> Result<u64, String> {
    if bytes < min {
        return Err(format!(
            "{text:?} is less than the minimum, {}",
            show_bytes(min)
        ));
    }
    Ok(bytes)
}

/// Parses a duration like `5s`, `250ms`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); use a unit, like 5s or 250ms"))
}

/// Parses a duration of more than zero and at most `max`.
pub fn parse_duration_within(text: &str, max: Duration) -> Result<Duration, String> {
    duration_within(text, parse_duration(text)?, max)
}

/// Checks that `duration`, parsed from `text`, is more than zero and at most
/// `max`; the error quotes `text`.
pub fn duration_within(text: &str, duration: Duration, max: Duration) -> Result<Duration, String> {
    match duration {
        Duration::ZERO => Err(format!("{text:?} must be more than 0")),
        duration if duration > max => Err(format!("{text:?} is more than {}", show_limit(max))),
        duration => Ok(duration),
    }
}

/// Parses a timeout: more than zero and at most [`MAX_TIMEOUT`].
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, MAX_TIMEOUT)
}

/// A limit of whole hours in duration syntax: `24h`, or `365d` from two days on.
fn show_limit(limit: Duration) -> String {
    let hours = limit.as_secs() / 3600;
    if hours >= 48 && hours.is_multiple_of(24) {
        format!("{}d", hours / 24)
    } else {
        format!("{hours}h")
    }
}

/// Checks a user as the engine takes it: `user` or `user:group`, each a number
/// (`1000`) or a name (`nobody`, looked up in the image's `/etc/passwd` and
/// `/etc/group` when the container starts). A bare number runs with gid = uid.
pub fn parse_user(text: &str) -> Result<String, String> {
    let valid = |part: &str| {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            return part.parse::<u32>().is_ok();
        }
        let mut bytes = part.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && part.len() <= 32
    };
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    if valid(user) && group.is_none_or(valid) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a user: use uid[:gid] (like 1000:1000) or a name from the image"
        ))
    }
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
    fn sizes_show_in_config_syntax() {
        assert_eq!(show_bytes(0), "0");
        assert_eq!(show_bytes(1000), "1000");
        assert_eq!(show_bytes(1536), "1536");
        assert_eq!(show_bytes(3 << 10), "3k");
        assert_eq!(show_bytes(1536 << 20), "1536m");
        assert_eq!(show_bytes(2 << 30), "2g");
        assert_eq!(show_bytes(1 << 40), "1t");
    }

    #[test]
    fn sizes_with_a_minimum() {
        assert_eq!(parse_bytes_at_least("6m", 6 << 20), Ok(6 << 20));
        assert_eq!(
            parse_bytes_at_least("64", 6 << 20),
            Err(r#""64" is less than the minimum, 6m"#.to_owned())
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").unwrap_err().contains("use a unit"));
    }

    #[test]
    fn durations_within_a_limit() {
        assert_eq!(parse_timeout("24h"), Ok(MAX_TIMEOUT));
        assert_eq!(
            parse_timeout("10000000000000000000s"),
            Err(r#""10000000000000000000s" is more than 24h"#.to_owned())
        );
        assert_eq!(
            parse_timeout("0ms"),
            Err(r#""0ms" must be more than 0"#.to_owned())
        );
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(
            parse_duration_within("366d", year),
            Err(r#""366d" is more than 365d"#.to_owned())
        );
    }

    #[test]
    fn users() {
        for user in [
            "1000",
            "1000:1000",
            "0:0",
            "nobody",
            "www-data:www-data",
            "_x:1",
        ] {
            assert_eq!(parse_user(user), Ok(user.to_owned()));
        }
        for user in [
            "",
            ":",
            "1000:",
            ":1000",
            "a b",
            "-x",
            "1:2:3",
            "99999999999",
            "x;rm",
        ] {
            assert!(
                parse_user(user).unwrap_err().contains("is not a user"),
                "{user:?}"
            );
        }
    }
}
