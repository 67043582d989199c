//! The PromQL differential corpus, `collector/tests/it/promql_diff/queries.txt`:
//! read by the differential test against Prometheus and by
//! `strand-bench compare`, so both run exactly the same queries.
//!
//! One query per line; blank lines and `#` comments are skipped. A line may
//! start with tags: `[instant]` (no range query) and `[step=N]` (the range
//! query's step in seconds). Placeholders name times of the data set:
//! `{START}`, `{END}`, `{T_MINUS_20M}` and `{T_MINUS_45M}`.

use anyhow::{Context, Result, ensure};

/// The corpus file's text.
pub const CORPUS: &str = include_str!("../../collector/tests/it/promql_diff/queries.txt");

/// One query of the corpus, its placeholders filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusQuery {
    pub expr: String,
    /// Tagged `[instant]`: asked as an instant query only.
    pub instant_only: bool,
    /// The range query's step in seconds, where a `[step=N]` tag sets one.
    pub step: Option<i64>,
}

/// The queries of `corpus` for data from `start` to `end` (Unix seconds).
/// An unknown tag or placeholder is an error, not a query sent as written.
pub fn corpus_queries(corpus: &str, start: i64, end: i64) -> Result<Vec<CorpusQuery>> {
    let placeholders = [
        ("{START}", start),
        ("{END}", end),
        ("{T_MINUS_20M}", end - 20 * 60),
        ("{T_MINUS_45M}", end - 45 * 60),
    ];
    let mut queries = Vec::new();
    for line in corpus.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (mut rest, mut instant_only, mut step) = (line, false, None);
        while let Some(tagged) = rest.strip_prefix('[') {
            let (tag, after) = tagged
                .split_once(']')
                .with_context(|| format!("unterminated tag in corpus line {line:?}"))?;
            match tag {
                "instant" => instant_only = true,
                _ => {
                    let seconds = tag
                        .strip_prefix("step=")
                        .and_then(|s| s.parse().ok())
                        .with_context(|| format!("unknown tag [{tag}] in corpus line {line:?}"))?;
                    step = Some(seconds);
                }
            }
            rest = after.trim_start();
        }
        let mut expr = rest.to_string();
        for (placeholder, value) in placeholders {
            expr = expr.replace(placeholder, &value.to_string());
        }
        ensure!(
            !expr.contains("{T_") && !expr.contains("{START") && !expr.contains("{END"),
            "unknown placeholder in corpus line {line:?}"
        );
        queries.push(CorpusQuery {
            expr,
            instant_only,
            step,
        });
    }
    Ok(queries)
}
