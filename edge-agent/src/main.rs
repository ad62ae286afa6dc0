//! `edge-agent`: parses the configuration, sets up logs and metrics, and runs the agent until
//! Ctrl-C or SIGTERM. Everything else lives in the library.
//!
//! Subcommands: `edge-agent passwd --file FILE USERNAME` sets a device's password hash in the
//! MQTT users file (the password is read from the terminal, without echo, or from stdin);
//! `edge-agent keys list|rotate|rewrap` shows or rotates the buffer's data keys, or re-wraps
//! them under a new master key (encryption at rest).

use edge_agent::config::{AgentConfig, LogFormat};
use edge_agent::logging;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Without `RUST_LOG`: our info lines (MQTT connections are logged at debug). fjall and
/// lsm-tree log routine maintenance at info.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// Exit status for a configuration the agent refuses (clap uses the same for usage errors).
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    // Before anything can build a TLS configuration; an error only means one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::args_os().nth(1).is_some_and(|a| a == "passwd") {
        logging::init(LogFormat::Text, DEFAULT_LOG_FILTER);
        return passwd();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "keys") {
        logging::init(LogFormat::Text, DEFAULT_LOG_FILTER);
        return keys();
    }
    // Exits with clap's usage message (status 2) on unknown flags, prints --help/--version.
    // Its errors go to stderr directly: logging starts once --log-format is known.
    let config = match AgentConfig::from_args() {
        Ok(config) => config,
        Err(e) => return fail(Some("invalid configuration"), &e.into(), EXIT_CONFIG),
    };
    logging::init(config.log_format, DEFAULT_LOG_FILTER);
    let metrics = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(e) => return fail(Some("cannot install the metrics recorder"), &e.into(), 1),
    };
    match edge_agent::run(config, metrics, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(None, &e, 1),
    }
}

/// `edge-agent keys`: the data keys of the buffer's encryption at rest.
#[derive(clap::Parser)]
#[command(
    name = "edge-agent keys",
    about = "List or rotate the data keys of the buffer's encryption at rest, or re-wrap them \
             under a new master key. `rotate` adds a new data key; the agent seals with it after \
             its next start, and records sealed with older keys stay readable (each names its \
             key). `rewrap --new-master-key-file F` wraps every data key under the master key in \
             F (the agent must be stopped); afterwards only F opens the buffer."
)]
struct KeysArgs {
    /// `list`, `rotate` or `rewrap`
    #[arg(value_parser = ["list", "rotate", "rewrap"])]
    action: String,
    /// The agent's data directory (the keyring is in its `buffer` folder)
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./data/edge",
        env = "UPDRAFT_EDGE_DATA_DIR"
    )]
    data_dir: std::path::PathBuf,
    /// The master key file (else UPDRAFT_MASTER_KEY in hex)
    #[arg(long, value_name = "PATH", env = "UPDRAFT_EDGE_MASTER_KEY_FILE")]
    master_key_file: Option<std::path::PathBuf>,
    /// `rewrap`: the new master key file (`core-node keys init --out FILE` writes one)
    #[arg(long, value_name = "PATH", required_if_eq("action", "rewrap"))]
    new_master_key_file: Option<std::path::PathBuf>,
}

fn keys() -> ExitCode {
    use clap::Parser;
    let args = KeysArgs::parse_from(std::env::args_os().skip(1));
    let dir = args.data_dir.join("buffer");
    let master = match crypt::MasterKey::resolve(args.master_key_file.as_deref()) {
        Ok(Some(m)) => m,
        Ok(None) => {
            eprintln!(
                "edge-agent keys: no master key (--master-key-file or UPDRAFT_MASTER_KEY): the \
                 buffer is not encrypted"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => return fail(Some("cannot read the master key"), &e.into(), EXIT_CONFIG),
    };
    if !crypt::Keyring::exists_in(&dir) {
        eprintln!(
            "edge-agent keys: no keyring in {} (the agent creates it at its first encrypted start)",
            dir.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut ring = match crypt::Keyring::open(&dir, &master) {
        Ok(r) => r,
        Err(e) => return fail(Some("cannot open the keyring"), &e.into(), EXIT_CONFIG),
    };
    if let Some(new_file) = args.new_master_key_file.as_deref() {
        if args.action != "rewrap" {
            eprintln!("edge-agent keys: --new-master-key-file belongs to `rewrap`");
            return ExitCode::from(EXIT_CONFIG);
        }
        return rewrap(&dir, ring, new_file);
    }
    if args.action == "rotate" {
        match ring.rotate() {
            Ok(added) => {
                for (store, id) in added {
                    eprintln!(
                        "new {} key {id}; the agent uses it after its next start",
                        store.as_str()
                    );
                }
            }
            Err(e) => return fail(Some("cannot rotate the keys"), &e.into(), 1),
        }
    }
    for k in ring.keys() {
        println!("{}\t{}\t{}", k.store.as_str(), k.id, k.created_ms);
    }
    ExitCode::SUCCESS
}

/// `keys rewrap`: refuses while an agent holds the buffer (its `LOCK` file), and holds that
/// lock itself so that no agent starts meanwhile.
fn rewrap(dir: &std::path::Path, mut ring: crypt::Keyring, new_file: &std::path::Path) -> ExitCode {
    let new = match crypt::MasterKey::read_file(new_file) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                Some("cannot read the new master key"),
                &e.into(),
                EXIT_CONFIG,
            );
        }
    };
    let _lock = match crypt::lock_if_present(&dir.join("LOCK")) {
        Ok(lock) => lock,
        Err(e) => {
            let context = "an edge agent is running on this data directory";
            return fail(Some(context), &e.into(), 1);
        }
    };
    if let Err(e) = ring.rewrap(&new) {
        return fail(Some("cannot re-wrap the keys"), &e.into(), 1);
    }
    eprintln!(
        "re-wrapped every data key of {} under {}; start the agent with --master-key-file {} \
         (the old master key no longer opens it)",
        dir.display(),
        new_file.display(),
        new_file.display()
    );
    ExitCode::SUCCESS
}

/// `edge-agent passwd`: sets a device's password in the MQTT users file.
#[derive(clap::Parser)]
#[command(
    name = "edge-agent passwd",
    about = "Set a device's MQTT password in the users file (--mqtt-users-file), as an Argon2id \
             hash; the line of that user is replaced, other lines are kept. The password is read \
             from the terminal without echo, or as the first line of stdin."
)]
struct PasswdArgs {
    /// The users file (created if missing, mode 0600)
    #[arg(long, value_name = "PATH")]
    file: std::path::PathBuf,
    /// The device's MQTT username
    username: String,
}

fn passwd() -> ExitCode {
    use clap::Parser;
    let args = PasswdArgs::parse_from(std::env::args_os().skip(1));
    let password = match read_password(&args.username) {
        Ok(p) => p,
        Err(e) => return fail(Some("cannot read the password"), &e, 1),
    };
    if password.is_empty() {
        eprintln!("edge-agent passwd: empty password refused");
        return ExitCode::from(EXIT_CONFIG);
    }
    match edge_agent::users::set_password(&args.file, &args.username, &password) {
        Ok(replaced) => {
            let what = if replaced { "replaced" } else { "added" };
            eprintln!(
                "{what} the password of {} in {}; a running agent re-reads the file within \
                 about 2 s (or at once on SIGHUP)",
                args.username,
                args.file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(None, &e, 1),
    }
}

/// The first line of stdin; from a terminal, after a prompt and with echo turned off (by
/// `stty`, which works on the terminal it inherits).
fn read_password(username: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    if tty {
        eprint!("password for {username}: ");
        if !stty("-echo") {
            anyhow::bail!("cannot turn the terminal's echo off (stty); pipe the password in");
        }
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if tty {
        stty("echo");
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Prints one line with the error and its causes. Causes whose text the previous message
/// already contains are left out (library errors name their cause in their own message).
fn fail(context: Option<&str>, e: &anyhow::Error, code: u8) -> ExitCode {
    let mut line = String::from("edge-agent");
    let mut previous = String::new();
    for text in context
        .map(str::to_owned)
        .into_iter()
        .chain(e.chain().map(|c| c.to_string()))
    {
        if !previous.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
    }
    eprintln!("{line}");
    ExitCode::from(code)
}

/// Resolves on Ctrl-C or SIGTERM. If a handler cannot be installed, the other still works.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
