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
