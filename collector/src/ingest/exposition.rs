//! The two text formats a scrape may answer in: Prometheus' text format 0.0.4
//! and OpenMetrics 1.0, parsed with Prometheus 2.42's rules
//! (`model/textparse`'s `promlex.l` and `openmetricslex.l`). The crates on
//! crates.io either split label values on commas (`prometheus-parse`), are
//! LGPL (`openmetrics-parser`) or do not validate (`nom-openmetrics`), so this
//! is a small lexer over the bytes:
//!
//! - label values are quoted strings in which `\"`, `\\` and `\n` are
//!   escapes (any other escape is kept as written, as Prometheus keeps it),
//!   so a value may hold `,`, `}`, `=`, `#` and, escaped, quotes and newlines;
//! - the text format's `# HELP` and `# TYPE` lines and OpenMetrics' `# HELP`,
//!   `# TYPE` and `# UNIT` lines become [`Family`] metadata; other comments
//!   are ignored in the text format and an error in OpenMetrics;
//! - sample timestamps are milliseconds in the text format and seconds (with
//!   fractions) in OpenMetrics;
//! - OpenMetrics must end with `# EOF`; exemplars (`# {labels} value
//!   [timestamp]` after a sample) are checked and dropped, as Prometheus
//!   drops them without its exemplar storage; `_created` series are samples
//!   like any other, as Prometheus 2.42 ingests them.
//!
//! Samples are returned as written: histogram and summary families are
//! their `_bucket`/`_sum`/`_count` (OpenMetrics also `_created`, `_gcount`,
//! `_gsum`) series, with `le` and `quantile` values untouched.

use crate::model::MetricKind;

/// The `Accept` header Prometheus 2.42 scrapes with: OpenMetrics first,
/// then the text format, then anything.
pub const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
application/openmetrics-text;version=0.0.1;q=0.75,\
text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Which of the two formats a body is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus' text format 0.0.4 (and anything not declared OpenMetrics).
    Text,
    /// OpenMetrics 1.0 (`application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The format a response's `Content-Type` declares. As in Prometheus,
    /// anything but `application/openmetrics-text` (a missing header too)
    /// is read as the text format.
    pub fn of_content_type(content_type: Option<&str>) -> Format {
        let media_type = content_type
            .and_then(|value| value.split(';').next())
            .map(|value| value.trim().to_ascii_lowercase());
        match media_type.as_deref() {
            Some("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' name, as written (with `_total`, `_bucket`, ...).
    pub name: String,
    /// The labels in written order, values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line gives a timestamp.
    pub timestamp_ms: Option<i64>,
}

/// What the `# TYPE`, `# HELP` and `# UNIT` lines say about one metric
/// family (named as those lines name it: an OpenMetrics counter `x` has the
/// series `x_total`).
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: MetricKind,
    pub help: String,
    pub unit: String,
}

/// A parsed body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// In order of first mention.
    pub families: Vec<Family>,
}

/// Why a body is not a valid exposition; the whole scrape fails with it,
/// as in Prometheus.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses `text` as `format`.
pub fn parse(text: &str, format: Format) -> Result<Exposition, ParseError> {
    let mut lexer = Lexer {
        text,
        pos: 0,
        line: 1,
        om: format == Format::OpenMetrics,
    };
    let mut exposition = Exposition::default();
    let mut seen_eof = false;
    while let Some(byte) = lexer.peek() {
        if seen_eof {
            return Err(lexer.error("unexpected data after # EOF"));
        }
        match byte {
            b'\n' if lexer.om => return Err(lexer.error("empty line")),
            b'\n' => lexer.newline(),
            b' ' | b'\t' if !lexer.om => lexer.skip_blanks(),
            b'#' => seen_eof = lexer.comment(&mut exposition)?,
            _ => {
                let sample = lexer.sample()?;
                exposition.samples.push(sample);
            }
        }
    }
    if lexer.om && !seen_eof {
        return Err(lexer.error("data does not end with # EOF"));
    }
    Ok(exposition)
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
    om: bool,
}

impl<'a> Lexer<'a> {
    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn newline(&mut self) {
        self.pos += 1;
        self.line += 1;
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// The separator between tokens: one space in OpenMetrics, spaces and
    /// tabs in the text format.
    fn separator(&mut self, before: &str) -> Result<(), ParseError> {
        match self.peek() {
            Some(b' ') if self.om => {
                self.pos += 1;
                Ok(())
            }
            Some(b' ' | b'\t') if !self.om => {
                self.skip_blanks();
                Ok(())
            }
            _ => Err(self.error(format!("expected a space before {before}"))),
        }
    }

    /// The end of a line (or of the input).
    fn end_of_line(&mut self) -> Result<(), ParseError> {
        if !self.om {
            self.skip_blanks();
        }
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.newline();
                Ok(())
            }
            Some(_) => Err(self.error(format!(
                "unexpected {:?} at the end of the line",
                self.token_preview()
            ))),
        }
    }

    /// The bytes up to the next space, tab or newline.
    fn token(&mut self) -> &'a str {
        let rest = self.rest();
        let end = rest.find([' ', '\t', '\n']).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    /// The start of what follows, for error messages.
    fn token_preview(&self) -> String {
        self.rest()
            .chars()
            .take_while(|&c| c != '\n')
            .take(32)
            .collect()
    }

    /// The text up to the end of the line, newline consumed.
    fn rest_of_line(&mut self) -> &'a str {
        let rest = self.rest();
        let end = rest.find('\n').unwrap_or(rest.len());
        self.pos += end;
        if self.peek() == Some(b'\n') {
            self.newline();
        }
        &rest[..end]
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` (metric) or `[a-zA-Z_][a-zA-Z0-9_]*` (label).
    fn name(&mut self, metric: bool, what: &str) -> Result<&'a str, ParseError> {
        let rest = self.rest();
        let allowed = |byte: u8, first: bool| {
            byte.is_ascii_alphabetic()
                || byte == b'_'
                || (metric && byte == b':')
                || (!first && byte.is_ascii_digit())
        };
        let length = rest
            .bytes()
            .enumerate()
            .take_while(|&(i, byte)| allowed(byte, i == 0))
            .count();
        if length == 0 {
            return Err(self.error(format!("expected {what}, found {:?}", self.token_preview())));
        }
        self.pos += length;
        Ok(&rest[..length])
    }

    /// A `#` line. Returns whether it was OpenMetrics' `# EOF`.
    fn comment(&mut self, exposition: &mut Exposition) -> Result<bool, ParseError> {
        self.pos += 1;
        let rest = self.rest();
        let keyword = if self.om {
            match rest.strip_prefix(' ') {
                Some(after) => {
                    self.pos += 1;
                    after
                }
                None => return Err(self.error("expected a space after #")),
            }
        } else {
            let after = rest.trim_start_matches([' ', '\t']);
            if after.len() == rest.len() {
                // `#HELP` and the like are plain comments.
                self.rest_of_line();
                return Ok(false);
            }
            self.pos += rest.len() - after.len();
            after
        };
        if self.om && (keyword == "EOF" || keyword.starts_with("EOF\n")) {
            self.pos += 3;
            if self.peek() == Some(b'\n') {
                self.newline();
            }
            return Ok(true);
        }
        let word = keyword.split([' ', '\t', '\n']).next().unwrap_or_default();
        let is_meta = match word {
            "HELP" | "TYPE" => true,
            "UNIT" => self.om,
            _ => false,
        };
        if !is_meta {
            if self.om {
                return Err(self.error(format!(
                    "invalid comment {:?}: OpenMetrics allows only # HELP, # TYPE, # UNIT and # EOF",
                    self.token_preview()
                )));
            }
            self.rest_of_line();
            return Ok(false);
        }
        self.pos += word.len();
        self.separator("the metric name")?;
        let name = self.name(true, "a metric name")?;
        let family = family(exposition, name);
        match word {
            "HELP" => {
                // One separator, then the text as it is (maybe empty).
                let text = match self.peek() {
                    Some(b' ') => {
                        self.pos += 1;
                        self.rest_of_line()
                    }
                    Some(b'\t') if !self.om => {
                        self.pos += 1;
                        self.rest_of_line()
                    }
                    _ => {
                        self.end_of_line()?;
                        ""
                    }
                };
                family.help = unescape(text, self.om);
            }
            "TYPE" => {
                self.separator("the metric type")?;
                let kind = self.token();
                family.kind = if self.om {
                    MetricKind::from_name(kind)
                } else {
                    text_kind(&kind.to_ascii_lowercase())
                }
                .ok_or_else(|| ParseError {
                    line: self.line,
                    message: format!("invalid metric type {kind:?}"),
                })?;
                self.end_of_line()?;
            }
            _ => {
                let unit = match self.peek() {
                    Some(b' ') => {
                        self.pos += 1;
                        self.token()
                    }
                    _ => "",
                };
                let metric = family.name.clone();
                if !unit.is_empty()
                    && !metric
                        .strip_suffix(unit)
                        .is_some_and(|prefix| prefix.ends_with('_'))
                {
                    return Err(
                        self.error(format!("unit {unit:?} not a suffix of metric {metric:?}"))
                    );
                }
                family.unit = unit.to_owned();
                self.end_of_line()?;
            }
        }
        Ok(false)
    }

    /// `name{labels} value [timestamp]`, and in OpenMetrics an optional
    /// exemplar.
    fn sample(&mut self) -> Result<Sample, ParseError> {
        let name = self.name(true, "a metric name")?.to_owned();
        if !self.om {
            let rest = self.rest();
            let after = rest.trim_start_matches([' ', '\t']);
            if after.starts_with('{') {
                self.pos += rest.len() - after.len();
            }
        }
        let mut labels = Vec::new();
        if self.peek() == Some(b'{') {
            labels = self.labels()?;
        }
        if labels.iter().any(|(label, _)| label == "__name__") {
            return Err(self.error(format!("label name \"__name__\" is not unique in {name}")));
        }
        self.separator("the value")?;
        let value = parse_float(self.token()).map_err(|message| self.error(message))?;
        let mut timestamp_ms = None;
        if self.at_separator() && !self.at_exemplar() {
            self.separator("the timestamp")?;
            let token = self.token();
            if !token.is_empty() {
                timestamp_ms = Some(self.timestamp(token)?);
            }
        }
        if self.om && self.at_exemplar() {
            self.exemplar()?;
        }
        self.end_of_line()?;
        Ok(Sample {
            name,
            labels,
            value,
            timestamp_ms,
        })
    }

    fn at_separator(&self) -> bool {
        match self.peek() {
            Some(b' ') => true,
            Some(b'\t') => !self.om,
            _ => false,
        }
    }

    fn at_exemplar(&self) -> bool {
        self.om && self.rest().starts_with(" # ")
    }

    fn timestamp(&self, token: &str) -> Result<i64, ParseError> {
        if self.om {
            let seconds = parse_float(token).map_err(|message| self.error(message))?;
            if !seconds.is_finite() {
                return Err(self.error(format!("invalid timestamp {token:?}")));
            }
            Ok((seconds * 1000.0) as i64)
        } else if token.bytes().all(|byte| byte.is_ascii_digit()) {
            token
                .parse()
                .map_err(|_| self.error(format!("invalid timestamp {token:?}")))
        } else {
            Err(self.error(format!("invalid timestamp {token:?}")))
        }
    }

    /// ` # {labels} value [timestamp]`, checked and dropped.
    fn exemplar(&mut self) -> Result<(), ParseError> {
        self.pos += " # ".len();
        if self.peek() != Some(b'{') {
            return Err(self.error("expected { after the exemplar's #"));
        }
        self.labels()?;
        self.separator("the exemplar's value")?;
        parse_float(self.token()).map_err(|message| self.error(message))?;
        if self.at_separator() {
            self.separator("the exemplar's timestamp")?;
            let token = self.token();
            self.timestamp(token)?;
        }
        Ok(())
    }

    /// `{name="value",...}`, the brace first.
    fn labels(&mut self) -> Result<Vec<(String, String)>, ParseError> {
        self.pos += 1;
        let mut labels: Vec<(String, String)> = Vec::new();
        loop {
            if !self.om {
                self.skip_blanks();
            }
            if self.peek() == Some(b'}') {
                if self.om && !labels.is_empty() && self.text.as_bytes()[self.pos - 1] == b',' {
                    return Err(self.error("expected a label name after ,"));
                }
                self.pos += 1;
                return Ok(labels);
            }
            let name = self.name(false, "a label name")?.to_owned();
            if !self.om {
                self.skip_blanks();
            }
            if self.peek() != Some(b'=') {
                return Err(self.error(format!("expected = after label {name:?}")));
            }
            self.pos += 1;
            if !self.om {
                self.skip_blanks();
            }
            let value = self.label_value()?;
            if labels.iter().any(|(other, _)| *other == name) {
                return Err(self.error(format!("label name {name:?} is not unique")));
            }
            labels.push((name, value));
            if !self.om {
                self.skip_blanks();
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => {
                    return Err(self.error(format!(
                        "expected , or }} after a label value, found {:?}",
                        self.token_preview()
                    )));
                }
            }
        }
    }

    /// A quoted label value, unescaped.
    fn label_value(&mut self) -> Result<String, ParseError> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a quoted label value"));
        }
        let bytes = self.text.as_bytes();
        let start = self.pos + 1;
        let mut end = start;
        let first_line = self.line;
        loop {
            match bytes.get(end) {
                None => {
                    return Err(ParseError {
                        line: first_line,
                        message: "unterminated label value".to_owned(),
                    });
                }
                Some(b'"') => break,
                Some(b'\\') if end + 1 < bytes.len() => end += 2,
                Some(b'\n') if self.om => {
                    return Err(self.error("a label value must not hold a raw newline"));
                }
                Some(b'\n') => {
                    self.line += 1;
                    end += 1;
                }
                Some(_) => end += 1,
            }
        }
        self.pos = end + 1;
        Ok(unescape(&self.text[start..end], true))
    }
}

/// The family called `name`, added if new.
fn family<'e>(exposition: &'e mut Exposition, name: &str) -> &'e mut Family {
    let index = match exposition.families.iter().position(|f| f.name == name) {
        Some(index) => index,
        None => {
            exposition.families.push(Family {
                name: name.to_owned(),
                kind: MetricKind::Unknown,
                help: String::new(),
                unit: String::new(),
            });
            exposition.families.len() - 1
        }
    };
    &mut exposition.families[index]
}

fn text_kind(word: &str) -> Option<MetricKind> {
    Some(match word {
        "counter" => MetricKind::Counter,
        "gauge" => MetricKind::Gauge,
        "histogram" => MetricKind::Histogram,
        "summary" => MetricKind::Summary,
        "untyped" => MetricKind::Unknown,
        _ => return None,
    })
}

/// Undoes the escapes: `\\` and `\n` always, `\"` where `quotes` (label
/// values, and OpenMetrics' help text). Other escapes stay as written.
fn unescape(text: &str, quotes: bool) -> String {
    if !text.contains('\\') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A sample value as Prometheus reads one: Go's `ParseFloat` (`NaN`,
/// `+Inf`, exponents) without its underscores and hexadecimal floats.
fn parse_float(token: &str) -> Result<f64, String> {
    if token.is_empty() {
        return Err("expected a value".to_owned());
    }
    if token.contains(['p', 'P', '_']) {
        return Err(format!("unsupported character in float {token:?}"));
    }
    token
        .parse()
        .map_err(|_| format!("invalid value {token:?}"))
}

/// Writes samples back in either format, for the round-trip tests.
#[cfg(test)]
pub(crate) fn render(samples: &[Sample], format: Format) -> String {
    let escape = |value: &str| {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    for sample in samples {
        out.push_str(&sample.name);
        if !sample.labels.is_empty() {
            let labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
                .collect();
            out.push_str(&format!("{{{}}}", labels.join(",")));
        }
        out.push_str(&format!(" {:?}", sample.value));
        if let Some(ms) = sample.timestamp_ms {
            match format {
                Format::Text => out.push_str(&format!(" {ms}")),
                Format::OpenMetrics => out.push_str(&format!(" {}", ms as f64 / 1000.0)),
            }
        }
        out.push('\n');
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64, ts: Option<i64>) -> Sample {
        Sample {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            value,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn label_values_keep_commas_braces_quotes_backslashes_and_newlines() {
        let text = r#"# HELP paths_total Paths served, with "quotes" and a \\ and\nnewline.
# TYPE paths_total counter
paths_total{path="/a,b}c",query="x=\"1\"",dir="C:\\temp\\",note="two\nlines",raw="\d"} 3
paths_total { path = "/",  } 4   1700000000000
"#;
        let exposition = parse(text, Format::Text).unwrap();
        assert_eq!(
            exposition.samples,
            [
                sample(
                    "paths_total",
                    &[
                        ("path", "/a,b}c"),
                        ("query", "x=\"1\""),
                        ("dir", "C:\\temp\\"),
                        ("note", "two\nlines"),
                        ("raw", "\\d"),
                    ],
                    3.0,
                    None
                ),
                sample(
                    "paths_total",
                    &[("path", "/")],
                    4.0,
                    Some(1_700_000_000_000)
                ),
            ]
        );
        assert_eq!(
            exposition.families,
            [Family {
                name: "paths_total".into(),
                kind: MetricKind::Counter,
                // The text format's help escapes only \\ and \n.
                help: "Paths served, with \"quotes\" and a \\ and\nnewline.".into(),
                unit: String::new(),
            }]
        );
    }

    #[test]
    fn text_format_details() {
        let text = "\
#HELP not metadata
# a comment
# TYPE Upper GAUGE
Upper NaN
  indented +Inf
neg -Inf
exp 1.5e3
hist_bucket{le=\"1.0\"} 2
hist_bucket{le=\"+Inf\"} 3
no_newline_at_end 7";
        let exposition = parse(text, Format::Text).unwrap();
        let values: Vec<(&str, f64)> = exposition
            .samples
            .iter()
            .map(|s| (s.name.as_str(), s.value))
            .collect();
        assert_eq!(values[0].0, "Upper");
        assert!(values[0].1.is_nan());
        assert_eq!(
            values[1..],
            [
                ("indented", f64::INFINITY),
                ("neg", f64::NEG_INFINITY),
                ("exp", 1500.0),
                ("hist_bucket", 2.0),
                ("hist_bucket", 3.0),
                ("no_newline_at_end", 7.0),
            ]
        );
        // `le` stays as written, as Prometheus stores it.
        assert_eq!(exposition.samples[4].labels, [("le".into(), "1.0".into())]);
        assert_eq!(exposition.families.len(), 1);
        assert_eq!(exposition.families[0].kind, MetricKind::Gauge);
    }

    #[test]
    fn openmetrics_with_units_created_exemplars_and_every_type() {
        let text = r#"# TYPE requests counter
# UNIT requests 
# HELP requests Requests, "quoted" \\ and\nnewline.
requests_total{path="/a,b"} 12 1700000000.5 # {trace_id="4bf92f3577b34da6"} 1 1700000000.25
requests_created{path="/a,b"} 1699999000.0
# TYPE latency_seconds histogram
# UNIT latency_seconds seconds
latency_seconds_bucket{le="0.5"} 3 # {trace_id="x"} 0.2
latency_seconds_bucket{le="+Inf"} 4
latency_seconds_sum 1.25
latency_seconds_count 4
# TYPE queue gaugehistogram
queue_bucket{le="+Inf"} 2
queue_gcount 2
queue_gsum 5
# TYPE build info
build_info{version="1.2"} 1
# TYPE state stateset
state{state="on"} 1
state{state="off"} 0
# TYPE rpc summary
rpc{quantile="0.99"} 0.3
rpc_sum 8
rpc_count 20
# TYPE other unknown
other 1
# EOF
"#;
        let exposition = parse(text, Format::OpenMetrics).unwrap();
        let names: Vec<&str> = exposition.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "requests_total",
                "requests_created",
                "latency_seconds_bucket",
                "latency_seconds_bucket",
                "latency_seconds_sum",
                "latency_seconds_count",
                "queue_bucket",
                "queue_gcount",
                "queue_gsum",
                "build_info",
                "state",
                "state",
                "rpc",
                "rpc_sum",
                "rpc_count",
                "other",
            ]
        );
        // Seconds with fractions become milliseconds.
        assert_eq!(exposition.samples[0].timestamp_ms, Some(1_700_000_000_500));
        assert_eq!(exposition.samples[1].value, 1_699_999_000.0);
        let kinds: Vec<(&str, MetricKind, &str)> = exposition
            .families
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.unit.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("requests", MetricKind::Counter, ""),
                ("latency_seconds", MetricKind::Histogram, "seconds"),
                ("queue", MetricKind::GaugeHistogram, ""),
                ("build", MetricKind::Info, ""),
                ("state", MetricKind::StateSet, ""),
                ("rpc", MetricKind::Summary, ""),
                ("other", MetricKind::Unknown, ""),
            ]
        );
        // OpenMetrics' help escapes quotes too.
        assert_eq!(
            exposition.families[0].help,
            "Requests, \"quoted\" \\ and\nnewline."
        );
    }

    #[test]
    fn errors_name_the_line_and_never_panic() {
        let cases: &[(&str, Format, usize, &str)] = &[
            ("a{b=\"c\" 1\n", Format::Text, 1, "expected , or }"),
            ("ok 1\na{b=\"c 1\n", Format::Text, 2, "unterminated"),
            ("a{b=\"1\",b=\"2\"} 1\n", Format::Text, 1, "not unique"),
            ("a{__name__=\"b\"} 1\n", Format::Text, 1, "not unique"),
            ("a 1_000\n", Format::Text, 1, "unsupported character"),
            ("a 0x1p3\n", Format::Text, 1, "unsupported character"),
            ("a one\n", Format::Text, 1, "invalid value"),
            ("a 1 1.5\n", Format::Text, 1, "invalid timestamp"),
            ("a 1 2 3\n", Format::Text, 1, "at the end of the line"),
            ("# TYPE a bogus\n", Format::Text, 1, "invalid metric type"),
            ("# TYPE a info\n", Format::Text, 1, "invalid metric type"),
            ("{a=\"b\"} 1\n", Format::Text, 1, "expected a metric name"),
            ("a 1\n", Format::OpenMetrics, 2, "does not end with # EOF"),
            ("a 1\n# EOF\nb 2\n", Format::OpenMetrics, 3, "after # EOF"),
            ("a 1\n\n# EOF\n", Format::OpenMetrics, 2, "empty line"),
            (
                "# random\n# EOF\n",
                Format::OpenMetrics,
                1,
                "invalid comment",
            ),
            (
                "a{b=\"c\",} 1\n# EOF\n",
                Format::OpenMetrics,
                1,
                "label name after ,",
            ),
            ("a  1\n# EOF\n", Format::OpenMetrics, 1, "expected a value"),
            (
                "a 1 NaN\n# EOF\n",
                Format::OpenMetrics,
                1,
                "invalid timestamp",
            ),
            (
                "# UNIT a_bytes seconds\n# EOF\n",
                Format::OpenMetrics,
                1,
                "not a suffix",
            ),
            (
                "a 1 # {x=\"y\"}\n# EOF\n",
                Format::OpenMetrics,
                1,
                "expected a space",
            ),
            ("a 1 # x\n# EOF\n", Format::OpenMetrics, 1, "expected {"),
            (
                "a{b=\"c\nd\"} 1\n# EOF\n",
                Format::OpenMetrics,
                1,
                "raw newline",
            ),
        ];
        for (text, format, line, message) in cases {
            let error = parse(text, *format).expect_err(text);
            assert_eq!(error.line, *line, "{text:?}: {error}");
            assert!(error.message.contains(message), "{text:?}: {error}");
        }
    }

    #[test]
    fn content_type_picks_the_parser() {
        for (content_type, format) in [
            (None, Format::Text),
            (
                Some("text/plain; version=0.0.4; charset=utf-8"),
                Format::Text,
            ),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Format::OpenMetrics,
            ),
            (Some("Application/OpenMetrics-Text"), Format::OpenMetrics),
            (Some("application/json"), Format::Text),
        ] {
            assert_eq!(Format::of_content_type(content_type), format);
        }
    }

    fn label_value() -> impl Strategy<Value = String> {
        // Every character that matters to the lexer, and any other.
        proptest::collection::vec(
            prop_oneof![
                Just(','),
                Just('}'),
                Just('{'),
                Just('"'),
                Just('\\'),
                Just('\n'),
                Just('='),
                Just('#'),
                Just(' '),
                any::<char>(),
            ],
            0..12,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn samples() -> impl Strategy<Value = Vec<Sample>> {
        let sample = (
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,8}",
            proptest::collection::btree_map("[a-zA-Z][a-zA-Z0-9_]{0,6}", label_value(), 0..4),
            prop_oneof![any::<f64>(), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
            proptest::option::of(0i64..4_000_000_000),
        )
            .prop_map(|(name, labels, value, seconds)| Sample {
                name,
                labels: labels.into_iter().collect(),
                value,
                timestamp_ms: seconds.map(|s| s * 1000),
            });
        proptest::collection::vec(sample, 0..6)
    }

    fn same(a: &[Sample], b: &[Sample]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(a, b)| {
                a.name == b.name
                    && a.labels == b.labels
                    && a.timestamp_ms == b.timestamp_ms
                    && (a.value == b.value || (a.value.is_nan() && b.value.is_nan()))
            })
    }

    proptest! {
        #[test]
        fn rendered_samples_parse_back(samples in samples()) {
            for format in [Format::Text, Format::OpenMetrics] {
                let text = render(&samples, format);
                let parsed = parse(&text, format).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                prop_assert!(same(&parsed.samples, &samples), "{text}\n{parsed:?}");
            }
        }

        #[test]
        fn mutated_expositions_parse_or_err_without_panicking(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..8),
        ) {
            let valid = "# TYPE a counter\n# UNIT a_seconds seconds\n# HELP a x\\ny\n\
                a_total{b=\"c,}\\\"\"} 1.5 17.25 # {t=\"u\"} 2 3\na_created 1\n# EOF\n";
            prop_assert_eq!(parse(valid, Format::OpenMetrics).map(|e| e.samples.len()), Ok(2));
            for format in [Format::Text, Format::OpenMetrics] {
                let mut text: Vec<char> = valid.chars().collect();
                for (at, c, kind) in &edits {
                    let i = at.index(text.len() + 1);
                    match kind {
                        0 => text.insert(i, *c),
                        1 if i < text.len() => { text.remove(i); }
                        _ if i < text.len() => text[i] = *c,
                        _ => text.push(*c),
                    }
                }
                let text: String = text.into_iter().collect();
                let _ = parse(&text, format);
            }
        }

        #[test]
        fn any_input_parses_or_errs_without_panicking(text in "(?s).{0,200}") {
            let _ = parse(&text, Format::Text);
            let _ = parse(&text, Format::OpenMetrics);
        }
    }
}
