//! A slice of a trace: some of its functions over some of its minutes, what
//! `hotpool replay --functions N --minutes START..END` replays (and its live
//! mode sends to a real server).
//!
//! Which functions: the N with the most calls in the minutes among those
//! whose calls there would keep less than one container busy on average
//! (calls times the median duration under the minutes' length). The rule
//! keeps the busiest functions that a small machine can serve: a function of
//! 6,000 calls of 13 s in ten minutes needs 130 containers at once.

use std::ops::Range;

use super::trace::{MINUTES, Trace};

/// A slice the trace does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    /// The minutes are empty or past the trace's end.
    #[error("minutes {start}..{end} are not within the trace's 0..{minutes}")]
    Minutes {
        /// The first minute asked for.
        start: usize,
        /// The minute after the last.
        end: usize,
        /// The trace's minutes.
        minutes: usize,
    },
    /// Fewer functions than asked for fit the rule.
    #[error(
        "only {found} functions have calls in minutes {start}..{end} that keep less than one container busy; asked for {wanted}"
    )]
    TooFewFunctions {
        /// How many were asked for.
        wanted: usize,
        /// How many fit.
        found: usize,
        /// The first minute.
        start: usize,
        /// The minute after the last.
        end: usize,
    },
}

impl Trace {
    /// The trace of the `count` functions the rule of this module picks over
    /// `minutes` (all of them that have calls there when `count` is `None`), in
    /// the trace's order, their minute 0 being `minutes.start`.
    pub fn slice(&self, count: Option<usize>, minutes: Range<usize>) -> Result<Trace, SliceError> {
        let (start, end) = (minutes.start, minutes.end);
        if start >= end || end > self.minutes() {
            return Err(SliceError::Minutes {
                start,
                end,
                minutes: self.minutes(),
            });
        }
        let window_ms = (end - start) as f64 * 60_000.0;
        let mut candidates: Vec<(u64, usize)> = self
            .functions
            .iter()
            .enumerate()
            .filter_map(|(index, function)| {
                let calls: u64 = function.per_minute[minutes.clone()]
                    .iter()
                    .map(|&n| u64::from(n))
                    .sum();
                let busy_ms = calls as f64 * function.durations.median_ms();
                let fits = count.is_none() || busy_ms < window_ms;
                (calls > 0 && fits).then_some((calls, index))
            })
            .collect();
        // The busiest first; the trace's order breaks ties.
        candidates.sort_by_key(|&(calls, index)| (std::cmp::Reverse(calls), index));
        let wanted = count.unwrap_or(candidates.len());
        if candidates.len() < wanted {
            return Err(SliceError::TooFewFunctions {
                wanted,
                found: candidates.len(),
                start,
                end,
            });
        }
        let mut chosen: Vec<usize> = candidates[..wanted]
            .iter()
            .map(|&(_, index)| index)
            .collect();
        chosen.sort_unstable();
        let functions = chosen
            .into_iter()
            .map(|index| {
                let mut function = self.functions[index].clone();
                function.per_minute = function.per_minute[minutes.clone()].to_vec();
                function
            })
            .collect();
        Ok(Trace { functions })
    }
}

/// `START..END` minutes of a day: the minutes from START to before END.
pub fn parse_minutes(text: &str) -> Result<Range<usize>, String> {
    let bad = || format!("{text:?} is not minutes START..END of the day (0..{MINUTES})");
    let (start, end) = text.split_once("..").ok_or_else(bad)?;
    let start: usize = start.trim().parse().map_err(|_| bad())?;
    let end: usize = end.trim().parse().map_err(|_| bad())?;
    if start >= end || end > MINUTES {
        return Err(bad());
    }
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::trace::testing::{TestFunction, write};

    fn function(name: &'static str, calls: Vec<(usize, u32)>, duration_ms: f64) -> TestFunction {
        TestFunction {
            name,
            calls,
            duration_ms,
            memory_mb: 256,
        }
    }

    fn trace(functions: &[TestFunction]) -> Trace {
        let dir = tempfile::tempdir().unwrap();
        Trace::load(&write(dir.path(), functions)).unwrap()
    }

    fn names(trace: &Trace) -> Vec<&str> {
        trace.functions.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn the_busiest_functions_that_keep_under_one_container_busy_are_picked() {
        let trace = trace(&[
            // 30 calls of 1 s in minutes 10..12: busy 30 s of 120.
            function("quiet", vec![(10, 10), (11, 20)], 1000.0),
            // 200 calls of 1 s: busy 200 s of 120, too busy.
            function("too-busy", vec![(10, 100), (11, 100)], 1000.0),
            // 50 calls of 100 ms.
            function("busiest", vec![(10, 50)], 100.0),
            // Calls outside the minutes only.
            function("elsewhere", vec![(9, 500), (12, 500)], 1.0),
            function("one", vec![(11, 1)], 1.0),
        ]);
        let slice = trace.slice(Some(2), 10..12).unwrap();
        assert_eq!(names(&slice), ["quiet", "busiest"], "in the trace's order");
        assert_eq!(slice.minutes(), 2);
        assert_eq!(slice.functions[0].per_minute, [10, 20]);
        assert_eq!(slice.invocations(), 80);
        assert_eq!(
            names(&trace.slice(Some(3), 10..12).unwrap()),
            ["quiet", "busiest", "one"]
        );
        // Without a count: every function with calls there, busy or not.
        assert_eq!(
            names(&trace.slice(None, 10..12).unwrap()),
            ["quiet", "too-busy", "busiest", "one"]
        );
        assert_eq!(
            trace.slice(Some(4), 10..12).unwrap_err().to_string(),
            "only 3 functions have calls in minutes 10..12 that keep less than one container busy; asked for 4"
        );
        assert!(matches!(
            trace.slice(None, 10..1441),
            Err(SliceError::Minutes { end: 1441, .. })
        ));
    }

    #[test]
    fn minutes_parse_as_a_range_within_the_day() {
        assert_eq!(parse_minutes("0..10"), Ok(0..10));
        assert_eq!(parse_minutes("600..1440"), Ok(600..1440));
        for bad in ["10..10", "5", "a..b", "0..1441", "9..3"] {
            let error = parse_minutes(bad).unwrap_err();
            assert!(error.contains("START..END"), "{bad}: {error}");
        }
    }
}
