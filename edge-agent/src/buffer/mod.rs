//! The durable buffer: a [`seglog`] log (its crate docs hold the on-disk format, recovery and
//! invariants) whose records are the sample records of [`record`], bounded in bytes with a
//! per-rule overflow policy ([`overflow`]).
//!
//! # Encryption at rest
//!
//! With a master key (the file named by `--master-key-file` or `UPDRAFT_EDGE_MASTER_KEY_FILE`,
//! else the hex key in `UPDRAFT_MASTER_KEY`), [`open_with_key`] keeps the buffer encrypted: a keyring with one `edge` data
//! key (wrapped by the master key) in `<buffer-dir>/keyring.json`, created on first use, and
//! every record sealed with AES-256-GCM under it, the key id in each record (`crypt` and
//! `seglog` docs). Records are sealed as they are, uncompressed: they are small and sealing is
//! cheap, while compressing each would cost CPU on the fsync path for little gain. A buffer
//! with a keyring is never opened without the key, and a buffer holding plain records is never
//! opened with one ([`LogError::EncryptionMismatch`]): they never mix. `edge-agent keys rotate`
//! adds a new `edge` key; the agent seals with it after its next start and opens older records
//! with the key each names. `edge-agent keys rewrap` wraps the data keys under a new master key
//! while the agent is stopped (it takes the log's `LOCK` to make sure).

pub mod overflow;
pub mod record;

pub use seglog::*;

use std::path::Path;

/// Environment variable naming the edge agent's master key file.
pub const MASTER_KEY_FILE_ENV: &str = "UPDRAFT_EDGE_MASTER_KEY_FILE";

/// Opens the buffer in `dir` like [`seglog::open`], encrypted when a master key is configured
/// (see the module docs).
#[cfg(test)]
pub fn open(dir: &Path, options: LogOptions) -> Result<(LogWriter, LogReader, Recovery), LogError> {
    open_with_key(dir, options, None)
}

/// Opens the buffer in `dir` like [`seglog::open`], encrypted when a master key is configured:
/// the file `master_key_file` (`--master-key-file`) when given, else the environment (see the
/// module docs).
pub fn open_with_key(
    dir: &Path,
    options: LogOptions,
    master_key_file: Option<&Path>,
) -> Result<(LogWriter, LogReader, Recovery), LogError> {
    let from_env = std::env::var_os(MASTER_KEY_FILE_ENV).map(std::path::PathBuf::from);
    let master = crypt::MasterKey::resolve(master_key_file.or(from_env.as_deref()))?;
    let has_keyring = crypt::Keyring::exists_in(dir);
    let sealer = match master {
        None if has_keyring => {
            return Err(LogError::EncryptionMismatch {
                path: dir.to_owned(),
                encrypted: true,
            });
        }
        None => None,
        Some(_) if !has_keyring && holds_records(dir) => {
            return Err(LogError::EncryptionMismatch {
                path: dir.to_owned(),
                encrypted: false,
            });
        }
        Some(master) => {
            let ring = crypt::Keyring::open_or_create(dir, &master, crypt::EDGE_STORES)?;
            Some(ring.sealer(crypt::Store::Edge)?)
        }
    };
    seglog::open_encrypted(dir, options, sealer)
}

/// Whether `dir` holds a segment with at least one record (more than its 8-byte header).
fn holds_records(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.path().extension().is_some_and(|x| x == "seg") && e.metadata().is_ok_and(|m| m.len() > 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The master key comes from the environment, which tests cannot set safely; the sealed
    // log itself is tested in seglog, and end to end in tests/tests/encryption_at_rest.rs.
    #[test]
    fn a_plain_buffer_is_detected_by_its_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!holds_records(dir.path()));
        let options = LogOptions {
            segment_max_bytes: 1 << 20,
        };
        {
            let (_w, _r, _) = seglog::open(dir.path(), options).expect("open");
        }
        assert!(
            !holds_records(dir.path()),
            "an empty segment holds no records"
        );
        let (mut w, _r, _) = seglog::open(dir.path(), options).expect("open");
        w.append(b"x").expect("append");
        w.sync().expect("sync");
        assert!(holds_records(dir.path()));
    }
}
