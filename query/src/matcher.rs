//! Label matchers with Prometheus semantics: regexes are fully anchored, and a label that a
//! series lacks compares as the empty string.

use regex::Regex;

#[derive(Debug, Clone)]
pub enum MatchOp {
    Equal(String),
    NotEqual(String),
    Regex(Regex),
    NotRegex(Regex),
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid regular expression {pattern:?}: {source}")]
pub struct InvalidRegex {
    pattern: String,
    source: regex::Error,
}

impl Matcher {
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: MatchOp::Equal(value.into()),
        }
    }

    pub fn not_equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: MatchOp::NotEqual(value.into()),
        }
    }

    pub fn regex(name: impl Into<String>, pattern: &str) -> Result<Self, InvalidRegex> {
        Ok(Self {
            name: name.into(),
            op: MatchOp::Regex(anchored(pattern)?),
        })
    }

    pub fn not_regex(name: impl Into<String>, pattern: &str) -> Result<Self, InvalidRegex> {
        Ok(Self {
            name: name.into(),
            op: MatchOp::NotRegex(anchored(pattern)?),
        })
    }

    /// The value an equality matcher compares with, or a regex matcher's pattern as written
    /// (without the anchors added here): with the operator, what rebuilds the matcher.
    pub fn text(&self) -> &str {
        match &self.op {
            MatchOp::Equal(v) | MatchOp::NotEqual(v) => v,
            MatchOp::Regex(r) | MatchOp::NotRegex(r) => source(r),
        }
    }

    /// Whether a label value satisfies this matcher; pass `""` for an absent label.
    pub fn matches(&self, value: &str) -> bool {
        match &self.op {
            MatchOp::Equal(v) => v == value,
            MatchOp::NotEqual(v) => v != value,
            MatchOp::Regex(r) => r.is_match(value),
            MatchOp::NotRegex(r) => !r.is_match(value),
        }
    }

    /// Whether the matcher accepts an absent label. A selector whose matchers all do would
    /// select every series, which Prometheus refuses.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// For a regex that is an alternation of plain literals (`user|system`), those values:
    /// an index can look each up instead of testing every value.
    pub fn regex_values(&self) -> Option<Vec<&str>> {
        let MatchOp::Regex(r) = &self.op else {
            return None;
        };
        let pattern = source(r);
        let values: Vec<&str> = pattern.split('|').collect();
        values
            .iter()
            .all(|v| !v.chars().any(is_meta))
            .then_some(values)
    }

    /// The literal text every value a regex matcher accepts starts with (`host-1` for
    /// `host-1.*`), when the pattern has one: an index can scan only the values with it.
    /// Patterns with an alternation or a leading group or flag have none.
    pub fn regex_prefix(&self) -> Option<&str> {
        let MatchOp::Regex(r) = &self.op else {
            return None;
        };
        let pattern = source(r);
        if pattern.contains('|') {
            return None;
        }
        let end = pattern.find(is_meta).unwrap_or(pattern.len());
        let mut prefix = &pattern[..end];
        // `ab*`, `ab?`, `ab{0,2}`: the last literal may be absent.
        if pattern[end..].starts_with(['*', '?', '{']) {
            prefix = prefix
                .char_indices()
                .last()
                .map_or("", |(i, _)| &prefix[..i]);
        }
        (!prefix.is_empty()).then_some(prefix)
    }
}

/// The pattern inside the anchoring: [`anchored`]'s `^(?s:…)$`, or the query parser's
/// `^(?:…)$` as the selector wraps it, `(?s:^(?:…)$)`.
fn source(r: &Regex) -> &str {
    let s = r.as_str();
    s.strip_prefix("^(?s:")
        .and_then(|s| s.strip_suffix(")$"))
        .or_else(|| {
            s.strip_prefix("(?s:^(?:")
                .and_then(|s| s.strip_suffix(")$)"))
        })
        .unwrap_or(s)
}

/// Characters with a meaning in a regex; a pattern without them (and `|`) is literal text.
fn is_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
    )
}

fn anchored(pattern: &str) -> Result<Regex, InvalidRegex> {
    Regex::new(&format!("^(?s:{pattern})$")).map_err(|source| InvalidRegex {
        pattern: pattern.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_alternations_and_prefixes_are_recognised() {
        let re = |p: &str| Matcher::regex("a", p).expect("valid");
        assert_eq!(
            re("user|system").regex_values(),
            Some(vec!["user", "system"])
        );
        assert_eq!(re("user").regex_values(), Some(vec!["user"]));
        assert_eq!(re("us.r|system").regex_values(), None);
        assert_eq!(re("(user|system)").regex_values(), None);
        assert_eq!(Matcher::equal("a", "x").regex_values(), None);
        assert_eq!(re("host-1.*").regex_prefix(), Some("host-1"));
        assert_eq!(re("ab+").regex_prefix(), Some("ab"));
        assert_eq!(re("ab*").regex_prefix(), Some("a"));
        assert_eq!(re("ab?c").regex_prefix(), Some("a"));
        assert_eq!(re("éb{0,2}").regex_prefix(), Some("é"));
        assert_eq!(re("b*").regex_prefix(), None);
        assert_eq!(re("host-1.*|x").regex_prefix(), None);
        assert_eq!(re("(?i)host").regex_prefix(), None);
        assert_eq!(re(".*host").regex_prefix(), None);
        // Whatever the prefix, every value the regex accepts starts with it.
        for (p, v) in [("host-1.*", "host-12"), ("ab*", "a"), ("ab+", "abbb")] {
            let m = re(p);
            assert!(m.matches(v) && v.starts_with(m.regex_prefix().expect("prefix")));
        }
    }

    #[test]
    fn regex_is_anchored() {
        let m = Matcher::regex("a", "fo+").expect("valid");
        assert!(m.matches("foo"));
        assert!(!m.matches("xfoo"));
        assert!(!m.matches("foox"));
        assert!(!m.matches_empty());
        assert!(Matcher::regex("a", "(").is_err());
    }

    #[test]
    fn absent_label_is_empty_string() {
        assert!(Matcher::not_equal("a", "x").matches_empty());
        assert!(Matcher::equal("a", "").matches_empty());
        assert!(
            Matcher::not_regex("a", ".+")
                .expect("valid")
                .matches_empty()
        );
    }
}
