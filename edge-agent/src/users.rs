//! The MQTT users file (`--mqtt-users-file`) and password checks.
//!
//! One `USERNAME:PASSWORD_HASH` line per device, where the hash is an Argon2id PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) written by
//! `edge-agent passwd --file FILE USERNAME`. Blank lines and lines starting with `#` are
//! ignored; the username ends at the first `:`.
//!
//! A line whose password part is not an Argon2 hash is a plaintext password: still accepted,
//! so existing files keep working, with a warning at start (and at each reload) naming the
//! lines to convert (`edge-agent passwd` rewrites a user's line with a hash).
//!
//! The running agent re-reads the file when it changes or on `SIGHUP` (see `reload`): new
//! logins are checked against the new version; connections already open stay open.
//!
//! # Why checks stay cheap
//!
//! An Argon2id check costs about 20 ms and 19 MiB. After one succeeds for a user, an
//! HMAC-SHA256 of the username and password under a random per-process key is kept, and later
//! logins of that user with that password cost one HMAC: a reconnect storm of known devices
//! does not turn into an Argon2 storm. Wrong passwords are not cached (each costs an Argon2
//! check), and at most [`MAX_CONCURRENT_HASHES`] run at once, off the async runtime.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Argon2 checks running at once; further logins wait.
const MAX_CONCURRENT_HASHES: usize = 2;
/// Prefix of the PHC strings this file accepts as hashes.
const HASH_PREFIX: &str = "$argon2";

#[derive(Debug, thiserror::Error)]
pub(crate) enum UsersError {
    #[error("cannot read --mqtt-users-file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid --mqtt-users-file {path} line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("no system randomness for the password cache key")]
    Random,
}

#[derive(Debug, Clone)]
enum Secret {
    Hash(String),
    Plain(String),
}

/// Usernames and password hashes of the devices allowed to connect.
pub(crate) struct Users {
    users: HashMap<String, Secret>,
    cache_key: ring::hmac::Key,
    /// Username → HMAC of (username, password) after a successful Argon2 check.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    hashing: Arc<Semaphore>,
}

impl Users {
    pub(crate) fn load(path: &Path) -> Result<Self, UsersError> {
        Self::new(Self::read(path)?)
    }

    /// The file at `path` read again, for a reload while the agent runs: the cache key and
    /// the Argon2 limit are shared with `self`, and a cached login stays cached only while the
    /// user's hash is the same (a changed or removed user logs in afresh, or not at all).
    pub(crate) fn reload(&self, path: &Path) -> Result<Self, UsersError> {
        let users = Self::read(path)?;
        let verified = lock(&self.verified)
            .iter()
            .filter(|(name, _)| {
                matches!(
                    (users.get(*name), self.users.get(*name)),
                    (Some(Secret::Hash(new)), Some(Secret::Hash(old))) if new == old
                )
            })
            .map(|(name, tag)| (name.clone(), *tag))
            .collect();
        Ok(Self {
            users,
            cache_key: self.cache_key.clone(),
            verified: Mutex::new(verified),
            hashing: Arc::clone(&self.hashing),
        })
    }

    fn read(path: &Path) -> Result<HashMap<String, Secret>, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (users, plain) = parse(&text).map_err(|(line, reason)| UsersError::Line {
            path: path.to_owned(),
            line,
            reason,
        })?;
        if !plain.is_empty() {
            tracing::warn!(
                file = %path.display(),
                lines = ?plain,
                "DEPRECATED: plaintext MQTT passwords in the users file; replace each with a hash \
                 (`edge-agent passwd --file FILE USERNAME`)"
            );
        }
        Ok(users)
    }

    fn new(users: HashMap<String, Secret>) -> Result<Self, UsersError> {
        let mut key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| UsersError::Random)?;
        Ok(Self {
            users,
            cache_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            verified: Mutex::new(HashMap::new()),
            hashing: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
        })
    }

    fn tag(&self, username: &str, password: &str) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.cache_key);
        ctx.update(&(username.len() as u64).to_le_bytes());
        ctx.update(username.as_bytes());
        ctx.update(password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether `username` logs in with `password`.
    pub(crate) async fn check(self: &Arc<Self>, username: &str, password: &str) -> bool {
        let hash = match self.users.get(username) {
            None => return false,
            Some(Secret::Plain(expected)) => {
                return constant_time_eq(expected.as_bytes(), password.as_bytes());
            }
            Some(Secret::Hash(h)) => h.clone(),
        };
        let tag = self.tag(username, password);
        let cached = lock(&self.verified).get(username).copied();
        if let Some(cached) = cached
            && constant_time_eq(&cached, &tag)
        {
            return true;
        }
        let Ok(_permit) = Arc::clone(&self.hashing).acquire_owned().await else {
            return false;
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify(&hash, &password))
            .await
            .unwrap_or(false);
        if ok {
            lock(&self.verified).insert(username.to_owned(), tag);
        }
        ok
    }
}

/// A poisoned cache is still a valid map (every update is one insert).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn verify(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// The Argon2id PHC string of `password` (default parameters: m = 19 MiB, t = 2, p = 1).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| anyhow::anyhow!("no system randomness for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    Ok(hash.to_string())
}

/// Users, and the 1-based numbers of lines holding plaintext passwords.
type Parsed = (HashMap<String, Secret>, Vec<usize>);

/// Err: the first bad line and why.
fn parse(text: &str) -> Result<Parsed, (usize, &'static str)> {
    let mut users = HashMap::new();
    let mut plain = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((user, secret)) = line.split_once(':').filter(|(u, _)| !u.is_empty()) else {
            return Err((i + 1, "expected USERNAME:PASSWORD_HASH"));
        };
        let secret = if secret.starts_with(HASH_PREFIX) {
            if PasswordHash::new(secret).map_or(true, |h| h.hash.is_none()) {
                return Err((i + 1, "unreadable Argon2 hash"));
            }
            Secret::Hash(secret.to_owned())
        } else {
            plain.push(i + 1);
            Secret::Plain(secret.to_owned())
        };
        users.insert(user.to_owned(), secret);
    }
    Ok((users, plain))
}

/// Sets `username`'s hash in the users file at `path` (created if missing, mode 0600),
/// replacing its line if it has one and keeping every other line as it was. The file is
/// replaced atomically.
pub fn set_password(path: &Path, username: &str, password: &str) -> anyhow::Result<bool> {
    use anyhow::Context;
    use std::io::Write;
    if username.is_empty() || username.contains(':') || username.contains(char::is_whitespace) {
        anyhow::bail!("a username may not be empty or contain `:` or whitespace");
    }
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let line = format!("{username}:{}", hash_password(password)?);
    let mut replaced = false;
    let mut out = String::new();
    for l in old.lines() {
        if !l.trim_start().starts_with('#') && l.split_once(':').is_some_and(|(u, _)| u == username)
        {
            if !replaced {
                out.push_str(&line);
                out.push('\n');
            }
            replaced = true;
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&line);
        out.push('\n');
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(out.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(replaced)
}

/// Compares without an early exit on the first differing byte (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashed_and_plain_lines_and_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        std::fs::write(&path, "# devices\n\ndev2:pa:ss\r\n").expect("write");
        assert!(!set_password(&path, "dev1", "secret").expect("set"));
        assert!(set_password(&path, "dev1", "secret2").expect("replace"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.matches("dev1:$argon2id$").count(), 1, "{text}");
        assert!(text.starts_with("# devices\n"));
        assert!(!text.contains("secret"));

        let users = Arc::new(Users::load(&path).expect("load"));
        assert!(users.check("dev1", "secret2").await);
        assert!(users.check("dev1", "secret2").await, "from the cache");
        assert!(!users.check("dev1", "secret").await, "the old password");
        assert!(!users.check("dev1", "secret3").await);
        assert!(users.check("dev2", "pa:ss").await, "plaintext line");
        assert!(!users.check("dev2", "pa:sS").await);
        assert!(!users.check("dev3", "secret2").await);
        assert!(set_password(&path, "a:b", "x").is_err());
    }

    #[tokio::test]
    async fn a_reload_takes_new_passwords_and_drops_removed_users() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        set_password(&path, "dev1", "one").expect("set");
        set_password(&path, "dev2", "two").expect("set");
        let users = Arc::new(Users::load(&path).expect("load"));
        assert!(users.check("dev1", "one").await);
        assert!(users.check("dev2", "two").await);

        set_password(&path, "dev1", "uno").expect("change");
        let reloaded = Arc::new(users.reload(&path).expect("reload"));
        assert!(
            lock(&reloaded.verified).contains_key("dev2"),
            "an unchanged user stays cached"
        );
        assert!(
            !lock(&reloaded.verified).contains_key("dev1"),
            "a changed user is checked afresh"
        );
        assert!(!reloaded.check("dev1", "one").await, "the old password");
        assert!(reloaded.check("dev1", "uno").await);
        assert!(reloaded.check("dev2", "two").await);

        std::fs::write(&path, "# nobody\n").expect("write");
        let emptied = Arc::new(reloaded.reload(&path).expect("reload"));
        assert!(!emptied.check("dev2", "two").await, "a removed user");
        std::fs::write(&path, "broken line\n").expect("write");
        assert!(emptied.reload(&path).is_err());
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        assert_eq!(parse("ok:1\nno-colon\n").err().map(|e| e.0), Some(2));
        assert_eq!(parse(":nouser").err().map(|e| e.0), Some(1));
        assert_eq!(parse("u:$argon2id$junk").err().map(|e| e.0), Some(1));
        let (_, plain) = parse("a:1\n# c\nb:2\n").expect("valid");
        assert_eq!(plain, [1, 3]);
    }
}
