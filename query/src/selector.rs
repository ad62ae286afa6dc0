//! From the parser's selectors to the data source's [`Matcher`]s.
//!
//! Also parses the API's `match[]` parameter, which takes a bare series selector.

use crate::error::QueryError;
use crate::matcher::{MatchOp, Matcher};
use promql_parser::label::{MatchOp as ParsedOp, Matcher as ParsedMatcher};
use promql_parser::parser::{Expr, VectorSelector};
use protocols::model::METRIC_NAME_LABEL;
use regex::Regex;

/// The matchers of `selector`, its metric name included as a `__name__` matcher.
///
/// Refuses a selector none of whose matchers rejects the empty string: it would select every
/// series of the tenant, almost always by mistake. (The parser already refuses those; this
/// keeps the rule even if a selector is built another way.)
pub(crate) fn matchers(selector: &VectorSelector) -> Result<Vec<Matcher>, QueryError> {
    if !selector.matchers.or_matchers.is_empty() {
        return Err(QueryError::Unsupported(
            "`or` inside a label selector".into(),
        ));
    }
    let mut out = Vec::with_capacity(selector.matchers.matchers.len() + 1);
    if let Some(name) = &selector.name {
        out.push(Matcher::equal(METRIC_NAME_LABEL, name.as_str()));
    }
    for m in &selector.matchers.matchers {
        out.push(convert(m)?);
    }
    if out.iter().all(Matcher::matches_empty) {
        return Err(QueryError::EmptySelector);
    }
    Ok(out)
}

/// Parses a series selector such as `up{job="node"}`, as taken by `match[]`: no range, no
/// `offset`, no `@`, nothing around it.
pub fn parse_series_selector(input: &str) -> Result<Vec<Matcher>, QueryError> {
    match crate::parse::parse(input)? {
        Expr::VectorSelector(vs) if vs.offset.is_none() && vs.at.is_none() => matchers(&vs),
        _ => Err(QueryError::Parse(format!(
            "{input:?} is not a series selector such as up{{job=\"node\"}}"
        ))),
    }
}

fn convert(m: &ParsedMatcher) -> Result<Matcher, QueryError> {
    let op = match &m.op {
        ParsedOp::Equal => MatchOp::Equal(m.value.clone()),
        ParsedOp::NotEqual => MatchOp::NotEqual(m.value.clone()),
        ParsedOp::Re(re) => MatchOp::Regex(dot_matches_newline(re)?),
        ParsedOp::NotRe(re) => MatchOp::NotRegex(dot_matches_newline(re)?),
    };
    Ok(Matcher {
        name: m.name.clone(),
        op,
    })
}

/// The parser has already anchored the pattern and rewritten Go-only syntax (a literal `{`)
/// into something the `regex` crate accepts; Prometheus also lets `.` match a newline, which
/// the parser's regex does not, so wrap it in `(?s:...)`.
fn dot_matches_newline(parsed: &Regex) -> Result<Regex, QueryError> {
    Regex::new(&format!("(?s:{})", parsed.as_str()))
        .map_err(|e| QueryError::Parse(format!("invalid regular expression: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use promql_parser::label::Matchers;

    fn accepts(ms: &[Matcher], labels: &[(&str, &str)]) -> bool {
        ms.iter().all(|m| {
            let v = labels
                .iter()
                .find(|(n, _)| *n == m.name)
                .map_or("", |(_, v)| *v);
            m.matches(v)
        })
    }

    #[test]
    fn metric_name_becomes_a_matcher() {
        let ms = parse_series_selector(r#"temp{site="s1"}"#).expect("valid");
        assert!(accepts(&ms, &[("__name__", "temp"), ("site", "s1")]));
        assert!(!accepts(&ms, &[("__name__", "humidity"), ("site", "s1")]));
        assert!(!accepts(&ms, &[("__name__", "temp")]));
    }

    #[test]
    fn regexes_are_anchored_and_dot_matches_newline() {
        let ms = parse_series_selector(r#"{__name__=~"te.p", site!~"s[0-9]"}"#).expect("valid");
        assert!(accepts(&ms, &[("__name__", "temp"), ("site", "x1")]));
        assert!(accepts(&ms, &[("__name__", "temp")]));
        assert!(!accepts(&ms, &[("__name__", "temps")]));
        assert!(!accepts(&ms, &[("__name__", "temp"), ("site", "s1")]));
        let ms = parse_series_selector(r#"{a=~"x.y"}"#).expect("valid");
        assert!(accepts(&ms, &[("a", "x\ny")]));
    }

    #[test]
    fn parsed_regexes_expose_literal_values_and_prefixes() {
        let ms = parse_series_selector(r#"{a=~"host-1.*", b=~"user|system", c=~"x{y}|z"}"#)
            .expect("valid");
        let by = |name: &str| ms.iter().find(|m| m.name == name).expect("matcher");
        assert_eq!(by("a").regex_prefix(), Some("host-1"));
        assert_eq!(by("b").regex_values(), Some(vec!["user", "system"]));
        // The parser escaped the brace: not plain literals any more.
        assert_eq!(by("c").regex_values(), None);
    }

    #[test]
    fn go_style_literal_brace_is_accepted() {
        let ms = parse_series_selector(r#"{a=~"x{y}"}"#).expect("valid");
        assert!(accepts(&ms, &[("a", "x{y}")]));
    }

    #[test]
    fn selector_matching_everything_is_refused() {
        let everything = VectorSelector::new(
            None,
            Matchers::new(vec![ParsedMatcher::new(ParsedOp::NotEqual, "a", "x")]),
        );
        assert!(matches!(
            matchers(&everything),
            Err(QueryError::EmptySelector)
        ));
        // The parser refuses it first; it comes out as the same variant.
        assert!(matches!(
            parse_series_selector(r#"{a=~".*"}"#),
            Err(QueryError::EmptySelector)
        ));
    }

    #[test]
    fn only_bare_selectors_are_series_selectors() {
        for input in ["up[5m]", "up offset 1m", "sum(up)", "1", "up @ 10"] {
            assert!(
                matches!(parse_series_selector(input), Err(QueryError::Parse(_))),
                "{input}"
            );
        }
        assert!(matches!(
            parse_series_selector(r#"{a="1" or b="2"}"#),
            Err(QueryError::Unsupported(_))
        ));
    }
}
