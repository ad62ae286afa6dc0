//! PromQL text to the parser's AST, with our error type. Below the engine (queries) and the
//! selector module (the API's `match[]`), which both parse.

use crate::error::QueryError;
use promql_parser::parser::Expr;
use promql_parser::parser::function::{Function, register_extra_functions};
use promql_parser::parser::value::ValueType;
use std::borrow::Cow;
use std::sync::OnceLock;

/// Teaches the parser Prometheus 2's name of `double_exponential_smoothing`, `holt_winters`,
/// which promql-parser (following Prometheus 3) does not know. The parser's function table
/// is process-wide; registering once is enough, and a failure (the name became a built-in)
/// leaves the built-in in place.
fn register_holt_winters() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        let _ = register_extra_functions(vec![Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        )]);
    });
}

/// Parses PromQL, mapping the parser's error into ours.
pub(crate) fn parse(query: &str) -> Result<Expr, QueryError> {
    register_holt_winters();
    if query.trim().is_empty() {
        // The parser's own message for this case is unhelpful; this is Prometheus' wording.
        return Err(QueryError::Parse("no expression found in input".into()));
    }
    let query = widen_durations(query)?;
    promql_parser::parser::parse(&query).map_err(|message| {
        // The parser refuses a selector that matches everything in Prometheus' words, which
        // are also `EmptySelector`'s: keep one variant for the one error.
        if message == QueryError::EmptySelector.to_string() {
            QueryError::EmptySelector
        } else {
            QueryError::Parse(message)
        }
    })
}

/// Units of a duration literal in the order Prometheus requires them, with their length in
/// milliseconds (a year is 365 days).
const DURATION_UNITS: [(&str, u128); 7] = [
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// Rewrites duration literals that promql-parser misreads: it parses each part of a
/// duration (`315360000000ms`, the `5000000000` of `1h5000000000s`) as a `u32` and silently
/// takes a part that does not fit as zero, so `[315360000000ms]` became a zero range. Such a
/// literal is replaced by the same duration written with parts that fit
/// (`315360000000ms` → `10y`); Prometheus takes any duration up to Go's `time.Duration`
/// (2^63 - 1 ns, about 292 years) and refuses a longer one with "duration out of range", as
/// this does. Everything else, string literals and comments included, is left as written.
fn widen_durations(query: &str) -> Result<Cow<'_, str>, QueryError> {
    let bytes = query.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'\'' | b'`') => {
                // Skip to the closing quote; only `"` and `'` strings have escapes.
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if quote != b'`' && bytes[i] == b'\\' {
                        2
                    } else {
                        1
                    };
                }
                i += 1;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.' | b':'))
                {
                    i += 1;
                }
                let token = &query[start..i];
                if let Some(ms) = oversized_duration_ms(token)? {
                    let text = out.get_or_insert_with(String::new);
                    text.push_str(&query[copied..start]);
                    text.push_str(&format_duration(ms));
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    Ok(match out {
        None => Cow::Borrowed(query),
        Some(mut text) => {
            text.push_str(&query[copied.min(query.len())..]);
            Cow::Owned(text)
        }
    })
}

/// `Some(milliseconds)` when `token` is a duration literal (`1h30m`, `315360000000ms`) with a
/// part beyond `u32`, which promql-parser would misread; `None` for any other token, and for
/// durations it reads right. A duration longer than Prometheus takes is an error.
fn oversized_duration_ms(token: &str) -> Result<Option<u128>, QueryError> {
    if !token.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok(None);
    }
    let mut rest = token;
    let mut next_unit = 0;
    let mut total: u128 = 0;
    let mut oversized = false;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Ok(None);
        }
        let (number, after) = rest.split_at(digits);
        // `ms` before `m`: the longer unit wins where both match.
        let Some((k, unit, ms)) = DURATION_UNITS
            .iter()
            .enumerate()
            .skip(next_unit)
            .filter(|(_, (u, _))| after.starts_with(u))
            .map(|(k, (u, ms))| (k, *u, *ms))
            .max_by_key(|(_, u, _)| u.len())
        else {
            return Ok(None);
        };
        // Digits only, so a failure is an overflow: far beyond what Prometheus takes.
        let value: u128 = number.parse().map_err(|_| out_of_range())?;
        oversized |= value > u128::from(u32::MAX);
        total = value
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(out_of_range)?;
        next_unit = k + 1;
        rest = &after[unit.len()..];
    }
    // Go's time.Duration: nanoseconds in an i64.
    if total.saturating_mul(1_000_000) > i64::MAX as u128 {
        return Err(out_of_range());
    }
    Ok(oversized.then_some(total))
}

fn out_of_range() -> QueryError {
    QueryError::Parse("duration out of range".into())
}

/// `ms` milliseconds as a duration literal whose parts all fit a `u32`.
fn format_duration(mut ms: u128) -> String {
    let mut text = String::new();
    for (unit, len) in DURATION_UNITS {
        if ms >= len {
            text.push_str(&format!("{}{unit}", ms / len));
            ms %= len;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_beyond_u32_parts_are_rewritten_exactly() {
        for (query, expected) in [
            ("x[315360000000ms]", "x[10y]"),
            (
                "rate(x[5000000000s]) offset 1h5000000000ms",
                "rate(x[158y28w4d8h53m20s]) offset 8w1d21h53m20s",
            ),
            ("x[5m]", "x[5m]"),
            ("x[4294967295ms]", "x[4294967295ms]"),
            // Strings, comments and names are not durations.
            (
                r#"label_replace(x, "a", "315360000000ms", "b", "(.*)")"#,
                r#"label_replace(x, "a", "315360000000ms", "b", "(.*)")"#,
            ),
            ("x # [315360000000ms]", "x # [315360000000ms]"),
            ("x * 315360000000", "x * 315360000000"),
        ] {
            assert_eq!(widen_durations(query).expect(query), expected, "{query}");
        }
        for query in [
            "x[300000y]",
            "x[99999999999999999999999999999999999999999ms]",
        ] {
            let err = widen_durations(query).expect_err(query);
            assert_eq!(err.to_string(), "duration out of range", "{query}");
        }
    }

    #[test]
    fn a_long_range_parses_to_its_length() {
        let Ok(Expr::MatrixSelector(ms)) = parse("x[315360000000ms]") else {
            panic!("not a matrix selector");
        };
        assert_eq!(ms.range.as_millis(), 315_360_000_000);
    }
}
