//! The InfluxDB line protocol decoder, over [`protocols::line_protocol`]'s parser.
//!
//! A payload holds one or more lines. Every numeric field of a line (floats, `i` and `u`
//! integers, booleans as 1/0) becomes one value named `<measurement>_<field>`, or just
//! `<measurement>` when the field is called `value`; string fields are skipped
//! (`not_numeric`). Tags become labels, their keys made valid label names (other characters
//! become `_`, a leading digit gets a `_` prefix, a leading `__` loses underscores until one
//! is left). The timestamp is read in the rule's `timestamp-format` (default nanoseconds); a
//! line without one gets the receive time.
//!
//! A line that does not parse is skipped and counted (`invalid_line`) without costing the other
//! lines of the payload; a payload with no valid line is refused (`invalid_line_protocol`).

use super::rules::{Rule, TimestampFormat};
use super::{Decoded, Rejection, SkipReason, Tally};
use protocols::line_protocol::{self, FieldValue, Precision};

pub(crate) fn decode(
    payload: &[u8],
    rule: &Rule,
    received_ms: i64,
    tally: &mut Tally,
) -> Result<Vec<Decoded>, Rejection> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Rejection::InvalidLineProtocol("not UTF-8".to_owned()))?;
    let precision = match rule.timestamp_format {
        TimestampFormat::Seconds => Precision::Seconds,
        TimestampFormat::Millis => Precision::Milliseconds,
        TimestampFormat::Micros => Precision::Microseconds,
        // Validation allows only the four units above and `Auto` (nanoseconds) here.
        TimestampFormat::Auto | TimestampFormat::Nanos | TimestampFormat::Rfc3339 => {
            Precision::Nanoseconds
        }
    };
    let mut out = Vec::new();
    let (mut good_lines, mut first_error) = (0usize, None);
    for line in line_protocol::parse(text) {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                tally.skip(SkipReason::InvalidLine, 1);
                tally.note(|| e.to_string());
                first_error.get_or_insert(e.to_string());
                continue;
            }
        };
        let timestamp_ms = match line.timestamp {
            None => received_ms,
            Some(ts) => match precision.to_millis(ts) {
                Some(ms) => ms,
                None => {
                    let e = format!("timestamp {ts} is out of range");
                    tally.skip(SkipReason::InvalidLine, 1);
                    tally.note(|| e.clone());
                    first_error.get_or_insert(e);
                    continue;
                }
            },
        };
        good_lines += 1;
        let labels: Vec<(String, String)> = line
            .tags
            .iter()
            .map(|(k, v)| (label_name(k), v.to_string()))
            .collect();
        for (field, value) in &line.fields {
            let value = match value {
                FieldValue::String(_) => None,
                number => number.as_f64(),
            };
            let Some(value) = value else {
                tally.skip(SkipReason::NotNumeric, 1);
                continue;
            };
            let name = if field == "value" {
                line.measurement.to_string()
            } else {
                format!("{}_{field}", line.measurement)
            };
            out.push(Decoded {
                name: Some(name),
                labels: labels.clone(),
                timestamp_ms,
                value,
            });
        }
    }
    if good_lines == 0 {
        return Err(Rejection::InvalidLineProtocol(
            first_error.unwrap_or_else(|| "no lines".to_owned()),
        ));
    }
    if out.is_empty() {
        return Err(Rejection::NoNumericFields);
    }
    Ok(out)
}

/// A tag key as a valid, non-reserved label name.
fn label_name(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + 1);
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        name.push('_');
    }
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    while name.starts_with("__") {
        name.remove(0);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::super::rules::RuleConfig;
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn rule(extra: &str) -> Rule {
        let text = format!("topic = \"#\"\ndecoder = \"influx\"\n{extra}");
        let config: RuleConfig = toml::from_str(&text).expect("valid TOML");
        config.validate().expect("valid rule")
    }

    fn run(extra: &str, payload: &str) -> (Result<Vec<String>, Rejection>, Tally) {
        let mut tally = Tally::default();
        let got = decode(payload.as_bytes(), &rule(extra), NOW, &mut tally).map(|values| {
            values
                .into_iter()
                .map(|d| {
                    let labels: Vec<String> =
                        d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(
                        "{}{{{}}} {} @{}",
                        d.name.unwrap_or_default(),
                        labels.join(","),
                        d.value,
                        d.timestamp_ms
                    )
                })
                .collect()
        });
        (got, tally)
    }

    #[test]
    fn fields_tags_and_timestamps() {
        let (got, tally) = run(
            "",
            "weather,loc=us\\ west,9x=a temp=21.5,hum=40i,ok=t,note=\"x\" 1700000000000000000\n\
             cpu value=3u\n",
        );
        assert_eq!(
            got.expect("decodes"),
            [
                format!("weather_temp{{loc=us west,_9x=a}} 21.5 @{NOW}"),
                format!("weather_hum{{loc=us west,_9x=a}} 40 @{NOW}"),
                format!("weather_ok{{loc=us west,_9x=a}} 1 @{NOW}"),
                format!("cpu{{}} 3 @{NOW}"),
            ]
        );
        assert_eq!(tally.skipped[SkipReason::NotNumeric as usize], 1);
        let (got, _) = run("timestamp-format = \"s\"", "m v=1 1700000000");
        assert_eq!(got.expect("decodes"), [format!("m_v{{}} 1 @{NOW}")]);
        let (got, _) = run("timestamp-format = \"ms\"", "m v=1 5");
        assert_eq!(got.expect("decodes"), ["m_v{} 1 @5"]);
    }

    #[test]
    fn a_bad_line_costs_only_itself() {
        let (got, tally) = run(
            "",
            "m v=1\nm v=\nm,x v=2\nm v=3 99999999999999999999\nm v=4",
        );
        assert_eq!(
            got.expect("decodes"),
            [format!("m_v{{}} 1 @{NOW}"), format!("m_v{{}} 4 @{NOW}")]
        );
        assert_eq!(tally.skipped[SkipReason::InvalidLine as usize], 3);
        assert!(
            tally.note.is_some(),
            "the first problem is kept for the log"
        );
        let (got, tally) = run("timestamp-format = \"s\"", "m v=1 9223372036854775807");
        assert!(got.is_err());
        assert_eq!(tally.skipped[SkipReason::InvalidLine as usize], 1);
    }

    #[test]
    fn refusals() {
        use super::super::RejectReason::*;
        let reason = |payload: &[u8]| {
            decode(payload, &rule(""), NOW, &mut Tally::default())
                .err()
                .map(|e| e.reason())
        };
        assert_eq!(reason(b""), Some(InvalidLineProtocol));
        assert_eq!(reason(b"# only a comment\n"), Some(InvalidLineProtocol));
        assert_eq!(reason(b"21.5"), Some(InvalidLineProtocol));
        assert_eq!(reason(&[0xff, 0xfe]), Some(InvalidLineProtocol));
        assert_eq!(reason(b"m s=\"text\""), Some(NoNumericFields));
    }

    #[test]
    fn tag_keys_become_label_names() {
        assert_eq!(label_name("host"), "host");
        assert_eq!(label_name("a-b.c"), "a_b_c");
        assert_eq!(label_name("1st"), "_1st");
        assert_eq!(label_name("__name__"), "_name__");
    }
}
