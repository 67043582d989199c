//! The single JSON result line.
//!
//! Written by hand instead of through `serde_json::json!` because that macro
//! sorts keys alphabetically (the workspace does not enable serde_json's
//! `preserve_order`), and the report is read by people as much as by scripts:
//! keys appear in the documented order.

use serde_json::Value;

use crate::stats::Summary;

/// A JSON object whose keys keep insertion order.
pub struct JsonObject {
    out: String,
}

impl JsonObject {
    pub fn new() -> JsonObject {
        JsonObject {
            out: String::from("{"),
        }
    }

    /// Adds `key` with a plain JSON value (numbers, strings, `None` = null).
    pub fn field(self, key: &str, value: impl Into<Value>) -> JsonObject {
        let value: Value = value.into();
        self.raw(key, &value.to_string())
    }

    /// Adds `key` with a nested object.
    pub fn object(self, key: &str, object: JsonObject) -> JsonObject {
        self.raw(key, &object.finish())
    }

    /// Adds `key` with `{"p50":..,"p99":..,"max":..}` in milliseconds, or
    /// null when nothing was measured.
    pub fn summary(self, key: &str, summary: Option<Summary>) -> JsonObject {
        match summary {
            Some(s) => self.object(
                key,
                JsonObject::new()
                    .field("p50", round(s.p50, 3))
                    .field("p99", round(s.p99, 3))
                    .field("max", round(s.max, 3)),
            ),
            None => self.raw(key, "null"),
        }
    }

    fn raw(mut self, key: &str, json: &str) -> JsonObject {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        self.out.push_str(&Value::from(key).to_string());
        self.out.push(':');
        self.out.push_str(json);
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

impl Default for JsonObject {
    fn default() -> Self {
        JsonObject::new()
    }
}

/// `value` rounded to `decimals` places, so the line stays readable.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_key_order_and_nests() {
        let json = JsonObject::new()
            .field("bench", "traces")
            .field("b", 1.23456)
            .field("a", None::<u64>)
            .summary(
                "lat",
                Some(Summary {
                    p50: 1.0,
                    p99: 2.5,
                    max: 3.0,
                }),
            )
            .summary("none", None)
            .finish();
        assert_eq!(
            json,
            r#"{"bench":"traces","b":1.23456,"a":null,"lat":{"p50":1.0,"p99":2.5,"max":3.0},"none":null}"#
        );
        let parsed: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["lat"]["p99"], 2.5);
    }
}
