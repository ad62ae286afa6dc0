//! MQTT topic ACLs: which topics each device may publish to (`--mqtt-acl-file`).
//!
//! The file follows mosquitto's `acl_file` format, reduced to what a publish-only endpoint
//! needs:
//!
//! ```text
//! # comment
//! topic write shared/announcements       # before any `user` line: anonymous clients
//! pattern write devices/%u/#              # every client; %u = username, %c = client id
//! user alice
//! topic write site1/%c/#                  # alice only
//! topic readwrite site1/alice/status
//! ```
//!
//! - `topic [read|write|readwrite] FILTER`: applies to the user named by the last `user` line
//!   (or, before any, to clients that logged in without a username). The access word may be
//!   left out (mosquitto's default, `readwrite`). `read` grants nothing here: the endpoint
//!   forwards nothing to subscribers.
//! - `pattern [read|write|readwrite] FILTER`: applies to every client.
//! - `%u` and `%c` are replaced by the username and client id, in `topic` and `pattern` lines
//!   alike. A rule that needs one the client does not have (no username), or whose value
//!   contains `/`, `+` or `#` (which would widen the filter), does not match.
//! - FILTER uses MQTT wildcards: `+` one level, `#` the rest (also the parent level itself);
//!   wildcards at the first level do not match topics starting with `$`.
//!
//! With an ACL file a publish is allowed only if some rule matches (deny by default). A
//! denied publish is dropped and counted (`updraft_edge_mqtt_acl_denied_total`); the client
//! still gets its acknowledgement (see the broker module).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AclError {
    #[error("cannot read --mqtt-acl-file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid --mqtt-acl-file {path} line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// The parsed ACL file: publish filters per user, for anonymous clients, and for everyone.
#[derive(Debug, Default)]
pub(crate) struct Acl {
    users: HashMap<String, Vec<String>>,
    anonymous: Vec<String>,
    patterns: Vec<String>,
}

impl Acl {
    pub(crate) fn load(path: &Path) -> Result<Self, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| AclError::Line {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Err carries the 1-based line number and what is wrong with it.
    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut acl = Self::default();
        let mut user: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| (i + 1, reason.to_owned());
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a name"));
                    }
                    user = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    if matches!(rest, "read" | "write" | "readwrite") {
                        return Err(err("missing topic filter"));
                    }
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some((a @ ("read" | "write" | "readwrite"), f)) => (a, f.trim()),
                        _ => ("readwrite", rest),
                    };
                    validate_filter(filter).map_err(err)?;
                    if access == "read" {
                        continue;
                    }
                    let filter = filter.to_owned();
                    match (word, &user) {
                        ("pattern", _) => acl.patterns.push(filter),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(filter),
                        (_, None) => acl.anonymous.push(filter),
                    }
                }
                _ => return Err(err("expected `user`, `topic` or `pattern`")),
            }
        }
        Ok(acl)
    }

    /// Whether `username` (None: no username) with `client_id` may publish to `topic`.
    pub(crate) fn allows(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        let own = match username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or_default(),
            None => self.anonymous.as_slice(),
        };
        own.iter()
            .chain(&self.patterns)
            .filter_map(|f| substitute(f, username, client_id))
            .any(|f| filter_matches(&f, topic))
    }
}

fn validate_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("missing topic filter");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("`#` must be a whole level, and the last");
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level");
        }
    }
    Ok(())
}

/// `filter` with `%u` and `%c` replaced; `None` when a needed value is missing or could widen
/// the filter.
fn substitute(filter: &str, username: Option<&str>, client_id: &str) -> Option<String> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#']);
    let mut out = filter.to_owned();
    if out.contains("%u") {
        let u = username.filter(|u| safe(u))?;
        out = out.replace("%u", u);
    }
    if out.contains("%c") {
        if !safe(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    Some(out)
}

/// MQTT topic filter matching (`+` one level, `#` the rest and the parent).
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        match (f, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_mqtt() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("#", "x/y"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(filter_matches("a/b", "a/b"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
    }

    #[test]
    fn rules_apply_to_their_user_patterns_to_all() {
        let acl = Acl::parse(
            "# devices\n\
             topic write public/#\n\
             pattern write devices/%u/#\n\
             user alice\n\
             topic write site1/%c/#\n\
             topic read site1/secret\n\
             topic site1/status\n\
             user bob\n",
        )
        .expect("valid");
        let alice = Some("alice");
        assert!(acl.allows(alice, "dev7", "site1/dev7/temp"));
        assert!(!acl.allows(alice, "dev7", "site1/dev8/temp"));
        assert!(acl.allows(alice, "dev7", "site1/status"));
        assert!(
            !acl.allows(alice, "dev7", "site1/secret"),
            "read grants no publish"
        );
        assert!(acl.allows(alice, "x", "devices/alice/t"));
        assert!(!acl.allows(alice, "x", "devices/bob/t"));
        assert!(
            !acl.allows(alice, "x", "public/t"),
            "anonymous rules are not alice's"
        );
        assert!(acl.allows(Some("bob"), "x", "devices/bob/t"));
        assert!(!acl.allows(Some("bob"), "dev7", "site1/dev7/temp"));
        assert!(
            acl.allows(Some("carol"), "x", "devices/carol/t"),
            "unlisted: patterns"
        );
        assert!(acl.allows(None, "x", "public/t"));
        assert!(!acl.allows(None, "x", "devices//t"), "%u needs a username");
        // Values that would widen a filter never match.
        assert!(!acl.allows(alice, "+", "site1/anything/temp"));
        assert!(!acl.allows(Some("a/b"), "x", "devices/a/b/t"));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        assert_eq!(Acl::parse("user\n").err().map(|e| e.0), Some(1));
        assert_eq!(Acl::parse("topic a/#/b\n").err().map(|e| e.0), Some(1));
        assert_eq!(Acl::parse("# x\ntopic a/b+\n").err().map(|e| e.0), Some(2));
        assert_eq!(Acl::parse("deny a\n").err().map(|e| e.0), Some(1));
        assert_eq!(Acl::parse("topic write\n").err().map(|e| e.0), Some(1));
    }
}
