//! What `bench billion` reads about itself and the node's directory: memory and CPU time from
//! /proc, the node's metrics, and bytes on disk by part.

use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The value of an unlabelled sample in Prometheus exposition text.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

#[derive(Debug, Default)]
pub(crate) struct DiskUsage {
    pub total: u64,
    /// Bytes by part, largest first: `wal` (the node's write-ahead log), `fjall journal`,
    /// `keyspaces/<id>` (one fjall keyspace's tables; fjall numbers keyspaces in creation
    /// order, and the node creates its chunk partitions as data arrives, so the id names no
    /// keyspace for sure: the largest is the chunks), `other` (locks, manifests, keys).
    pub parts: Vec<(String, u64)>,
}

impl DiskUsage {
    fn part(&self, name: &str) -> u64 {
        self.parts
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, b)| b)
            .sum()
    }

    /// Bytes outside the logs (the node's WAL and fjall's journal): tables and metadata.
    pub fn tables(&self) -> u64 {
        self.total - self.part("wal") - self.part("fjall journal")
    }
}

/// Waits (at most a minute) until the directory's size stops changing, then measures it.
pub(crate) fn settle_disk(dir: &Path) -> anyhow::Result<DiskUsage> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = disk_usage(dir)?;
    let mut stable = 0;
    while stable < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = disk_usage(dir)?;
        stable = if now.total == last.total {
            stable + 1
        } else {
            0
        };
        last = now;
    }
    Ok(last)
}

/// Which part of the node's directory a file belongs to (see [`DiskUsage::parts`]).
fn part_of(rel: &Path) -> String {
    let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
    match parts.as_slice() {
        [first, ..] if first == "wal" => "wal".into(),
        [_, ks, id, _, ..] if ks == "keyspaces" => format!("keyspaces/{id}"),
        [.., file] if file.ends_with(".jnl") => "fjall journal".into(),
        _ => "other".into(),
    }
}

/// Every file under `dir`, by part.
fn disk_usage(dir: &Path) -> anyhow::Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let mut parts: HashMap<String, u64> = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Files come and go while fjall compacts; a vanished directory holds nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            usage.total += meta.len();
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            *parts.entry(part_of(rel)).or_default() += meta.len();
        }
    }
    usage.parts = parts.into_iter().collect();
    usage.parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    Ok(usage)
}

/// A `kB` field of /proc/self/status, in bytes.
pub(crate) fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) of a thread from `/proc/<path>/stat`, e.g. `thread-self`.
pub(crate) fn thread_cpu(path: &str) -> Option<Duration> {
    Some(parse_stat(&std::fs::read_to_string(format!("/proc/{path}/stat")).ok()?)?.1)
}

/// (thread name, CPU time) from a `stat` line. The name is in parentheses and may hold spaces.
fn parse_stat(stat: &str) -> Option<(String, Duration)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration the kernel exports to user space.
    Some((name, Duration::from_millis((utime + stime) * 10)))
}

/// CPU time of every live thread of this process, by thread id.
pub(crate) fn threads_cpu() -> HashMap<String, (String, Duration)> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        if let Some(stat) = std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            out.insert(tid, stat);
        }
    }
    out
}

/// CPU used between two snapshots, summed per thread name, largest first. Threads that ended
/// in between are missing (the generator reports its own).
pub(crate) fn cpu_diff(
    before: &HashMap<String, (String, Duration)>,
    after: &HashMap<String, (String, Duration)>,
) -> Vec<(String, Duration)> {
    let mut by_name: HashMap<String, Duration> = HashMap::new();
    for (tid, (name, cpu)) in after {
        let was = before.get(tid).map_or(Duration::ZERO, |(_, d)| *d);
        *by_name.entry(name.clone()).or_default() += cpu.saturating_sub(was);
    }
    let mut v: Vec<_> = by_name.into_iter().collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.1));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_counted_by_part() {
        for (path, part) in [
            ("wal/00000000000000000000.seg", "wal"),
            ("storage/0.jnl", "fjall journal"),
            ("storage/keyspaces/3/tables/17", "keyspaces/3"),
            ("storage/keyspaces/3/current", "keyspaces/3"),
            ("storage/lock", "other"),
        ] {
            assert_eq!(part_of(Path::new(path)), part, "{path}");
        }
    }

    #[test]
    fn parses_proc_stat_and_exposition_text() {
        let stat = "42 (tokio-runtime w) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let (name, cpu) = parse_stat(stat).expect("parses");
        assert_eq!(name, "tokio-runtime w");
        assert_eq!(cpu, Duration::from_secs(3));
        let text = "# TYPE a counter\na_total 12\nb_sum 1.5\nb_sum{x=\"y\"} 9\n";
        assert_eq!(metric_value(text, "a_total"), Some(12.0));
        assert_eq!(metric_value(text, "b_sum"), Some(1.5));
        assert_eq!(metric_value(text, "c"), None);
        assert!(proc_status_bytes("VmRSS").is_some_and(|b| b > 0));
    }
}
