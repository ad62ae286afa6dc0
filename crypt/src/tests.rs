use super::*;

fn master() -> MasterKey {
    MasterKey::generate().expect("random")
}

#[test]
fn sealed_records_round_trip_and_hide_the_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = Keyring::create(dir.path(), &master(), CORE_STORES).expect("create");
    let sealer = ring.sealer(Store::Chunks).expect("sealer");
    let plain = b"zq_secret_value_91823 and some more bytes".to_vec();
    let a = sealer.seal(b"key-1", &plain).expect("seal");
    let b = sealer.seal(b"key-1", &plain).expect("seal");
    assert_eq!(a.len(), plain.len() + OVERHEAD);
    assert_ne!(a, b, "every seal uses a fresh nonce");
    assert!(!a.windows(8).any(|w| w == &plain[..8]), "plaintext visible");
    assert_eq!(sealer.open(b"key-1", &a).expect("open"), plain);
    assert_eq!(sealer.open(b"key-1", &b).expect("open"), plain);
    assert_eq!(Sealer::key_of(&a), Some(sealer.current_key()));
    assert_eq!(
        sealer
            .open(b"", &sealer.seal(b"", b"").expect("seal"))
            .expect("open"),
        b""
    );
}

#[test]
fn a_tampered_record_or_another_key_fails_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = Keyring::create(dir.path(), &master(), CORE_STORES).expect("create");
    let sealer = ring.sealer(Store::Index).expect("sealer");
    let sealed = sealer.seal(b"k", b"labels").expect("seal");
    for i in 0..sealed.len() {
        let mut m = sealed.clone();
        m[i] ^= 0x01;
        assert!(sealer.open(b"k", &m).is_err(), "flipped byte {i} accepted");
    }
    assert!(matches!(
        sealer.open(b"other key", &sealed),
        Err(CryptError::Tampered)
    ));
    assert!(matches!(
        sealer.open(b"k", &sealed[..10]),
        Err(CryptError::Truncated(10))
    ));
    // Another store's key under the same id space: the id is unknown there.
    let chunks = ring.sealer(Store::Chunks).expect("sealer");
    assert!(matches!(
        chunks.open(b"k", &sealed),
        Err(CryptError::UnknownKey(_))
    ));
    // Same key id, different key bytes: authentication fails.
    let other = Sealer::from_keys(sealer.current_key(), &[(sealer.current_key(), [7; 32])])
        .expect("sealer");
    let err = other.open(b"k", &sealed).expect_err("wrong key");
    assert!(err.to_string().contains("wrong key"), "{err}");
}

#[test]
fn a_wrong_master_key_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    Keyring::create(dir.path(), &master(), EDGE_STORES).expect("create");
    let err = Keyring::open(dir.path(), &master()).expect_err("wrong key");
    assert!(matches!(err, CryptError::WrongMasterKey { .. }));
    assert!(err.to_string().contains("wrong master key"), "{err}");
}

#[test]
fn rotation_seals_with_the_new_key_and_opens_old_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = master();
    let mut ring = Keyring::create(dir.path(), &m, CORE_STORES).expect("create");
    let old = ring.sealer(Store::Wal).expect("sealer");
    let hash_before = ring.hasher(Store::IndexHash).expect("hasher").hash(&[b"x"]);
    let sealed_old = old.seal(b"", b"before rotation").expect("seal");
    let added = ring.rotate().expect("rotate");
    assert_eq!(added.len(), 3, "every store but the index hash: {added:?}");

    let reopened = Keyring::open(dir.path(), &m).expect("reopen");
    let new = reopened.sealer(Store::Wal).expect("sealer");
    assert_ne!(new.current_key(), old.current_key());
    let sealed_new = new.seal(b"", b"after rotation").expect("seal");
    assert_eq!(Sealer::key_of(&sealed_new), Some(new.current_key()));
    assert_eq!(new.open(b"", &sealed_old).expect("old"), b"before rotation");
    assert_eq!(new.open(b"", &sealed_new).expect("new"), b"after rotation");
    assert!(
        old.open(b"", &sealed_new).is_err(),
        "old sealer lacks the new key"
    );
    let hash_after = reopened
        .hasher(Store::IndexHash)
        .expect("hasher")
        .hash(&[b"x"]);
    assert_eq!(hash_before, hash_after, "the index hash key never rotates");
    let current: Vec<_> = reopened.keys().into_iter().filter(|k| k.current).collect();
    assert_eq!(current.len(), CORE_STORES.len());
}

#[test]
fn master_keys_parse_from_hex_or_raw_and_files_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let m = master();
    m.write_new_file(&path).expect("write");
    assert!(m.write_new_file(&path).is_err(), "never overwrites a key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let back = MasterKey::read_file(&path).expect("read");
    assert_eq!(back.key, m.key);
    assert_eq!(MasterKey::parse(&[9; 32]).expect("raw").key, [9; 32]);
    assert!(MasterKey::parse(b"abc").is_err());
    assert!(MasterKey::parse(&[b'g'; 64]).is_err());
    assert_eq!(from_hex(&to_hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
}

#[test]
fn keyed_hashes_are_stable_and_unambiguous() {
    let h = KeyedHash::new(&[1; 32]);
    assert_eq!(h.hash(&[b"ab", b"c"]), h.hash(&[b"ab", b"c"]));
    assert_ne!(h.hash(&[b"ab", b"c"]), h.hash(&[b"a", b"bc"]));
    assert_ne!(h.hash(&[b"x"]), KeyedHash::new(&[2; 32]).hash(&[b"x"]));
}

#[test]
fn rewrapping_moves_the_keyring_to_a_new_master_key_and_keeps_records_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (master(), master());
    let mut ring = Keyring::create(dir.path(), &old, CORE_STORES).expect("create");
    ring.rotate().expect("rotate");
    let wal = ring.sealer(Store::Wal).expect("sealer");
    let sealed = wal
        .seal(b"k", b"written under the old master")
        .expect("seal");
    let hash = ring.hasher(Store::IndexHash).expect("hasher").hash(&[b"x"]);
    let before = ring.keys();
    let text_before = fs::read_to_string(Keyring::path_in(dir.path())).expect("read");

    ring.rewrap(&new).expect("rewrap");
    let text_after = fs::read_to_string(Keyring::path_in(dir.path())).expect("read");
    assert_ne!(text_before, text_after, "the file was not rewritten");
    let wrapped = |text: &str| -> Vec<String> {
        let file: KeyringFile = serde_json::from_str(text).expect("json");
        file.keys.into_iter().map(|k| k.wrapped).collect()
    };
    for (a, b) in wrapped(&text_before)
        .iter()
        .zip(wrapped(&text_after).iter())
    {
        assert_ne!(a, b, "a data key kept its old wrapping");
    }
    assert!(
        !dir.path().join("keyring.json.tmp").exists(),
        "temporary file left behind"
    );

    let err = Keyring::open(dir.path(), &old).expect_err("the old master key still opens it");
    assert!(matches!(err, CryptError::WrongMasterKey { .. }), "{err}");
    assert!(err.to_string().contains("wrong master key"), "{err}");
    let reopened = Keyring::open(dir.path(), &new).expect("the new master key opens it");
    assert_eq!(
        reopened.keys(),
        before,
        "ids, stores, times and current keys kept"
    );
    let opener = reopened.sealer(Store::Wal).expect("sealer");
    assert_eq!(
        opener.open(b"k", &sealed).expect("old record"),
        b"written under the old master"
    );
    assert_eq!(
        reopened
            .hasher(Store::IndexHash)
            .expect("hasher")
            .hash(&[b"x"]),
        hash
    );
    // The keyring in memory follows: a later change is saved under the new master key.
    ring.rotate().expect("rotate after rewrap");
    assert!(Keyring::open(dir.path(), &new).is_ok());
}

#[test]
fn a_failed_rewrap_leaves_the_old_keyring_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (master(), master());
    let mut ring = Keyring::create(dir.path(), &old, EDGE_STORES).expect("create");
    let before = fs::read(Keyring::path_in(dir.path())).expect("read");
    // A directory where the temporary file must go: the write fails before any rename.
    fs::create_dir(dir.path().join("keyring.json.tmp")).expect("mkdir");
    assert!(ring.rewrap(&new).is_err());
    assert_eq!(
        fs::read(Keyring::path_in(dir.path())).expect("read"),
        before
    );
    assert!(Keyring::open(dir.path(), &old).is_ok());
    assert!(Keyring::open(dir.path(), &new).is_err());
    // The keyring in memory still belongs to the old master key.
    fs::remove_dir(dir.path().join("keyring.json.tmp")).expect("rmdir");
    ring.rotate().expect("rotate");
    assert!(Keyring::open(dir.path(), &old).is_ok());
}

#[test]
fn a_held_lock_file_is_reported_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("LOCK");
    assert!(lock_if_present(&path).expect("absent").is_none());
    fs::write(&path, b"").expect("create");
    let held = lock_if_present(&path).expect("free").expect("present");
    let err = lock_if_present(&path).expect_err("second lock");
    assert!(matches!(err, CryptError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("stop it first"), "{err}");
    drop(held);
    assert!(lock_if_present(&path).expect("free again").is_some());
}

#[test]
fn a_temporary_file_left_by_a_crash_is_ignored_and_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (master(), master());
    Keyring::create(dir.path(), &old, EDGE_STORES).expect("create");
    // A crash before the rename leaves a partial temporary file next to the whole keyring.
    let tmp = dir.path().join("keyring.json.tmp");
    fs::write(&tmp, b"{\"version\": 1, \"che").expect("write");
    let mut ring = Keyring::open(dir.path(), &old).expect("the old keyring is whole");
    ring.rewrap(&new).expect("rewrap over the leftover");
    assert!(!tmp.exists());
    assert!(Keyring::open(dir.path(), &new).is_ok());
}
