//! A day of function calls in the Azure Functions 2019 schema, as sampled by
//! vHive's invitro: `PREFIX_inv.csv` (calls per minute per function),
//! `PREFIX_run.csv` (duration percentiles, ms) and `PREFIX_mem.csv` (allocated
//! memory, MB). Rows are not in the same order in the three files: durations join
//! on `HashFunction`, memory on `HashApp`.
//!
//! Columns are found by their header names, so extra columns are ignored. Bad
//! input is one line naming the file, the line and the column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Minutes in the day a trace covers.
pub(crate) const MINUTES: usize = 1440;

/// The percentiles of `PREFIX_run.csv`, in the order of [`DurationCurve`]'s points.
const PERCENTILES: [f64; 7] = [0.0, 1.0, 25.0, 50.0, 75.0, 99.0, 100.0];

/// Memory columns are in MB; a GB is 1024 of them.
const BYTES_PER_MB: f64 = (1u64 << 20) as f64;

/// A trace that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value, a column or a row is wrong.
    #[error("{}:{line}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Its line, from 1.
        line: usize,
        /// What is wrong, naming the column.
        what: String,
    },
    /// A function of the invocations has no row in another file.
    #[error("{}: no row for function {function} (line {line} of {}), joined on {key}", path.display(), invocations.display())]
    Missing {
        /// The file without the row.
        path: PathBuf,
        /// The function's `HashFunction`.
        function: String,
        /// The file the function comes from.
        invocations: PathBuf,
        /// Its line there.
        line: usize,
        /// The column the files join on.
        key: &'static str,
    },
}

/// One function of a trace.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TraceFunction {
    /// Its `HashFunction`.
    pub(crate) name: String,
    /// Calls in each minute of the day.
    pub(crate) per_minute: Vec<u32>,
    /// How long its calls run.
    pub(crate) durations: DurationCurve,
    /// Memory each of its containers holds, in bytes.
    pub(crate) memory: u64,
}

/// A day of calls of a set of functions.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub(crate) functions: Vec<TraceFunction>,
}

impl Trace {
    /// Reads `PREFIX_inv.csv`, `PREFIX_run.csv` and `PREFIX_mem.csv`.
    pub fn load(prefix: &Path) -> Result<Trace, TraceError> {
        let file = |suffix: &str| {
            let mut name = prefix.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        let invocations = Table::read(file("_inv.csv"))?;
        let runs = Table::read(file("_run.csv"))?;
        let memory = Table::read(file("_mem.csv"))?;
        let durations = durations_by_function(&runs)?;
        let memory_by_app = memory_by_app(&memory)?;

        let function_column = invocations.column("HashFunction")?;
        let app_column = invocations.column("HashApp")?;
        let minute_columns = minute_columns(&invocations)?;
        let mut functions = Vec::new();
        let mut seen = HashMap::new();
        for row in invocations.rows() {
            let name = row.text(function_column)?;
            if let Some(first) = seen.insert(name, row.line) {
                return Err(row.invalid(
                    function_column,
                    format!("function {name} appears again (first on line {first})"),
                ));
            }
            let app = row.text(app_column)?;
            let missing = |table: &Table, key| TraceError::Missing {
                path: table.path.clone(),
                function: name.to_owned(),
                invocations: invocations.path.clone(),
                line: row.line,
                key,
            };
            let durations = *durations
                .get(name)
                .ok_or_else(|| missing(&runs, "HashFunction"))?;
            let memory = *memory_by_app
                .get(app)
                .ok_or_else(|| missing(&memory, "HashApp"))?;
            let mut per_minute = vec![0; MINUTES];
            for &(minute, column) in &minute_columns {
                per_minute[minute] = row.number(column, "a count of calls")?;
            }
            functions.push(TraceFunction {
                name: name.to_owned(),
                per_minute,
                durations,
                memory,
            });
        }
        Ok(Trace { functions })
    }

    /// How many functions it has.
    pub fn function_count(&self) -> usize {
        self.functions.len()
    }

    /// How many minutes it covers: the day, or a slice of it
    /// ([`Trace::slice`]).
    pub fn minutes(&self) -> usize {
        self.functions
            .first()
            .map_or(MINUTES, |function| function.per_minute.len())
    }

    /// How many calls it has in all.
    pub fn invocations(&self) -> u64 {
        self.functions
            .iter()
            .flat_map(|f| &f.per_minute)
            .map(|&calls| u64::from(calls))
            .sum()
    }
}

/// How long a function's calls run: the piecewise-linear curve through the
/// duration percentiles 0, 1, 25, 50, 75, 99 and 100, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DurationCurve {
    pub(crate) points_ms: [f64; 7],
}

/// The shortest call: durations are floored at 1 ms.
const MIN_DURATION_NS: u64 = 1_000_000;

impl DurationCurve {
    /// The median duration, in ms.
    pub(crate) fn median_ms(&self) -> f64 {
        self.points_ms[3]
    }

    /// The longest duration, in ms.
    pub(crate) fn longest_ms(&self) -> f64 {
        self.points_ms[6]
    }

    /// The duration at percentile `percent` (0 to 100), in nanoseconds.
    pub(crate) fn at(&self, percent: f64) -> u64 {
        let segment = PERCENTILES
            .windows(2)
            .position(|pair| percent < pair[1])
            .unwrap_or(PERCENTILES.len() - 2);
        let (x0, x1) = (PERCENTILES[segment], PERCENTILES[segment + 1]);
        let (y0, y1) = (self.points_ms[segment], self.points_ms[segment + 1]);
        let ms = y0 + (y1 - y0) * ((percent - x0) / (x1 - x0)).clamp(0.0, 1.0);
        ((ms * 1e6).round() as u64).max(MIN_DURATION_NS)
    }
}

/// Each function's duration curve, by `HashFunction`.
fn durations_by_function(runs: &Table) -> Result<HashMap<&str, DurationCurve>, TraceError> {
    let key = runs.column("HashFunction")?;
    let mut columns = [0; 7];
    for (column, percentile) in columns.iter_mut().zip(PERCENTILES) {
        *column = runs.column(&format!("percentile_Average_{percentile}"))?;
    }
    let mut curves = HashMap::new();
    for row in runs.rows() {
        let mut points_ms = [0.0; 7];
        for (point, &column) in points_ms.iter_mut().zip(&columns) {
            *point = row.non_negative(column, "a duration in ms")?;
        }
        row.insert_once(&mut curves, key, DurationCurve { points_ms })?;
    }
    Ok(curves)
}

/// Each app's container memory in bytes, by `HashApp`.
fn memory_by_app(memory: &Table) -> Result<HashMap<&str, u64>, TraceError> {
    let key = memory.column("HashApp")?;
    let column = memory.column("AverageAllocatedMb")?;
    let mut bytes = HashMap::new();
    for row in memory.rows() {
        let mb = row.non_negative(column, "a size in MB")?;
        if mb == 0.0 {
            return Err(row.invalid(column, "a container needs some memory: 0 MB".into()));
        }
        row.insert_once(&mut bytes, key, (mb * BYTES_PER_MB).round() as u64)?;
    }
    Ok(bytes)
}

/// The `minute_N` columns of the invocations: (minute of the day from 0, column).
fn minute_columns(invocations: &Table) -> Result<Vec<(usize, usize)>, TraceError> {
    let mut columns = Vec::new();
    for (column, name) in invocations.header.iter().enumerate() {
        let Some(number) = name.strip_prefix("minute_") else {
            continue;
        };
        match number.parse::<usize>() {
            Ok(minute @ 1..=MINUTES) => columns.push((minute - 1, column)),
            _ => {
                return Err(invocations.invalid_header(format!(
                    "column {name}: minutes of a day are minute_1 to minute_{MINUTES}"
                )));
            }
        }
    }
    if columns.is_empty() {
        return Err(invocations.invalid_header("no minute_N columns".into()));
    }
    Ok(columns)
}

/// A CSV file: a header line and rows of comma-separated fields, unquoted.
struct Table {
    path: PathBuf,
    text: String,
    header: Vec<String>,
}

impl Table {
    fn read(path: PathBuf) -> Result<Table, TraceError> {
        let text = std::fs::read_to_string(&path).map_err(|source| TraceError::Read {
            path: path.clone(),
            source,
        })?;
        let header = text
            .lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|name| name.trim().to_owned())
            .collect();
        Ok(Table { path, text, header })
    }

    /// The index of the column named `name`.
    fn column(&self, name: &str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|column| column == name)
            .ok_or_else(|| self.invalid_header(format!("no column {name} in the header")))
    }

    fn invalid_header(&self, what: String) -> TraceError {
        TraceError::Invalid {
            path: self.path.clone(),
            line: 1,
            what,
        }
    }

    /// The rows after the header; blank lines are skipped.
    fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.text
            .lines()
            .enumerate()
            .skip(1)
            .filter(|(_, text)| !text.trim().is_empty())
            .map(|(index, text)| Row {
                table: self,
                line: index + 1,
                fields: text.split(',').map(str::trim).collect(),
            })
    }
}

/// One row of a [`Table`].
struct Row<'a> {
    table: &'a Table,
    line: usize,
    fields: Vec<&'a str>,
}

impl<'a> Row<'a> {
    fn invalid(&self, column: usize, what: String) -> TraceError {
        TraceError::Invalid {
            path: self.table.path.clone(),
            line: self.line,
            what: format!("column {}: {what}", self.table.header[column]),
        }
    }

    fn text(&self, column: usize) -> Result<&'a str, TraceError> {
        match self.fields.get(column) {
            Some(text) if !text.is_empty() => Ok(text),
            Some(_) => Err(self.invalid(column, "empty".into())),
            None => Err(self.invalid(
                column,
                format!("missing: the row has {} fields", self.fields.len()),
            )),
        }
    }

    fn number<T: std::str::FromStr>(&self, column: usize, what: &str) -> Result<T, TraceError> {
        let text = self.text(column)?;
        text.parse()
            .map_err(|_| self.invalid(column, format!("{text:?} is not {what}")))
    }

    fn non_negative(&self, column: usize, what: &str) -> Result<f64, TraceError> {
        let value: f64 = self.number(column, what)?;
        if !value.is_finite() || value < 0.0 {
            let text = self.fields[column];
            return Err(self.invalid(column, format!("{text:?} is not {what}")));
        }
        Ok(value)
    }

    /// Inserts `value` under the key in `column`, which must not have come before.
    fn insert_once<V>(
        &self,
        map: &mut HashMap<&'a str, V>,
        column: usize,
        value: V,
    ) -> Result<(), TraceError> {
        let key = self.text(column)?;
        if map.insert(key, value).is_some() {
            return Err(self.invalid(column, format!("{key} appears again")));
        }
        Ok(())
    }
}

/// Writes traces for tests: every function in its own app, the three files'
/// rows in different orders.
#[cfg(test)]
pub(crate) mod testing {
    use std::fmt::Write;
    use std::path::{Path, PathBuf};

    /// A function of a test trace: its calls per minute (minute from 0, count),
    /// every call `duration_ms` long, each container `memory_mb` MB.
    pub(crate) struct TestFunction {
        pub(crate) name: &'static str,
        pub(crate) calls: Vec<(usize, u32)>,
        pub(crate) duration_ms: f64,
        pub(crate) memory_mb: u32,
    }

    /// Writes `functions` as the trace `dir/test`; returns its prefix.
    pub(crate) fn write(dir: &Path, functions: &[TestFunction]) -> PathBuf {
        let mut inv = String::from("HashFunction,HashApp,HashOwner");
        for minute in 1..=super::MINUTES {
            write!(inv, ",minute_{minute}").unwrap();
        }
        let mut run = String::from(
            "HashFunction,HashApp,HashOwner,Count,Average,Minimum,Maximum,percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,percentile_Average_99,percentile_Average_100\n",
        );
        let mut mem = String::from(
            "HashApp,HashOwner,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1\n",
        );
        for function in functions {
            let mut per_minute = vec![0; super::MINUTES];
            for &(minute, count) in &function.calls {
                per_minute[minute] = count;
            }
            let counts: Vec<String> = per_minute.iter().map(u32::to_string).collect();
            let name = function.name;
            write!(inv, "\n{name},app-{name},owner,{}", counts.join(",")).unwrap();
            let d = function.duration_ms;
            run.insert_str(
                run.find('\n').unwrap() + 1,
                &format!("{name},app-{name},owner,1,{d},{d},{d},{d},{d},{d},{d},{d},{d},{d}\n"),
            );
            mem.insert_str(
                mem.find('\n').unwrap() + 1,
                &format!("app-{name},owner,1,{},1\n", function.memory_mb),
            );
        }
        let prefix = dir.join("test");
        for (suffix, text) in [("_inv.csv", inv), ("_run.csv", run), ("_mem.csv", mem)] {
            std::fs::write(dir.join(format!("test{suffix}")), text).unwrap();
        }
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TestFunction, write};
    use super::*;

    fn function(name: &'static str, duration_ms: f64, memory_mb: u32) -> TestFunction {
        TestFunction {
            name,
            calls: vec![(0, 2), (1439, 1)],
            duration_ms,
            memory_mb,
        }
    }

    #[test]
    fn durations_join_on_the_function_and_memory_on_the_app_whatever_the_row_order() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = write(
            dir.path(),
            &[function("a", 10.0, 128), function("b", 2000.0, 1024)],
        );
        let trace = Trace::load(&prefix).unwrap();
        assert_eq!((trace.function_count(), trace.invocations()), (2, 6));
        let [a, b] = &trace.functions[..] else {
            panic!("two functions, in the order of the invocations")
        };
        assert_eq!((a.name.as_str(), b.name.as_str()), ("a", "b"));
        assert_eq!((a.memory, b.memory), (128 << 20, 1 << 30));
        assert_eq!(
            (a.durations.at(50.0), b.durations.at(50.0)),
            (10_000_000, 2_000_000_000)
        );
        assert_eq!(
            (a.per_minute[0], a.per_minute[1], a.per_minute[1439]),
            (2, 0, 1)
        );
    }

    #[test]
    fn durations_follow_the_percentile_curve_floored_at_a_millisecond() {
        let curve = DurationCurve {
            points_ms: [0.0, 1.0, 25.0, 50.0, 75.0, 99.0, 1000.0],
        };
        assert_eq!(curve.at(0.0), MIN_DURATION_NS, "0 ms is floored");
        assert_eq!(curve.at(50.0), 50_000_000);
        assert_eq!(curve.at(62.5), 62_500_000);
        assert_eq!(curve.at(99.5), 549_500_000);
        assert_eq!(curve.at(100.0), 1_000_000_000);
    }

    /// The error `Trace::load` gives after `edit` changes file `suffix`.
    fn error_after(suffix: &str, edit: impl Fn(String) -> String) -> String {
        let dir = tempfile::tempdir().unwrap();
        let prefix = write(
            dir.path(),
            &[function("a", 10.0, 128), function("b", 20.0, 256)],
        );
        let path = dir.path().join(format!("test{suffix}"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
        let error = Trace::load(&prefix).unwrap_err().to_string();
        assert!(error.contains(&format!("test{suffix}")), "{error}");
        error
    }

    #[test]
    fn a_bad_value_names_the_file_line_and_column() {
        let error = error_after("_run.csv", |text| {
            text.replace(
                "b,app-b,owner,1,20,20,20,20,20",
                "b,app-b,owner,1,20,20,20,20,x",
            )
        });
        assert!(
            error.ends_with(
                "test_run.csv:2: column percentile_Average_1: \"x\" is not a duration in ms"
            ),
            "{error}"
        );
        let error = error_after("_inv.csv", |text| text.replacen(",2,", ",-2,", 1));
        assert!(
            error.contains(":2: column minute_1: \"-2\" is not a count of calls"),
            "{error}"
        );
        let error = error_after("_mem.csv", |text| text.replace(",256,", ",0,"));
        assert!(
            error.contains(":2: column AverageAllocatedMb: a container needs some memory"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_column_or_field_is_named() {
        let error = error_after("_mem.csv", |text| {
            text.replace("AverageAllocatedMb,", "Mb,")
        });
        assert!(
            error.contains(":1: no column AverageAllocatedMb in the header"),
            "{error}"
        );
        let error = error_after("_run.csv", |text| {
            let mut lines: Vec<_> = text.lines().map(str::to_owned).collect();
            let last_field = lines[2].rfind(',').unwrap();
            lines[2].truncate(last_field);
            lines.join("\n")
        });
        assert!(
            error.contains(":3: column percentile_Average_100: missing: the row has 13 fields"),
            "{error}"
        );
        let error = error_after("_inv.csv", |text| {
            text.replace("minute_1440", "minute_1441")
        });
        assert!(
            error.contains(":1: column minute_1441: minutes of a day"),
            "{error}"
        );
    }

    #[test]
    fn a_function_missing_from_a_joined_file_is_named() {
        let error = error_after("_mem.csv", |text| {
            text.lines()
                .filter(|line| !line.starts_with("app-a"))
                .collect::<Vec<_>>()
                .join("\n")
        });
        assert!(
            error.contains("no row for function a (line 2 of ")
                && error.ends_with("test_inv.csv), joined on HashApp"),
            "{error}"
        );
        let error = error_after("_run.csv", |text| text.replace("b,app-b", "c,app-b"));
        assert!(
            error.contains("no row for function b (line 3 of "),
            "{error}"
        );
        assert!(error.ends_with("joined on HashFunction"), "{error}");
    }

    #[test]
    fn a_repeated_key_is_an_error() {
        let error = error_after("_run.csv", |text| text.replace("b,app-b", "a,app-b"));
        assert!(
            error.contains("column HashFunction: a appears again"),
            "{error}"
        );
        let error = error_after("_inv.csv", |text| text.replace("\nb,", "\na,"));
        assert!(
            error.contains(":3: column HashFunction: function a appears again (first on line 2)"),
            "{error}"
        );
    }

    #[test]
    fn an_absent_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = Trace::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("none_inv.csv: "), "{error}");
    }
}
