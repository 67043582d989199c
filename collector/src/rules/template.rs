//! Alert labels and annotations as Prometheus expands them: Go's
//! text/template (the `gtmpl` crate) with `$labels`, `$externalLabels`,
//! `$externalURL` and `$value` defined, and Prometheus's formatting
//! functions (`humanize`, `humanizeDuration`, `title`, ...), so rule files
//! written for Prometheus render the same text here.

use std::collections::{BTreeMap, HashMap};

use gtmpl::{Context, Func, FuncError, Template, Value};

/// What Prometheus puts in front of every template, so that rules can say
/// `$labels.job` and `$value`.
const PRELUDE: &str = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}";

/// What a template may refer to.
pub struct TemplateData<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
    pub value: f64,
}

/// Why a template did not parse or render.
#[derive(Debug, thiserror::Error)]
#[error("template: {0}")]
pub struct TemplateError(String);

fn template(text: &str) -> Result<Template, TemplateError> {
    refuse_what_gtmpl_cannot_survive(text)?;
    let mut template = Template::default();
    template.add_funcs(FUNCTIONS);
    template
        .parse(format!("{PRELUDE}{text}"))
        .map_err(|error| TemplateError(error.to_string()))?;
    Ok(template)
}

/// `gtmpl` loops forever on an action that is never closed and overflows
/// the stack on a template that invokes itself; both are refused before it
/// sees them. Alert templates have no use for named templates.
fn refuse_what_gtmpl_cannot_survive(text: &str) -> Result<(), TemplateError> {
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(TemplateError("unclosed action: '{{' without '}}'".into()));
        };
        let action = after[..close].trim_start_matches('-').trim_start();
        let keyword = action
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or("");
        if matches!(keyword, "define" | "template" | "block") {
            return Err(TemplateError(format!(
                "{{{{{keyword}}}}} is not supported in alert templates"
            )));
        }
        rest = &after[close + 2..];
    }
    Ok(())
}

/// Checks that `text` parses, for rule files read before any evaluation.
pub fn check(text: &str) -> Result<(), TemplateError> {
    if text.contains("{{") {
        template(text)?;
    }
    Ok(())
}

/// One label's or annotation's template, parsed once for every alert and
/// evaluation it expands for.
pub struct Expander {
    text: String,
    /// `None`: plain text, returned as it is.
    parsed: Result<Option<Template>, String>,
}

impl Expander {
    /// Parses `text`; a text that does not parse (rule files are checked
    /// before, so only by mistake) fails at every expansion.
    pub fn new(text: &str) -> Expander {
        let parsed = if text.contains("{{") {
            template(text).map(Some).map_err(|error| error.0)
        } else {
            Ok(None)
        };
        Expander {
            text: text.to_owned(),
            parsed,
        }
    }

    pub fn expand(&self, data: &TemplateData) -> Result<String, TemplateError> {
        match &self.parsed {
            Ok(None) => Ok(self.text.clone()),
            Ok(Some(template)) => render(template, &self.text, data),
            Err(error) => Err(TemplateError(error.clone())),
        }
    }
}

fn render(template: &Template, text: &str, data: &TemplateData) -> Result<String, TemplateError> {
    // Prometheus renders a missing label as "" (missingkey=zero); gtmpl
    // would print "<no value>", so every label the text names is present.
    let strings = |map: &BTreeMap<String, String>, variable: &str, field: &str| {
        let mut values: HashMap<String, Value> = map
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        for name in referenced_keys(text, variable).chain(referenced_keys(text, field)) {
            values
                .entry(name.to_owned())
                .or_insert_with(|| Value::from(""));
        }
        Value::Map(values)
    };
    let mut fields = HashMap::new();
    fields.insert(
        "Labels".to_owned(),
        strings(data.labels, "$labels.", ".Labels."),
    );
    fields.insert(
        "ExternalLabels".to_owned(),
        strings(data.external_labels, "$externalLabels.", ".ExternalLabels."),
    );
    fields.insert("ExternalURL".to_owned(), Value::from(data.external_url));
    fields.insert("Value".to_owned(), Value::from(data.value));
    template
        .render(&Context::from(Value::Object(fields)))
        .map_err(|error| TemplateError(error.to_string()))
}

/// The keys `text` reads as `<prefix><key>` (e.g. `$labels.job`).
fn referenced_keys<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.match_indices(prefix).filter_map(move |(at, _)| {
        let rest = &text[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

const FUNCTIONS: &[(&str, Func)] = &[
    ("eq", eq),
    ("ne", ne),
    ("lt", lt),
    ("le", le),
    ("gt", gt),
    ("ge", ge),
    ("humanize", humanize),
    ("humanize1024", humanize1024),
    ("humanizeDuration", humanize_duration),
    ("humanizePercentage", humanize_percentage),
    ("humanizeTimestamp", humanize_timestamp),
    ("title", title),
    ("toUpper", to_upper),
    ("toLower", to_lower),
    ("match", regex_match),
    ("reReplaceAll", re_replace_all),
    ("stripPort", strip_port),
    ("safeHtml", identity),
];

/// Numbers compare as numbers whatever their representation (gtmpl reads
/// `5.0` as an integer and refuses to compare it with a float); anything
/// else as gtmpl compares it.
fn compare(name: &str, args: &[Value]) -> Result<std::cmp::Ordering, FuncError> {
    let [a, b] = args else {
        return Err(FuncError::ExactlyXArgs(name.into(), 2));
    };
    let as_number = |v: &Value| match v {
        Value::Number(n) => n
            .as_f64()
            .or_else(|| n.as_i64().map(|i| i as f64))
            .or_else(|| n.as_u64().map(|u| u as f64)),
        _ => None,
    };
    let ordering = match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
    };
    ordering.ok_or_else(|| {
        FuncError::Generic(format!(
            "{name}: incompatible types for comparison: {a} and {b}"
        ))
    })
}

/// Go's `eq`: whether the first argument equals any of the others.
fn eq(args: &[Value]) -> Result<Value, FuncError> {
    let Some((first, others)) = args.split_first().filter(|(_, others)| !others.is_empty()) else {
        return Err(FuncError::AtLeastXArgs("eq".into(), 2));
    };
    for other in others {
        if compare("eq", &[first.clone(), other.clone()])?.is_eq() {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

fn ne(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Bool(compare("ne", args)?.is_ne()))
}

fn lt(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Bool(compare("lt", args)?.is_lt()))
}

fn le(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Bool(compare("le", args)?.is_le()))
}

fn gt(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Bool(compare("gt", args)?.is_gt()))
}

fn ge(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Bool(compare("ge", args)?.is_ge()))
}

fn one<'a>(name: &str, args: &'a [Value]) -> Result<&'a Value, FuncError> {
    match args {
        [arg] => Ok(arg),
        _ => Err(FuncError::ExactlyXArgs(name.into(), 1)),
    }
}

fn number(name: &str, args: &[Value]) -> Result<f64, FuncError> {
    match one(name, args)? {
        Value::Number(n) => n
            .as_f64()
            .or_else(|| n.as_i64().map(|i| i as f64))
            .or_else(|| n.as_u64().map(|u| u as f64))
            .ok_or_else(|| FuncError::Generic(format!("{name}: not a number"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| FuncError::Generic(format!("{name}: {s:?} is not a number"))),
        other => Err(FuncError::Generic(format!(
            "{name}: {other} is not a number"
        ))),
    }
}

fn text(name: &str, args: &[Value]) -> Result<String, FuncError> {
    match one(name, args)? {
        Value::String(s) => Ok(s.clone()),
        other => Ok(other.to_string()),
    }
}

/// Go's `%.4g`: four significant digits, exponent form outside 1e-4..1e4.
fn format_g4(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_float(v);
    }
    let exponent = v.abs().log10().floor() as i32;
    if !(-4..4).contains(&exponent) {
        let mantissa = format!("{:.3e}", v);
        let (digits, exp) = mantissa.split_once('e').unwrap_or((&mantissa, "0"));
        let digits = trim_zeros(digits);
        let exp: i32 = exp.parse().unwrap_or(0);
        return format!(
            "{digits}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        );
    }
    let decimals = (3 - exponent).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_owned()
}

fn trim_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// Go's `%v` of a float64 in the cases templates meet.
fn go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        v.to_string()
    }
}

fn humanize_with(v: f64, base: f64, big: &[&str], small: &[&str]) -> String {
    if v == 0.0 || !v.is_finite() {
        return format_g4(v);
    }
    let mut value = v;
    if value.abs() >= 1.0 {
        let mut prefix = "";
        for p in big {
            if value.abs() < base {
                break;
            }
            prefix = p;
            value /= base;
        }
        return format!("{}{prefix}", format_g4(value));
    }
    let mut prefix = "";
    for p in small {
        if value.abs() >= 1.0 {
            break;
        }
        prefix = p;
        value *= base;
    }
    format!("{}{prefix}", format_g4(value))
}

fn humanize(args: &[Value]) -> Result<Value, FuncError> {
    let v = number("humanize", args)?;
    Ok(Value::from(humanize_with(
        v,
        1000.0,
        &["k", "M", "G", "T", "P", "E", "Z", "Y"],
        &["m", "u", "n", "p", "f", "a", "z", "y"],
    )))
}

fn humanize1024(args: &[Value]) -> Result<Value, FuncError> {
    let v = number("humanize1024", args)?;
    if v.abs() <= 1.0 || !v.is_finite() {
        return Ok(Value::from(format_g4(v)));
    }
    Ok(Value::from(humanize_with(
        v,
        1024.0,
        &["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"],
        &[],
    )))
}

fn humanize_duration(args: &[Value]) -> Result<Value, FuncError> {
    let v = number("humanizeDuration", args)?;
    if !v.is_finite() {
        return Ok(Value::from(format_g4(v)));
    }
    if v == 0.0 {
        return Ok(Value::from("0s"));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let total = v.abs();
        let seconds = total as i64 % 60;
        let minutes = (total as i64 / 60) % 60;
        let hours = (total as i64 / 3600) % 24;
        let days = total as i64 / 86400;
        let text = if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", format_g4(total))
        };
        return Ok(Value::from(text));
    }
    let sub_second = humanize_with(v, 1000.0, &[], &["m", "u", "n", "p", "f", "a", "z", "y"]);
    Ok(Value::from(format!("{sub_second}s")))
}

fn humanize_percentage(args: &[Value]) -> Result<Value, FuncError> {
    let v = number("humanizePercentage", args)?;
    Ok(Value::from(format!("{}%", format_g4(v * 100.0))))
}

fn humanize_timestamp(args: &[Value]) -> Result<Value, FuncError> {
    let v = number("humanizeTimestamp", args)?;
    if !v.is_finite() {
        return Ok(Value::from(format_g4(v)));
    }
    let nanos = (v * 1e9) as i64;
    let time = chrono::DateTime::from_timestamp_nanos(nanos);
    Ok(Value::from(
        time.format("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
    ))
}

fn title(args: &[Value]) -> Result<Value, FuncError> {
    let text = text("title", args)?;
    let mut out = String::with_capacity(text.len());
    let mut start = true;
    for c in text.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric() && c != '\'' && c != '_';
    }
    Ok(Value::from(out))
}

fn to_upper(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::from(text("toUpper", args)?.to_uppercase()))
}

fn to_lower(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::from(text("toLower", args)?.to_lowercase()))
}

fn strings<const N: usize>(name: &str, args: &[Value]) -> Result<[String; N], FuncError> {
    if args.len() != N {
        return Err(FuncError::ExactlyXArgs(name.into(), N));
    }
    Ok(std::array::from_fn(|i| match &args[i] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }))
}

fn regex(name: &str, pattern: &str) -> Result<regex::Regex, FuncError> {
    regex::Regex::new(pattern).map_err(|error| FuncError::Generic(format!("{name}: {error}")))
}

fn regex_match(args: &[Value]) -> Result<Value, FuncError> {
    let [pattern, text] = strings::<2>("match", args)?;
    Ok(Value::Bool(regex("match", &pattern)?.is_match(&text)))
}

fn re_replace_all(args: &[Value]) -> Result<Value, FuncError> {
    let [pattern, replacement, text] = strings::<3>("reReplaceAll", args)?;
    Ok(Value::from(
        regex("reReplaceAll", &pattern)?
            .replace_all(&text, replacement.as_str())
            .into_owned(),
    ))
}

fn strip_port(args: &[Value]) -> Result<Value, FuncError> {
    let host = text("stripPort", args)?;
    let stripped = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        _ => host,
    };
    Ok(Value::from(stripped))
}

fn identity(args: &[Value]) -> Result<Value, FuncError> {
    Ok(one("safeHtml", args)?.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, value: f64) -> String {
        let labels = BTreeMap::from([("job".to_owned(), "api".to_owned())]);
        let external = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
        Expander::new(text)
            .expand(&TemplateData {
                labels: &labels,
                external_labels: &external,
                external_url: "http://strand:7070",
                value,
            })
            .unwrap()
    }

    #[test]
    fn labels_value_and_external_labels_expand() {
        assert_eq!(
            render("{{ $labels.job }} at {{ $value }}", 0.5),
            "api at 0.5"
        );
        assert_eq!(render("{{ $externalLabels.region }}", 1.0), "eu");
        assert_eq!(render("{{ $externalURL }}", 1.0), "http://strand:7070");
        assert_eq!(render("plain", 1.0), "plain");
        assert_eq!(render("{{ printf \"%.2f\" $value }}", 0.123456), "0.12");
        assert!(check("{{ $labels.job ").is_err());
        assert!(check("{{ nosuchfunction 1 }}").is_err());
        assert!(check("{{define \"a\"}}{{template \"a\"}}{{end}}{{template \"a\"}}").is_err());
    }

    #[test]
    fn prometheus_formatting_functions() {
        assert_eq!(render("{{ humanize $value }}", 1234567.0), "1.235M");
        assert_eq!(render("{{ humanize $value }}", 0.0012), "1.2m");
        assert_eq!(render("{{ humanize1024 $value }}", 2048.0), "2ki");
        assert_eq!(render("{{ humanizePercentage $value }}", 0.256), "25.6%");
        assert_eq!(render("{{ humanizeDuration $value }}", 3725.0), "1h 2m 5s");
        assert_eq!(render("{{ humanizeDuration $value }}", 0.25), "250ms");
        assert_eq!(render("{{ title \"payment down\" }}", 0.0), "Payment Down");
        assert_eq!(render("{{ toUpper $labels.job }}", 0.0), "API");
        assert_eq!(render("{{ stripPort \"host:9090\" }}", 0.0), "host");
        assert_eq!(
            render("{{ reReplaceAll \"a(p)\" \"$1\" $labels.job }}", 0.0),
            "pi"
        );
        assert_eq!(
            render("{{ if match \"^a\" $labels.job }}yes{{ end }}", 0.0),
            "yes"
        );
    }

    #[test]
    fn missing_labels_are_empty_and_numbers_compare_as_numbers() {
        assert_eq!(
            render("[{{ $labels.missing }}][{{ .Labels.gone }}]", 0.0),
            "[][]"
        );
        assert_eq!(
            render("{{ if gt $value 5.0 }}high{{ else }}low{{ end }}", 8.5),
            "high"
        );
        assert_eq!(render("{{ if lt $value 5 }}low{{ end }}", 4.5), "low");
        assert_eq!(
            render("{{ if eq $labels.job \"api\" }}yes{{ end }}", 0.0),
            "yes"
        );
        assert_eq!(
            render("{{ if ne $value 1.0 }}x{{ else }}one{{ end }}", 1.0),
            "one"
        );
        assert_eq!(
            render("{{ if eq $labels.job \"x\" \"api\" }}any{{ end }}", 0.0),
            "any"
        );
        assert_eq!(
            render(
                "{{ if ge $value 2 }}ge{{ end }}{{ if le $value 2 }}le{{ end }}",
                2.0
            ),
            "gele"
        );
    }
}
