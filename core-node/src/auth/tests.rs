use super::*;

fn tenant(s: &str) -> Tenant {
    Tenant::new(s).expect("tenant")
}

#[test]
fn tokens_parse_only_in_their_own_format() {
    let t = Token::generate().expect("token");
    let text = t.reveal();
    assert!(text.starts_with("updraft_"));
    assert_eq!(text.len(), 8 + 16 + 1 + 64);
    assert_eq!(Token::parse(&text), Some(t.clone()));
    assert_eq!(Token::parse(&text.to_uppercase()), None);
    assert_eq!(Token::parse(&text[..text.len() - 1]), None);
    assert_eq!(Token::parse("updraft__"), None);
    assert_eq!(Token::parse(""), None);
    assert!(!format!("{t:?}").contains(t.secret_hex()));
}

#[tokio::test]
async fn a_token_authenticates_as_its_tenant_and_role_until_revoked() {
    let auth = Authenticator::in_memory(None).expect("auth");
    let (info, token) = auth
        .create(&tenant("acme"), Role::Read, "", None)
        .expect("created");
    let text = token.reveal();
    for _ in 0..2 {
        // The second time through the cache.
        let p = auth.authenticate(Some(&text)).await.expect("valid");
        assert_eq!((p.tenant.as_str(), p.role), ("acme", Some(Role::Read)));
    }
    let wrong = format!("updraft_{}_{}", info.id, "0".repeat(64));
    assert_eq!(
        auth.authenticate(Some(&wrong)).await,
        Err(Failure::WrongSecret)
    );
    assert_eq!(auth.authenticate(None).await, Err(Failure::Missing));
    assert_eq!(
        auth.authenticate(Some("hunter2")).await,
        Err(Failure::Malformed)
    );
    assert!(
        auth.revoke(&info.id, Some(&tenant("other")))
            .expect("revoke")
            .is_none()
    );
    assert!(auth.revoke(&info.id, None).expect("revoke").is_some());
    assert_eq!(
        auth.authenticate(Some(&text)).await,
        Err(Failure::UnknownToken)
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_even_after_the_cache_accepted_it() {
    let auth = Authenticator::in_memory(None).expect("auth");
    let t0 = 1_700_000_000_000;
    let (info, token) = auth
        .create(&tenant("acme"), Role::Read, "", Some(t0 + 1_000))
        .expect("created");
    assert_eq!(info.expires_ms, Some(t0 + 1_000));
    let text = token.reveal();
    // Accepted (Argon2, then the cache) while valid.
    for now in [t0, t0 + 999] {
        let p = auth.authenticate_at(Some(&text), now).await.expect("valid");
        assert_eq!(p.tenant.as_str(), "acme");
    }
    // Refused from its expiry on, though the cache still holds it.
    for now in [t0 + 1_000, t0 + 86_400_000] {
        assert_eq!(
            auth.authenticate_at(Some(&text), now).await,
            Err(Failure::Expired)
        );
    }
    assert_eq!(Failure::Expired.as_str(), "expired");
    assert_eq!(Failure::Expired.message(), "token expired");
    // A token without an expiry never expires.
    let (_, forever) = auth
        .create(&tenant("acme"), Role::Read, "", None)
        .expect("created");
    assert!(
        auth.authenticate_at(Some(&forever.reveal()), i64::MAX)
            .await
            .is_ok()
    );
}

#[test]
fn lifetimes_and_expiry_times_parse() {
    use std::time::Duration;
    assert_eq!(
        parse_expires_in("30d"),
        Ok(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(parse_expires_in("12h"), Ok(Duration::from_secs(12 * 3_600)));
    assert_eq!(parse_expires_in("45m"), Ok(Duration::from_secs(45 * 60)));
    assert_eq!(parse_expires_in("2s"), Ok(Duration::from_secs(2)));
    for bad in ["", "0s", "d", "30", "30y", "-1d", "1.5h", "30 d"] {
        assert!(parse_expires_in(bad).is_err(), "{bad:?}");
    }
    let now = 1_700_000_000_000;
    assert_eq!(expiry_from(None, None, now), Ok(None));
    assert_eq!(expiry_from(Some("2s"), None, now), Ok(Some(now + 2_000)));
    assert_eq!(
        expiry_from(None, Some("2023-11-14T22:13:30Z"), now),
        Ok(Some(1_700_000_010_000))
    );
    assert!(expiry_from(None, Some("2023-11-14T22:13:10Z"), now).is_err());
    assert!(expiry_from(None, Some("tomorrow"), now).is_err());
    assert!(expiry_from(Some("1d"), Some("2030-01-01T00:00:00Z"), now).is_err());
    assert_eq!(format_expiry(None), "never");
    assert_eq!(format_expiry(Some(now)), "2023-11-14T22:13:20Z");
}

#[tokio::test]
async fn dev_mode_lets_requests_without_credentials_in_but_not_bad_tokens() {
    let auth = Authenticator::in_memory(Some(tenant("dev"))).expect("auth");
    let p = auth.authenticate(None).await.expect("dev");
    assert_eq!((p.tenant.as_str(), p.role), ("dev", None));
    assert!(p.has(Role::Admin) && p.has(Role::Write));
    assert_eq!(
        auth.authenticate(Some("nope")).await,
        Err(Failure::Malformed)
    );
}

#[tokio::test]
async fn another_process_revoking_in_the_file_is_seen_after_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = Authenticator::open(dir.path(), None).expect("open");
    // The CLI, as another process would: straight to the file.
    let cli = TokenFileStore::in_dir(dir.path());
    let (record, token) = cli
        .create(&tenant("acme"), Role::Write, "", None)
        .expect("create");
    assert_eq!(
        auth.authenticate(Some(&token.reveal())).await,
        Err(Failure::UnknownToken)
    );
    assert!(auth.reload_if_changed().expect("reload"));
    assert!(auth.authenticate(Some(&token.reveal())).await.is_ok());
    cli.revoke(&record.id, |_| true).expect("revoke");
    assert!(auth.reload_if_changed().expect("reload"));
    assert_eq!(
        auth.authenticate(Some(&token.reveal())).await,
        Err(Failure::UnknownToken)
    );
    assert!(!auth.reload_if_changed().expect("unchanged"));
}
