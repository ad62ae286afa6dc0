//! Answers of `/api/v1/query_range` and how two systems' answers are compared: the same
//! series (by label set), the same timestamps, values equal within 1e-9 relative.

use super::servers::Server;
use anyhow::Context;

/// A `query_range` answer: each series (its labels as JSON text; `serde_json` keeps keys
/// sorted) with its points.
pub(super) type Answer = std::collections::BTreeMap<String, Vec<(f64, f64)>>;

pub(super) fn parse_answer(server: &Server, body: &[u8]) -> anyhow::Result<Answer> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .with_context(|| format!("{} answered with something other than JSON", server.name))?;
    let result = v["data"]["result"]
        .as_array()
        .with_context(|| format!("no data.result in {}'s answer", server.name))?;
    let mut answer = Answer::new();
    for s in result {
        let points = s["values"]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .map(|p| {
                        let t = p[0].as_f64().unwrap_or(f64::NAN);
                        let v = p[1].as_str().and_then(|v| v.parse().ok());
                        (t, v.unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default();
        answer.insert(s["metric"].to_string(), points);
    }
    Ok(answer)
}

pub(super) fn points(a: &Answer) -> usize {
    a.values().map(Vec::len).sum()
}

/// Points of `a` that `b` lacks (same series, same timestamp) or holds with another value
/// (relative difference over 1e-9; NaN equals NaN).
pub(super) fn differing_points(a: &Answer, b: &Answer) -> usize {
    a.iter()
        .map(|(series, pa)| {
            let Some(pb) = b.get(series) else {
                return pa.len();
            };
            let pb: std::collections::HashMap<u64, f64> =
                pb.iter().map(|(t, v)| (t.to_bits(), *v)).collect();
            pa.iter()
                .filter(|(t, va)| {
                    pb.get(&t.to_bits()).is_none_or(|vb| {
                        !(va.is_nan() && vb.is_nan()
                            || (va - vb).abs() <= 1e-9 * va.abs().max(vb.abs()))
                    })
                })
                .count()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_compare_by_series_timestamp_and_value() {
        let a: Answer = [(
            "{\"a\":\"1\"}".to_owned(),
            vec![(1.0, 2.0), (2.0, f64::NAN)],
        )]
        .into();
        assert_eq!(differing_points(&a, &a), 0);
        let mut b = a.clone();
        if let Some(p) = b.values_mut().next() {
            p[0].1 = 2.0 + 1e-6;
        }
        assert_eq!(differing_points(&a, &b), 1);
        assert_eq!(differing_points(&a, &Answer::new()), 2);
        assert_eq!(points(&a), 2);
    }
}
