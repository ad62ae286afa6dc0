//! Per-tenant ingest rate limit: a token bucket of samples per second for the HTTP write
//! routes (`--ingest-rate-limit`).
//!
//! Each tenant's bucket holds up to one second of its rate and starts full. A write is
//! admitted while the bucket is not empty, before its body is read; once decoded, its samples
//! are taken from the bucket, which may go below zero. So one request larger than the bucket
//! still passes (nothing is refused for its size alone) and is paid for by the requests after
//! it. A refusal answers 429 with `Retry-After`: the whole seconds until the bucket holds a
//! sample again.

use protocols::Tenant;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub(crate) struct IngestRateLimit {
    samples_per_sec: f64,
    buckets: Mutex<HashMap<Tenant, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Samples that may still be written now; negative after a large request.
    level: f64,
    at: Instant,
}

impl IngestRateLimit {
    pub(crate) fn new(samples_per_sec: f64) -> Self {
        Self {
            samples_per_sec,
            buckets: Mutex::default(),
        }
    }

    pub(crate) fn samples_per_sec(&self) -> f64 {
        self.samples_per_sec
    }

    fn with_bucket<T>(&self, tenant: &Tenant, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let rate = self.samples_per_sec;
        let bucket = buckets.entry(tenant.clone()).or_insert(Bucket {
            level: rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.level = (bucket.level + elapsed * rate).min(rate);
        bucket.at = now;
        f(bucket)
    }

    /// `Err(seconds to wait)` while `tenant`'s bucket is empty.
    pub(crate) fn admit(&self, tenant: &Tenant, now: Instant) -> Result<(), u64> {
        let rate = self.samples_per_sec;
        self.with_bucket(tenant, now, |b| {
            if b.level > 0.0 {
                Ok(())
            } else {
                // Until the level is above zero again.
                let wait = (-b.level / rate).floor() + 1.0;
                Err(wait.min(u64::MAX as f64) as u64)
            }
        })
    }

    /// Takes `samples` from `tenant`'s bucket.
    pub(crate) fn take(&self, tenant: &Tenant, samples: u64, now: Instant) {
        self.with_bucket(tenant, now, |b| b.level -= samples as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tenant_over_its_rate_waits_and_others_do_not() {
        let limit = IngestRateLimit::new(100.0);
        let (a, b) = (Tenant::new("a").expect("a"), Tenant::new("b").expect("b"));
        let t0 = Instant::now();
        assert_eq!(limit.admit(&a, t0), Ok(()));
        // One request far over the bucket is let through, then paid for.
        limit.take(&a, 350, t0);
        assert_eq!(limit.admit(&a, t0), Err(3));
        assert_eq!(limit.admit(&b, t0), Ok(()));
        assert_eq!(limit.admit(&a, t0 + Duration::from_millis(2_400)), Err(1));
        assert_eq!(limit.admit(&a, t0 + Duration::from_millis(2_600)), Ok(()));
        // Refilling never goes past one second's worth.
        limit.take(&b, 1, t0 + Duration::from_secs(100));
        assert_eq!(limit.admit(&b, t0 + Duration::from_secs(100)), Ok(()));
        limit.take(&b, 100, t0 + Duration::from_secs(100));
        assert_eq!(limit.admit(&b, t0 + Duration::from_secs(100)), Err(1));
    }
}
