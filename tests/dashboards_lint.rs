//! The shipped Grafana dashboards and their provisioning files, checked without an
//! engine: importable and file-provisionable JSON (no `__inputs`, no `${DS_...}`),
//! a `datasource` and a `function` variable, a title, description, unit and the
//! datasource variable on every panel, `$__rate_interval` in every `rate` and
//! `increase`, and only metric names that `src/metrics.rs` exports (read from its
//! source, so the list cannot drift).
//!
//! `tests/dashboards_prometheus.rs` runs every query against a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};

/// The source of the metric names: every `pub const NAME: &str = "value";`.
const METRICS_RS: &str = include_str!("../src/metrics.rs");

/// What the panels and targets must name as their datasource.
const DATASOURCE_UIDS: [&str; 2] = ["${datasource}", "$datasource"];

fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// The metric names hotpool exports, parsed from `src/metrics.rs`: name -> value.
fn exported_metrics() -> BTreeMap<String, String> {
    let mut metrics = BTreeMap::new();
    for line in METRICS_RS.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": &str = ") else {
            continue;
        };
        let value = value
            .trim()
            .strip_suffix(';')
            .and_then(|v| v.strip_prefix('"'))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("cannot read the value of {name} in src/metrics.rs: {line}"));
        metrics.insert(name.to_owned(), value.to_owned());
    }
    metrics
}

fn exported_names() -> BTreeSet<String> {
    exported_metrics().into_values().collect()
}

/// Every `dashboards/*.json`, by file name, parsed.
fn dashboards() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("the dashboards folder")
        .map(|entry| entry.expect("a dashboards entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("read a dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, json)
        })
        .collect()
}

/// Every panel of a dashboard, rows and the panels nested in (collapsed) rows included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

/// The panels that show data (every panel but rows).
fn data_panels(dashboard: &Value) -> Vec<&Value> {
    all_panels(dashboard)
        .into_iter()
        .filter(|panel| !is_row(panel))
        .collect()
}

fn targets(panel: &Value) -> &[Value] {
    panel["targets"].as_array().map_or(&[], Vec::as_slice)
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("<untitled>")
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> Option<&'a Value> {
    dashboard["templating"]["list"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

/// Every `hotpool_...` metric an expression names, without `_bucket`/`_sum`/`_count`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("hotpool_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The contents of every `[...]` in an expression (range selectors).
fn ranges(expr: &str) -> Vec<&str> {
    expr.split('[')
        .skip(1)
        .map(|part| part.split_once(']').map_or(part, |(inside, _)| inside))
        .collect()
}

/// Fails listing every problem at once.
fn assert_none(problems: &[String], what: &str) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[test]
fn metric_names_are_read_from_src_metrics() {
    let metrics = exported_metrics();
    // The parser agrees with the compiled constants it reads.
    assert_eq!(metrics["CALLS_TOTAL"], hotpool::metrics::CALLS_TOTAL);
    assert_eq!(metrics["TASK_CPU_RATIO"], hotpool::metrics::TASK_CPU_RATIO);
    assert_eq!(
        metrics["IMAGE_PULLS_TOTAL"],
        hotpool::metrics::IMAGE_PULLS_TOTAL
    );
    let declared = METRICS_RS
        .lines()
        .filter(|l| l.trim().starts_with("pub const ") && l.contains(": &str"))
        .count();
    assert_eq!(metrics.len(), declared, "every &str constant is read");
    for value in metrics.values() {
        assert!(value.starts_with("hotpool_"), "{value}");
    }
}

#[test]
fn the_panel_walker_reaches_panels_nested_in_rows() {
    let dashboard = json!({"panels": [
        {"type": "row", "title": "open", "panels": []},
        {"type": "timeseries", "title": "top"},
        {"type": "row", "title": "collapsed", "collapsed": true, "panels": [
            {"type": "stat", "title": "nested"}
        ]}
    ]});
    let titles: Vec<&str> = data_panels(&dashboard).into_iter().map(title).collect();
    assert_eq!(titles, ["top", "nested"]);
    assert_eq!(all_panels(&dashboard).len(), 4);
}

#[test]
fn the_expression_helpers_find_metrics_and_ranges() {
    let expr = "histogram_quantile(0.99, sum by (le) (rate(hotpool_call_duration_seconds_bucket{function=\"a\"}[$__rate_interval]))) / hotpool_memory_budget_bytes[5m]";
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        [
            "hotpool_call_duration_seconds",
            "hotpool_memory_budget_bytes"
        ]
    );
    assert_eq!(ranges(expr), ["$__rate_interval", "5m"]);
}

#[test]
fn both_dashboards_are_shipped_as_importable_json() {
    let dashboards = dashboards();
    let names: Vec<&str> = dashboards.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["hotpool-overview.json", "hotpool-function.json"] {
        assert!(
            names.contains(&expected),
            "{expected} is missing: {names:?}"
        );
    }
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for (name, dashboard) in &dashboards {
        let text = dashboard.to_string();
        if dashboard.get("__inputs").is_some() || text.contains("__inputs") {
            problems.push(format!(
                "{name}: has __inputs (an export for sharing externally)"
            ));
        }
        if text.contains("${DS_") {
            problems.push(format!("{name}: names a ${{DS_...}} input"));
        }
        for key in ["title", "uid", "description"] {
            if dashboard[key].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name}: no {key}"));
            }
        }
        if let Some(uid) = dashboard["uid"].as_str()
            && !uids.insert(uid.to_owned())
        {
            problems.push(format!("{name}: uid {uid} is used twice"));
        }
        if dashboard["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            problems.push(format!("{name}: schemaVersion below 36"));
        }
        if !dashboard["id"].is_null() {
            problems.push(format!("{name}: a fixed id (use null)"));
        }
        if data_panels(dashboard).is_empty() {
            problems.push(format!("{name}: no panels"));
        }
    }
    assert_none(&problems, "dashboards that would not import cleanly");
}

#[test]
fn dashboards_have_datasource_and_function_variables() {
    let mut problems = Vec::new();
    for (name, dashboard) in &dashboards() {
        match variable(dashboard, "datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            Some(v) => problems.push(format!(
                "{name}: the datasource variable is not a prometheus datasource variable: {v}"
            )),
            None => problems.push(format!("{name}: no datasource variable")),
        }
        let Some(function) = variable(dashboard, "function") else {
            problems.push(format!("{name}: no function variable"));
            continue;
        };
        let query = function["query"]
            .as_str()
            .or(function["query"]["query"].as_str())
            .unwrap_or_default();
        if function["type"] != "query"
            || query.replace(' ', "") != "label_values(hotpool_calls_total,function)"
        {
            problems.push(format!(
                "{name}: the function variable is not label_values(hotpool_calls_total, function): {function}"
            ));
        }
        if !DATASOURCE_UIDS.contains(&function["datasource"]["uid"].as_str().unwrap_or("")) {
            problems.push(format!(
                "{name}: the function variable does not query ${{datasource}}"
            ));
        }
        let (multi, all) = (&function["multi"], &function["includeAll"]);
        let wanted = match name.as_str() {
            "hotpool-overview.json" => Some(true),
            "hotpool-function.json" => Some(false),
            _ => None,
        };
        if let Some(wanted) = wanted
            && (multi.as_bool() != Some(wanted) || all.as_bool() != Some(wanted))
        {
            problems.push(format!(
                "{name}: function variable multi={multi} includeAll={all}, want {wanted}"
            ));
        }
    }
    assert_none(&problems, "template variables");
}

#[test]
fn every_panel_has_title_description_unit_and_the_datasource_variable() {
    let mut problems = Vec::new();
    for (name, dashboard) in &dashboards() {
        for panel in all_panels(dashboard) {
            let title = title(panel);
            if panel["title"].as_str().is_none_or(|t| t.trim().is_empty()) {
                problems.push(format!("{name}: a panel without a title: {panel}"));
            }
            if is_row(panel) {
                continue;
            }
            if panel["description"]
                .as_str()
                .is_none_or(|d| d.trim().is_empty())
            {
                problems.push(format!("{name} / {title}: no description"));
            }
            if panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{name} / {title}: no fieldConfig.defaults.unit"));
            }
            let uses_variable = |datasource: &Value| {
                datasource["type"] == "prometheus"
                    && DATASOURCE_UIDS.contains(&datasource["uid"].as_str().unwrap_or(""))
            };
            if !uses_variable(&panel["datasource"]) {
                problems.push(format!(
                    "{name} / {title}: the panel's datasource is not ${{datasource}}: {}",
                    panel["datasource"]
                ));
            }
            if targets(panel).is_empty() {
                problems.push(format!("{name} / {title}: no targets"));
            }
            for target in targets(panel) {
                let ref_id = target["refId"].as_str().unwrap_or("?");
                if !uses_variable(&target["datasource"]) {
                    problems.push(format!(
                        "{name} / {title} / {ref_id}: the target's datasource is not ${{datasource}}"
                    ));
                }
                if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                    problems.push(format!("{name} / {title} / {ref_id}: no expr"));
                }
            }
        }
    }
    assert_none(&problems, "panels missing a required field");
}

#[test]
fn panels_have_unique_ids_and_do_not_overlap() {
    let mut problems = Vec::new();
    for (name, dashboard) in &dashboards() {
        let mut ids = BTreeSet::new();
        for panel in all_panels(dashboard) {
            match panel["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                _ => problems.push(format!("{name} / {}: missing or repeated id", title(panel))),
            }
        }
        // Panels inside a collapsed row are laid out when it opens: compare the top level.
        let mut boxes: Vec<(&str, [u64; 4])> = Vec::new();
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            let title = title(panel);
            let pos = &panel["gridPos"];
            let [Some(h), Some(w), Some(x), Some(y)] =
                ["h", "w", "x", "y"].map(|k| pos[k].as_u64())
            else {
                problems.push(format!("{name} / {title}: no complete gridPos"));
                continue;
            };
            if x + w > 24 || w == 0 || h == 0 {
                problems.push(format!("{name} / {title}: gridPos outside the 24 columns"));
            }
            for (other, [oh, ow, ox, oy]) in &boxes {
                if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                    problems.push(format!("{name}: {title} overlaps {other}"));
                }
            }
            boxes.push((title, [h, w, x, y]));
        }
    }
    assert_none(&problems, "layout");
}

#[test]
fn every_rate_and_increase_uses_rate_interval() {
    let mut problems = Vec::new();
    for (name, dashboard) in &dashboards() {
        for panel in data_panels(dashboard) {
            for target in targets(panel) {
                let expr = target["expr"].as_str().unwrap_or_default();
                let windowed = expr.matches("rate(").count() + expr.matches("increase(").count();
                let ranges = ranges(expr);
                let bad: Vec<&&str> = ranges
                    .iter()
                    .filter(|r| **r != "$__rate_interval")
                    .collect();
                if !bad.is_empty() || ranges.len() < windowed {
                    problems.push(format!(
                        "{name} / {}: {expr} (ranges {ranges:?} for {windowed} rate/increase)",
                        title(panel)
                    ));
                }
            }
        }
    }
    assert_none(&problems, "queries not using [$__rate_interval]");
}

#[test]
fn queries_name_only_exported_metrics_and_every_metric_is_shown() {
    let exported = exported_names();
    let mut shown = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, dashboard) in &dashboards() {
        for panel in data_panels(dashboard) {
            for target in targets(panel) {
                let expr = target["expr"].as_str().unwrap_or_default();
                let names = metric_names(expr);
                if names.is_empty() {
                    problems.push(format!(
                        "{name} / {}: names no hotpool metric: {expr}",
                        title(panel)
                    ));
                }
                for metric in names {
                    if !exported.contains(&metric) {
                        problems.push(format!(
                            "{name} / {}: {metric} is not exported by src/metrics.rs",
                            title(panel)
                        ));
                    }
                    shown.insert(metric);
                }
            }
        }
    }
    for metric in exported.difference(&shown) {
        problems.push(format!("{metric} is exported but on no dashboard"));
    }
    assert_none(&problems, "metric names");
}

#[test]
fn provisioning_points_at_the_dashboards_and_prometheus() {
    let read = |path: &str| {
        std::fs::read_to_string(dashboards_dir().join(path))
            .unwrap_or_else(|e| panic!("dashboards/{path}: {e}"))
    };
    let providers = read("provisioning/dashboards.yaml");
    for needed in [
        "apiVersion: 1",
        "providers:",
        "type: file",
        "path:",
        "dashboards",
    ] {
        assert!(
            providers.contains(needed),
            "provisioning/dashboards.yaml lacks {needed:?}"
        );
    }
    let datasources = read("provisioning/datasources.yaml");
    for needed in [
        "apiVersion: 1",
        "datasources:",
        "type: prometheus",
        "url: http://127.0.0.1:9090",
    ] {
        assert!(
            datasources.contains(needed),
            "provisioning/datasources.yaml lacks {needed:?}"
        );
    }
    let prometheus = read("prometheus.yml");
    for needed in [
        "scrape_configs:",
        "metrics_path: /metrics",
        "127.0.0.1:8080",
        "scrape_interval: 5s",
    ] {
        assert!(
            prometheus.contains(needed),
            "prometheus.yml lacks {needed:?}"
        );
    }
}
