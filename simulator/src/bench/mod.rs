//! `simulator bench <scenario>`: system benchmarks on the reference datasets.
//!
//! Every scenario measures [`Figure`]s and hands them to a [`Reporter`], which prints either a
//! markdown table per dataset with the machine beside it, or, with `--json`, one JSON line per
//! figure and nothing else on stdout (progress goes to stderr). A ratio against a peer is
//! always measured in the same run, on the same data (DATASETS.md, "How a figure is reported").
//!
//! Scenarios: [`codec`] (bytes/sample and encode/decode speed of the chunk codec against
//! Prometheus' XOR chunks), [`billion`] (a billion samples into one core node over QUIC:
//! samples/s, bytes/sample on disk, memory, query times), [`query`] (range-query latency and
//! remote_write ingest CPU against real Prometheus and VictoriaMetrics processes), [`storage`]
//! and [`ingest`] (bytes on disk and ingest speed against Prometheus, InfluxDB and
//! VictoriaMetrics). Shared parts: [`figure`] (the JSON
//! line), [`table`] (markdown), [`machine`] (cores, memory, CPU), [`timing`] (best and median of
//! rounds), [`chunking`] (how each system cuts series into chunks), [`quic_client`] (batches to
//! a core node over QUIC), and [`DatasetArgs`] (which datasets, how large).

pub mod all;
pub mod billion;
pub mod chunking;
pub mod cluster;
pub mod codec;
pub mod dashboard;
pub mod encryption;
pub mod figure;
pub mod freshness;
pub mod ingest;
pub mod machine;
pub mod mqtt;
pub mod query;
pub mod quic_client;
pub mod storage;
pub mod table;
pub mod timing;

pub use figure::Figure;
pub use machine::Machine;
pub use table::Table;

use crate::datasets::{self, Dataset, DatasetSpec};

/// `simulator bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Print one JSON line per figure on stdout and nothing else.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Chunk codec: bytes/sample and encode/decode speed, Updraft against Prometheus' XOR chunks.
    Codec(codec::CodecArgs),
    /// A billion iot-trucks samples into one core node over QUIC: samples/s, bytes/sample on
    /// disk, peak RSS, query times (`--samples N` to scale down).
    Billion(billion::BillionArgs),
    /// Range-query latency (five shapes) and remote_write ingest CPU per sample, a core-node
    /// process against Prometheus 2.42 and VictoriaMetrics 1.79 on the same data.
    Query(query::QueryArgs),
    /// MQTT msgs/s (QoS 0, 1) into the edge agent's fsynced buffer and PUBACK latency, RSS and
    /// CPU, against mosquitto 2.0 forwarding to one subscriber, both pinned to one CPU.
    Mqtt(mqtt::MqttArgs),
    /// Bytes/sample on disk after compaction: a core-node process against Prometheus 2.42
    /// (promtool blocks), InfluxDB 1.6.7 and VictoriaMetrics 1.79, on the three datasets.
    Storage(storage::StorageArgs),
    /// Samples/s, CPU per sample and peak RSS: remote_write against Prometheus 2.42, line
    /// protocol against InfluxDB 1.6.7, both against VictoriaMetrics 1.79.
    Ingest(ingest::IngestArgs),
    /// MQTT publish to queryable through a real edge agent and core node: p50/p99/p99.9.
    Freshness(freshness::FreshnessArgs),
    /// Storage with and without encryption at rest, in one process on the same data: ingest
    /// CPU per sample, compaction CPU and query latency, with the encrypted ÷ plain ratio.
    Encryption(encryption::EncryptionArgs),
    /// The cluster on this machine: CPU per sample of 1 node and of 3 nodes at RF 1 and 3,
    /// failover (acknowledged samples lost, unavailability), idle CPU with 64 groups per node,
    /// and query latency through a node of 3.
    Cluster(cluster::ClusterArgs),
    /// The fleet dashboard refreshed every 10 s while a sensor-mix fleet ingests: refresh
    /// p50/p99 and the current value of every series, Updraft with and without its caches
    /// against Prometheus 2.42 and VictoriaMetrics.
    Dashboard(dashboard::DashboardArgs),
    /// Every scenario in turn (at least 3 rounds where medians are reported); with
    /// `--write-markdown BENCHMARKS.md`, the tables, the machine and the commands.
    All(all::AllArgs),
}

/// Runs one scenario; its figures go to stdout as a table or JSON lines.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut reporter = Reporter::new(args.json);
    run_scenario(args.scenario, &mut reporter)
}

/// Runs one scenario with `reporter` (`bench all` runs several with one).
pub fn run_scenario(scenario: Scenario, reporter: &mut Reporter) -> anyhow::Result<()> {
    let reporter = &mut *reporter;
    match scenario {
        Scenario::Codec(a) => codec::run(&a, reporter)?,
        Scenario::Billion(a) => billion::run(&a, reporter)?,
        Scenario::Query(a) => query::run(&a, reporter)?,
        Scenario::Mqtt(a) => mqtt::run(&a, reporter)?,
        Scenario::Storage(a) => storage::run(&a, reporter)?,
        Scenario::Ingest(a) => ingest::run(&a, reporter)?,
        Scenario::Freshness(a) => freshness::run(&a, reporter)?,
        Scenario::Encryption(a) => encryption::run(&a, reporter)?,
        Scenario::Cluster(a) => cluster::run(&a, reporter)?,
        Scenario::Dashboard(a) => dashboard::run(&a, reporter)?,
        Scenario::All(a) => all::run(&a, reporter)?,
    }
    Ok(())
}

/// Which reference datasets a scenario runs on, and at what size.
#[derive(Debug, Clone, clap::Args)]
pub struct DatasetArgs {
    /// Datasets to run on (repeat or comma-separate); all three by default.
    #[arg(long = "dataset", value_enum, value_delimiter = ',')]
    pub datasets: Vec<Dataset>,
    /// Trucks in iot-trucks.
    #[arg(long, default_value_t = 100)]
    pub trucks: u64,
    /// Devices in sensor-mix.
    #[arg(long, default_value_t = 200)]
    pub devices: u64,
    /// Hosts in metrics-mix.
    #[arg(long, default_value_t = 50)]
    pub hosts: u64,
    /// Period generated, e.g. 1d, 6h, 90m.
    #[arg(long, default_value = "1d", value_parser = datasets::parse_duration_ms)]
    pub duration: i64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = datasets::DEFAULT_SEED)]
    pub seed: u64,
}

impl DatasetArgs {
    /// The specs to run, in DATASETS.md order.
    pub fn specs(&self) -> Vec<DatasetSpec> {
        let chosen: Vec<Dataset> = if self.datasets.is_empty() {
            Dataset::ALL.to_vec()
        } else {
            Dataset::ALL
                .into_iter()
                .filter(|d| self.datasets.contains(d))
                .collect()
        };
        chosen
            .into_iter()
            .map(|d| {
                let entities = match d {
                    Dataset::IotTrucks => self.trucks,
                    Dataset::SensorMix => self.devices,
                    Dataset::MetricsMix => self.hosts,
                };
                DatasetSpec::new(d, entities, self.duration).with_seed(self.seed)
            })
            .collect()
    }
}

/// `100 trucks × 1d, seed 1`.
pub fn describe_spec(spec: &DatasetSpec) -> String {
    let d = spec.duration_ms;
    let duration = if d % datasets::DAY_MS == 0 {
        format!("{}d", d / datasets::DAY_MS)
    } else if d % 3_600_000 == 0 {
        format!("{}h", d / 3_600_000)
    } else if d % 60_000 == 0 {
        format!("{}m", d / 60_000)
    } else {
        format!("{}s", d as f64 / 1000.0)
    };
    format!(
        "{} {} × {duration}, seed {}",
        spec.entities,
        spec.dataset.entity_noun(),
        spec.seed
    )
}

/// Where a scenario's output goes: tables and notes for people, or JSON lines for scripts.
pub struct Reporter {
    json: bool,
    machine: Machine,
    /// Every result printed so far, as markdown (kept with `--json` too), for BENCHMARKS.md.
    results: Vec<String>,
}

impl Reporter {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            machine: Machine::detect(),
            results: Vec::new(),
        }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Progress and context: stderr with `--json` (stdout is only figures), stdout otherwise.
    pub fn note(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    /// Prints one dataset's result: the figures as JSON lines, or the table under a heading,
    /// followed by any footnotes and the machine.
    pub fn dataset_result(
        &mut self,
        heading: &str,
        figures: &[Figure],
        table: &Table,
        footnotes: &[String],
    ) {
        let mut md = format!("\n### {heading}\n\n{}\n", table.render());
        // A blank line after each footnote: each is its own paragraph in markdown.
        for f in footnotes {
            md.push_str(f);
            md.push_str("\n\n");
        }
        md.push_str(&format!("Machine: {}.\n", self.machine));
        if self.json {
            for f in figures {
                println!("{}", f.to_json_line());
            }
        } else {
            print!("{md}");
        }
        self.results.push(md);
    }

    /// The markdown of every result since the last call (for `bench all`).
    pub fn take_results(&mut self) -> Vec<String> {
        std::mem::take(&mut self.results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Command {
        Bench(BenchArgs),
    }

    fn parse(args: &[&str]) -> BenchArgs {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
        let Command::Bench(b) = cli.command;
        b
    }

    #[test]
    fn json_flag_goes_before_or_after_the_scenario() {
        assert!(parse(&["x", "bench", "codec", "--json"]).json);
        assert!(parse(&["x", "bench", "--json", "codec"]).json);
        assert!(!parse(&["x", "bench", "codec"]).json);
    }

    #[test]
    fn billion_takes_its_scale_and_durability() {
        let b = parse(&[
            "x",
            "bench",
            "billion",
            "--samples",
            "20000000",
            "--durability",
            "buffered",
            "--json",
        ]);
        assert!(b.json);
        let Scenario::Billion(a) = b.scenario else {
            panic!("parsed as billion")
        };
        assert_eq!(a.samples, 20_000_000);
        assert_eq!(a.trucks, 10_000);
        assert_eq!(a.durability, core_node::storage::Durability::Buffered);
        let Scenario::Billion(d) = parse(&["x", "bench", "billion"]).scenario else {
            panic!("parsed as billion")
        };
        assert_eq!(d.samples, 1_000_000_000);
        assert_eq!(d.durability, core_node::storage::Durability::Fsync);
    }

    #[test]
    fn query_takes_its_scale_durability_and_binaries() {
        let b = parse(&[
            "x",
            "bench",
            "query",
            "--long-duration",
            "7d",
            "--hosts",
            "10",
            "--duration",
            "90m",
            "--rounds",
            "7",
            "--samples-per-series",
            "20",
            "--durability",
            "buffered",
            "--prometheus",
            "/opt/prom",
            "--json",
        ]);
        assert!(b.json);
        let Scenario::Query(a) = b.scenario else {
            panic!("parsed as query")
        };
        assert_eq!(a.long_duration, 7 * datasets::DAY_MS);
        assert_eq!((a.hosts, a.duration), (10, 90 * 60_000));
        assert_eq!((a.rounds, a.samples_per_series), (7, 20));
        assert_eq!(a.durability, core_node::storage::Durability::Buffered);
        assert_eq!(a.prometheus, std::path::PathBuf::from("/opt/prom"));
        let Scenario::Query(d) = parse(&["x", "bench", "query"]).scenario else {
            panic!("parsed as query")
        };
        assert_eq!((d.long_trucks, d.long_duration), (1, 30 * datasets::DAY_MS));
        assert_eq!((d.hosts, d.duration), (313, 2 * 3_600_000));
        assert_eq!(
            (d.rounds, d.series_per_request, d.samples_per_series),
            (5, 1000, 10)
        );
        assert_eq!(d.durability, core_node::storage::Durability::Fsync);
        assert_eq!(d.promtool, std::path::PathBuf::from("/usr/bin/promtool"));
        assert!(d.core_node.is_none() && d.data_dir.is_none());
        assert!(Cli::try_parse_from(["x", "bench", "query", "--rounds", "0"]).is_err());
    }

    #[test]
    fn peer_scenarios_take_their_scale_and_binaries() {
        let Scenario::Storage(s) = parse(&["x", "bench", "storage"]).scenario else {
            panic!("parsed as storage")
        };
        assert_eq!((s.trucks, s.duration, s.rounds), (100, 6 * 3_600_000, 1));
        assert_eq!(s.prom_block_duration, "18h");
        assert_eq!(s.influxd, std::path::PathBuf::from("/usr/bin/influxd"));
        assert_eq!(
            s.victoria_metrics,
            std::path::PathBuf::from("/usr/bin/victoria-metrics")
        );
        let Scenario::Storage(s) = parse(&[
            "x",
            "bench",
            "storage",
            "--dataset",
            "iot-trucks",
            "--duration",
            "1d",
            "--rounds",
            "3",
        ])
        .scenario
        else {
            panic!("parsed as storage")
        };
        assert_eq!(
            (s.datasets.len(), s.duration, s.rounds),
            (1, datasets::DAY_MS, 3)
        );
        let Scenario::Ingest(i) = parse(&["x", "bench", "ingest"]).scenario else {
            panic!("parsed as ingest")
        };
        assert_eq!(
            (i.duration, i.rounds, i.window),
            (2 * 3_600_000, 3, 600_000)
        );
        assert_eq!((i.series_per_request, i.connections), (250, 4));
        assert_eq!(
            i.victoria_metrics,
            std::path::PathBuf::from("/usr/bin/victoria-metrics")
        );
        assert!(Cli::try_parse_from(["x", "bench", "ingest", "--connections", "0"]).is_err());
        let Scenario::Freshness(f) = parse(&[
            "x",
            "bench",
            "freshness",
            "--markers",
            "10",
            "--load-rate",
            "0",
        ])
        .scenario
        else {
            panic!("parsed as freshness")
        };
        assert_eq!((f.markers, f.load_rate, f.qos, f.poll_ms), (10, 0, 1, 5));
        assert_eq!(f.durability, core_node::storage::Durability::Fsync);
        let b = parse(&[
            "x",
            "bench",
            "all",
            "--write-markdown",
            "BENCHMARKS.md",
            "--json",
        ]);
        assert!(b.json);
        let Scenario::All(a) = b.scenario else {
            panic!("parsed as all")
        };
        assert_eq!(a.rounds, 3);
        assert_eq!(
            a.write_markdown,
            Some(std::path::PathBuf::from("BENCHMARKS.md"))
        );
    }

    #[test]
    fn dataset_flags_scale_each_dataset() {
        let b = parse(&[
            "x",
            "bench",
            "codec",
            "--dataset",
            "sensor-mix,iot-trucks",
            "--trucks",
            "7",
            "--duration",
            "6h",
            "--seed",
            "9",
        ]);
        let Scenario::Codec(c) = b.scenario else {
            panic!("parsed as codec")
        };
        let specs = c.datasets.specs();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].dataset, Dataset::IotTrucks);
        assert_eq!(specs[0].entities, 7);
        assert_eq!(specs[0].duration_ms, 6 * 3_600_000);
        assert_eq!(specs[0].seed, 9);
        assert_eq!(specs[1].entities, 200);
        assert_eq!(describe_spec(&specs[0]), "7 trucks × 6h, seed 9");
        let all = parse(&["x", "bench", "codec"]);
        let Scenario::Codec(c) = all.scenario else {
            panic!("parsed as codec")
        };
        assert_eq!(c.datasets.specs().len(), 3);
    }
}
