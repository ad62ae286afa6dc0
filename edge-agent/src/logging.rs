//! Log output on stderr: `text` for people (coloured only on a terminal) or `json` for log
//! shippers (`--log-format`). `RUST_LOG` sets the filter either way.
//!
//! core-node has the same small module (`core_node::logging`): the two binaries share no
//! crate above `protocols`, which does no I/O, and the setup is too small for a crate of its
//! own.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event; ANSI colours only when stderr is a terminal (and
    /// `NO_COLOR` is unset), so a log file or the systemd journal gets plain text.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level.
    Json,
}

impl LogFormat {
    /// The default as clap spells it.
    pub const DEFAULT: &str = "text";
}

/// Installs the process-wide subscriber: `RUST_LOG` if set, else `default_filter`. Call once,
/// early in `main`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // stdout is left to command output (`tokens create`, `keys list`, the simulator's figures).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colours()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Colours only for a person at a terminal who has not asked for none (no-color.org).
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
