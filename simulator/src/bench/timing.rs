//! Wall-clock timing of a whole pass, repeated: the best and the median of the rounds.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub best: Duration,
    pub median: Duration,
    pub rounds: usize,
}

impl Timing {
    /// Throughput of `items` per median round, in millions per second.
    pub fn median_mops(&self, items: u64) -> f64 {
        items as f64 / self.median.as_secs_f64().max(1e-9) / 1e6
    }

    /// Throughput of `items` per best round, in millions per second.
    pub fn best_mops(&self, items: u64) -> f64 {
        items as f64 / self.best.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Runs `pass` `rounds` times (at least once) and times each run. The caller keeps the work
/// observable with `std::hint::black_box`.
pub fn measure(rounds: usize, mut pass: impl FnMut()) -> Timing {
    let rounds = rounds.max(1);
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            pass();
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    Timing {
        best: times[0],
        median: times[rounds / 2],
        rounds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_is_at_most_median_and_every_round_runs() {
        let mut runs = 0;
        let t = measure(5, || {
            runs += 1;
            std::hint::black_box((0..1000u64).sum::<u64>());
        });
        assert_eq!(runs, 5);
        assert_eq!(t.rounds, 5);
        assert!(t.best <= t.median);
        assert_eq!(measure(0, || {}).rounds, 1);
        let fixed = Timing {
            best: Duration::from_millis(500),
            median: Duration::from_secs(1),
            rounds: 3,
        };
        assert_eq!(fixed.median_mops(2_000_000), 2.0);
        assert_eq!(fixed.best_mops(2_000_000), 4.0);
    }
}
