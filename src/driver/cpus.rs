//! A CPU quota: how much of the host's CPU time one container may use.

use std::fmt;
use std::str::FromStr;

/// A CPU quota in thousandths of a core (`0.5` is 500 millicores), from 0.01 (the
/// engine's minimum) to 1024 cores. An integer, so the specs that carry it stay
/// `Eq` and `Hash`. Parses and displays as a decimal number of cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cpus(u32);

impl Cpus {
    /// One core.
    pub const ONE: Cpus = Cpus(1000);
    /// The smallest quota the engine takes: a hundredth of a core.
    pub const MIN: Cpus = Cpus(10);
    /// The largest quota accepted: 1024 cores.
    pub const MAX: Cpus = Cpus(1024 * 1000);

    /// The quota in thousandths of a core.
    pub fn millis(self) -> u32 {
        self.0
    }

    /// The quota in the engine's unit, billionths of a core (`NanoCpus`).
    pub fn nano_cpus(self) -> i64 {
        i64::from(self.0) * 1_000_000
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cores, millis) = (self.0 / 1000, self.0 % 1000);
        if millis == 0 {
            write!(f, "{cores}")
        } else {
            let decimals = format!("{millis:03}");
            write!(f, "{cores}.{}", decimals.trim_end_matches('0'))
        }
    }
}

impl FromStr for Cpus {
    type Err = String;

    /// Parses a number of cores with at most three decimals: `1`, `0.5`, `2.25`.
    fn from_str(text: &str) -> Result<Cpus, String> {
        let text = text.trim();
        let not_a_number = || format!("{text:?} is not a number of CPUs, like 1 or 0.5");
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
            return Err(not_a_number());
        }
        if fraction.len() > 3 {
            return Err(format!("{text:?} has more than 3 decimals"));
        }
        let too_many = || format!("{text:?} is more than {}", Cpus::MAX);
        let whole: u32 = match whole {
            "" => 0,
            whole => whole.parse().map_err(|_| too_many())?,
        };
        let fraction: u32 = format!("{fraction:0<3}")
            .parse()
            .map_err(|_| not_a_number())?;
        let millis = whole
            .checked_mul(1000)
            .and_then(|m| m.checked_add(fraction))
            .ok_or_else(too_many)?;
        match Cpus(millis) {
            cpus if cpus < Cpus::MIN => Err(format!("{text:?} is less than {}", Cpus::MIN)),
            cpus if cpus > Cpus::MAX => Err(too_many()),
            cpus => Ok(cpus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus() {
        for (text, millis, shown) in [
            ("1", 1000, "1"),
            ("0.5", 500, "0.5"),
            (".25", 250, "0.25"),
            ("2.", 2000, "2"),
            ("1.005", 1005, "1.005"),
            ("0.01", 10, "0.01"),
            ("1024", 1_024_000, "1024"),
        ] {
            let cpus: Cpus = text.parse().unwrap();
            assert_eq!((cpus.millis(), cpus.to_string().as_str()), (millis, shown));
        }
        assert_eq!(Cpus::ONE.nano_cpus(), 1_000_000_000);
        assert_eq!("0.5".parse::<Cpus>().unwrap().nano_cpus(), 500_000_000);
    }

    #[test]
    fn bad_cpus_say_why() {
        for (text, reason) in [
            ("", "not a number of CPUs"),
            (".", "not a number of CPUs"),
            ("-1", "not a number of CPUs"),
            ("1e3", "not a number of CPUs"),
            ("half", "not a number of CPUs"),
            ("0.0001", "more than 3 decimals"),
            ("0", "less than 0.01"),
            ("0.009", "less than 0.01"),
            ("1025", "more than 1024"),
            ("99999999999", "more than 1024"),
        ] {
            let error = text.parse::<Cpus>().unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }
}
