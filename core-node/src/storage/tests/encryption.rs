//! Encryption at rest: the two formats never mix, rotated keys keep old data readable, and
//! encrypted files hold no label text or raw values.

use super::*;

#[test]
fn encrypted_and_plain_storage_never_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Storage::open(dir.path(), quiet()).expect("plain, empty"));
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let e = Encryption::from_keyring(&ring).expect("keys");
    let sealed = || StorageOptions {
        encryption: Some(e.clone()),
        ..quiet()
    };
    // An empty plain store may become encrypted.
    let s = Storage::open(dir.path(), sealed()).expect("encrypted");
    write(
        &s,
        batch(
            1,
            vec![(labels("m", &[("a", "1")]), vec![Sample::new(1, 1.0)])],
        ),
    );
    drop(s);
    let err = Storage::open(dir.path(), quiet()).err().expect("no keys");
    assert!(err.to_string().contains("a master key is needed"), "{err}");

    let plain = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(plain.path(), quiet()).expect("plain");
    write(
        &s,
        batch(
            1,
            vec![(labels("m", &[("a", "1")]), vec![Sample::new(1, 1.0)])],
        ),
    );
    drop(s);
    let err = Storage::open(plain.path(), sealed()).err().expect("mixing");
    assert!(err.to_string().contains("refusing to mix"), "{err}");
}

#[test]
fn rotated_keys_keep_old_data_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let mut ring =
        crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let options = |ring: &crypt::Keyring| StorageOptions {
        encryption: Some(Encryption::from_keyring(ring).expect("keys")),
        ..quiet()
    };
    let old = labels("m", &[("a", "old")]);
    let s = Storage::open(dir.path(), options(&ring)).expect("open");
    write(&s, batch(1, vec![(old.clone(), vec![Sample::new(1, 1.0)])]));
    drop(s);
    ring.rotate().expect("rotate");
    let s = Storage::open(dir.path(), options(&ring)).expect("reopen after rotation");
    let new = labels("m", &[("a", "new")]);
    write(&s, batch(2, vec![(new.clone(), vec![Sample::new(2, 2.0)])]));
    let t = Tenant::default();
    for (l, sample) in [(old, Sample::new(1, 1.0)), (new, Sample::new(2, 2.0))] {
        let id = SeriesId::of(&t, &l);
        assert_eq!(s.samples(id, 0, 10).expect("samples"), vec![sample], "{l}");
    }
    assert_eq!(s.label_values(&t, "a").expect("values"), vec!["new", "old"]);
    s.compact_now(&CompactionOptions {
        seal_after: Duration::ZERO,
        ..CompactionOptions::default()
    })
    .expect("compact");
    // The keyring read back from disk holds every key, old and new.
    let first = crypt::Keyring::open(keys.path(), &master).expect("ring");
    drop(s);
    let s = Storage::open(dir.path(), options(&first)).expect("reopen");
    assert_eq!(
        s.samples(SeriesId::of(&t, &labels("m", &[("a", "old")])), 0, 10)
            .expect("samples")
            .len(),
        1
    );
}

#[test]
fn encrypted_files_hold_no_label_text_or_raw_values() {
    let secret_value = 271_828.182_845_9_f64;
    let scan = |dir: &std::path::Path| -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).expect("read");
                let needles: [&[u8]; 4] = [
                    b"zq_secret_label",
                    b"zq_secret_value_91823",
                    &secret_value.to_le_bytes(),
                    &secret_value.to_be_bytes(),
                ];
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == n) {
                        found.push(format!("{} holds {:?}", path.display(), n));
                    }
                }
            }
        }
        found
    };
    let run = |options: StorageOptions| {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path(), options).expect("open");
        let l = labels("zq_metric", &[("zq_secret_label", "zq_secret_value_91823")]);
        write(&s, batch(1, vec![(l, vec![Sample::new(1, secret_value)])]));
        drop(s);
        let found = scan(dir.path());
        (dir, found)
    };
    let (_plain, found) = run(quiet());
    assert!(
        !found.is_empty(),
        "the scan finds clear text in a plain store"
    );
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let (_sealed, found) = run(StorageOptions {
        encryption: Some(Encryption::from_keyring(&ring).expect("keys")),
        ..quiet()
    });
    assert!(found.is_empty(), "{found:#?}");
}
