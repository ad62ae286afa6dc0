//! Files the agent re-reads without a restart: the MQTT users file and the ACL file.
//!
//! A [`Reloadable`] holds the parsed file behind `RwLock<Arc<T>>` and a generation counter.
//! [`spawn_watcher`] checks every file's metadata (size, modification time, inode, change
//! time) every [`POLL_INTERVAL`] and re-reads a file whose metadata changed; on `SIGHUP` it
//! re-reads every file at once, changed or not. A new version that parses replaces the old
//! one in a single swap, logged at info and counted in
//! `updraft_edge_mqtt_auth_file_reloads_total{file, result="ok"}`. One that does not (a
//! syntax error, a half-written file, a file that is gone) is logged at error and counted
//! with `result="failed"`, and the previous version stays in service; it is tried again when
//! the file changes again (or on the next `SIGHUP`).
//!
//! Readers take [`Reloadable::current`] for one decision (a login), or keep a [`Snapshot`]
//! that costs one atomic load per use while nothing changed (the ACL check of every publish).

use crate::telemetry;
use metrics::counter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tracing::{error, info};

/// How often the files' metadata is checked.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What tells a changed file: size, modification time, inode and change time (a file replaced
/// by a rename gets a new inode even within one clock tick).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    changed: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (inode, changed) = {
        use std::os::unix::fs::MetadataExt;
        (meta.ino(), (meta.ctime(), meta.ctime_nsec()))
    };
    #[cfg(not(unix))]
    let (inode, changed) = (0, (0, 0));
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
        changed,
    })
}

type Loader<T> = Box<dyn Fn(&Path, &T) -> Result<T, String> + Send + Sync>;

/// A parsed file that can be replaced while the agent runs.
pub(crate) struct Reloadable<T> {
    /// `users` or `acl`: the `file` label of the reload counter and the logs.
    name: &'static str,
    path: PathBuf,
    current: RwLock<Arc<T>>,
    generation: AtomicU64,
    /// The metadata of the file as last read (or tried); `None` while it cannot be read.
    seen: Mutex<Option<Stamp>>,
    /// Parses the file; gets the version in service (e.g. to keep caches of what is unchanged).
    load: Loader<T>,
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// `initial` was just read from `path` (at start, where an error is fatal).
    pub(crate) fn new(
        name: &'static str,
        path: &Path,
        initial: T,
        load: impl Fn(&Path, &T) -> Result<T, String> + Send + Sync + 'static,
    ) -> Arc<Self> {
        counter!(telemetry::MQTT_AUTH_FILE_RELOADS, "file" => name, "result" => "ok").absolute(0);
        counter!(telemetry::MQTT_AUTH_FILE_RELOADS, "file" => name, "result" => "failed")
            .absolute(0);
        Arc::new(Self {
            name,
            path: path.to_owned(),
            current: RwLock::new(Arc::new(initial)),
            generation: AtomicU64::new(0),
            seen: Mutex::new(stamp(path)),
            load: Box::new(load),
        })
    }

    /// The version in service.
    pub(crate) fn current(&self) -> Arc<T> {
        // A poisoned lock still holds a whole Arc: the swap is one assignment.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A cached view of the version in service, for a reader that asks often.
    pub(crate) fn snapshot(self: &Arc<Self>) -> Snapshot<T> {
        let generation = self.generation.load(Ordering::Acquire);
        Snapshot {
            value: self.current(),
            generation,
            source: Arc::clone(self),
        }
    }

    /// Re-reads the file if its metadata changed since it was last read, or always with
    /// `force`. Blocking (a `stat`, and a read and parse when it changed).
    fn check(&self, force: bool) {
        let now = stamp(&self.path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !force && *seen == now {
                return;
            }
            *seen = now;
        }
        let old = self.current();
        match (self.load)(&self.path, &old) {
            Ok(new) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
                self.generation.fetch_add(1, Ordering::AcqRel);
                counter!(telemetry::MQTT_AUTH_FILE_RELOADS, "file" => self.name, "result" => "ok")
                    .increment(1);
                info!(file = %self.path.display(), kind = self.name, "reloaded the MQTT {} file", self.name);
            }
            Err(e) => {
                counter!(telemetry::MQTT_AUTH_FILE_RELOADS, "file" => self.name, "result" => "failed")
                    .increment(1);
                error!(
                    file = %self.path.display(),
                    kind = self.name,
                    error = %e,
                    "MQTT {} file reload failed; keeping the previous version", self.name
                );
            }
        }
    }
}

/// A reader's copy of a [`Reloadable`]'s version, refreshed when the generation moves on.
pub(crate) struct Snapshot<T> {
    source: Arc<Reloadable<T>>,
    generation: u64,
    value: Arc<T>,
}

impl<T: Send + Sync + 'static> Snapshot<T> {
    /// The version in service now.
    pub(crate) fn get(&mut self) -> &T {
        let generation = self.source.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.value = self.source.current();
            self.generation = generation;
        }
        &self.value
    }
}

/// A file the watcher checks.
pub(crate) trait Watched: Send + Sync {
    fn check(&self, force: bool);
}

impl<T: Send + Sync + 'static> Watched for Reloadable<T> {
    fn check(&self, force: bool) {
        Reloadable::check(self, force);
    }
}

/// Checks `files` every [`POLL_INTERVAL`] and re-reads all of them on `SIGHUP`, until `stop`
/// turns true. With no files, `SIGHUP` is only logged (it no longer stops the agent).
pub(crate) fn spawn_watcher(files: Vec<Arc<dyn Watched>>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let sighup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let sighup = std::future::pending::<Option<()>>();
            let force = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick(), if !files.is_empty() => false,
                _ = sighup => {
                    info!(files = files.len(), "SIGHUP: re-reading the MQTT users and ACL files");
                    true
                }
            };
            let files = files.clone();
            // Reading and parsing are blocking; a panic there is logged by tokio and the
            // previous versions stay.
            let _ = tokio::task::spawn_blocking(move || {
                for f in &files {
                    f.check(force);
                }
            })
            .await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(path: &Path) -> Arc<Reloadable<String>> {
        let initial = std::fs::read_to_string(path).expect("read");
        Reloadable::new("test", path, initial, |p, _old| {
            let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
            if text.contains("broken") {
                return Err("broken".into());
            }
            Ok(text)
        })
    }

    #[test]
    fn a_changed_file_is_swapped_in_and_a_broken_one_keeps_the_old_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "one").expect("write");
        let r = counting(&path);
        let mut snap = r.snapshot();
        assert_eq!(snap.get(), "one");
        r.check(false);
        assert_eq!(
            r.generation.load(Ordering::Acquire),
            0,
            "unchanged: not re-read"
        );

        // Replaced by a rename (as `edge-agent passwd` does): a new inode.
        let tmp = dir.path().join("f.tmp");
        std::fs::write(&tmp, "two").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        r.check(false);
        assert_eq!(snap.get(), "two");
        assert_eq!(*r.current(), "two");

        std::fs::write(&path, "broken three").expect("write");
        r.check(false);
        assert_eq!(
            snap.get(),
            "two",
            "a broken file keeps the previous version"
        );
        std::fs::remove_file(&path).expect("remove");
        r.check(false);
        assert_eq!(
            snap.get(),
            "two",
            "a missing file keeps the previous version"
        );

        std::fs::write(&path, "four").expect("write");
        r.check(false);
        assert_eq!(snap.get(), "four", "fixed: taken");
        // Forced (SIGHUP): re-read even though nothing changed.
        let generation = r.generation.load(Ordering::Acquire);
        r.check(true);
        assert_eq!(r.generation.load(Ordering::Acquire), generation + 1);
    }
}
