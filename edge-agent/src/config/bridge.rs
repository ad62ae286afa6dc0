//! Bridge mode's settings (`--bridge-*`), validated here with the rest of the configuration;
//! the bridge itself (`crate::bridge`) only runs them.

use super::{ConfigError, CoreEndpoint};
use std::path::PathBuf;

/// `--bridge-topic` default: everything.
pub const DEFAULT_BRIDGE_TOPIC: &str = "#";

/// Where and how to bridge from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    pub broker: CoreEndpoint,
    /// Filters subscribed at QoS 1.
    pub topics: Vec<String>,
    /// The persistent session's client id.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to the broker, trusting only this CA.
    pub ca: Option<PathBuf>,
}

impl BridgeConfig {
    pub(crate) fn new(
        broker: &str,
        topics: Vec<String>,
        client_id: Option<String>,
        (username, password): (Option<String>, Option<String>),
        ca: Option<PathBuf>,
        agent_id: &str,
    ) -> Result<Self, ConfigError> {
        let broker = match broker.trim().parse::<CoreEndpoint>() {
            Ok(b) => b,
            Err(ConfigError::Core { value, reason }) => {
                return Err(ConfigError::BridgeBroker { value, reason });
            }
            Err(e) => return Err(e),
        };
        let topics: Vec<String> = topics
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if topics.is_empty() {
            return Err(ConfigError::BridgeBroker {
                value: broker.to_string(),
                reason: "at least one --bridge-topic is required",
            });
        }
        if password.is_some() && username.is_none() {
            return Err(ConfigError::Requires("bridge-password", "bridge-username"));
        }
        Ok(Self {
            broker,
            topics,
            client_id: client_id.unwrap_or_else(|| format!("updraft-{agent_id}")),
            username,
            password,
            ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_errors() {
        let c = BridgeConfig::new(
            "broker.local:1883",
            vec!["a/#".to_owned(), " ".to_owned()],
            None,
            (None, None),
            None,
            "gw-7",
        )
        .expect("valid");
        assert_eq!(c.client_id, "updraft-gw-7");
        assert_eq!(c.topics, ["a/#"]);
        assert_eq!(c.broker.port, 1883);
        let err = |b: &str, topics: Vec<String>, pw: Option<String>| {
            BridgeConfig::new(b, topics, None, (None, pw), None, "a")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("nohost", vec!["#".into()], None).contains("--bridge-broker"));
        assert!(err("h:1", vec![], None).contains("--bridge-topic"));
        assert!(err("h:1", vec!["#".into()], Some("x".into())).contains("--bridge-username"));
    }
}
