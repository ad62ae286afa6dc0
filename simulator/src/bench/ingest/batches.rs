//! Write requests cut from a dataset by time, the same for every system and protocol.
//!
//! The dataset's time range is cut into windows of `window_ms`; in each window the series go
//! in groups of `series_per_request`, and each group's samples inside the window make one
//! request (groups with no sample there make none). Cutting by time rather than by a count
//! of samples keeps every request inside the same stretch of time even when series report
//! at different intervals (`sensor-mix`: 1 s to 60 s): Prometheus' remote-write receiver
//! refuses samples more than an hour older than the newest one it holds, so data must reach
//! it roughly in time order. Every series' samples stay in timestamp order across requests
//! of the same group, so a client that sends each group's requests in window order on one
//! connection never sends a series out of order.

use crate::datasets::SeriesData;
use crate::datasets::export::write_influx_lines;
use protocols::remote_write::{self as rw, WriteRequest};
use std::sync::Arc;

/// The body format of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus remote_write 1.0: snappy-compressed protobuf `WriteRequest`.
    RemoteWrite,
    /// InfluxDB line protocol, one line per sample, nanosecond timestamps.
    LineProtocol,
}

/// One request body and the samples it carries.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// Which window of time, from 0.
    pub window: usize,
    /// Which group of series (the same group in every window).
    pub group: usize,
    pub body: Vec<u8>,
    pub samples: u64,
}

/// How requests are cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cut {
    pub window_ms: i64,
    pub series_per_request: usize,
}

/// Calls `each` with every request of `series`, window by window, group by group. Only one
/// request body exists at a time, so a dataset of any size can be streamed.
pub(crate) fn for_each(
    series: &[SeriesData],
    cut: Cut,
    format: Format,
    mut each: impl FnMut(Batch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let window_ms = cut.window_ms.max(1);
    let per_request = cut.series_per_request.max(1);
    let first = series
        .iter()
        .filter_map(|s| s.samples.first())
        .map(|x| x.timestamp_ms)
        .min();
    let last = series
        .iter()
        .filter_map(|s| s.samples.last())
        .map(|x| x.timestamp_ms)
        .max();
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(());
    };
    let mut cursor = vec![0usize; series.len()];
    let mut start = first;
    let mut window = 0;
    while start <= last {
        let end = start.saturating_add(window_ms);
        for (group, chunk) in series.chunks(per_request).enumerate() {
            let base = group * per_request;
            let mut parts: Vec<(&SeriesData, std::ops::Range<usize>)> = Vec::new();
            for (i, s) in chunk.iter().enumerate() {
                let from = cursor[base + i];
                let to = from + s.samples[from..].partition_point(|x| x.timestamp_ms < end);
                cursor[base + i] = to;
                if to > from {
                    parts.push((s, from..to));
                }
            }
            if parts.is_empty() {
                continue;
            }
            let samples = parts.iter().map(|(_, r)| r.len() as u64).sum();
            let body = encode(&parts, format)?;
            each(Batch {
                window,
                group,
                body,
                samples,
            })?;
        }
        start = end;
        window += 1;
    }
    Ok(())
}

/// Every request of `series`, in the order [`for_each`] makes them.
pub(crate) fn build(series: &[SeriesData], cut: Cut, format: Format) -> anyhow::Result<Vec<Batch>> {
    let mut out = Vec::new();
    for_each(series, cut, format, |b| {
        out.push(b);
        Ok(())
    })?;
    Ok(out)
}

fn encode(
    parts: &[(&SeriesData, std::ops::Range<usize>)],
    format: Format,
) -> anyhow::Result<Vec<u8>> {
    match format {
        Format::RemoteWrite => {
            let timeseries = parts
                .iter()
                .map(|(s, r)| rw::TimeSeries {
                    labels: s
                        .info
                        .labels
                        .iter()
                        .map(|l| rw::Label {
                            name: l.name.to_string(),
                            value: l.value.to_string(),
                        })
                        .collect(),
                    samples: s.samples[r.clone()]
                        .iter()
                        .map(|x| rw::Sample {
                            value: x.value,
                            timestamp: x.timestamp_ms,
                        })
                        .collect(),
                })
                .collect();
            Ok(rw::encode_request(&WriteRequest { timeseries })?)
        }
        Format::LineProtocol => {
            let mut out = Vec::new();
            write_influx_lines(
                parts.iter().map(|(s, r)| SeriesData {
                    index: s.index,
                    info: Arc::clone(&s.info),
                    samples: s.samples[r.clone()].to_vec(),
                }),
                &mut out,
            )?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{self, Dataset, DatasetSpec};

    #[test]
    fn windows_keep_every_sample_once_and_in_time_order() {
        let spec = DatasetSpec::new(Dataset::SensorMix, 3, 30 * 60_000);
        let series: Vec<SeriesData> = datasets::generate(&spec).collect();
        let total: u64 = series.iter().map(|s| s.samples.len() as u64).sum();
        let cut = Cut {
            window_ms: 120_000,
            series_per_request: 10,
        };
        let rw_batches = build(&series, cut, Format::RemoteWrite).expect("encodes");
        assert_eq!(rw_batches.iter().map(|b| b.samples).sum::<u64>(), total);
        // 24 series: groups 0, 1 and 2; the 1 s device has samples in every window.
        assert!(rw_batches.iter().any(|b| b.group == 2));
        // 30 minutes in windows of 2: 15 windows, in order.
        assert_eq!(rw_batches.last().map(|b| b.window), Some(14));
        assert!(rw_batches.windows(2).all(|w| w[0].window <= w[1].window));
        let mut newest_per_series = std::collections::HashMap::new();
        for b in &rw_batches {
            let req = rw::decode_request(&b.body, rw::DEFAULT_MAX_DECODED_BYTES).expect("decodes");
            let n: usize = req.timeseries.iter().map(|t| t.samples.len()).sum();
            assert_eq!(n as u64, b.samples);
            for t in &req.timeseries {
                let key = format!(
                    "{:?}",
                    t.labels.iter().map(|l| &l.value).collect::<Vec<_>>()
                );
                let first = t.samples.first().map(|s| s.timestamp).unwrap_or_default();
                let last = t.samples.last().map(|s| s.timestamp).unwrap_or_default();
                assert!(last - first < 120_000, "a request spans one window");
                if let Some(prev) = newest_per_series.insert(key, last) {
                    assert!(prev < first, "series out of order");
                }
            }
        }
        let lp = build(&series, cut, Format::LineProtocol).expect("encodes");
        assert_eq!(lp.len(), rw_batches.len());
        let lines: usize = lp
            .iter()
            .map(|b| b.body.iter().filter(|&&c| c == b'\n').count())
            .sum();
        assert_eq!(lines as u64, total);
        assert!(
            lp.iter()
                .zip(&rw_batches)
                .all(|(a, b)| a.samples == b.samples && a.group == b.group)
        );
    }

    #[test]
    fn nothing_to_cut_makes_no_request() {
        let cut = Cut {
            window_ms: 1000,
            series_per_request: 1,
        };
        assert!(
            build(&[], cut, Format::RemoteWrite)
                .expect("empty")
                .is_empty()
        );
    }
}
