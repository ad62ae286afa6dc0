//! The machine a table was measured on, printed beside every table (DATASETS.md asks for it).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `std::thread::available_parallelism`: what this process may use, cgroup limits included.
    pub cores: usize,
    /// `MemTotal` of /proc/meminfo, when readable.
    pub memory_bytes: Option<u64>,
    /// `model name` of /proc/cpuinfo, when readable.
    pub cpu_model: Option<String>,
}

impl Machine {
    pub fn detect() -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| parse_mem_total(&s)),
            cpu_model: std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| parse_cpu_model(&s)),
        }
    }
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(n * 1024),
        _ => None,
    }
}

fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    let line = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cores", self.cores)?;
        match self.memory_bytes {
            Some(b) => write!(f, ", {:.1} GiB memory", b as f64 / (1u64 << 30) as f64)?,
            None => f.write_str(", memory unknown")?,
        }
        if let Some(cpu) = &self.cpu_model {
            write!(f, ", {cpu}")?;
        }
        if cfg!(debug_assertions) {
            f.write_str(" (DEBUG BUILD: speeds are not representative, use --release)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let meminfo = "MemTotal:       24684092 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_684_092 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: x\n";
        assert_eq!(parse_cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
    }

    #[test]
    fn describes_itself() {
        let m = Machine {
            cores: 2,
            memory_bytes: Some(24 << 30),
            cpu_model: Some("cpu".into()),
        };
        assert!(m.to_string().starts_with("2 cores, 24.0 GiB memory, cpu"));
        assert!(Machine::detect().cores >= 1);
    }
}
