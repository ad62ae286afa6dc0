//! The `ack` file: the buffer's epoch and how far a core has acknowledged (layout in the parent
//! module). Replaced atomically, so a crash leaves either the old or the new version.

use crate::{Epoch, LogError, Offset, io_err, sync_dir};
use std::fs;
use std::io::Write;
use std::path::Path;

pub(super) const FILE: &str = "ack";
pub(super) const TMP: &str = "ack.tmp";
const MAGIC: [u8; 4] = *b"UPDA";
const VERSION: u8 = 1;
const LEN: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) epoch: Epoch,
    pub(super) acked: Offset,
}

/// The outcome of reading the `ack` file.
#[derive(Debug)]
pub(super) enum Loaded {
    Missing,
    Found(Cursor),
    /// Present but damaged (wrong size, magic or checksum). The rename protocol makes this
    /// impossible short of disk damage or tampering.
    Damaged,
}

fn encode(c: &Cursor) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[8..16].copy_from_slice(&c.epoch.0.to_le_bytes());
    b[16..24].copy_from_slice(&c.acked.0.to_le_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(super) fn load(dir: &Path) -> Result<Loaded, LogError> {
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(io_err(&path, e)),
    };
    let Ok(b) = <[u8; LEN]>::try_from(bytes.as_slice()) else {
        return Ok(Loaded::Damaged);
    };
    if b[..4] != MAGIC {
        return Ok(Loaded::Damaged);
    }
    if b[4] != VERSION {
        return Err(LogError::UnsupportedVersion {
            path,
            found: b[4],
            supported: VERSION,
        });
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let crc = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if crc32fast::hash(&b[..24]) != crc {
        return Ok(Loaded::Damaged);
    }
    Ok(Loaded::Found(Cursor {
        epoch: Epoch(word(8)),
        acked: Offset(word(16)),
    }))
}

/// Write to a temporary file, fsync it, rename it over `ack`, fsync the directory.
pub(super) fn store(dir: &Path, cursor: &Cursor) -> Result<(), LogError> {
    let tmp = dir.join(TMP);
    let mut file = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    file.write_all(&encode(cursor))
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    drop(file);
    let path = dir.join(FILE);
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(load(dir.path()), Ok(Loaded::Missing)));
        let c = Cursor {
            epoch: Epoch(0xdead_beef),
            acked: Offset(4096),
        };
        store(dir.path(), &c).expect("store");
        assert!(matches!(load(dir.path()), Ok(Loaded::Found(got)) if got == c));
        assert!(!dir.path().join(TMP).exists());

        let path = dir.path().join(FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes[17] ^= 0x40;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(load(dir.path()), Ok(Loaded::Damaged)));

        bytes[17] ^= 0x40;
        bytes[4] = 7;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            load(dir.path()),
            Err(LogError::UnsupportedVersion { found: 7, .. })
        ));
    }
}
