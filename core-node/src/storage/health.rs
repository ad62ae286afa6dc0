//! Whether storage takes writes, and why not: the one place the writer, the disk-space guard,
//! the HTTP API (`/health`, ingest refusals), the QUIC listener and the node's supervisor read.
//!
//! Three states:
//!
//! | state | writes | queries | `/health` | `updraft_core_storage_healthy` | leaves it |
//! |---|---|---|---|---|---|
//! | healthy | taken | answered | 200 `ok` | 1 | — |
//! | read-only | refused, retryable | answered | 503, the reason | 0 | by itself, once the disk has room again |
//! | failed | refused, retryable | answered from what is stored | 503, the reason | 0 | never: the node exits after a grace period and a restart replays the WAL |
//!
//! *Read-only* is the disk-space guard's doing ([`super::StorageOptions::min_free_disk_bytes`]):
//! a full disk is an operating condition, not a crash, so the node stops taking writes before
//! the file system fills and waits for room. *Failed* means the writer can no longer make
//! anything durable: its thread panicked, or a WAL or fjall write or fsync failed (both poison
//! their writer, so retrying in place would only fail again). A restart is the recovery: the
//! WAL replay on start is safe at any point.
//!
//! The state is a `tokio::sync::watch` value: readers look at it without a lock held across
//! anything, and the supervisor awaits the change to failed.

use tokio::sync::watch;

/// Storage's state as the writer and the disk-space guard last set it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StorageHealth {
    #[default]
    Healthy,
    /// Writes are refused until the data directory's file system has room again.
    ReadOnly { reason: String },
    /// The writer cannot make writes durable any more; the node must restart.
    Failed { reason: String },
}

impl StorageHealth {
    /// Why writes are refused; `None` while healthy.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Healthy => None,
            Self::ReadOnly { reason } | Self::Failed { reason } => Some(reason),
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

/// The writable side, shared by the writer, the compactor and the disk-space guard.
#[derive(Debug)]
pub(crate) struct Health {
    tx: watch::Sender<StorageHealth>,
}

/// Exports storage's counters at 0 from the start, with every label value they can take, so
/// that a rate or an alert over them works before their first event (and a renamed one is
/// missed at once, not after the first failure).
fn register_counters() {
    for reason in [
        "too_many_labels",
        "label_name_too_long",
        "label_value_too_long",
        "series_limit",
        "out_of_retention",
        "bad_chunk",
        "storage",
    ] {
        metrics::counter!("updraft_core_series_rejected_total", "reason" => reason).increment(0);
    }
    for outcome in ["stored", "duplicate", "failed", "read_only"] {
        metrics::counter!("updraft_core_batches_total", "outcome" => outcome).increment(0);
    }
    for name in [
        "updraft_core_samples_stored_total",
        "updraft_core_series_created_total",
        "updraft_core_series_forgotten_total",
        "updraft_core_partitions_dropped_total",
        "updraft_core_wal_corrupt_bytes_total",
        "updraft_core_storage_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

impl Health {
    pub fn new() -> Self {
        register_counters();
        metrics::gauge!("updraft_core_storage_healthy").set(1.0);
        metrics::gauge!("updraft_core_storage_read_only").set(0.0);
        Self {
            tx: watch::Sender::new(StorageHealth::Healthy),
        }
    }

    pub fn get(&self) -> StorageHealth {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<StorageHealth> {
        self.tx.subscribe()
    }

    /// Marks storage failed (once: the first reason is the one an operator needs).
    pub fn fail(&self, reason: String) {
        let changed = self.tx.send_if_modified(|state| {
            if state.is_failed() {
                return false;
            }
            *state = StorageHealth::Failed {
                reason: reason.clone(),
            };
            true
        });
        if changed {
            metrics::gauge!("updraft_core_storage_healthy").set(0.0);
            metrics::gauge!("updraft_core_storage_read_only").set(0.0);
            metrics::counter!("updraft_core_storage_failures_total").increment(1);
            tracing::error!(
                %reason,
                "STORAGE FAILED: writes are refused from now on and the node will exit so that a \
                 supervisor restarts it; the restart replays the write-ahead log, so nothing \
                 acknowledged is lost. Check the data directory's disk and its kernel log \
                 before restarting"
            );
        }
    }

    /// Enters or leaves read-only mode; a failed state stays failed.
    pub fn set_read_only(&self, reason: Option<String>) {
        let changed = self.tx.send_if_modified(|state| match (&*state, &reason) {
            (StorageHealth::Failed { .. }, _) => false,
            (StorageHealth::Healthy, None) => false,
            (StorageHealth::ReadOnly { reason: old }, Some(new)) if old == new => false,
            (_, Some(r)) => {
                *state = StorageHealth::ReadOnly { reason: r.clone() };
                true
            }
            (StorageHealth::ReadOnly { .. }, None) => {
                *state = StorageHealth::Healthy;
                true
            }
        });
        if !changed {
            return;
        }
        match &reason {
            Some(r) => {
                metrics::gauge!("updraft_core_storage_healthy").set(0.0);
                metrics::gauge!("updraft_core_storage_read_only").set(1.0);
                tracing::error!(reason = %r, "storage is READ-ONLY: writes are refused (retryable) until the disk has room again; queries are answered");
            }
            None => {
                metrics::gauge!("updraft_core_storage_healthy").set(1.0);
                metrics::gauge!("updraft_core_storage_read_only").set(0.0);
                tracing::warn!("the disk has room again: storage takes writes again");
            }
        }
    }
}

/// The disk-space guard: free bytes of the file system holding `dir`, checked against
/// `min_free`; leaving read-only mode needs 10 % more than that, so that a node hovering at
/// the limit does not flap.
#[derive(Debug)]
pub(crate) struct DiskGuard {
    dir: std::path::PathBuf,
    min_free_bytes: u64,
}

impl DiskGuard {
    pub fn new(dir: &std::path::Path, min_free_bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            min_free_bytes,
        }
    }

    /// Looks at the file system once and updates `health`.
    pub fn check(&self, health: &Health) {
        if self.min_free_bytes == 0 {
            return;
        }
        let free = match free_bytes(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                // Not knowing is no reason to refuse writes; the writer's own errors still
                // catch a full disk.
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free space of the data directory's file system");
                return;
            }
        };
        metrics::gauge!("updraft_core_disk_free_bytes").set(free as f64);
        let read_only = matches!(health.get(), StorageHealth::ReadOnly { .. });
        let leave_at = self.min_free_bytes.saturating_add(self.min_free_bytes / 10);
        if free < self.min_free_bytes || (read_only && free < leave_at) {
            health.set_read_only(Some(format!(
                "disk almost full: {free} bytes free under {}, less than --min-free-disk \
                 ({} bytes); free space or raise the disk's size",
                self.dir.display(),
                self.min_free_bytes
            )));
        } else if read_only {
            health.set_read_only(None);
        }
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_comes_and_goes_but_failed_stays() {
        let h = Health::new();
        h.set_read_only(Some("disk almost full".into()));
        assert_eq!(h.get().reason(), Some("disk almost full"));
        h.set_read_only(None);
        assert_eq!(h.get(), StorageHealth::Healthy);
        h.fail("wal write failed".into());
        h.fail("a second reason".into());
        h.set_read_only(None);
        h.set_read_only(Some("disk almost full".into()));
        assert_eq!(
            h.get(),
            StorageHealth::Failed {
                reason: "wal write failed".into()
            }
        );
    }

    #[test]
    fn the_guard_turns_read_only_below_the_minimum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = Health::new();
        // No file system has an exabyte free.
        DiskGuard::new(dir.path(), 1 << 60).check(&h);
        assert!(
            matches!(h.get(), StorageHealth::ReadOnly { .. }),
            "{:?}",
            h.get()
        );
        DiskGuard::new(dir.path(), 1).check(&h);
        assert_eq!(h.get(), StorageHealth::Healthy);
        // 0 turns the guard off.
        DiskGuard::new(dir.path(), 0).check(&h);
        assert_eq!(h.get(), StorageHealth::Healthy);
    }
}
