//! Prometheus's rule-file format: groups of recording and alerting rules in
//! YAML, read and checked as strictly as Prometheus reads them (unknown
//! keys, bad expressions, bad templates and duplicate group names are
//! refused), so a file Strand accepts is one Prometheus accepts, and the
//! other way round.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::template;

/// Why a rule file was refused: where and what, in words an operator can
/// act on.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct RuleFileError {
    pub file: String,
    /// The 1-based line of the offending rule or key, when known.
    pub line: Option<usize>,
    pub message: String,
}

/// One group: rules evaluated one after the other at the same timestamp,
/// every `interval`.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    /// The file the group came from, as given (Prometheus's `file` field,
    /// and part of the group's evaluation offset).
    pub file: String,
    /// `None`: the global evaluation interval.
    pub interval: Option<Duration>,
    /// Most alerts an alerting rule, or series a recording rule, may
    /// produce (0: no limit); beyond, the evaluation fails.
    pub limit: usize,
    pub rules: Vec<RuleSpec>,
}

/// A recording or an alerting rule.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleSpec {
    Recording {
        record: String,
        expr: String,
        labels: BTreeMap<String, String>,
    },
    Alerting {
        alert: String,
        expr: String,
        /// How long a condition must hold before the alert fires.
        hold: Duration,
        /// How long an alert keeps firing after its condition stopped.
        keep_firing_for: Duration,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    },
}

impl RuleSpec {
    /// The recorded series' or the alert's name.
    pub fn name(&self) -> &str {
        match self {
            RuleSpec::Recording { record, .. } => record,
            RuleSpec::Alerting { alert, .. } => alert,
        }
    }

    pub fn expr(&self) -> &str {
        match self {
            RuleSpec::Recording { expr, .. } | RuleSpec::Alerting { expr, .. } => expr,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        match self {
            RuleSpec::Recording { labels, .. } | RuleSpec::Alerting { labels, .. } => labels,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    groups: Vec<GroupDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDoc {
    name: String,
    interval: Option<String>,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    record: Option<String>,
    alert: Option<String>,
    expr: Option<ExprDoc>,
    #[serde(rename = "for")]
    hold: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// An expression as YAML gives it: usually a string, but `expr: 1` is a
/// number, which Prometheus reads as its text.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExprDoc {
    Text(String),
    Integer(i64),
    Float(f64),
}

impl ExprDoc {
    fn into_text(self) -> String {
        match self {
            ExprDoc::Text(text) => text,
            ExprDoc::Integer(n) => n.to_string(),
            ExprDoc::Float(x) => x.to_string(),
        }
    }
}

/// Reads every file matched by `patterns` (paths or globs with `*`, `?` and
/// `[...]` in the file name), in order, each file once.
pub fn load_rule_files(patterns: &[String]) -> Result<Vec<GroupSpec>, RuleFileError> {
    let mut groups = Vec::new();
    let mut seen = HashSet::new();
    for pattern in patterns {
        for path in expand(pattern)? {
            if seen.insert(path.clone()) {
                let text = std::fs::read_to_string(&path).map_err(|error| RuleFileError {
                    file: path.display().to_string(),
                    line: None,
                    message: format!("cannot read the file: {error}"),
                })?;
                groups.extend(parse_rule_file(&text, &path.display().to_string())?);
            }
        }
    }
    Ok(groups)
}

/// The files a pattern names: itself when it has no wildcard (it must
/// exist), else the matching files of its directory, sorted.
fn expand(pattern: &str) -> Result<Vec<PathBuf>, RuleFileError> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?', '[']) {
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let refused = |message: String| RuleFileError {
        file: pattern.to_owned(),
        line: None,
        message,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|error| refused(format!("cannot list {}: {error}", dir.display())))?;
    let mut matched: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter(|entry| wildcard_match(&name, &entry.file_name().to_string_lossy()))
        .map(|entry| dir.join(entry.file_name()))
        .collect();
    matched.sort();
    Ok(matched)
}

/// Shell-style matching of a file name: `*`, `?` and `[abc]`/`[a-z]`.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn class(set: &[char], c: char) -> bool {
        let mut i = 0;
        while i < set.len() {
            if i + 2 < set.len() && set[i + 1] == '-' {
                if (set[i]..=set[i + 2]).contains(&c) {
                    return true;
                }
                i += 3;
            } else {
                if set[i] == c {
                    return true;
                }
                i += 1;
            }
        }
        false
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|skip| go(&p[1..], &n[skip..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => match p.iter().position(|&c| c == ']') {
                Some(end) if end > 1 => {
                    !n.is_empty() && class(&p[1..end], n[0]) && go(&p[end + 1..], &n[1..])
                }
                _ => !n.is_empty() && n[0] == '[' && go(&p[1..], &n[1..]),
            },
            Some(&c) => !n.is_empty() && n[0] == c && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Parses and checks one rule file's text; `file` names it in errors and in
/// the groups.
pub fn parse_rule_file(text: &str, file: &str) -> Result<Vec<GroupSpec>, RuleFileError> {
    let doc: FileDoc = if text.trim().is_empty() {
        FileDoc { groups: Vec::new() }
    } else {
        serde_norway::from_str(text).map_err(|error| RuleFileError {
            file: file.to_owned(),
            line: error.location().map(|l| l.line()),
            message: error.to_string(),
        })?
    };
    let rule_lines = rule_lines(text);
    let mut rule_index = 0usize;
    let mut names = HashSet::new();
    let mut groups = Vec::with_capacity(doc.groups.len());
    for group in doc.groups {
        let refuse = |line: Option<usize>, message: String| RuleFileError {
            file: file.to_owned(),
            line,
            message: format!("group {:?}: {message}", group.name),
        };
        if group.name.is_empty() {
            return Err(refuse(None, "a group needs a name".into()));
        }
        if !names.insert(group.name.clone()) {
            return Err(refuse(
                None,
                "the group name is used twice in this file".into(),
            ));
        }
        // `interval: 0s` is the global interval, as in Prometheus.
        let interval = match group.interval.as_deref().map(parse_duration) {
            None => None,
            Some(Ok(interval)) => Some(interval).filter(|i| !i.is_zero()),
            Some(Err(message)) => return Err(refuse(None, format!("interval: {message}"))),
        };
        let mut rules = Vec::with_capacity(group.rules.len());
        for (n, rule) in group.rules.into_iter().enumerate() {
            let line = rule_lines.get(rule_index).copied();
            rule_index += 1;
            let rule = check_rule(rule)
                .map_err(|message| refuse(line, format!("rule {}: {message}", n + 1)))?;
            rules.push(rule);
        }
        groups.push(GroupSpec {
            name: group.name,
            file: file.to_owned(),
            interval,
            limit: group.limit,
            rules,
        });
    }
    Ok(groups)
}

/// The line of each rule, in document order: the lines whose first key is
/// `record:`, `alert:` or `expr:` after a list dash. Rules are written one
/// list item each, so the n-th such line starts the n-th rule.
fn rule_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let trimmed = line.trim_start();
            trimmed.strip_prefix('-').is_some_and(|item| {
                let item = item.trim_start();
                [
                    "record:",
                    "alert:",
                    "expr:",
                    "for:",
                    "labels:",
                    "annotations:",
                    "keep_firing_for:",
                ]
                .iter()
                .any(|key| item.starts_with(key))
            })
        })
        .map(|(n, _)| n + 1)
        .collect()
}

/// A Prometheus duration (`30s`, `5m`, `1h30m`, `1d`, and zero: `0`,
/// `0s`, as `for: 0s` says "fire at once").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    // promql_parser reads a bare number as seconds (Prometheus wants a
    // unit) and panics on a negative one.
    if text.parse::<f64>().is_ok() {
        return Err(format!("{text:?} is not a duration: a unit is required"));
    }
    let parse = |text: &str| {
        promql_parser::util::duration::parse_duration(text)
            .map_err(|error| format!("{text:?} is not a duration ({error})"))
    };
    // promql_parser refuses zero: a text whose numbers are all 0 and that
    // parses with them set to 1 is zero.
    if !text.chars().any(|c| c.is_ascii_digit() && c != '0')
        && parse(&text.replace('0', "1")).is_ok()
    {
        return Ok(Duration::ZERO);
    }
    parse(text)
}

fn check_rule(rule: RuleDoc) -> Result<RuleSpec, String> {
    let expr = rule
        .expr
        .map(ExprDoc::into_text)
        .filter(|e| !e.trim().is_empty())
        .ok_or("field 'expr' must be set in rule")?;
    strand_promql::parse(&expr).map_err(|error| format!("could not parse expression: {error}"))?;
    for name in rule.labels.keys().chain(rule.annotations.keys()) {
        if !is_label_name(name) {
            return Err(format!("invalid label name: {name:?}"));
        }
    }
    let duration = |field: &str, text: Option<String>| -> Result<Duration, String> {
        text.map_or(Ok(Duration::ZERO), |text| {
            parse_duration(&text).map_err(|message| format!("{field}: {message}"))
        })
    };
    match (rule.record, rule.alert) {
        (Some(_), Some(_)) => Err("only one of 'record' and 'alert' must be set".into()),
        (None, None) => Err("one of 'record' or 'alert' must be set".into()),
        (Some(record), None) => {
            if rule.hold.is_some() || rule.keep_firing_for.is_some() {
                return Err("invalid field 'for' or 'keep_firing_for' in recording rule".into());
            }
            if !rule.annotations.is_empty() {
                return Err("invalid field 'annotations' in recording rule".into());
            }
            if !is_metric_name(&record) {
                return Err(format!("invalid recording rule name: {record}"));
            }
            Ok(RuleSpec::Recording {
                record,
                expr,
                labels: rule.labels,
            })
        }
        (None, Some(alert)) => {
            if alert.is_empty() {
                return Err("field 'alert' must not be empty".into());
            }
            for (name, text) in rule.labels.iter().chain(&rule.annotations) {
                template::check(text).map_err(|error| format!("{name}: {error}"))?;
            }
            Ok(RuleSpec::Alerting {
                alert,
                expr,
                hold: duration("for", rule.hold)?,
                keep_firing_for: duration("keep_firing_for", rule.keep_firing_for)?,
                labels: rule.labels,
                annotations: rule.annotations,
            })
        }
    }
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
groups:
  - name: shop
    interval: 30s
    rules:
      - record: job:errors:rate5m
        expr: sum by (job) (rate(errors_total[5m]))
      - alert: HighErrors
        expr: job:errors:rate5m > 1
        for: 2m
        keep_firing_for: 1m
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.job }} errs at {{ $value }}"
  - name: other
    rules:
      - record: up:sum
        expr: 1
"#;

    #[test]
    fn reads_groups_rules_and_their_settings() {
        let groups = parse_rule_file(GOOD, "rules.yml").unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].interval, Some(Duration::from_secs(30)));
        assert_eq!(groups[1].interval, None);
        assert_eq!(groups[1].rules[0].expr(), "1");
        match &groups[0].rules[1] {
            RuleSpec::Alerting {
                hold,
                keep_firing_for,
                labels,
                ..
            } => {
                assert_eq!(*hold, Duration::from_secs(120));
                assert_eq!(*keep_firing_for, Duration::from_secs(60));
                assert_eq!(labels["severity"], "page");
            }
            other => panic!("not an alert: {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_line_and_the_reason() {
        let bad_expr = GOOD.replace("job:errors:rate5m > 1", "job:errors:rate5m >");
        let error = parse_rule_file(&bad_expr, "rules.yml").unwrap_err();
        assert_eq!(error.line, Some(8), "{error}");
        assert!(
            error.to_string().contains("could not parse expression"),
            "{error}"
        );

        let unknown = GOOD.replace("for: 2m", "fro: 2m");
        let error = parse_rule_file(&unknown, "rules.yml").unwrap_err();
        assert!(error.line.is_some(), "{error}");
        assert!(error.message.contains("fro"), "{error}");

        let template = GOOD.replace("{{ $labels.job }}", "{{ $labels.job ");
        let error = parse_rule_file(&template, "rules.yml").unwrap_err();
        assert!(error.message.contains("summary"), "{error}");

        let twice = GOOD.replace("name: other", "name: shop");
        assert!(
            parse_rule_file(&twice, "r")
                .unwrap_err()
                .message
                .contains("twice")
        );
        let both = GOOD.replace("- record: up:sum", "- record: up:sum\n        alert: X");
        assert!(parse_rule_file(&both, "r").is_err());
        let name = GOOD.replace("record: up:sum", "record: 'up sum'");
        assert!(
            parse_rule_file(&name, "r")
                .unwrap_err()
                .message
                .contains("name")
        );
    }

    #[test]
    fn the_shops_rule_file_is_valid() {
        let text = include_str!("../../../examples/shop/rules.yml");
        let groups = parse_rule_file(text, "shop-rules.yml").unwrap();
        assert!(groups.iter().map(|g| g.rules.len()).sum::<usize>() >= 5);
    }

    #[test]
    fn durations_read_as_prometheus_reads_them() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0h0m"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "-1", "1.5", "5", "-5m", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let zero = GOOD.replace("for: 2m", "for: 0s");
        assert!(parse_rule_file(&zero, "r").is_ok());
        let zero = GOOD.replace("interval: 30s", "interval: 0s");
        assert_eq!(parse_rule_file(&zero, "r").unwrap()[0].interval, None);
        let negative = GOOD.replace("for: 2m", "for: -1");
        assert!(parse_rule_file(&negative, "r").is_err());
    }

    #[test]
    fn globs_match_file_names() {
        assert!(wildcard_match("*.yml", "a.yml"));
        assert!(!wildcard_match("*.yml", "a.yaml"));
        assert!(wildcard_match("rules-[0-9]?.y*ml", "rules-1a.yaml"));
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.yml", "a.yml", "c.txt"] {
            std::fs::write(dir.path().join(name), "groups: []\n").unwrap();
        }
        let pattern = dir.path().join("*.yml").display().to_string();
        let files = expand(&pattern).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.yml", "b.yml"]);
        assert!(load_rule_files(&[pattern]).unwrap().is_empty());
    }
}
