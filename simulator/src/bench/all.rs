//! `simulator bench all`: every scenario in turn, at sizes that fit a few tens of minutes on a
//! small machine, and (with `--write-markdown`) BENCHMARKS.md from what they printed.
//!
//! Each scenario runs in this process from a command line built here, the same one printed
//! in the markdown, so a reader can rerun any table alone. A scenario that fails is reported
//! as failed with its error, and the others still run; a peer that is not installed is
//! reported missing by the scenario itself. While the scenarios run, a thread samples the
//! machine's load average and looks for compilers (`rustc`, `cc1`, `ld`) of other users, so
//! the markdown can say whether the machine was shared.

use super::{Reporter, Scenario};
use anyhow::Context;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `simulator bench all`.
#[derive(Debug, Clone, clap::Args)]
pub struct AllArgs {
    /// Rounds of the scenarios that report medians (ingest, query, storage, mqtt), at least 3.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(3..))]
    pub rounds: u32,
    /// Samples of the reduced `billion` run.
    #[arg(long, default_value_t = 20_000_000)]
    pub billion_samples: u64,
    /// Write the tables, the machine and the commands as markdown to this file
    /// (BENCHMARKS.md at the repository root).
    #[arg(long)]
    pub write_markdown: Option<PathBuf>,
    /// Scenarios to leave out, comma-separated (they are listed as skipped).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

/// What `all` runs, in order: (name, arguments after `bench`). `None`: not in this build.
pub fn plan(args: &AllArgs) -> Vec<(&'static str, Option<Vec<String>>)> {
    let rounds = args.rounds.to_string();
    let v = |a: &[&str]| Some(a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    vec![
        ("codec", v(&["codec"])),
        (
            "billion",
            v(&["billion", "--samples", &args.billion_samples.to_string()]),
        ),
        (
            "query",
            v(&["query", "--rounds", &args.rounds.max(5).to_string()]),
        ),
        ("storage", v(&["storage", "--rounds", &rounds])),
        ("ingest", v(&["ingest", "--rounds", &rounds])),
        ("mqtt", v(&["mqtt", "--rounds", &rounds])),
        ("freshness", v(&["freshness"])),
    ]
}

#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct Argv {
    #[command(subcommand)]
    scenario: Scenario,
}

/// How one scenario went.
struct Outcome {
    name: &'static str,
    command: Option<String>,
    status: String,
    markdown: Vec<String>,
}

/// Watches the machine while the scenarios run.
struct Watch {
    stop: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
    busy: Arc<AtomicU64>,
    max_load_milli: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicU64::new(0));
        let busy = Arc::new(AtomicU64::new(0));
        let max_load_milli = Arc::new(AtomicU64::new(0));
        let (s, c, b, m) = (
            stop.clone(),
            checks.clone(),
            busy.clone(),
            max_load_milli.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("bench-watch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    c.fetch_add(1, Ordering::Relaxed);
                    if compilers_running() {
                        b.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(l) = load_average() {
                        m.fetch_max((l * 1000.0) as u64, Ordering::Relaxed);
                    }
                    for _ in 0..50 {
                        if s.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .ok();
        Self {
            stop,
            checks,
            busy,
            max_load_milli,
            thread,
        }
    }

    /// (checks, checks that saw a compiler, highest 1-minute load average).
    fn finish(mut self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.checks.load(Ordering::Relaxed),
            self.busy.load(Ordering::Relaxed),
            self.max_load_milli.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}

/// A `rustc`, `cc1`/`cc1plus` or `ld` process anywhere on the machine.
fn compilers_running() -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| {
            matches!(
                c.trim(),
                "rustc" | "cc1" | "cc1plus" | "ld" | "ld.lld" | "cargo"
            )
        })
    })
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The first line a command prints, or `None`.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let s = String::from_utf8_lossy(&text);
    Some(s.lines().next()?.trim().to_owned()).filter(|l| !l.is_empty())
}

/// Filesystem and device of the temporary directory, where every scenario keeps its data.
fn disk() -> String {
    let tmp = std::env::temp_dir();
    let mount = first_line(
        "findmnt",
        &[
            "-n",
            "-o",
            "SOURCE,FSTYPE,SIZE",
            "-T",
            &tmp.to_string_lossy(),
        ],
    )
    .unwrap_or_else(|| "unknown".into());
    let rotational = std::fs::read_dir("/sys/block")
        .ok()
        .map(|devs| {
            devs.flatten()
                .filter_map(|d| {
                    let name = d.file_name().to_string_lossy().into_owned();
                    if name.starts_with("loop") || name.starts_with("ram") {
                        return None;
                    }
                    let rot = std::fs::read_to_string(d.path().join("queue/rotational")).ok()?;
                    Some(format!(
                        "{name} {}",
                        if rot.trim() == "1" {
                            "rotational"
                        } else {
                            "SSD/virtual"
                        }
                    ))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "{} holds the data ({mount}); block devices: {}",
        tmp.display(),
        if rotational.is_empty() {
            "unknown".into()
        } else {
            rotational
        }
    )
}

pub fn run(args: &AllArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_start = load_average();
    let watch = Watch::start();
    let mut outcomes = Vec::new();
    for (name, argv) in plan(args) {
        let Some(argv) = argv else {
            reporter.note(&format!(
                "all: {name}: not in this build (`simulator bench {name}` has not landed)"
            ));
            outcomes.push(Outcome {
                name,
                command: None,
                status: format!("not there yet: `simulator bench {name}` has not landed"),
                markdown: Vec::new(),
            });
            continue;
        };
        let mut full = argv.clone();
        if reporter.json() {
            full.push("--json".into());
        }
        let command = format!("target/release/simulator bench {}", argv.join(" "));
        if args.skip.iter().any(|s| s == name) {
            outcomes.push(Outcome {
                name,
                command: Some(command),
                status: "skipped (--skip)".into(),
                markdown: Vec::new(),
            });
            continue;
        }
        reporter.note(&format!("all: {name}: {command}"));
        let t = Instant::now();
        let result = Argv::try_parse_from(&argv)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|a| super::run_scenario(a.scenario, reporter));
        let secs = t.elapsed().as_secs_f64();
        let status = match &result {
            Ok(()) => format!("ok, {secs:.0} s"),
            Err(e) => {
                reporter.note(&format!("all: {name} FAILED after {secs:.0} s: {e:#}"));
                format!("FAILED after {secs:.0} s: {e:#}")
            }
        };
        outcomes.push(Outcome {
            name,
            command: Some(command),
            status,
            markdown: reporter.take_results(),
        });
    }
    let (checks, busy, max_load) = watch.finish();
    let load_end = load_average();
    reporter.note(&format!(
        "all: done in {:.0} min",
        started.elapsed().as_secs_f64() / 60.0
    ));
    if let Some(path) = &args.write_markdown {
        let md = markdown(
            args,
            reporter,
            &outcomes,
            started.elapsed(),
            Shared {
                checks,
                busy,
                max_load,
                load_start,
                load_end,
            },
        );
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
        reporter.note(&format!("all: wrote {}", path.display()));
    }
    Ok(())
}

/// What the watch saw.
struct Shared {
    checks: u64,
    busy: u64,
    max_load: f64,
    load_start: Option<f64>,
    load_end: Option<f64>,
}

fn git(args: &[&str]) -> Option<String> {
    first_line("git", args)
}

fn markdown(
    args: &AllArgs,
    reporter: &Reporter,
    outcomes: &[Outcome],
    elapsed: Duration,
    shared: Shared,
) -> String {
    let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    let mut own = vec!["bench".to_owned(), "all".to_owned()];
    own.push("--rounds".into());
    own.push(args.rounds.to_string());
    own.push("--billion-samples".into());
    own.push(args.billion_samples.to_string());
    if let Some(p) = &args.write_markdown {
        own.push("--write-markdown".into());
        own.push(p.file_name().map_or_else(
            || p.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        ));
    }
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(&format!(
        "Regenerated by `target/release/simulator {}`, not edited by hand. Run {date}, commit \
         `{commit}`{}, release build{}; {:.0} min in all. What each scenario measures and how: \
         `simulator bench <scenario> --help` and the scenario's module documentation under \
         `simulator/src/bench/`.\n\n",
        own.join(" "),
        if dirty {
            " (the working tree also held other engineers' uncommitted changes)"
        } else {
            ""
        },
        if cfg!(debug_assertions) {
            " (NO: a debug build; the speeds below mean nothing)"
        } else {
            ""
        },
        elapsed.as_secs_f64() / 60.0
    ));
    out.push_str("## Machine\n\n");
    out.push_str(&format!("- {}\n", reporter.machine()));
    out.push_str(&format!("- Disk: {}\n", disk()));
    let peers = [
        (
            "Prometheus",
            first_line("/usr/bin/prometheus", &["--version"]),
        ),
        (
            "InfluxDB",
            super::storage::influxdb::version(Path::new("/usr/bin/influxd")),
        ),
        (
            "VictoriaMetrics",
            super::storage::victoria_metrics::version(),
        ),
        ("mosquitto", first_line("/usr/sbin/mosquitto", &["-h"])),
    ];
    for (name, v) in peers {
        out.push_str(&format!(
            "- {name}: {}\n",
            v.unwrap_or_else(|| "not installed".into())
        ));
    }
    let fmt_load = |l: Option<f64>| l.map_or_else(|| "?".into(), |l| format!("{l:.2}"));
    let shared_line = if shared.busy > 0 {
        format!(
            "**Shared machine**: other users' compilers (rustc, cc, ld) were running at {} of {} \
             checks (every 5 s) during the run; 1-minute load average {} at the start, {} at the \
             end, {:.2} at most. Speeds and CPU figures are noisy; ratios measured in the same \
             run (the systems alternating) are more trustworthy than absolute values.",
            shared.busy,
            shared.checks,
            fmt_load(shared.load_start),
            fmt_load(shared.load_end),
            shared.max_load
        )
    } else {
        format!(
            "No other compiler was seen running during the run ({} checks, every 5 s); 1-minute \
             load average {} at the start, {} at the end, {:.2} at most.",
            shared.checks,
            fmt_load(shared.load_start),
            fmt_load(shared.load_end),
            shared.max_load
        )
    };
    out.push_str(&format!("- {shared_line}\n\n"));
    out.push_str("## Commands\n\nOn a fresh Debian/Ubuntu machine:\n\n```sh\n");
    out.push_str("apt-get install prometheus influxdb victoria-metrics mosquitto   # the peers (Debian 12: 2.42, 1.6.7, 1.79.5, 2.0.11)\n");
    out.push_str("cargo build --release -p simulator -p core-node -p edge-agent\n");
    out.push_str("cargo build --profile ship -p edge-agent   # the edge agent users install; bench mqtt runs it\n");
    out.push_str(&format!(
        "target/release/simulator {}\n```\n\n",
        own.join(" ")
    ));
    out.push_str("which ran, in order:\n\n| scenario | command | outcome |\n|---|---|---|\n");
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            o.name,
            o.command
                .as_deref()
                .map_or_else(|| "–".to_owned(), |c| format!("`{c}`")),
            o.status.replace('|', "\\|").replace('\n', " ")
        ));
    }
    for o in outcomes {
        out.push_str(&format!("\n## {}\n", o.name));
        if o.markdown.is_empty() {
            out.push_str(&format!("\n{}.\n", o.status));
        }
        for m in &o.markdown {
            out.push_str(m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> AllArgs {
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            all: AllArgs,
        }
        let mut v = vec!["all"];
        v.extend_from_slice(a);
        Cli::try_parse_from(v).unwrap_or_else(|e| panic!("{e}")).all
    }

    #[test]
    fn every_planned_command_parses_as_a_scenario() {
        let a = args(&["--billion-samples", "1000000"]);
        let plan = plan(&a);
        let names: Vec<&str> = plan.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "codec",
                "billion",
                "query",
                "storage",
                "ingest",
                "mqtt",
                "freshness"
            ]
        );
        for (name, argv) in &plan {
            let Some(argv) = argv else { continue };
            let parsed = Argv::try_parse_from(argv);
            assert!(parsed.is_ok(), "{name}: {:?}", parsed.err());
        }
        let billion = plan[1].1.as_ref().expect("billion planned");
        assert!(billion.contains(&"1000000".to_owned()));
    }

    #[test]
    fn rounds_are_at_least_three() {
        assert_eq!(args(&[]).rounds, 3);
        assert_eq!(args(&[]).billion_samples, 20_000_000);
        assert!(args(&[]).write_markdown.is_none());
        let a = args(&[
            "--rounds",
            "4",
            "--write-markdown",
            "B.md",
            "--skip",
            "codec,billion",
        ]);
        assert_eq!(a.rounds, 4);
        assert_eq!(a.skip, ["codec", "billion"]);
        assert_eq!(a.write_markdown, Some(PathBuf::from("B.md")));
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            all: AllArgs,
        }
        assert!(Cli::try_parse_from(["all", "--rounds", "2"]).is_err());
    }
}
