//! A subset of Tempo's TraceQL: parsed here (a small recursive-descent
//! parser), evaluated on whole traces.
//!
//! Supported: spanset filters `{ ... }` with conditions on span attributes
//! (`span.x`), resource attributes (`resource.x`), either (`.x`) and the
//! intrinsics `name`, `status`, `statusMessage`, `duration`, `kind`,
//! `traceDuration`, `rootName`, `rootServiceName`; the operators `=`, `!=`,
//! `>`, `>=`, `<`, `<=`, `=~`, `!~` (regular expressions match the whole
//! value, as Tempo's do); `&&`, `||` and parentheses inside a filter and
//! between spansets; the structural operators `>>` (descendant) and `>`
//! (child). Everything else — pipelines (`| count() > 2`, `| select(...)`),
//! other structural operators, `nil`, event and link scopes — is refused
//! with an error naming it, never misread.
//!
//! Semantics follow Tempo: a condition on an attribute a span lacks is
//! false (for `!=` too); values compare only with values of their type
//! (`span.n > 2` never matches a string `n`); a spanset filter selects the
//! spans satisfying it; `A && B` keeps both sets when neither is empty,
//! `A || B` their union, `A >> B` the spans of `B` with an ancestor in `A`,
//! `A > B` those whose parent is in `A`. A trace matches when the result is
//! not empty.

use std::collections::HashMap;

use regex::Regex;

use crate::model::{AttrValue, KeyValue, Span, SpanKind, StatusCode};

/// Why a query was refused: the message names the unsupported or
/// malformed part and where it is.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid TraceQL query: {0}")]
pub struct TraceQlError(pub String);

/// Where an attribute is looked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrScope {
    Span,
    Resource,
    /// `.x`: the span's attribute, else the resource's.
    Any,
}

/// What a condition reads from a span.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    Attribute(AttrScope, String),
    Name,
    Status,
    StatusMessage,
    Duration,
    Kind,
    TraceDuration,
    RootName,
    RootServiceName,
}

impl Field {
    /// The identifier as TraceQL spells it (`span.http.route`, `status`).
    pub fn identifier(&self) -> String {
        match self {
            Field::Attribute(AttrScope::Span, name) => format!("span.{name}"),
            Field::Attribute(AttrScope::Resource, name) => format!("resource.{name}"),
            Field::Attribute(AttrScope::Any, name) => format!(".{name}"),
            Field::Name => "name".into(),
            Field::Status => "status".into(),
            Field::StatusMessage => "statusMessage".into(),
            Field::Duration => "duration".into(),
            Field::Kind => "kind".into(),
            Field::TraceDuration => "traceDuration".into(),
            Field::RootName => "rootName".into(),
            Field::RootServiceName => "rootServiceName".into(),
        }
    }

    /// Parses an identifier: a scoped or unscoped attribute, or an
    /// intrinsic (also in the `span:name` spelling).
    pub fn parse(identifier: &str) -> Result<Field, TraceQlError> {
        let unsupported =
            |what: &str| TraceQlError(format!("{what} {identifier:?} is not supported"));
        if let Some(name) = identifier.strip_prefix("span.") {
            return attribute(AttrScope::Span, name, identifier);
        }
        if let Some(name) = identifier.strip_prefix("resource.") {
            return attribute(AttrScope::Resource, name, identifier);
        }
        if let Some(name) = identifier.strip_prefix('.') {
            return attribute(AttrScope::Any, name, identifier);
        }
        for scope in ["event.", "link.", "instrumentation.", "parent."] {
            if identifier.starts_with(scope) {
                return Err(unsupported("the scope of"));
            }
        }
        Ok(match identifier {
            "name" | "span:name" => Field::Name,
            "status" | "span:status" => Field::Status,
            "statusMessage" | "span:statusMessage" => Field::StatusMessage,
            "duration" | "span:duration" => Field::Duration,
            "kind" | "span:kind" => Field::Kind,
            "traceDuration" | "trace:duration" => Field::TraceDuration,
            "rootName" | "trace:rootName" => Field::RootName,
            "rootServiceName" | "trace:rootService" => Field::RootServiceName,
            _ if identifier.contains(':') => return Err(unsupported("the intrinsic")),
            _ => return Err(unsupported("the identifier")),
        })
    }
}

fn attribute(scope: AttrScope, name: &str, identifier: &str) -> Result<Field, TraceQlError> {
    if name.is_empty() {
        return Err(TraceQlError(format!("{identifier:?} names no attribute")));
    }
    Ok(Field::Attribute(scope, name.to_string()))
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Match,
    NotMatch,
}

/// A value a condition compares with.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds.
    Duration(u64),
    Status(StatusCode),
    Kind(SpanKind),
}

/// A condition inside `{ }`.
#[derive(Clone, Debug)]
pub enum Condition {
    True,
    False,
    Compare {
        field: Field,
        op: Op,
        value: Literal,
        /// For `=~` and `!~`: the value, anchored at both ends.
        regex: Option<Regex>,
    },
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
}

/// A spanset expression: filters joined by spanset and structural operators.
#[derive(Clone, Debug)]
pub enum Spanset {
    Filter(Condition),
    And(Box<Spanset>, Box<Spanset>),
    Or(Box<Spanset>, Box<Spanset>),
    /// `A > B`: spans of `B` whose parent is in `A`.
    Child(Box<Spanset>, Box<Spanset>),
    /// `A >> B`: spans of `B` with an ancestor in `A`.
    Descendant(Box<Spanset>, Box<Spanset>),
}

/// A parsed query.
#[derive(Clone, Debug)]
pub struct TraceQl {
    pub root: Spanset,
}

impl TraceQl {
    /// Parses a query of the supported subset; an empty query is `{}`.
    pub fn parse(text: &str) -> Result<TraceQl, TraceQlError> {
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Ok(TraceQl {
                root: Spanset::Filter(Condition::True),
            });
        }
        let mut parser = Parser { tokens, at: 0 };
        let root = parser.spanset_or()?;
        if let Some((token, at)) = parser.tokens.get(parser.at) {
            return Err(match token {
                Token::Pipe => TraceQlError(format!(
                    "pipelines (`| ...` at position {at}) are not supported: only spanset filters, &&, || and the structural operators > and >>"
                )),
                other => TraceQlError(format!("unexpected {} at position {at}", other.describe())),
            });
        }
        Ok(TraceQl { root })
    }

    /// The service every matching trace must have a span of, when the query
    /// pins one (`resource.service.name = "x"` in a filter every match
    /// needs): the store's index can then narrow by it.
    pub fn required_service(&self) -> Option<String> {
        fn of_spanset(spanset: &Spanset) -> Option<String> {
            match spanset {
                Spanset::Filter(condition) => of_condition(condition),
                Spanset::And(a, b) | Spanset::Child(a, b) | Spanset::Descendant(a, b) => {
                    of_spanset(a).or_else(|| of_spanset(b))
                }
                Spanset::Or(..) => None,
            }
        }
        fn of_condition(condition: &Condition) -> Option<String> {
            match condition {
                Condition::Compare {
                    field: Field::Attribute(AttrScope::Resource, name),
                    op: Op::Eq,
                    value: Literal::Str(service),
                    ..
                } if name == "service.name" => Some(service.clone()),
                Condition::And(a, b) => of_condition(a).or_else(|| of_condition(b)),
                _ => None,
            }
        }
        of_spanset(&self.root)
    }

    /// The fields the query's conditions read, in order, once each: what a
    /// search answer shows of each matched span.
    pub fn fields(&self) -> Vec<Field> {
        fn of_spanset(spanset: &Spanset, out: &mut Vec<Field>) {
            match spanset {
                Spanset::Filter(condition) => of_condition(condition, out),
                Spanset::And(a, b)
                | Spanset::Or(a, b)
                | Spanset::Child(a, b)
                | Spanset::Descendant(a, b) => {
                    of_spanset(a, out);
                    of_spanset(b, out);
                }
            }
        }
        fn of_condition(condition: &Condition, out: &mut Vec<Field>) {
            match condition {
                Condition::Compare { field, .. } if !out.contains(field) => out.push(field.clone()),
                Condition::And(a, b) | Condition::Or(a, b) => {
                    of_condition(a, out);
                    of_condition(b, out);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        of_spanset(&self.root, &mut out);
        out
    }

    /// The indices (into `spans`, one whole trace) of the spans the query
    /// selects, in order; empty when the trace does not match.
    pub fn evaluate(&self, spans: &[Span]) -> Vec<usize> {
        let trace = TraceFacts::of(spans);
        let selected = evaluate(&self.root, spans, &trace);
        (0..spans.len()).filter(|&i| selected[i]).collect()
    }
}

/// What trace-level intrinsics and structural operators need.
struct TraceFacts {
    duration: u64,
    root: Option<usize>,
    /// Index of each span's parent in the trace, when it is there.
    parent: Vec<Option<usize>>,
}

impl TraceFacts {
    fn of(spans: &[Span]) -> TraceFacts {
        let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
        let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0);
        let index: HashMap<_, _> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id, i))
            .collect();
        let parent: Vec<Option<usize>> = spans
            .iter()
            .map(|s| s.parent_span_id.and_then(|p| index.get(&p).copied()))
            .collect();
        TraceFacts {
            duration: end.saturating_sub(start),
            root: root_index(spans),
            parent,
        }
    }
}

/// The trace's root span: the earliest span without a parent.
pub fn root_index(spans: &[Span]) -> Option<usize> {
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.parent_span_id.is_none())
        .min_by_key(|(_, s)| s.start_unix_nano)
        .map(|(i, _)| i)
}

fn evaluate(spanset: &Spanset, spans: &[Span], trace: &TraceFacts) -> Vec<bool> {
    match spanset {
        Spanset::Filter(condition) => spans
            .iter()
            .map(|span| holds(condition, span, spans, trace))
            .collect(),
        Spanset::And(a, b) => {
            let (a, b) = (evaluate(a, spans, trace), evaluate(b, spans, trace));
            if a.contains(&true) && b.contains(&true) {
                a.iter().zip(&b).map(|(x, y)| *x || *y).collect()
            } else {
                vec![false; spans.len()]
            }
        }
        Spanset::Or(a, b) => {
            let (a, b) = (evaluate(a, spans, trace), evaluate(b, spans, trace));
            a.iter().zip(&b).map(|(x, y)| *x || *y).collect()
        }
        Spanset::Child(a, b) => {
            let (a, b) = (evaluate(a, spans, trace), evaluate(b, spans, trace));
            (0..spans.len())
                .map(|i| b[i] && trace.parent[i].is_some_and(|p| a[p]))
                .collect()
        }
        Spanset::Descendant(a, b) => {
            let (a, b) = (evaluate(a, spans, trace), evaluate(b, spans, trace));
            (0..spans.len())
                .map(|i| {
                    // At most one step per span: a parent cycle in bad data ends.
                    let mut at = trace.parent[i];
                    for _ in 0..spans.len() {
                        match at {
                            Some(p) if a[p] => return b[i],
                            Some(p) => at = trace.parent[p],
                            None => return false,
                        }
                    }
                    false
                })
                .collect()
        }
    }
}

fn holds(condition: &Condition, span: &Span, spans: &[Span], trace: &TraceFacts) -> bool {
    match condition {
        Condition::True => true,
        Condition::False => false,
        Condition::And(a, b) => holds(a, span, spans, trace) && holds(b, span, spans, trace),
        Condition::Or(a, b) => holds(a, span, spans, trace) || holds(b, span, spans, trace),
        Condition::Compare {
            field,
            op,
            value,
            regex,
        } => field_values(field, span, spans, trace)
            .iter()
            .any(|actual| compare(actual, *op, value, regex.as_ref())),
    }
}

/// A span's value of a field, as TraceQL types it.
#[derive(Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Owned(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Duration(u64),
    Status(StatusCode),
    Kind(SpanKind),
}

impl Value<'_> {
    /// The type name Tempo's tag value API reports.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) | Value::Owned(_) => "string",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Duration(_) => "duration",
            Value::Status(_) | Value::Kind(_) => "keyword",
        }
    }

    /// The value as text (durations in Go's notation, keywords in TraceQL's).
    pub fn text(&self) -> String {
        match self {
            Value::Str(s) => s.to_string(),
            Value::Owned(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Duration(nanos) => format!("{nanos}ns"),
            Value::Status(code) => status_name(*code).into(),
            Value::Kind(kind) => kind_name(*kind).into(),
        }
    }
}

fn status_name(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Unset => "unset",
        StatusCode::Ok => "ok",
        StatusCode::Error => "error",
    }
}

fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "unspecified",
        other => other.as_str(),
    }
}

fn attribute_value(value: &AttrValue) -> Value<'_> {
    match value {
        AttrValue::Str(s) => Value::Str(s),
        AttrValue::Int(i) => Value::Int(*i),
        AttrValue::Double(d) => Value::Float(*d),
        AttrValue::Bool(b) => Value::Bool(*b),
        other => Value::Owned(other.to_display_string()),
    }
}

fn find<'a>(attributes: &'a [KeyValue], name: &str) -> Option<Value<'a>> {
    attributes
        .iter()
        .find(|kv| kv.key == name)
        .map(|kv| attribute_value(&kv.value))
}

fn resource_attribute<'a>(span: &'a Span, name: &str) -> Option<Value<'a>> {
    if name == "service.name" {
        return Some(Value::Str(span.service()));
    }
    find(&span.resource.attributes, name)
}

/// The values of `field` for one span of a trace (an unscoped attribute
/// may have one on the span and one on its resource).
fn field_values<'a>(
    field: &Field,
    span: &'a Span,
    spans: &'a [Span],
    trace: &TraceFacts,
) -> Vec<Value<'a>> {
    let root = || trace.root.map(|r| &spans[r]);
    let one = |value: Option<Value<'a>>| value.into_iter().collect();
    match field {
        Field::Attribute(AttrScope::Span, name) => one(find(&span.attributes, name)),
        Field::Attribute(AttrScope::Resource, name) => one(resource_attribute(span, name)),
        Field::Attribute(AttrScope::Any, name) => find(&span.attributes, name)
            .into_iter()
            .chain(resource_attribute(span, name))
            .collect(),
        Field::Name => vec![Value::Str(&span.name)],
        Field::Status => vec![Value::Status(span.status_code)],
        Field::StatusMessage => vec![Value::Str(&span.status_message)],
        Field::Duration => vec![Value::Duration(span.duration_nanos())],
        Field::Kind => vec![Value::Kind(span.kind)],
        Field::TraceDuration => vec![Value::Duration(trace.duration)],
        Field::RootName => one(root().map(|r| Value::Str(&r.name))),
        Field::RootServiceName => one(root().map(|r| Value::Str(r.service()))),
    }
}

/// The values of `field` in each of `spans` (one whole trace), span by span.
pub fn values_in_trace<'a>(field: &Field, spans: &'a [Span]) -> Vec<Vec<Value<'a>>> {
    let trace = TraceFacts::of(spans);
    spans
        .iter()
        .map(|span| field_values(field, span, spans, &trace))
        .collect()
}

fn compare(actual: &Value, op: Op, expected: &Literal, regex: Option<&Regex>) -> bool {
    use std::cmp::Ordering;
    let text = match actual {
        Value::Str(s) => Some(*s),
        Value::Owned(s) => Some(s.as_str()),
        _ => None,
    };
    if let Some(regex) = regex {
        return text.is_some_and(|t| regex.is_match(t) == (op == Op::Match));
    }
    let ordering: Option<Ordering> = match (actual, expected) {
        (_, Literal::Str(e)) => text.map(|t| t.cmp(e.as_str())),
        (Value::Int(a), Literal::Int(e)) => Some(a.cmp(e)),
        (Value::Int(a), Literal::Float(e)) => (*a as f64).partial_cmp(e),
        (Value::Float(a), Literal::Int(e)) => a.partial_cmp(&(*e as f64)),
        (Value::Float(a), Literal::Float(e)) => a.partial_cmp(e),
        (Value::Duration(a), Literal::Duration(e)) => Some(a.cmp(e)),
        (Value::Bool(a), Literal::Bool(e)) => return equality(op, a == e),
        (Value::Status(a), Literal::Status(e)) => return equality(op, a == e),
        (Value::Kind(a), Literal::Kind(e)) => return equality(op, a == e),
        _ => None,
    };
    ordering.is_some_and(|o| match op {
        Op::Eq => o == Ordering::Equal,
        Op::Ne => o != Ordering::Equal,
        Op::Gt => o == Ordering::Greater,
        Op::Ge => o != Ordering::Less,
        Op::Lt => o == Ordering::Less,
        Op::Le => o != Ordering::Greater,
        Op::Match | Op::NotMatch => false,
    })
}

fn equality(op: Op, equal: bool) -> bool {
    match op {
        Op::Eq => equal,
        Op::Ne => !equal,
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    LBrace,
    RBrace,
    LParen,
    RParen,
    AndAnd,
    OrOr,
    Descendant,
    Op(Op),
    Pipe,
    Ident(String),
    Str(String),
    Number(String),
    Duration(u64),
    /// An operator outside the subset (`<<`, `!>>`, `~`, `&>>`, `!`...).
    Unsupported(String),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::LBrace => "'{'".into(),
            Token::RBrace => "'}'".into(),
            Token::LParen => "'('".into(),
            Token::RParen => "')'".into(),
            Token::AndAnd => "'&&'".into(),
            Token::OrOr => "'||'".into(),
            Token::Descendant => "'>>'".into(),
            Token::Op(op) => format!("operator {:?}", op_text(*op)),
            Token::Pipe => "'|'".into(),
            Token::Ident(name) => format!("{name:?}"),
            Token::Str(s) => format!("string {s:?}"),
            Token::Number(n) => format!("number {n}"),
            Token::Duration(d) => format!("duration {d}ns"),
            Token::Unsupported(op) => format!("operator {op:?}"),
        }
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Match => "=~",
        Op::NotMatch => "!~",
    }
}

fn lex(text: &str) -> Result<Vec<(Token, usize)>, TraceQlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let rest_starts = |i: usize, s: &str| chars[i..].iter().take(s.len()).copied().eq(s.chars());
    while i < chars.len() {
        let c = chars[i];
        let at = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // Longest operators first.
        let fixed: &[(&str, Option<Token>)] = &[
            ("!>>", None),
            ("!<<", None),
            ("&>>", None),
            ("&<<", None),
            ("&~", None),
            ("!~", Some(Token::Op(Op::NotMatch))),
            ("=~", Some(Token::Op(Op::Match))),
            ("!=", Some(Token::Op(Op::Ne))),
            (">=", Some(Token::Op(Op::Ge))),
            ("<=", Some(Token::Op(Op::Le))),
            (">>", Some(Token::Descendant)),
            ("<<", None),
            ("&&", Some(Token::AndAnd)),
            ("||", Some(Token::OrOr)),
            ("=", Some(Token::Op(Op::Eq))),
            (">", Some(Token::Op(Op::Gt))),
            ("<", Some(Token::Op(Op::Lt))),
            ("{", Some(Token::LBrace)),
            ("}", Some(Token::RBrace)),
            ("(", Some(Token::LParen)),
            (")", Some(Token::RParen)),
            ("|", Some(Token::Pipe)),
            ("~", None),
            ("!", None),
            ("&", None),
        ];
        if let Some((text, token)) = fixed.iter().find(|(s, _)| rest_starts(i, s)) {
            tokens.push((
                token
                    .clone()
                    .unwrap_or_else(|| Token::Unsupported(text.to_string())),
                at,
            ));
            i += text.chars().count();
            continue;
        }
        if c == '"' || c == '`' {
            let (value, next) = string(&chars, i)?;
            tokens.push((Token::Str(value), at));
            i = next;
            continue;
        }
        if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            let number: String = chars[i..j].iter().collect();
            let mut k = j;
            while k < chars.len() && (chars[k].is_alphabetic()) {
                k += 1;
            }
            if k > j {
                let literal: String = chars[i..k].iter().collect();
                let nanos = super::parse_go_duration(&literal).map_err(|_| {
                    TraceQlError(format!(
                        "{literal:?} at position {at} is not a number or a duration (e.g. 150ms, 1.5s)"
                    ))
                })?;
                tokens.push((Token::Duration(nanos), at));
                i = k;
            } else {
                tokens.push((Token::Number(number), at));
                i = j;
            }
            continue;
        }
        if c.is_alphabetic() || c == '_' || c == '.' {
            let mut j = i + 1;
            while j < chars.len()
                && (chars[j].is_alphanumeric() || matches!(chars[j], '_' | '.' | ':' | '-' | '/'))
            {
                j += 1;
            }
            tokens.push((Token::Ident(chars[i..j].iter().collect()), at));
            i = j;
            continue;
        }
        return Err(TraceQlError(format!(
            "unexpected character {c:?} at position {at}"
        )));
    }
    Ok(tokens)
}

fn string(chars: &[char], start: usize) -> Result<(String, usize), TraceQlError> {
    let quote = chars[start];
    let mut value = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            c if c == quote => return Ok((value, i + 1)),
            '\\' if quote == '"' && i + 1 < chars.len() => {
                value.push(match chars[i + 1] {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
                i += 2;
            }
            c => {
                value.push(c);
                i += 1;
            }
        }
    }
    Err(TraceQlError(format!(
        "the string starting at position {start} is not closed"
    )))
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn position(&self) -> String {
        match self.tokens.get(self.at) {
            Some((_, at)) => format!("position {at}"),
            None => "the end".into(),
        }
    }

    fn unexpected(&self, wanted: &str) -> TraceQlError {
        match self.tokens.get(self.at) {
            Some((Token::Pipe, at)) => TraceQlError(format!(
                "pipelines (`| ...` at position {at}) are not supported"
            )),
            Some((Token::Unsupported(op), at)) => TraceQlError(format!(
                "the operator {op:?} at position {at} is not supported"
            )),
            Some((token, at)) => TraceQlError(format!(
                "expected {wanted} at position {at}, found {}",
                token.describe()
            )),
            None => TraceQlError(format!("expected {wanted}, found the end of the query")),
        }
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn spanset_or(&mut self) -> Result<Spanset, TraceQlError> {
        let mut left = self.spanset_and()?;
        while self.eat(&Token::OrOr) {
            left = Spanset::Or(Box::new(left), Box::new(self.spanset_and()?));
        }
        Ok(left)
    }

    fn spanset_and(&mut self) -> Result<Spanset, TraceQlError> {
        let mut left = self.spanset_structural()?;
        while self.eat(&Token::AndAnd) {
            left = Spanset::And(Box::new(left), Box::new(self.spanset_structural()?));
        }
        Ok(left)
    }

    fn spanset_structural(&mut self) -> Result<Spanset, TraceQlError> {
        let mut left = self.spanset_primary()?;
        loop {
            if self.eat(&Token::Descendant) {
                left = Spanset::Descendant(Box::new(left), Box::new(self.spanset_primary()?));
            } else if self.eat(&Token::Op(Op::Gt)) {
                left = Spanset::Child(Box::new(left), Box::new(self.spanset_primary()?));
            } else if let Some(Token::Unsupported(op)) = self.peek() {
                return Err(TraceQlError(format!(
                    "the structural operator {op:?} at {} is not supported: use > or >>",
                    self.position()
                )));
            } else {
                return Ok(left);
            }
        }
    }

    fn spanset_primary(&mut self) -> Result<Spanset, TraceQlError> {
        if self.eat(&Token::LParen) {
            let inner = self.spanset_or()?;
            if !self.eat(&Token::RParen) {
                return Err(self.unexpected("')'"));
            }
            return Ok(inner);
        }
        if !self.eat(&Token::LBrace) {
            return Err(self.unexpected("'{'"));
        }
        if self.eat(&Token::RBrace) {
            return Ok(Spanset::Filter(Condition::True));
        }
        let condition = self.condition_or()?;
        if !self.eat(&Token::RBrace) {
            return Err(self.unexpected("'}' or '&&' or '||'"));
        }
        Ok(Spanset::Filter(condition))
    }

    fn condition_or(&mut self) -> Result<Condition, TraceQlError> {
        let mut left = self.condition_and()?;
        while self.eat(&Token::OrOr) {
            left = Condition::Or(Box::new(left), Box::new(self.condition_and()?));
        }
        Ok(left)
    }

    fn condition_and(&mut self) -> Result<Condition, TraceQlError> {
        let mut left = self.condition_atom()?;
        while self.eat(&Token::AndAnd) {
            left = Condition::And(Box::new(left), Box::new(self.condition_atom()?));
        }
        Ok(left)
    }

    fn condition_atom(&mut self) -> Result<Condition, TraceQlError> {
        if self.eat(&Token::LParen) {
            let inner = self.condition_or()?;
            if !self.eat(&Token::RParen) {
                return Err(self.unexpected("')'"));
            }
            return Ok(inner);
        }
        let (identifier, at) = match self.tokens.get(self.at) {
            Some((Token::Ident(name), at)) => (name.clone(), *at),
            _ => return Err(self.unexpected("a condition such as span.http.route = \"/\"")),
        };
        self.at += 1;
        match identifier.as_str() {
            "true" => return Ok(Condition::True),
            "false" => return Ok(Condition::False),
            _ => {}
        }
        let field = Field::parse(&identifier)
            .map_err(|e| TraceQlError(format!("{} (at position {at})", e.0)))?;
        let op = match self.peek() {
            Some(Token::Op(op)) => *op,
            _ => {
                return Err(self.unexpected(&format!(
                    "a comparison (=, !=, >, >=, <, <=, =~, !~) after {identifier}"
                )));
            }
        };
        self.at += 1;
        let value = self.literal(&field)?;
        check_types(&field, op, &value)?;
        let regex = match (op, &value) {
            (Op::Match | Op::NotMatch, Literal::Str(pattern)) => {
                Some(Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                    TraceQlError(format!("invalid regular expression {pattern:?}: {e}"))
                })?)
            }
            _ => None,
        };
        Ok(Condition::Compare {
            field,
            op,
            value,
            regex,
        })
    }

    fn literal(&mut self, field: &Field) -> Result<Literal, TraceQlError> {
        let literal = match self.tokens.get(self.at) {
            Some((Token::Str(s), _)) => Literal::Str(s.clone()),
            Some((Token::Duration(nanos), _)) => Literal::Duration(*nanos),
            Some((Token::Number(n), at)) => match n.parse::<i64>() {
                Ok(i) => Literal::Int(i),
                Err(_) => Literal::Float(n.parse().map_err(|_| {
                    TraceQlError(format!("{n:?} at position {at} is not a number"))
                })?),
            },
            Some((Token::Ident(word), at)) => match (field, word.as_str()) {
                (_, "true") => Literal::Bool(true),
                (_, "false") => Literal::Bool(false),
                (_, "nil") => {
                    return Err(TraceQlError(format!(
                        "nil (at position {at}) is not supported"
                    )));
                }
                (Field::Status, "error") => Literal::Status(StatusCode::Error),
                (Field::Status, "ok") => Literal::Status(StatusCode::Ok),
                (Field::Status, "unset") => Literal::Status(StatusCode::Unset),
                (Field::Kind, kind) => Literal::Kind(match kind {
                    "unspecified" => SpanKind::Unspecified,
                    other => SpanKind::parse(other).ok_or_else(|| {
                        TraceQlError(format!(
                            "{other:?} at position {at} is not a span kind (server, client, producer, consumer, internal, unspecified)"
                        ))
                    })?,
                }),
                (Field::Status, other) => {
                    return Err(TraceQlError(format!(
                        "{other:?} at position {at} is not a status (error, ok, unset)"
                    )));
                }
                (_, other) => {
                    return Err(TraceQlError(format!(
                        "{other:?} at position {at} is not a value: quote strings"
                    )));
                }
            },
            _ => return Err(self.unexpected("a value")),
        };
        self.at += 1;
        Ok(literal)
    }
}

/// Refuses comparisons that can never hold because the types differ, as
/// Tempo does, so a typo is an error rather than an empty answer.
fn check_types(field: &Field, op: Op, value: &Literal) -> Result<(), TraceQlError> {
    let wrong = |wants: &str| {
        Err(TraceQlError(format!(
            "{} compares with {wants}, not {value:?}",
            field.identifier()
        )))
    };
    let is_regex = matches!(op, Op::Match | Op::NotMatch);
    if is_regex && !matches!(value, Literal::Str(_)) {
        return Err(TraceQlError(format!(
            "{} with {} needs a string pattern",
            field.identifier(),
            op_text(op)
        )));
    }
    let equality_only = || {
        if matches!(op, Op::Eq | Op::Ne) {
            Ok(())
        } else {
            Err(TraceQlError(format!(
                "{} supports only = and !=",
                field.identifier()
            )))
        }
    };
    match field {
        Field::Name | Field::StatusMessage | Field::RootName | Field::RootServiceName => {
            match value {
                Literal::Str(_) => Ok(()),
                _ => wrong("a string"),
            }
        }
        Field::Duration | Field::TraceDuration => match value {
            Literal::Duration(_) => Ok(()),
            _ => wrong("a duration such as 100ms"),
        },
        Field::Status => match value {
            Literal::Status(_) => equality_only(),
            _ => wrong("error, ok or unset"),
        },
        Field::Kind => match value {
            Literal::Kind(_) => equality_only(),
            _ => wrong("a span kind"),
        },
        Field::Attribute(..) => match value {
            Literal::Bool(_) => equality_only(),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;

    fn span(id: u8, parent: Option<u8>, service: &str, name: &str) -> Span {
        let mut s = sample_span(1, id, service);
        s.parent_span_id = parent.map(|p| [p; 8]);
        s.span_id = [id; 8];
        s.name = name.into();
        s.status_code = StatusCode::Unset;
        s.kind = SpanKind::Internal;
        s
    }

    /// frontend GET /cart (root) -> cart getCart (error) -> redis GET
    fn trace() -> Vec<Span> {
        let mut root = span(1, None, "frontend", "GET /cart");
        root.kind = SpanKind::Server;
        root.attributes = vec![KeyValue::new("http.status_code", AttrValue::Int(500))];
        root.end_unix_nano = root.start_unix_nano + 5_000_000;
        let mut cart = span(2, Some(1), "cart", "getCart");
        cart.status_code = StatusCode::Error;
        cart.attributes = vec![KeyValue::new("retry", AttrValue::Bool(true))];
        let mut redis = span(3, Some(2), "redis", "GET");
        redis.kind = SpanKind::Client;
        redis.attributes = vec![KeyValue::new("db.ratio", AttrValue::Double(0.5))];
        vec![root, cart, redis]
    }

    fn selected(query: &str) -> Vec<usize> {
        TraceQl::parse(query)
            .unwrap_or_else(|e| panic!("{query}: {e}"))
            .evaluate(&trace())
    }

    #[test]
    fn filters_select_the_spans_that_satisfy_them() {
        assert_eq!(selected("{}"), vec![0, 1, 2]);
        assert_eq!(selected(""), vec![0, 1, 2]);
        assert_eq!(selected(r#"{ resource.service.name = "cart" }"#), vec![1]);
        assert_eq!(selected(r#"{ .service.name = "redis" }"#), vec![2]);
        assert_eq!(selected("{ span.http.status_code >= 500 }"), vec![0]);
        assert_eq!(selected("{ span.http.status_code != 200 }"), vec![0]);
        assert_eq!(selected("{ status = error }"), vec![1]);
        assert_eq!(selected("{ kind = client || kind = server }"), vec![0, 2]);
        assert_eq!(selected(r#"{ name =~ "GET.*" }"#), vec![0, 2]);
        assert_eq!(selected(r#"{ name =~ "GET" }"#), vec![2]);
        assert_eq!(selected("{ span.retry = true }"), vec![1]);
        assert_eq!(selected("{ span.db.ratio < 1 }"), vec![2]);
        assert_eq!(selected("{ duration > 1ms }"), vec![0]);
        assert_eq!(
            selected(r#"{ rootServiceName = "frontend" && kind = client }"#),
            vec![2]
        );
    }

    #[test]
    fn spanset_and_structural_operators_follow_tempo() {
        assert_eq!(
            selected("{ status = error } && { kind = client }"),
            vec![1, 2]
        );
        assert_eq!(
            selected("{ status = error } && { kind = consumer }"),
            Vec::<usize>::new()
        );
        assert_eq!(selected("{ kind = server } >> { kind = client }"), vec![2]);
        assert_eq!(
            selected("{ kind = server } > { kind = client }"),
            Vec::<usize>::new()
        );
        assert_eq!(selected("{ kind = server } > { status = error }"), vec![1]);
        assert_eq!(
            selected("({ kind = server } || { kind = client }) && { }"),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn the_required_service_narrows_only_when_every_match_needs_it() {
        let service = |q: &str| TraceQl::parse(q).unwrap().required_service();
        assert_eq!(
            service(r#"{ resource.service.name = "a" && duration > 1s }"#),
            Some("a".into())
        );
        assert_eq!(
            service(r#"{ resource.service.name = "a" } >> {}"#),
            Some("a".into())
        );
        assert_eq!(
            service(r#"{ resource.service.name = "a" || name = "x" }"#),
            None
        );
        assert_eq!(service(r#"{ resource.service.name = "a" } || {}"#), None);
    }

    proptest::proptest! {
        #[test]
        fn parsing_and_evaluating_never_panic(text in "\\PC{0,40}") {
            if let Ok(query) = TraceQl::parse(&text) {
                let _ = query.evaluate(&trace());
            }
        }

        #[test]
        fn spliced_queries_never_panic(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "{", "}", "(", ")", "&&", "||", ">>", ">", "<", "=", "!=", "=~", "!~", "|",
                "span.a", "resource.service.name", ".x", "name", "status", "kind", "duration",
                "\"x\"", "error", "server", "1.5ms", "-3", "2.5", "true", "nil", "`r`",
            ]), 0..12)
        ) {
            let text = parts.join(" ");
            if let Ok(query) = TraceQl::parse(&text) {
                let _ = query.evaluate(&trace());
            }
        }
    }

    #[test]
    fn errors_name_the_unsupported_part() {
        let error = |q: &str| TraceQl::parse(q).unwrap_err().to_string();
        assert!(error("{} | count() > 2").contains("pipelines"));
        assert!(error("{} << {}").contains("\"<<\""));
        assert!(error("{} !>> {}").contains("\"!>>\""));
        assert!(error("{} ~ {}").contains("\"~\""));
        assert!(error("{ span.x = nil }").contains("nil"));
        assert!(error("{ event.name = \"x\" }").contains("scope"));
        assert!(error("{ span:id = \"x\" }").contains("intrinsic"));
        assert!(error("{ duration > \"x\" }").contains("duration"));
        assert!(error("{ status = teapot }").contains("status"));
        assert!(error("{ kind > server }").contains("only = and !="));
        assert!(error("{ name =~ \"(\" }").contains("regular expression"));
        assert!(error("{ name = \"x\"").contains("'}'"));
        assert!(error("{ name = \"x }").contains("not closed"));
        assert!(error("{ name }").contains("comparison"));
    }
}
