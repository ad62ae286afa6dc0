//! A [`DataSource`] over a `Vec`, for tests.

use crate::matcher::Matcher;
use crate::source::{DataSource, DataSourceError, SeriesRef};
use protocols::{Labels, Sample, SeriesId, Tenant};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub(crate) struct MemorySource {
    series: Vec<(Tenant, SeriesRef, Vec<Sample>)>,
    /// Calls to `samples`, to check that a query reads each series once.
    pub(crate) sample_reads: AtomicUsize,
}

impl MemorySource {
    /// Adds a series of the default tenant; `samples` must be ascending.
    pub(crate) fn add(&mut self, metric: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) {
        self.add_for(Tenant::default(), metric, labels, samples);
    }

    pub(crate) fn add_for(
        &mut self,
        tenant: Tenant,
        metric: &str,
        labels: &[(&str, &str)],
        samples: &[(i64, f64)],
    ) {
        let labels = Labels::from_metric(metric, labels.iter().copied()).expect("valid labels");
        let id = SeriesId::of(&tenant, &labels);
        let samples = samples.iter().map(|&(t, v)| Sample::new(t, v)).collect();
        self.series
            .push((tenant, SeriesRef { id, labels }, samples));
    }
}

impl DataSource for MemorySource {
    fn select_series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
    ) -> Result<Vec<SeriesRef>, DataSourceError> {
        Ok(self
            .series
            .iter()
            .filter(|(t, s, _)| {
                t == tenant
                    && matchers
                        .iter()
                        .all(|m| m.matches(s.labels.get(&m.name).unwrap_or("")))
            })
            // Reverse insertion order, so tests notice a result that is not sorted.
            .rev()
            .map(|(_, s, _)| s.clone())
            .collect())
    }

    fn samples(
        &self,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Sample>, DataSourceError> {
        self.sample_reads.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .series
            .iter()
            .filter(|(_, s, _)| s.id == series)
            .flat_map(|(_, _, samples)| samples)
            .filter(|s| (start_ms..=end_ms).contains(&s.timestamp_ms))
            .copied()
            .collect())
    }

    fn label_names(&self, tenant: &Tenant) -> Result<Vec<String>, DataSourceError> {
        let names: BTreeSet<&str> = self
            .series
            .iter()
            .filter(|(t, _, _)| t == tenant)
            .flat_map(|(_, s, _)| s.labels.iter().map(|l| l.name.as_str()))
            .collect();
        Ok(names.into_iter().map(str::to_owned).collect())
    }

    fn label_values(&self, tenant: &Tenant, name: &str) -> Result<Vec<String>, DataSourceError> {
        let values: BTreeSet<&str> = self
            .series
            .iter()
            .filter(|(t, _, _)| t == tenant)
            .filter_map(|(_, s, _)| s.labels.get(name))
            .collect();
        Ok(values.into_iter().map(str::to_owned).collect())
    }
}
