//! A recursive-descent parser for the LogQL subset Strand answers. There is
//! no well-kept LogQL crate; the language is small enough that a parser of
//! the subset is shorter than an adapter, and it can name exactly the part a
//! query uses that is outside the subset.

use regex::Regex;

use super::LogqlError;

/// Longest nesting of parentheses and aggregations a query may have (the
/// parser recurses once per level).
const MAX_DEPTH: usize = 64;

/// A parsed query: log lines, or numbers computed from them.
#[derive(Debug, Clone)]
pub enum Expr {
    Logs(LogExpr),
    Metric(MetricExpr),
}

/// A stream selector and the pipeline its lines go through.
#[derive(Debug, Clone)]
pub struct LogExpr {
    pub matchers: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    NotRe,
}

/// `name op "value"` of a stream selector.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// The anchored regular expression of `=~` and `!~`.
    pub regex: Option<Regex>,
}

impl Matcher {
    /// Whether a label value (empty when the label is missing) matches,
    /// as Prometheus's matchers do.
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Eq => value == self.value,
            MatchOp::Ne => value != self.value,
            MatchOp::Re => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRe => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

/// One stage of a log pipeline.
#[derive(Debug, Clone)]
pub enum Stage {
    /// `|= "text"`, `!= "text"`, `|~ "re"`, `!~ "re"`.
    Line(LineFilter),
    Json,
    Logfmt,
    Labels(LabelPredicate),
    /// `line_format "{{.label}} ..."`, as pieces of text and label names.
    LineFormat(Vec<FormatPiece>),
    /// `unwrap label` (only inside a range aggregation).
    Unwrap(String),
    /// `drop a, b`: removes labels.
    Drop(Vec<String>),
    /// `keep a, b`: keeps only these labels.
    Keep(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct LineFilter {
    pub contains: bool,
    pub pattern: LinePattern,
}

#[derive(Debug, Clone)]
pub enum LinePattern {
    Text(String),
    Regex(Regex),
}

impl LineFilter {
    pub fn keeps(&self, line: &str) -> bool {
        let found = match &self.pattern {
            LinePattern::Text(text) => line.contains(text.as_str()),
            LinePattern::Regex(regex) => regex.is_match(line),
        };
        found == self.contains
    }
}

/// A piece of a `line_format` template.
#[derive(Debug, Clone, PartialEq)]
pub enum FormatPiece {
    Text(String),
    Label(String),
}

/// A label filter: comparisons joined by `and` / `or`.
#[derive(Debug, Clone)]
pub enum LabelPredicate {
    Compare(Comparison),
    And(Box<LabelPredicate>, Box<LabelPredicate>),
    Or(Box<LabelPredicate>, Box<LabelPredicate>),
}

#[derive(Debug, Clone)]
pub struct Comparison {
    pub label: String,
    pub op: CompareOp,
    pub value: CompareValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Re,
    NotRe,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone)]
pub enum CompareValue {
    Text(String, Option<Regex>),
    /// A number, or a duration (`latency > 250ms`) in seconds.
    Number(f64),
}

/// A function over the lines of a time window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeFunction {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
    SumOverTime,
    AvgOverTime,
    MaxOverTime,
    MinOverTime,
    QuantileOverTime(f64),
}

impl RangeFunction {
    /// Whether the function reads an unwrapped label's values.
    pub fn needs_unwrap(self) -> bool {
        matches!(
            self,
            RangeFunction::SumOverTime
                | RangeFunction::AvgOverTime
                | RangeFunction::MaxOverTime
                | RangeFunction::MinOverTime
                | RangeFunction::QuantileOverTime(_)
        )
    }
}

/// `sum`, `avg`, ... over series at each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggregateOp {
    Sum,
    Avg,
    Max,
    Min,
    Count,
    Topk(usize),
    Bottomk(usize),
}

/// `by (...)` or `without (...)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
}

#[derive(Debug, Clone)]
pub enum MetricExpr {
    Range {
        function: RangeFunction,
        logs: LogExpr,
        /// The unwrapped label, for the `*_over_time` of values.
        unwrap: Option<String>,
        range_nanos: u64,
        grouping: Option<Grouping>,
    },
    Aggregate {
        op: AggregateOp,
        grouping: Option<Grouping>,
        inner: Box<MetricExpr>,
    },
    /// `vector(1)`: one series without labels.
    Vector(f64),
    Number(f64),
    Binary {
        op: BinaryOp,
        left: Box<MetricExpr>,
        right: Box<MetricExpr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number(f64),
    /// A duration such as `5m`, in nanoseconds.
    Duration(u64),
    Punct(&'static str),
}

const PUNCTUATION: [&str; 25] = [
    "|=", "|~", "!=", "!~", "=~", "==", ">=", "<=", "{", "}", "(", ")", "[", "]", ",", "=", "|",
    ">", "<", "+", "-", "*", "/", "%", "^",
];

/// Parses a LogQL query; an error says where (line and column), as
/// Loki's do.
pub fn parse(text: &str) -> Result<Expr, LogqlError> {
    parse_tokens(text).map_err(|e| e.locate(text))
}

fn parse_tokens(text: &str) -> Result<Expr, LogqlError> {
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        depth: 0,
        text_len: text.len(),
    };
    let expr = parser.expr()?;
    if let Some((token, pos)) = parser.tokens.get(parser.at) {
        return Err(parser.unexpected(token, *pos));
    }
    Ok(expr)
}

fn lex(text: &str) -> Result<Vec<(Token, usize)>, LogqlError> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            // A comment runs to the end of the line.
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        if c == b'"' || c == b'`' {
            let (value, end) = lex_string(text, i)?;
            tokens.push((Token::Str(value), start));
            i = end;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            let word = &text[start..i];
            let token = match word.parse::<f64>() {
                Ok(number) => Token::Number(number),
                Err(_) => Token::Duration(parse_duration(word).ok_or_else(|| {
                    LogqlError::parse(start, format!("invalid number or duration {word:?}"))
                })?),
            };
            tokens.push((token, start));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push((Token::Ident(text[start..i].to_string()), start));
            continue;
        }
        let Some(punct) = PUNCTUATION.iter().find(|p| text[i..].starts_with(**p)) else {
            let found = text[i..].chars().next().unwrap_or('?');
            return Err(LogqlError::parse(
                start,
                format!("syntax error: unexpected character {found:?}"),
            ));
        };
        tokens.push((Token::Punct(punct), start));
        i += punct.len();
    }
    Ok(tokens)
}

/// A double-quoted string with Go's escapes, or a back-quoted raw one;
/// returns the value and the position after it.
fn lex_string(text: &str, start: usize) -> Result<(String, usize), LogqlError> {
    let quote = text.as_bytes()[start] as char;
    let mut value = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        if c == quote {
            return Ok((value, start + 1 + offset + 1));
        }
        if c == '\\' && quote == '"' {
            let Some((_, escaped)) = chars.next() else {
                break;
            };
            value.push(match escaped {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                other => other,
            });
        } else {
            value.push(c);
        }
    }
    Err(LogqlError::parse(
        start,
        "syntax error: unterminated string".into(),
    ))
}

/// A Prometheus duration (`5m`, `1h30m`, `250ms`, `1d`) in nanoseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let number: f64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let nanos: f64 = match &tail[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            "d" => 86_400e9,
            "w" => 7.0 * 86_400e9,
            "y" => 365.0 * 86_400e9,
            _ => return None,
        };
        let add = number * nanos;
        if !add.is_finite() || add > u64::MAX as f64 {
            return None;
        }
        total = total.checked_add(add as u64)?;
        rest = &tail[unit_len..];
    }
    Some(total)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    depth: usize,
    text_len: usize,
}

const RANGE_FUNCTIONS: [&str; 9] = [
    "count_over_time",
    "rate",
    "bytes_over_time",
    "bytes_rate",
    "sum_over_time",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "quantile_over_time",
];

/// Range functions of LogQL that Strand does not answer.
const UNSUPPORTED_RANGE_FUNCTIONS: [&str; 8] = [
    "rate_counter",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "first_over_time",
    "absent_over_time",
    "count_values",
    "sort",
];

const AGGREGATIONS: [&str; 7] = ["sum", "avg", "max", "min", "count", "topk", "bottomk"];

const UNSUPPORTED_AGGREGATIONS: [&str; 5] = [
    "stddev",
    "stdvar",
    "sort_desc",
    "approx_topk",
    "label_replace",
];

/// Pipeline stages of LogQL that Strand does not answer.
const UNSUPPORTED_STAGES: [&str; 7] = [
    "pattern",
    "regexp",
    "unpack",
    "label_format",
    "decolorize",
    "distinct",
    "line_format_json",
];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Token> {
        self.tokens.get(self.at + ahead).map(|(t, _)| t)
    }

    fn pos(&self) -> usize {
        self.tokens
            .get(self.at)
            .map(|(_, p)| *p)
            .unwrap_or(self.text_len)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        token
    }

    fn is_punct(&self, punct: &str) -> bool {
        matches!(self.peek(), Some(Token::Punct(p)) if *p == punct)
    }

    fn is_ident(&self, name: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(i)) if i == name)
    }

    fn expect(&mut self, punct: &str) -> Result<(), LogqlError> {
        if self.is_punct(punct) {
            self.at += 1;
            return Ok(());
        }
        Err(self.unexpected_here(&format!("expected {punct}")))
    }

    fn unexpected(&self, token: &Token, pos: usize) -> LogqlError {
        LogqlError::parse(pos, format!("syntax error: unexpected {}", describe(token)))
    }

    fn unexpected_here(&self, wanted: &str) -> LogqlError {
        match self.tokens.get(self.at) {
            Some((token, pos)) => LogqlError::parse(
                *pos,
                format!("syntax error: unexpected {}, {wanted}", describe(token)),
            ),
            None => LogqlError::parse(
                self.text_len,
                format!("syntax error: unexpected end of query, {wanted}"),
            ),
        }
    }

    fn deeper(&mut self) -> Result<(), LogqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(LogqlError::parse(
                self.pos(),
                format!("query too complex: more than {MAX_DEPTH} levels of nesting"),
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, LogqlError> {
        if self.is_punct("{") {
            let logs = self.log_expr()?;
            if let Some((token, pos)) = self.tokens.get(self.at) {
                if matches!(token, Token::Punct("[")) {
                    return Err(LogqlError::parse(
                        *pos,
                        "syntax error: a range [..] needs a range function around it, e.g. \
                         count_over_time({...}[5m])"
                            .into(),
                    ));
                }
                return Err(self.unexpected(token, *pos));
            }
            return Ok(Expr::Logs(logs));
        }
        Ok(Expr::Metric(self.metric(0)?))
    }

    /// Binary operators by precedence climbing: `+ -` < `* / %` < `^`.
    fn metric(&mut self, min_precedence: u8) -> Result<MetricExpr, LogqlError> {
        self.deeper()?;
        let mut left = self.metric_primary()?;
        loop {
            let (op, precedence) = match self.peek() {
                Some(Token::Punct("+")) => (BinaryOp::Add, 1),
                Some(Token::Punct("-")) => (BinaryOp::Sub, 1),
                Some(Token::Punct("*")) => (BinaryOp::Mul, 2),
                Some(Token::Punct("/")) => (BinaryOp::Div, 2),
                Some(Token::Punct("%")) => (BinaryOp::Mod, 2),
                Some(Token::Punct("^")) => (BinaryOp::Pow, 3),
                Some(Token::Ident(word)) if word == "and" || word == "or" || word == "unless" => {
                    return Err(LogqlError::unsupported(
                        self.pos(),
                        &format!("the set operator `{word}`"),
                    ));
                }
                Some(Token::Punct("==" | "!=" | ">" | ">=" | "<" | "<=")) => {
                    return Err(LogqlError::unsupported(
                        self.pos(),
                        "comparison operators between metric expressions",
                    ));
                }
                _ => break,
            };
            if precedence < min_precedence {
                break;
            }
            self.at += 1;
            if self.is_ident("bool") || self.is_ident("on") || self.is_ident("ignoring") {
                return Err(LogqlError::unsupported(
                    self.pos(),
                    "vector matching modifiers (bool, on, ignoring)",
                ));
            }
            let right = self.metric(precedence + 1)?;
            left = MetricExpr::Binary {
                op,
                left: Box::new(left),
                right: Box::new(right),
            };
        }
        self.depth -= 1;
        Ok(left)
    }

    fn metric_primary(&mut self) -> Result<MetricExpr, LogqlError> {
        let pos = self.pos();
        match self.next() {
            Some(Token::Number(n)) => Ok(MetricExpr::Number(n)),
            Some(Token::Punct("-")) => match self.next() {
                Some(Token::Number(n)) => Ok(MetricExpr::Number(-n)),
                _ => Err(LogqlError::unsupported(
                    pos,
                    "unary minus before an expression",
                )),
            },
            Some(Token::Punct("(")) => {
                let inner = self.metric(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Some(Token::Punct("{")) => Err(LogqlError::parse(
                pos,
                "syntax error: a log query cannot be combined with operators; wrap it in a \
                 range function, e.g. count_over_time({...}[5m])"
                    .into(),
            )),
            Some(Token::Ident(name)) => self.function(&name, pos),
            Some(token) => Err(self.unexpected(&token, pos)),
            None => Err(self.unexpected_here("expected an expression")),
        }
    }

    fn function(&mut self, name: &str, pos: usize) -> Result<MetricExpr, LogqlError> {
        if name == "vector" {
            self.expect("(")?;
            let value = self.number()?;
            self.expect(")")?;
            return Ok(MetricExpr::Vector(value));
        }
        if RANGE_FUNCTIONS.contains(&name) {
            return self.range_aggregation(name);
        }
        if AGGREGATIONS.contains(&name) {
            return self.aggregation(name);
        }
        if UNSUPPORTED_RANGE_FUNCTIONS.contains(&name)
            || UNSUPPORTED_AGGREGATIONS.contains(&name)
            || matches!(name, "label_replace" | "absent" | "scalar")
        {
            return Err(LogqlError::unsupported(
                pos,
                &format!("the function `{name}`"),
            ));
        }
        Err(LogqlError::parse(
            pos,
            format!("syntax error: unexpected IDENTIFIER {name:?}"),
        ))
    }

    fn number(&mut self) -> Result<f64, LogqlError> {
        match self.peek() {
            Some(Token::Number(n)) => {
                let n = *n;
                self.at += 1;
                Ok(n)
            }
            _ => Err(self.unexpected_here("expected a number")),
        }
    }

    fn grouping(&mut self) -> Result<Option<Grouping>, LogqlError> {
        let without = if self.is_ident("by") {
            false
        } else if self.is_ident("without") {
            true
        } else {
            return Ok(None);
        };
        self.at += 1;
        self.expect("(")?;
        let mut labels = Vec::new();
        while !self.is_punct(")") {
            match self.next() {
                Some(Token::Ident(label)) => labels.push(label),
                _ => {
                    self.at -= 1;
                    return Err(self.unexpected_here("expected a label name"));
                }
            }
            if !self.is_punct(")") {
                self.expect(",")?;
            }
        }
        self.at += 1;
        Ok(Some(if without {
            Grouping::Without(labels)
        } else {
            Grouping::By(labels)
        }))
    }

    fn aggregation(&mut self, name: &str) -> Result<MetricExpr, LogqlError> {
        let before = self.grouping()?;
        self.expect("(")?;
        let op = match name {
            "topk" | "bottomk" => {
                let k = self.number()?;
                if !(k >= 1.0 && k.fract() == 0.0 && k <= 1e6) {
                    return Err(LogqlError::parse(
                        self.pos(),
                        format!("invalid parameter for {name}: {k} is not a whole number >= 1"),
                    ));
                }
                self.expect(",")?;
                if name == "topk" {
                    AggregateOp::Topk(k as usize)
                } else {
                    AggregateOp::Bottomk(k as usize)
                }
            }
            "sum" => AggregateOp::Sum,
            "avg" => AggregateOp::Avg,
            "max" => AggregateOp::Max,
            "min" => AggregateOp::Min,
            _ => AggregateOp::Count,
        };
        let inner = self.metric(0)?;
        self.expect(")")?;
        let after = self.grouping()?;
        if before.is_some() && after.is_some() {
            return Err(self.unexpected_here("grouping given twice"));
        }
        Ok(MetricExpr::Aggregate {
            op,
            grouping: before.or(after),
            inner: Box::new(inner),
        })
    }

    fn range_aggregation(&mut self, name: &str) -> Result<MetricExpr, LogqlError> {
        self.expect("(")?;
        let function = match name {
            "count_over_time" => RangeFunction::CountOverTime,
            "rate" => RangeFunction::Rate,
            "bytes_over_time" => RangeFunction::BytesOverTime,
            "bytes_rate" => RangeFunction::BytesRate,
            "sum_over_time" => RangeFunction::SumOverTime,
            "avg_over_time" => RangeFunction::AvgOverTime,
            "max_over_time" => RangeFunction::MaxOverTime,
            "min_over_time" => RangeFunction::MinOverTime,
            _ => {
                let q = self.number()?;
                self.expect(",")?;
                RangeFunction::QuantileOverTime(q)
            }
        };
        // The log part may be parenthesised: rate(({app="a"} |= "x")[5m]).
        let parenthesised = self.is_punct("(");
        if parenthesised {
            self.at += 1;
        }
        if !self.is_punct("{") {
            return Err(self.unexpected_here("expected a stream selector {...}"));
        }
        let mut logs = self.log_expr()?;
        if parenthesised {
            self.expect(")")?;
        }
        let range_pos = self.pos();
        self.expect("[")?;
        let range_nanos = match self.next() {
            Some(Token::Duration(nanos)) if nanos > 0 => nanos,
            _ => {
                return Err(LogqlError::parse(
                    range_pos,
                    "syntax error: expected a range such as [5m]".into(),
                ));
            }
        };
        self.expect("]")?;
        if self.is_ident("offset") {
            return Err(LogqlError::unsupported(self.pos(), "the `offset` modifier"));
        }
        self.expect(")")?;
        let grouping = self.grouping()?;
        let unwrap = match logs.stages.last() {
            Some(Stage::Unwrap(label)) => Some(label.clone()),
            _ => None,
        };
        if unwrap.is_some() {
            logs.stages.pop();
        }
        if logs.stages.iter().any(|s| matches!(s, Stage::Unwrap(_))) {
            return Err(LogqlError::parse(
                range_pos,
                "syntax error: unwrap must be the last stage of the pipeline".into(),
            ));
        }
        match (function.needs_unwrap(), &unwrap) {
            (true, None) => {
                return Err(LogqlError::parse(
                    range_pos,
                    format!("invalid aggregation {name} without unwrap"),
                ));
            }
            (false, Some(_)) => {
                return Err(LogqlError::parse(
                    range_pos,
                    format!("invalid aggregation {name} with unwrap"),
                ));
            }
            _ => {}
        }
        if grouping.is_some() && !function.needs_unwrap() {
            return Err(LogqlError::parse(
                range_pos,
                format!("grouping not allowed for {name} aggregation"),
            ));
        }
        Ok(MetricExpr::Range {
            function,
            logs,
            unwrap,
            range_nanos,
            grouping,
        })
    }

    fn log_expr(&mut self) -> Result<LogExpr, LogqlError> {
        let matchers = self.selector()?;
        let mut stages = Vec::new();
        loop {
            let pos = self.pos();
            let line = |contains: bool, regex: bool| (contains, regex);
            let filter = match self.peek() {
                Some(Token::Punct("|=")) => Some(line(true, false)),
                Some(Token::Punct("!=")) => Some(line(false, false)),
                Some(Token::Punct("|~")) => Some(line(true, true)),
                Some(Token::Punct("!~")) => Some(line(false, true)),
                Some(Token::Punct("|")) => None,
                _ => break,
            };
            self.at += 1;
            if let Some((contains, regex)) = filter {
                let text = self.string("a line filter needs a quoted string")?;
                if self.is_ident("or") {
                    return Err(LogqlError::unsupported(
                        self.pos(),
                        "`or` between line filters",
                    ));
                }
                let pattern = if regex {
                    LinePattern::Regex(compile(&text, false, pos)?)
                } else {
                    LinePattern::Text(text)
                };
                stages.push(Stage::Line(LineFilter { contains, pattern }));
                continue;
            }
            stages.push(self.stage()?);
        }
        Ok(LogExpr { matchers, stages })
    }

    fn string(&mut self, wanted: &str) -> Result<String, LogqlError> {
        match self.peek() {
            Some(Token::Str(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => Err(self.unexpected_here(wanted)),
        }
    }

    fn selector(&mut self) -> Result<Vec<Matcher>, LogqlError> {
        let open = self.pos();
        self.expect("{")?;
        let mut matchers = Vec::new();
        while !self.is_punct("}") {
            let name = match self.next() {
                Some(Token::Ident(name)) => name,
                _ => {
                    self.at -= 1;
                    return Err(self.unexpected_here("expected a label name"));
                }
            };
            let pos = self.pos();
            let op = match self.next() {
                Some(Token::Punct("=")) => MatchOp::Eq,
                Some(Token::Punct("!=")) => MatchOp::Ne,
                Some(Token::Punct("=~")) => MatchOp::Re,
                Some(Token::Punct("!~")) => MatchOp::NotRe,
                _ => {
                    self.at -= 1;
                    return Err(self.unexpected_here("expected =, !=, =~ or !~"));
                }
            };
            let value = self.string("expected a quoted label value")?;
            let regex = match op {
                MatchOp::Re | MatchOp::NotRe => Some(compile(&value, true, pos)?),
                _ => None,
            };
            matchers.push(Matcher {
                name,
                op,
                value,
                regex,
            });
            if !self.is_punct("}") {
                self.expect(",")?;
            }
        }
        self.at += 1;
        // Loki refuses selectors that would match every stream.
        if !matchers.iter().any(|m| !m.matches("")) {
            return Err(LogqlError::parse(
                open,
                "queries require at least one regexp or equality matcher that does not have \
                 an empty-compatible value. For instance, app=~\".*\" does not meet this \
                 requirement, but app=~\".+\" will"
                    .into(),
            ));
        }
        Ok(matchers)
    }

    fn stage(&mut self) -> Result<Stage, LogqlError> {
        let pos = self.pos();
        let Some(Token::Ident(word)) = self.peek().cloned() else {
            return Err(self.unexpected_here("expected a parser, a label filter or line_format"));
        };
        // A label filter starts with a label and a comparison.
        let compares = matches!(
            self.peek_at(1),
            Some(Token::Punct(
                "=" | "==" | "!=" | "=~" | "!~" | ">" | ">=" | "<" | "<="
            ))
        );
        if compares {
            return Ok(Stage::Labels(self.label_predicate()?));
        }
        self.at += 1;
        match word.as_str() {
            "json" | "logfmt" => {
                if matches!(self.peek(), Some(Token::Ident(_))) && !self.is_ident("unwrap") {
                    return Err(LogqlError::unsupported(
                        self.pos(),
                        &format!("{word} with parameters"),
                    ));
                }
                if matches!(self.peek(), Some(Token::Punct("-"))) {
                    return Err(LogqlError::unsupported(
                        self.pos(),
                        &format!("{word} flags"),
                    ));
                }
                Ok(if word == "json" {
                    Stage::Json
                } else {
                    Stage::Logfmt
                })
            }
            "line_format" => {
                let template = self.string("line_format needs a quoted template")?;
                Ok(Stage::LineFormat(parse_template(&template, pos)?))
            }
            "drop" | "keep" => {
                let mut labels = Vec::new();
                loop {
                    match self.next() {
                        Some(Token::Ident(label)) => labels.push(label),
                        _ => {
                            self.at -= 1;
                            return Err(self.unexpected_here(&format!("{word} needs label names")));
                        }
                    }
                    if matches!(self.peek(), Some(Token::Punct("=" | "!=" | "=~" | "!~"))) {
                        return Err(LogqlError::unsupported(
                            self.pos(),
                            &format!("{word} with label matchers (only label names are)"),
                        ));
                    }
                    if !self.is_punct(",") {
                        break;
                    }
                    self.at += 1;
                }
                Ok(if word == "drop" {
                    Stage::Drop(labels)
                } else {
                    Stage::Keep(labels)
                })
            }
            "unwrap" => {
                let converts = self.is_ident("duration")
                    || self.is_ident("bytes")
                    || self.is_ident("duration_seconds");
                if converts && matches!(self.peek_at(1), Some(Token::Punct("("))) {
                    return Err(LogqlError::unsupported(
                        self.pos(),
                        "unwrap conversion functions (duration(), bytes())",
                    ));
                }
                match self.next() {
                    Some(Token::Ident(label)) => Ok(Stage::Unwrap(label)),
                    _ => {
                        self.at -= 1;
                        Err(self.unexpected_here("unwrap needs a label name"))
                    }
                }
            }
            other if UNSUPPORTED_STAGES.contains(&other) => Err(LogqlError::unsupported(
                pos,
                &format!("the `{other}` stage"),
            )),
            other => Err(LogqlError::parse(
                pos,
                format!("syntax error: unexpected IDENTIFIER {other:?} in the pipeline"),
            )),
        }
    }

    /// Comparisons joined by `and` (also `,`) binding tighter than `or`.
    fn label_predicate(&mut self) -> Result<LabelPredicate, LogqlError> {
        self.deeper()?;
        let mut left = self.label_conjunction()?;
        while self.is_ident("or") {
            self.at += 1;
            let right = self.label_conjunction()?;
            left = LabelPredicate::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn label_conjunction(&mut self) -> Result<LabelPredicate, LogqlError> {
        let mut left = self.label_primary()?;
        while self.is_ident("and") || self.is_punct(",") {
            self.at += 1;
            let right = self.label_primary()?;
            left = LabelPredicate::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn label_primary(&mut self) -> Result<LabelPredicate, LogqlError> {
        if self.is_punct("(") {
            self.at += 1;
            let inner = self.label_predicate()?;
            self.expect(")")?;
            return Ok(inner);
        }
        let label = match self.next() {
            Some(Token::Ident(label)) => label,
            _ => {
                self.at -= 1;
                return Err(self.unexpected_here("expected a label filter"));
            }
        };
        let pos = self.pos();
        let op = match self.next() {
            Some(Token::Punct("=" | "==")) => CompareOp::Eq,
            Some(Token::Punct("!=")) => CompareOp::Ne,
            Some(Token::Punct("=~")) => CompareOp::Re,
            Some(Token::Punct("!~")) => CompareOp::NotRe,
            Some(Token::Punct(">")) => CompareOp::Gt,
            Some(Token::Punct(">=")) => CompareOp::Ge,
            Some(Token::Punct("<")) => CompareOp::Lt,
            Some(Token::Punct("<=")) => CompareOp::Le,
            _ => {
                self.at -= 1;
                return Err(self.unexpected_here("expected a comparison"));
            }
        };
        let value = match self.next() {
            Some(Token::Str(text)) => {
                let regex = match op {
                    CompareOp::Re | CompareOp::NotRe => Some(compile(&text, true, pos)?),
                    CompareOp::Eq | CompareOp::Ne => None,
                    _ => {
                        return Err(LogqlError::parse(
                            pos,
                            format!(
                                "syntax error: {label} compares with a number or duration, \
                                 not a string"
                            ),
                        ));
                    }
                };
                CompareValue::Text(text, regex)
            }
            Some(Token::Number(n)) => CompareValue::Number(n),
            Some(Token::Duration(nanos)) => CompareValue::Number(nanos as f64 / 1e9),
            Some(Token::Ident(word)) if word == "ip" => {
                return Err(LogqlError::unsupported(pos, "the ip() label filter"));
            }
            _ => {
                self.at -= 1;
                return Err(self.unexpected_here("expected a string, number or duration"));
            }
        };
        if matches!(value, CompareValue::Number(_))
            && matches!(op, CompareOp::Re | CompareOp::NotRe)
        {
            return Err(LogqlError::parse(
                pos,
                "syntax error: =~ and !~ take a quoted regular expression".into(),
            ));
        }
        Ok(LabelPredicate::Compare(Comparison { label, op, value }))
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Ident(word) => format!("IDENTIFIER {word:?}"),
        Token::Str(text) => format!("STRING {text:?}"),
        Token::Number(n) => format!("NUMBER {n}"),
        Token::Duration(_) => "DURATION".into(),
        Token::Punct(p) => p.to_string(),
    }
}

/// A regular expression of a matcher (anchored, as Prometheus's) or a line
/// filter (found anywhere in the line).
fn compile(pattern: &str, anchored: bool, pos: usize) -> Result<Regex, LogqlError> {
    let source = if anchored {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_string()
    };
    regex::RegexBuilder::new(&source)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| LogqlError::parse(pos, format!("invalid regular expression {pattern:?}: {e}")))
}

/// `line_format`'s Go template, of which Strand takes text and `{{.label}}`.
fn parse_template(template: &str, pos: usize) -> Result<Vec<FormatPiece>, LogqlError> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(FormatPiece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            LogqlError::parse(pos, "line_format: unclosed {{ in the template".into())
        })?;
        let action = after[..close].trim().trim_matches('-').trim();
        let label = action
            .strip_prefix('.')
            .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        match label {
            Some(label) => pieces.push(FormatPiece::Label(label.to_string())),
            None => {
                return Err(LogqlError::unsupported(
                    pos,
                    &format!(
                        "the template action {{{{{action}}}}} in line_format (only {{{{.label}}}} \
                         is)"
                    ),
                ));
            }
        }
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(FormatPiece::Text(rest.to_string()));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Expr {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(expr) => panic!("{text} parsed as {expr:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn selectors_and_line_filters() {
        let Expr::Logs(logs) =
            ok(r#"{service_name="checkout", env=~"prod|stage"} |= "x" != `y` |~ "a.c""#)
        else {
            panic!("not logs")
        };
        assert_eq!(logs.matchers.len(), 2);
        assert_eq!(logs.matchers[1].op, MatchOp::Re);
        assert!(logs.matchers[1].matches("prod"));
        assert!(!logs.matchers[1].matches("production"));
        assert_eq!(logs.stages.len(), 3);
        let Stage::Line(filter) = &logs.stages[2] else {
            panic!()
        };
        assert!(filter.keeps("xabcx"));
        let Stage::Line(filter) = &logs.stages[1] else {
            panic!()
        };
        assert!(!filter.keeps("say y"));
    }

    #[test]
    fn parsers_label_filters_and_line_format() {
        let Expr::Logs(logs) = ok(
            r#"{app="a"} | json | status >= 500 and method="GET" or latency > 250ms | logfmt | line_format "{{.method}} {{ .path }}!""#,
        ) else {
            panic!()
        };
        assert!(matches!(logs.stages[0], Stage::Json));
        assert!(matches!(
            logs.stages[1],
            Stage::Labels(LabelPredicate::Or(..))
        ));
        assert!(matches!(logs.stages[2], Stage::Logfmt));
        let Stage::LineFormat(pieces) = &logs.stages[3] else {
            panic!()
        };
        assert_eq!(
            pieces,
            &[
                FormatPiece::Label("method".into()),
                FormatPiece::Text(" ".into()),
                FormatPiece::Label("path".into()),
                FormatPiece::Text("!".into())
            ]
        );
    }

    #[test]
    fn metric_queries() {
        let Expr::Metric(MetricExpr::Aggregate {
            op,
            grouping,
            inner,
        }) = ok(r#"topk(3, sum by (service_name) (rate({app="a"} |= "error" [5m])))"#)
        else {
            panic!()
        };
        assert_eq!(op, AggregateOp::Topk(3));
        assert_eq!(grouping, None);
        let MetricExpr::Aggregate { grouping, .. } = *inner else {
            panic!()
        };
        assert_eq!(grouping, Some(Grouping::By(vec!["service_name".into()])));
        let Expr::Metric(MetricExpr::Range {
            function,
            unwrap,
            range_nanos,
            grouping,
            ..
        }) = ok(r#"quantile_over_time(0.99, {app="a"} | logfmt | unwrap latency [1m]) by (path)"#)
        else {
            panic!()
        };
        assert_eq!(function, RangeFunction::QuantileOverTime(0.99));
        assert_eq!(unwrap.as_deref(), Some("latency"));
        assert_eq!(range_nanos, 60_000_000_000);
        assert_eq!(grouping, Some(Grouping::By(vec!["path".into()])));
        assert!(matches!(
            ok("vector(1)+vector(1)"),
            Expr::Metric(MetricExpr::Binary {
                op: BinaryOp::Add,
                ..
            })
        ));
        assert!(matches!(
            ok(r#"sum(count_over_time({a="b"}[1m])) * 2 + 1"#),
            Expr::Metric(MetricExpr::Binary {
                op: BinaryOp::Add,
                ..
            })
        ));
        assert!(matches!(
            ok(r#"count_over_time(({a="b"} |= "x")[1m])"#),
            Expr::Metric(MetricExpr::Range { .. })
        ));
    }

    #[test]
    fn errors_name_the_unsupported_part() {
        assert!(err(r#"{a="b"} | pattern "<ip> <_>""#).contains("`pattern` stage"));
        assert!(err(r#"stddev_over_time({a="b"} | unwrap x [1m])"#).contains("stddev_over_time"));
        assert!(err(r#"{a="b"} | label_format x=y"#).contains("label_format"));
        assert!(err(r#"{a="b"} | line_format "{{ .a | upper }}""#).contains("line_format"));
        assert!(err(r#"count_over_time({a="b"}[1m] offset 1h)"#).contains("offset"));
        assert!(err(r#"sum(rate({a="b"}[1m])) and vector(1)"#).contains("`and`"));
        assert!(err(r#"{a="b"} | regexp "(?P<x>.)""#).contains("`regexp` stage"));
    }

    #[test]
    fn syntax_errors_say_where() {
        assert!(err(r#"{a="b""#).starts_with("parse error at line 1, col 7"));
        assert!(err(r#"{a=~".*"}"#).contains("at least one"));
        assert!(err(r#"{a="b"}[5m]"#).contains("range function"));
        assert!(err(r#"sum_over_time({a="b"}[5m])"#).contains("without unwrap"));
        assert!(err(r#"count_over_time({a="b"} | unwrap x [5m])"#).contains("with unwrap"));
        assert!(err(r#"{a="b"} |= "unterminated"#).contains("unterminated"));
        assert!(err(r#"{a="b"} | status > "x""#).contains("number"));
        assert!(err("nonsense").contains("IDENTIFIER"));
        assert!(err(&"(".repeat(200)).contains("too complex"));
        assert!(err(r#"{a=~"("}"#).contains("regular expression"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_duration("1d"), Some(86_400_000_000_000));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
