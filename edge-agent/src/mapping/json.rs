//! The JSON payload decoder: one JSON object, any nesting, one value per numeric leaf.
//!
//! A leaf's path joins the object keys on the way with `.` (`{"sensors":{"temp":1}}` has the
//! path `sensors.temp`); its field name joins them with `_` (`sensors_temp`) unless `rename`
//! gives one. Numbers are values, booleans 1 and 0; strings, `null` and arrays are skipped
//! (counted as `not_numeric`). The timestamp comes from `ts`/`timestamp` or the rule's
//! `timestamp-field`, read as its `timestamp-format` says.

use super::rules::{DEFAULT_TIMESTAMP_FIELDS, Rule, TimestampField, TimestampFormat};
use super::{Rejection, SkipReason, Tally};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The values of one JSON object.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub timestamp_ms: i64,
    /// Field name (not yet sanitised) and value.
    pub values: Vec<(String, f64)>,
}

/// Decodes `text`, which must be one JSON object. An object without a kept numeric value is
/// refused, so a message never silently disappears.
pub(crate) fn decode(
    text: &str,
    rule: &Rule,
    received_ms: i64,
    tally: &mut Tally,
) -> Result<Fields, Rejection> {
    let object: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    let timestamp = match &rule.timestamp_field {
        TimestampField::Default => DEFAULT_TIMESTAMP_FIELDS.iter().find_map(|k| object.get(*k)),
        TimestampField::Path(path) => lookup(&object, path),
        TimestampField::None => None,
    };
    let timestamp_ms = match timestamp {
        Some(value) => parse_timestamp(value, rule.timestamp_format)?,
        None => received_ms,
    };
    let mut walk = Walk {
        rule,
        values: Vec::new(),
        skipped: 0,
        path: String::new(),
        name: String::new(),
    };
    walk.object(&object, true);
    if walk.values.is_empty() {
        return Err(Rejection::NoNumericFields);
    }
    tally.skip(SkipReason::NotNumeric, walk.skipped);
    Ok(Fields {
        timestamp_ms,
        values: walk.values,
    })
}

struct Walk<'r> {
    rule: &'r Rule,
    values: Vec<(String, f64)>,
    skipped: u64,
    /// The current path (`a.b`) and default field name (`a_b`), grown and shrunk in place.
    path: String,
    name: String,
}

impl Walk<'_> {
    fn object(&mut self, object: &Map<String, Value>, top: bool) {
        for (key, value) in object {
            if top && self.is_timestamp(key) {
                continue;
            }
            let (path_len, name_len) = (self.path.len(), self.name.len());
            if !self.path.is_empty() {
                self.path.push('.');
                self.name.push('_');
            }
            self.path.push_str(key);
            self.name.push_str(key);
            self.value(value);
            self.path.truncate(path_len);
            self.name.truncate(name_len);
        }
    }

    fn value(&mut self, value: &Value) {
        if let Value::Object(inner) = value {
            return self.object(inner, false);
        }
        if matches!(&self.rule.timestamp_field, TimestampField::Path(p) if *p == self.path)
            || !self.rule.fields.keeps(&self.path, '.')
        {
            return;
        }
        let number = match value {
            Value::Number(n) => n.as_f64(),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Null | Value::String(_) | Value::Array(_) | Value::Object(_) => None,
        };
        match number {
            Some(v) => {
                let name = match self.rule.fields.renamed(&self.path) {
                    Some(renamed) => renamed.to_owned(),
                    None => self.name.clone(),
                };
                self.values.push((name, v));
            }
            None => self.skipped += 1,
        }
    }

    /// Top-level keys that are never values with the default timestamp fields.
    fn is_timestamp(&self, key: &str) -> bool {
        self.rule.timestamp_field == TimestampField::Default
            && DEFAULT_TIMESTAMP_FIELDS.contains(&key)
    }
}

/// The value at a dotted path (`meta.time`).
fn lookup<'v>(object: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    let mut segments = path.split('.');
    let mut current = object.get(segments.next()?)?;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

fn parse_timestamp(value: &Value, format: TimestampFormat) -> Result<i64, Rejection> {
    let invalid = |what: String| Rejection::InvalidTimestamp(what);
    match value {
        Value::Number(_) if format == TimestampFormat::Rfc3339 => Err(invalid(format!(
            "{value} is a number, timestamp-format is rfc3339"
        ))),
        Value::Number(n) => n
            .as_i64()
            .and_then(|i| format.integer_to_ms(i))
            .or_else(|| n.as_f64().and_then(|f| format.number_to_ms(f)))
            .ok_or_else(|| invalid(format!("{n} is out of range"))),
        Value::String(s) if matches!(format, TimestampFormat::Auto | TimestampFormat::Rfc3339) => {
            let at =
                OffsetDateTime::parse(s, &Rfc3339).map_err(|e| invalid(format!("{s:?}: {e}")))?;
            i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000))
                .map_err(|_| invalid(format!("{s:?} is out of range")))
        }
        // A numeric unit also takes the number as a string ("1700000000"), as devices often
        // send it that way.
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|i| format.integer_to_ms(i))
            .or_else(|| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| format.number_to_ms(f))
            })
            .ok_or_else(|| invalid(format!("{s:?} is not a number in the configured unit"))),
        other => Err(invalid(format!(
            "expected a number or a string, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::rules::RuleConfig;
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn rule(extra: &str) -> Rule {
        let text = format!("topic = \"#\"\ndecoder = \"json\"\n{extra}");
        let config: RuleConfig = toml::from_str(&text).expect("valid TOML");
        config.validate().expect("valid rule")
    }

    fn decode_ok(rule: &Rule, json: &str) -> (i64, Vec<(String, f64)>, u64) {
        let mut tally = Tally::default();
        let mut fields = decode(json, rule, NOW, &mut tally).expect("decodes");
        fields.values.sort_by(|a, b| a.0.cmp(&b.0));
        (
            fields.timestamp_ms,
            fields.values,
            tally.skipped[SkipReason::NotNumeric as usize],
        )
    }

    fn values(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect()
    }

    #[test]
    fn nested_objects_are_flattened() {
        let (ts, got, skipped) = decode_ok(
            &rule(""),
            r#"{"sensors": {"temp": 21.5, "hum": {"rel": 40}}, "ok": true,
                "fw": "1.2", "list": [1], "none": null, "ts": 1700000000123}"#,
        );
        assert_eq!(ts, 1_700_000_000_123);
        assert_eq!(
            got,
            values(&[
                ("ok", 1.0),
                ("sensors_hum_rel", 40.0),
                ("sensors_temp", 21.5)
            ])
        );
        assert_eq!(skipped, 3, "string, array and null are counted");
    }

    #[test]
    fn include_exclude_rename() {
        let r = rule(
            r#"include = ["sensors", "battery"]
               exclude = ["sensors.debug"]
               rename = { "sensors.temp" = "temperature" }"#,
        );
        let (_, got, skipped) = decode_ok(
            &r,
            r#"{"sensors": {"temp": 21.5, "debug": {"x": 1}, "raw": "x"},
                "battery": 3.7, "other": 1}"#,
        );
        assert_eq!(got, values(&[("battery", 3.7), ("temperature", 21.5)]));
        assert_eq!(skipped, 1, "only kept fields count as skipped");
    }

    #[test]
    fn timestamp_field_and_formats() {
        let ts = |extra: &str, json: &str| decode_ok(&rule(extra), json).0;
        assert_eq!(ts("", r#"{"v": 1}"#), NOW);
        assert_eq!(ts("", r#"{"v": 1, "timestamp": 42}"#), 42);
        assert_eq!(ts("", r#"{"v": 1, "ts": 7, "timestamp": 42}"#), 7);
        assert_eq!(ts("", r#"{"v": 1, "ts": "1970-01-01T00:00:01.5Z"}"#), 1500);
        let nested = r#"timestamp-field = "meta.time""#;
        assert_eq!(ts(nested, r#"{"v": 1, "meta": {"time": 9}}"#), 9);
        assert_eq!(
            ts(nested, r#"{"v": 1, "ts": 5}"#),
            NOW,
            "ts is then a value"
        );
        let seconds = "timestamp-format = \"s\"";
        assert_eq!(ts(seconds, r#"{"v": 1, "ts": 1700000000.25}"#), NOW + 250);
        assert_eq!(ts(seconds, r#"{"v": 1, "ts": "1700000000"}"#), NOW);
        let nanos = "timestamp-format = \"ns\"";
        assert_eq!(ts(nanos, r#"{"v": 1, "ts": 1700000000000000001}"#), NOW);
        let micros = "timestamp-format = \"us\"";
        assert_eq!(ts(micros, r#"{"v": 1, "ts": 1700000000000999}"#), NOW);
        let rfc = "timestamp-format = \"rfc3339\"";
        assert_eq!(ts(rfc, r#"{"v": 1, "ts": "2023-11-14T22:13:20Z"}"#), NOW);
        let (_, got, _) = decode_ok(&rule(nested), r#"{"v": 1, "meta": {"time": 9, "x": 2}}"#);
        assert_eq!(
            got,
            values(&[("meta_x", 2.0), ("v", 1.0)]),
            "the time is no value"
        );
        let off = "timestamp-field = \"\"";
        let (ts_off, got, _) = decode_ok(&rule(off), r#"{"ts": 5}"#);
        assert_eq!((ts_off, got), (NOW, values(&[("ts", 5.0)])));
    }

    #[test]
    fn refusals() {
        let reason = |extra: &str, json: &str| {
            decode(json, &rule(extra), NOW, &mut Tally::default())
                .err()
                .map(|e| e.reason())
        };
        use super::super::RejectReason::*;
        assert_eq!(reason("", "[1]"), Some(InvalidJson));
        assert_eq!(reason("", r#"{"a": 1"#), Some(InvalidJson));
        assert_eq!(reason("", r#"{"a": "x"}"#), Some(NoNumericFields));
        assert_eq!(
            reason("include = [\"b\"]", r#"{"a": 1}"#),
            Some(NoNumericFields)
        );
        assert_eq!(
            reason("", r#"{"a": 1, "ts": "yesterday"}"#),
            Some(InvalidTimestamp)
        );
        assert_eq!(
            reason("", r#"{"a": 1, "ts": true}"#),
            Some(InvalidTimestamp)
        );
        assert_eq!(
            reason("", r#"{"a": 1, "ts": 1e300}"#),
            Some(InvalidTimestamp)
        );
        let rfc = "timestamp-format = \"rfc3339\"";
        assert_eq!(reason(rfc, r#"{"a": 1, "ts": 5}"#), Some(InvalidTimestamp));
        let s = "timestamp-format = \"s\"";
        assert_eq!(
            reason(s, r#"{"a": 1, "ts": "soon"}"#),
            Some(InvalidTimestamp)
        );
        assert_eq!(
            reason(s, r#"{"a": 1, "ts": 9223372036854775807}"#),
            Some(InvalidTimestamp)
        );
    }
}
