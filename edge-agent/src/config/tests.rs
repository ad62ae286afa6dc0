//! The command line, the file layer and validation.

use super::*;
use std::io::Write;

fn parse(args: &[&str]) -> Result<AgentConfig, ConfigError> {
    let args = std::iter::once("edge-agent").chain(args.iter().copied());
    AgentConfig::try_from_args(args)
}

#[test]
fn defaults_are_valid_and_match_default_impl() {
    let parsed = parse(&[]).expect("defaults are valid");
    let default = AgentConfig::default();
    assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    assert_eq!(parsed.core[0].to_string(), DEFAULT_CORE);
    assert_eq!(parsed.rules.len(), 1);
    assert_eq!(parsed.rules[0].topic.as_str(), DEFAULT_TOPIC_TEMPLATE);
    default.validate().expect("default is valid");
}

#[test]
fn flags_override_file_and_file_overrides_defaults() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(
        file,
        r#"
        agent-id = "from-file"
        tenant = "acme"
        core = ["core-a:4433", "[::1]:5000"]
        batch-max-delay-ms = 50
        "#
    )
    .expect("write");
    let path = file.path().to_str().expect("utf-8 path");
    let c = parse(&["--config", path, "--agent-id", "from-flag"]).expect("valid");
    assert_eq!(c.agent_id.0, "from-flag");
    assert_eq!(c.tenant.as_str(), "acme");
    assert_eq!(c.batch_max_delay, Duration::from_millis(50));
    let cores: Vec<String> = c.core.iter().map(ToString::to_string).collect();
    assert_eq!(cores, ["core-a:4433", "[::1]:5000"]);
    assert_eq!(c.core[1].host, "::1");
}

#[test]
fn the_example_config_lists_every_option_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/edge-agent.toml");
    let text = std::fs::read_to_string(path).expect("deploy/edge-agent.toml");
    let file: toml::Table = toml::from_str(&text).expect("valid TOML");
    let mut keys: Vec<&str> = file.keys().map(String::as_str).collect();
    keys.sort_unstable();
    // The file shows the default rule as [[rules]]; topic-template is only mentioned in a
    // comment because a file may not have both.
    let mut flags: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .filter(|f| f != "config" && f != "topic-template")
        // Options without a default (TLS, users, bridge) are described in comments.
        .filter(|f| {
            Cli::command()
                .get_arguments()
                .any(|a| a.get_long() == Some(f.as_str()) && !a.get_default_values().is_empty())
        })
        .chain(["rules".to_owned()])
        .collect();
    flags.sort_unstable();
    assert_eq!(
        keys, flags,
        "every flag appears in the example file, nothing else"
    );
    let c = parse(&["--config", path]).expect("valid");
    assert_eq!(format!("{c:?}"), format!("{:?}", AgentConfig::default()));
}

#[test]
fn unknown_file_keys_are_refused() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "agent_idd = \"x\"").expect("write");
    let path = file.path().to_str().expect("utf-8 path");
    assert!(matches!(
        parse(&["--config", path]),
        Err(ConfigError::ParseFile { .. })
    ));
}

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

#[test]
fn rules_come_from_the_file_unless_a_template_flag_replaces_them() {
    let file = file_with(
        r#"
        [[rules]]
        topic = "spBv1.0/#"
        decoder = "sparkplug"

        [[rules]]
        topic = "plant/{line}/{metric}"
        "#,
    );
    let path = file.path().to_str().expect("utf-8 path");
    let c = parse(&["--config", path]).expect("valid");
    let topics: Vec<&str> = c.rules.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["spBv1.0/#", "plant/{line}/{metric}"]);
    assert_eq!(c.rules[0].decoder, Decoder::Sparkplug);
    let c = parse(&["--config", path, "--topic-template", "a/{metric}"]).expect("valid");
    let topics: Vec<&str> = c.rules.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["a/{metric}"]);

    let legacy = file_with("topic-template = \"x/{device}/{metric}\"");
    let path = legacy.path().to_str().expect("utf-8 path");
    let c = parse(&["--config", path]).expect("valid");
    assert_eq!(c.rules.len(), 1);
    assert_eq!(c.rules[0].topic.as_str(), "x/{device}/{metric}");
    assert_eq!(c.rules[0].decoder, Decoder::Auto);
}

#[test]
fn bad_rules_are_refused_with_their_number() {
    let msg = |text: &str| {
        let file = file_with(text);
        let path = file.path().to_str().expect("utf-8 path").to_owned();
        parse(&["--config", &path])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let both = msg("topic-template = \"{metric}\"\n[[rules]]\ntopic = \"{metric}\"");
    assert!(both.contains("both"), "{both}");
    let second = msg("[[rules]]\ntopic = \"#\"\ndecoder = \"json\"\n[[rules]]\ntopic = \"{site}\"");
    assert!(second.contains("entry 2"), "{second}");
    assert!(second.contains("{metric}"), "{second}");
    assert!(msg("rules = []").contains("at least one"));
    let unknown = msg("[[rules]]\ntopic = \"#\"\ndecoder = \"json\"\nincludes = [\"a\"]");
    assert!(unknown.contains("includes"), "{unknown}");
}

#[test]
fn invalid_values_name_the_option() {
    let msg = |args: &[&str]| parse(args).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg(&["--tenant", "a b"]).contains("--tenant"));
    assert!(msg(&["--core", "localhost"]).contains("--core"));
    assert!(msg(&["--core", "::1:4433"]).contains("brackets"));
    assert!(msg(&["--topic-template", "{site}"]).contains("--topic-template"));
    assert!(msg(&["--batch-max-samples", "0"]).contains("--batch-max-samples"));
    // An interval that would overflow the ingest thread's clock arithmetic is refused.
    let huge = u64::MAX.to_string();
    assert!(msg(&["--buffer-fsync-interval-ms", &huge]).contains("--buffer-fsync-interval-ms"));
    assert!(parse(&["--buffer-fsync-interval-ms", "60000"]).is_ok());
    assert!(msg(&["--buffer-failure-exit-delay-ms", "600001"]).contains("exit-delay"));
    let c = parse(&["--buffer-failure-exit-delay-ms", "0"]).expect("valid");
    assert_eq!(c.buffer_failure_exit_delay, Duration::ZERO);
    assert!(msg(&["--http-listen", "127.0.0.1:1883"]).contains("same address"));
    let repeated = parse(&["--core", "a:1", "--core", "b:2"]).expect("valid");
    assert_eq!(repeated.core.len(), 2);
}
