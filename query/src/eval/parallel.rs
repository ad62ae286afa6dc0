//! Series-parallel evaluation: a selector's series split into contiguous slices, one worker
//! thread each, their results joined in the original order, so the answer is the same as a
//! sequential pass (float sums included). Prometheus 2's engine reads and evaluates the series
//! of a query on one goroutine; here a query over many series uses every core it is given
//! ([`crate::EngineOptions::parallelism`]).

use super::Evaluator;
use crate::error::QueryError;
use crate::source::SeriesRef;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Fewest series per worker: below it a thread costs more than it saves.
const MIN_SERIES_PER_WORKER: usize = 64;

/// The query's memory bound and deadline, shared by the workers.
pub(crate) struct Budget {
    held: AtomicUsize,
    max: usize,
    deadline: Option<Instant>,
}

impl Budget {
    pub fn hold(&self, samples: usize) -> Result<(), QueryError> {
        let now = self.held.fetch_add(samples, Ordering::Relaxed) + samples;
        if now > self.max {
            return Err(QueryError::TooManySamples);
        }
        Ok(())
    }

    pub fn release(&self, samples: usize) {
        self.held.fetch_sub(samples, Ordering::Relaxed);
    }

    pub fn check_deadline(&self) -> Result<(), QueryError> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(QueryError::Timeout),
            _ => Ok(()),
        }
    }
}

impl Evaluator<'_> {
    /// Calls `each` on every series with a per-worker state made by `init`; returns the states
    /// in series order (one per slice). Samples `each` holds through the budget stay held
    /// by the query afterwards; the first error of any worker is the answer.
    pub(crate) fn for_series<S: Send>(
        &mut self,
        series: Vec<SeriesRef>,
        init: impl Fn() -> S + Sync,
        each: impl Fn(&mut S, SeriesRef, &Budget) -> Result<(), QueryError> + Sync,
    ) -> Result<Vec<S>, QueryError> {
        let budget = Budget {
            held: AtomicUsize::new(self.samples_in_memory),
            max: self.options.max_samples,
            deadline: self.deadline,
        };
        let workers = self
            .options
            .parallelism
            .min(series.len() / MIN_SERIES_PER_WORKER)
            .max(1);
        let run = |slice: Vec<SeriesRef>| -> Result<S, QueryError> {
            let mut state = init();
            for s in slice {
                budget.check_deadline()?;
                each(&mut state, s, &budget)?;
            }
            Ok(state)
        };
        let states: Result<Vec<S>, QueryError> = if workers == 1 {
            run(series).map(|s| vec![s])
        } else {
            let per = series.len().div_ceil(workers);
            let mut slices = Vec::with_capacity(workers);
            let mut rest = series;
            while rest.len() > per {
                let tail = rest.split_off(per);
                slices.push(rest);
                rest = tail;
            }
            slices.push(rest);
            std::thread::scope(|scope| {
                let handles: Vec<_> = slices
                    .into_iter()
                    .map(|slice| scope.spawn(|| run(slice)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            })
        };
        self.samples_in_memory = budget.held.into_inner();
        states
    }
}
