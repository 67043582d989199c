//! Dashboards: named lists of PromQL panels that the web UI charts over its
//! time range, stored under the data directory, or with `--storage
//! clickhouse` in ClickHouse, so that every node sees every dashboard.
//!
//! In the data directory each dashboard is one JSON file,
//! `<data dir>/dashboards/<id>.json`, replaced atomically (temp file, fsync,
//! rename, fsync of the directory), so a crash leaves the old version or
//! the new one, never half of either. In ClickHouse each save is a row (see
//! `store::clickhouse::dashboards`). The
//! stored JSON is also the export format, and a `put` takes it back (import).
//! The `shop` dashboard is compiled into the binary and read-only; the UI
//! saves copies of it.
//!
//! A dashboard is checked completely before anything is written: the id is a
//! slug (so no path can be formed from it), the JSON has the dashboard's shape
//! within its limits, and every panel's query parses as PromQL and can be
//! graphed. This module knows no HTTP: `api::dashboards` gives
//! `DashboardError` its status codes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::backup::BackupDir;
use crate::store::clickhouse::dashboards::ClickHouseDashboards;

use promql_parser::parser::value::ValueType;
use serde::{Deserialize, Serialize};

/// Largest dashboard body accepted; far above any hand-made dashboard, far
/// below what would make listing slow.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Panels per dashboard: more would not be readable on one page, and each
/// panel is one range query per refresh.
const MAX_PANELS: usize = 50;
const MAX_TITLE_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 2_000;
const MAX_UNIT_CHARS: usize = 32;
const MAX_ID_CHARS: usize = 64;
/// Variables per dashboard: each is a picker above the panels.
const MAX_VARIABLES: usize = 20;
/// Panel heights the UI can draw, in pixels of chart.
const PANEL_HEIGHTS: std::ops::RangeInclusive<u32> = 100..=1000;
/// Grafana's automatic windows, which the UI replaces in every query.
const BUILT_IN_VARIABLES: [&str; 3] = ["__interval", "__range", "__rate_interval"];
/// The version of the dashboard JSON this Strand reads and writes.
const VERSION: u32 = 1;
/// The built-in dashboard: its id and its JSON, compiled in.
const BUILT_IN: (&str, &str) = ("shop", include_str!("shop_dashboard.json"));

/// Why a dashboard request failed.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// Not a slug: refused before any path is formed from it.
    #[error(
        "invalid dashboard id {0:?}: use 1 to {MAX_ID_CHARS} characters of a-z, 0-9, '-' and '_'"
    )]
    InvalidId(String),
    /// No stored dashboard has the id.
    #[error("no dashboard {0:?}")]
    NotFound(String),
    /// PUT or DELETE on the compiled-in dashboard.
    #[error("dashboard {0:?} is built in and read-only; save a copy under another id")]
    BuiltIn(String),
    /// Not JSON, or not shaped like a dashboard (serde's message says where).
    #[error("the body is not a dashboard: {0}")]
    Malformed(String),
    /// A field breaks a rule; `field` is its path, such as `panels[2].query`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Refused while reading, before the body is buffered whole.
    #[error("the body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// A stored file no longer reads as a dashboard (edited by hand, or
    /// written by a newer Strand).
    #[error("stored dashboard {id:?} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    /// Reading or writing the dashboards directory failed.
    #[error("dashboard storage: {0}")]
    Io(#[from] io::Error),
    /// ClickHouse, which keeps the dashboards, failed or did not answer.
    #[error("dashboard storage: {0}")]
    Backend(String),
}

impl From<crate::store::StoreError> for DashboardError {
    fn from(error: crate::store::StoreError) -> Self {
        DashboardError::Backend(error.to_string())
    }
}

type Result<T, E = DashboardError> = std::result::Result<T, E>;

/// A dashboard id: a slug, safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardId(String);

impl DashboardId {
    /// Checks an id from a URL; only a slug may become part of a file name.
    pub fn parse(id: &str) -> Result<DashboardId> {
        let slug = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if id.is_empty() || id.len() > MAX_ID_CHARS || !id.chars().all(slug) {
            return Err(DashboardError::InvalidId(id.to_owned()));
        }
        Ok(DashboardId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_built_in(&self) -> bool {
        self.0 == BUILT_IN.0
    }
}

/// A dashboard as stored and exchanged. Unknown fields are refused rather
/// than dropped, so an import never silently loses part of what was meant.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    #[serde(default = "version")]
    version: u32,
    title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    variables: Vec<Variable>,
    panels: Vec<Panel>,
}

/// A picker of label values shown above the panels; `$name` (or `${name}`)
/// in a panel's query stands for the picked value, several as the regex
/// `a|b` for `=~`. Kept in the JSON so that a dashboard can be shared.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Variable {
    name: String,
    /// Where the values come from, as Grafana writes it:
    /// `label_values(selector, label)` or `label_values(label)`.
    query: String,
    /// Several values may be picked (and none means all).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    multi: bool,
}

/// How a panel draws its series.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PanelType {
    /// A line per series (the default).
    Lines,
    /// Areas stacked on each other: the top is the sum.
    Stacked,
    /// Stacked bars, one per step.
    Bars,
    /// The last value of each series as one big number, coloured by the
    /// thresholds.
    Stat,
    /// The last value of each series, in rows.
    Table,
    /// Histogram buckets (series with an `le` label) over time.
    Heatmap,
}

/// How wide a panel is drawn: half of the row (the default) or all of it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Width {
    Half,
    Full,
}

/// One chart: a PromQL expression graphed over the UI's time range.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Panel {
    #[serde(default)]
    title: String,
    query: String,
    /// How the UI formats values: `seconds`, `ratio`, `percent`, `bytes`, or
    /// any short text shown beside them (`req/s`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    unit: String,
    /// Absent: lines.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<PanelType>,
    /// Ascending values from which a stat reads as a warning, then as bad.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    thresholds: Vec<f64>,
    /// Absent: half width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    width: Option<Width>,
    /// The chart's height in pixels; absent: the UI's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
}

fn version() -> u32 {
    VERSION
}

impl Dashboard {
    /// Reads and checks a dashboard body: its shape, its limits and every
    /// panel's query.
    pub fn from_json(bytes: &[u8]) -> Result<Dashboard> {
        if bytes.len() > MAX_BODY_BYTES {
            return Err(DashboardError::TooLarge);
        }
        let dashboard: Dashboard =
            serde_json::from_slice(bytes).map_err(|e| DashboardError::Malformed(e.to_string()))?;
        dashboard.validate()?;
        Ok(dashboard)
    }

    fn validate(&self) -> Result<()> {
        let invalid =
            |field: String, reason: String| Err(DashboardError::Invalid { field, reason });
        if self.version != VERSION {
            return invalid(
                "version".into(),
                format!("this Strand reads version {VERSION}, not {}", self.version),
            );
        }
        if self.title.trim().is_empty() {
            return invalid("title".into(), "must not be empty".into());
        }
        check_length("title", &self.title, MAX_TITLE_CHARS)?;
        check_length("description", &self.description, MAX_DESCRIPTION_CHARS)?;
        if self.panels.len() > MAX_PANELS {
            return invalid(
                "panels".into(),
                format!("{} panels, at most {MAX_PANELS}", self.panels.len()),
            );
        }
        if self.variables.len() > MAX_VARIABLES {
            return invalid(
                "variables".into(),
                format!(
                    "{} variables, at most {MAX_VARIABLES}",
                    self.variables.len()
                ),
            );
        }
        for (i, variable) in self.variables.iter().enumerate() {
            let name = &variable.name;
            if !is_identifier(name) || name.starts_with("__") {
                return invalid(
                    format!("variables[{i}].name"),
                    format!(
                        "{name:?} is not a variable name: use letters, digits and '_', \
                         not starting with a digit or \"__\""
                    ),
                );
            }
            if self.variables[..i].iter().any(|v| &v.name == name) {
                return invalid(
                    format!("variables[{i}].name"),
                    format!("{name:?} is declared twice"),
                );
            }
            if let Err(reason) = check_label_values(&variable.query) {
                return invalid(format!("variables[{i}].query"), reason);
            }
        }
        let names: Vec<&str> = self.variables.iter().map(|v| v.name.as_str()).collect();
        for (i, panel) in self.panels.iter().enumerate() {
            check_length(&format!("panels[{i}].title"), &panel.title, MAX_TITLE_CHARS)?;
            check_length(&format!("panels[{i}].unit"), &panel.unit, MAX_UNIT_CHARS)?;
            if let Some(height) = panel.height.filter(|h| !PANEL_HEIGHTS.contains(h)) {
                return invalid(
                    format!("panels[{i}].height"),
                    format!(
                        "{height} px, from {} to {}",
                        PANEL_HEIGHTS.start(),
                        PANEL_HEIGHTS.end()
                    ),
                );
            }
            let thresholds = &panel.thresholds;
            if thresholds.len() > 2
                || thresholds.iter().any(|t| !t.is_finite())
                || thresholds.windows(2).any(|w| w[0] >= w[1])
            {
                return invalid(
                    format!("panels[{i}].thresholds"),
                    "at most two finite values, ascending: [warning, bad]".into(),
                );
            }
            let field = format!("panels[{i}].query");
            if panel.query.trim().is_empty() {
                return invalid(field, "must not be empty".into());
            }
            let query = match with_sample_values(&panel.query, &names) {
                Ok(query) => query,
                Err(reason) => return invalid(field, reason),
            };
            let expr = match strand_promql::parse(&query) {
                Ok(expr) => expr,
                Err(error) => return invalid(field, error.to_string()),
            };
            // The UI graphs panels with range queries, which take only these.
            let kind = match expr.value_type() {
                ValueType::Vector | ValueType::Scalar => continue,
                ValueType::Matrix => "range vector",
                ValueType::String => "string",
            };
            return invalid(
                field,
                format!(
                    "a panel is graphed, so its query must be an instant vector or a scalar, \
                     not a {kind}"
                ),
            );
        }
        Ok(())
    }
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a variable's `label_values(selector, label)`: the label is a
/// label name and the selector, if any, is PromQL that selects series.
fn check_label_values(query: &str) -> Result<(), String> {
    let usage = || format!("{query:?} is not label_values(selector, label) or label_values(label)");
    let inner = query
        .trim()
        .strip_prefix("label_values")
        .and_then(|rest| rest.trim_start().strip_prefix('('))
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(usage)?;
    let (selector, label) = match inner.rfind(',') {
        Some(comma) => (inner[..comma].trim(), inner[comma + 1..].trim()),
        None => ("", inner.trim()),
    };
    if !is_identifier(label) {
        return Err(usage());
    }
    if selector.is_empty() {
        return Ok(());
    }
    match strand_promql::parse(selector) {
        Ok(expr) if expr.value_type() == ValueType::Vector => Ok(()),
        Ok(_) => Err(format!("{selector:?} does not select series")),
        Err(error) => Err(format!("{selector:?}: {error}")),
    }
}

/// The query with each `$name` or `${name}` replaced by a value of its
/// kind, so that it parses as the UI will send it: a duration for the
/// built-in windows, a word for the dashboard's variables. An unknown name
/// is refused (it would reach the API as a `$`).
fn with_sample_values(query: &str, variables: &[&str]) -> Result<String, String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, used) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if name.is_empty() {
            // A `$` of the query itself, such as a regex anchor.
            out.push('$');
            rest = after;
            continue;
        }
        if BUILT_IN_VARIABLES.contains(&name) {
            out.push_str("1m");
        } else if variables.contains(&name) {
            out.push_str("value");
        } else {
            return Err(format!(
                "unknown variable ${name}: declare it under \"variables\", or use \
                 $__rate_interval, $__interval or $__range"
            ));
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    Ok(out)
}

fn check_length(field: &str, text: &str, max: usize) -> Result<()> {
    let chars = text.chars().count();
    if chars > max {
        return Err(DashboardError::Invalid {
            field: field.into(),
            reason: format!("{chars} characters, at most {max}"),
        });
    }
    Ok(())
}

/// What the list shows of a dashboard.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    id: String,
    title: String,
    panels: usize,
    built_in: bool,
    /// Why a stored file could not be read; it is listed anyway so that it
    /// can be found and deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The stored dashboards, with the built-in one in front.
pub struct DashboardStore {
    shelf: Shelf,
}

/// Where the stored dashboards are.
enum Shelf {
    /// The dashboards directory. Writes are serialised by a lock, so one
    /// temp file name per id suffices and "created" is answered truthfully.
    Directory {
        dir: PathBuf,
        writes: Mutex<()>,
    },
    ClickHouse(ClickHouseDashboards),
}

impl DashboardStore {
    /// Opens (creating) `dir` and removes temp files a crash left behind.
    pub fn open(dir: PathBuf) -> Result<DashboardStore> {
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        Ok(DashboardStore {
            shelf: Shelf::Directory {
                dir,
                writes: Mutex::new(()),
            },
        })
    }

    /// The dashboards kept in ClickHouse.
    pub fn in_clickhouse(dashboards: ClickHouseDashboards) -> DashboardStore {
        DashboardStore {
            shelf: Shelf::ClickHouse(dashboards),
        }
    }

    /// Links every stored dashboard into `relative` under `backup` (each
    /// file is replaced whole by a rename, never written in place).
    pub fn snapshot(&self, backup: &mut BackupDir, relative: &Path) -> io::Result<()> {
        let (dir, writes) = match &self.shelf {
            Shelf::Directory { dir, writes } => (dir, writes),
            Shelf::ClickHouse(_) => {
                return Err(io::Error::other(
                    crate::store::clickhouse::snapshot_refused("dashboards"),
                ));
            }
        };
        let _writes = writes.lock().expect("not poisoned");
        backup.create_dir(relative)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Some(name) = path.file_name()
            {
                backup.link(&path, &relative.join(name))?;
            }
        }
        Ok(())
    }

    /// The built-in dashboard first, then the stored ones by title.
    pub fn list(&self) -> Result<Vec<Summary>> {
        let summary = |id: &str, bytes: &[u8], built_in: bool| match Dashboard::from_json(bytes) {
            Ok(d) => Summary {
                id: id.into(),
                title: d.title,
                panels: d.panels.len(),
                built_in,
                error: None,
            },
            Err(error) => Summary {
                id: id.into(),
                title: id.into(),
                panels: 0,
                built_in,
                error: Some(error.to_string()),
            },
        };
        let mut stored: Vec<Summary> = self
            .stored()?
            .into_iter()
            .map(|(id, bytes)| summary(&id.0, &bytes, false))
            .collect();
        stored.sort_by(|a, b| (&a.title, &a.id).cmp(&(&b.title, &b.id)));
        let mut all = vec![summary(BUILT_IN.0, BUILT_IN.1.as_bytes(), true)];
        all.extend(stored);
        Ok(all)
    }

    /// Every stored dashboard (not the built-in one): id and JSON.
    fn stored(&self) -> Result<Vec<(DashboardId, Vec<u8>)>> {
        let dir = match &self.shelf {
            Shelf::Directory { dir, .. } => dir,
            Shelf::ClickHouse(dashboards) => {
                return Ok(dashboards
                    .all()?
                    .into_iter()
                    .filter_map(|(id, bytes)| {
                        let id = DashboardId::parse(&id).ok()?;
                        (!id.is_built_in()).then_some((id, bytes))
                    })
                    .collect());
            }
        };
        let mut stored = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| DashboardId::parse(s).ok())
                .filter(|id| !id.is_built_in())
            else {
                continue;
            };
            match fs::read(&path) {
                Ok(bytes) => stored.push((id, bytes)),
                // Deleted between listing and reading.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(stored)
    }

    /// The dashboard's JSON exactly as stored.
    pub fn get(&self, id: &DashboardId) -> Result<Vec<u8>> {
        if id.is_built_in() {
            return Ok(BUILT_IN.1.as_bytes().to_vec());
        }
        let found = match &self.shelf {
            Shelf::Directory { dir, .. } => match fs::read(file_of(dir, id)) {
                Ok(bytes) => Some(bytes),
                Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                Err(error) => return Err(error.into()),
            },
            Shelf::ClickHouse(dashboards) => dashboards.one(id.as_str())?,
        };
        let bytes = found.ok_or_else(|| DashboardError::NotFound(id.0.clone()))?;
        // Refuse to hand out what PUT would refuse to take back.
        Dashboard::from_json(&bytes).map_err(|error| DashboardError::Corrupt {
            id: id.0.clone(),
            reason: error.to_string(),
        })?;
        Ok(bytes)
    }

    /// Creates or replaces a dashboard; true if it was created. Returns the
    /// stored JSON too.
    pub fn put(&self, id: &DashboardId, dashboard: &Dashboard) -> Result<(bool, Vec<u8>)> {
        if id.is_built_in() {
            return Err(DashboardError::BuiltIn(id.0.clone()));
        }
        let mut json = serde_json::to_vec_pretty(dashboard).expect("a dashboard serializes");
        json.push(b'\n');
        let (dir, writes) = match &self.shelf {
            Shelf::Directory { dir, writes } => (dir, writes),
            Shelf::ClickHouse(dashboards) => {
                let created = dashboards.put(id.as_str(), &json)?;
                return Ok((created, json));
            }
        };
        let _writing = writes.lock().expect("not poisoned");
        let path = file_of(dir, id);
        let created = !path.exists();
        let temp = dir.join(format!("{}.json.tmp", id.0));
        let mut file = File::create(&temp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        sync_dir(dir)?;
        Ok((created, json))
    }

    /// Removes a stored dashboard; the built-in one cannot be.
    pub fn delete(&self, id: &DashboardId) -> Result<()> {
        if id.is_built_in() {
            return Err(DashboardError::BuiltIn(id.0.clone()));
        }
        let (dir, writes) = match &self.shelf {
            Shelf::Directory { dir, writes } => (dir, writes),
            Shelf::ClickHouse(dashboards) => {
                return match dashboards.delete(id.as_str())? {
                    true => Ok(()),
                    false => Err(DashboardError::NotFound(id.0.clone())),
                };
            }
        };
        let _writing = writes.lock().expect("not poisoned");
        fs::remove_file(file_of(dir, id)).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => DashboardError::NotFound(id.0.clone()),
            _ => error.into(),
        })?;
        sync_dir(dir)?;
        Ok(())
    }
}

/// The file of dashboard `id` in `dir`.
fn file_of(dir: &Path, id: &DashboardId) -> PathBuf {
    dir.join(format!("{}.json", id.0))
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_field(body: &str) -> String {
        match Dashboard::from_json(body.as_bytes()) {
            Err(DashboardError::Invalid { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn the_built_in_dashboard_is_valid() {
        let dashboard = Dashboard::from_json(BUILT_IN.1.as_bytes()).unwrap();
        assert_eq!(dashboard.panels.len(), 5);
    }

    #[test]
    fn ids_are_slugs() {
        for ok in ["shop", "a", "my-board_2", &"x".repeat(64)] {
            assert!(DashboardId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../etc", "a/b", "A", "a.json", "é", &"x".repeat(65)] {
            assert!(DashboardId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let panel = |query: &str| {
            format!(r#"{{"title": "t", "panels": [{{"title": "p", "query": {query:?}}}]}}"#)
        };
        assert!(Dashboard::from_json(panel("sum(rate(x[1m]))").as_bytes()).is_ok());
        assert_eq!(invalid_field(&panel("sum(")), "panels[0].query");
        assert_eq!(invalid_field(&panel("x[5m]")), "panels[0].query");
        assert_eq!(invalid_field(&panel(" ")), "panels[0].query");
        assert_eq!(invalid_field(r#"{"title": " ", "panels": []}"#), "title");
        assert_eq!(
            invalid_field(r#"{"version": 2, "title": "t", "panels": []}"#),
            "version"
        );
        let many = format!(
            r#"{{"title": "t", "panels": [{}]}}"#,
            vec![r#"{"query": "up"}"#; MAX_PANELS + 1].join(",")
        );
        assert_eq!(invalid_field(&many), "panels");
        assert!(matches!(
            Dashboard::from_json(br#"{"title": "t", "panels": [], "extra": 1}"#),
            Err(DashboardError::Malformed(m)) if m.contains("extra")
        ));
    }

    #[test]
    fn variables_are_declared_and_checked() {
        let board = |variables: &str, query: &str| {
            format!(
                r#"{{"title": "t", "variables": [{variables}], "panels": [{{"query": {query:?}}}]}}"#
            )
        };
        let service = r#"{"name": "service", "query": "label_values(up{job=\"a\"}, service)", "multi": true}"#;
        let uses = r#"sum(rate(up{service=~"$service"}[$__rate_interval])) / ${service}_total"#;
        assert!(Dashboard::from_json(board(service, uses).as_bytes()).is_ok());
        assert!(
            Dashboard::from_json(board("", r#"up{a=~"b$"}[$__range:$__interval]"#).as_bytes())
                .is_err()
        );
        assert!(
            Dashboard::from_json(board("", r#"max_over_time(up{a=~"^b$"}[$__range])"#).as_bytes())
                .is_ok()
        );
        assert_eq!(
            invalid_field(&board("", r#"up{a="$nope"}"#)),
            "panels[0].query"
        );
        for bad in [
            r#"{"name": "1x", "query": "label_values(a)"}"#,
            r#"{"name": "__x", "query": "label_values(a)"}"#,
        ] {
            assert_eq!(invalid_field(&board(bad, "up")), "variables[0].name");
        }
        for bad in [
            "values(a)",
            "label_values(up{, a)",
            "label_values(up, a-b)",
            "label_values(up[5m], a)",
        ] {
            let variable = format!(r#"{{"name": "v", "query": {bad:?}}}"#);
            assert_eq!(
                invalid_field(&board(&variable, "up")),
                "variables[0].query",
                "{bad}"
            );
        }
        let twice = format!("{service}, {service}");
        assert_eq!(invalid_field(&board(&twice, "up")), "variables[1].name");
        assert_eq!(
            invalid_field(r#"{"title": "t", "panels": [{"query": "up", "height": 5}]}"#),
            "panels[0].height"
        );
        assert_eq!(
            invalid_field(r#"{"title": "t", "panels": [{"query": "up", "thresholds": [2, 1]}]}"#),
            "panels[0].thresholds"
        );
        let kinds =
            r#"{"title": "t", "panels": [{"query": "up", "type": "stat", "thresholds": [1, 2]}]}"#;
        assert!(Dashboard::from_json(kinds.as_bytes()).is_ok());
        assert!(Dashboard::from_json(kinds.replace("stat", "pie").as_bytes()).is_err());
    }

    #[test]
    fn store_round_trip_and_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.json.tmp"), "half").unwrap();
        let store = DashboardStore::open(dir.path().to_path_buf()).unwrap();
        assert!(!dir.path().join("a.json.tmp").exists());
        let id = DashboardId::parse("a").unwrap();
        let dashboard = Dashboard::from_json(br#"{"title": "A", "panels": []}"#).unwrap();
        assert!(store.put(&id, &dashboard).unwrap().0);
        assert!(!store.put(&id, &dashboard).unwrap().0);
        let stored = Dashboard::from_json(&store.get(&id).unwrap()).unwrap();
        assert_eq!(stored.title, "A");
        let ids: Vec<_> = store.list().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["shop", "a"]);
        store.delete(&id).unwrap();
        assert!(matches!(store.get(&id), Err(DashboardError::NotFound(_))));
        let shop = DashboardId::parse("shop").unwrap();
        assert!(matches!(
            store.delete(&shop),
            Err(DashboardError::BuiltIn(_))
        ));
    }
}
