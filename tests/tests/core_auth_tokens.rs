//! The real binary, secure by default: tokens made by `core-node tokens create` (before the
//! node starts, and while it runs), used over HTTP as bearer and basic auth; tenants kept
//! apart; a `tokens revoke` from the CLI reaches the running node; a token made with
//! `--expires-in` works until it expires, then gets 401 "token expired"; an agent whose
//! certificate is bound to another tenant gets its batches refused.

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use updraft_tests::{
    Agent, Core, binary, encode, http_get, http_post, make_certs, metric_sum,
    metric_sum_if_present, wait_for,
};

fn tokens(data_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary("core-node"))
        .arg("tokens")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "core-node tokens {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn create(data_dir: &Path, tenant: &str, role: &str) -> anyhow::Result<String> {
    tokens(data_dir, &["create", "--tenant", tenant, "--role", role])
}

/// GET with an `Authorization` header.
fn get_with(url: &str, authorization: &str) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .header("Authorization", authorization)
        .call()?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

/// `Basic base64(user:password)`.
fn basic(user: &str, password: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn tokens_from_the_cli_guard_a_secure_core_and_keep_tenants_apart() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let data_dir = work.path().join("core-data");
    let acme_write = create(&data_dir, "acme", "write")?;
    let acme_read = create(&data_dir, "acme", "read")?;
    assert!(acme_write.starts_with("updraft_"), "{acme_write}");

    let core = Core::start_secure(work.path(), &certs)?;
    let query = core.url(&format!("/api/v1/query?query={}", encode("plant_temp")));

    // Nothing without a token but /health.
    assert_eq!(http_get(&core.url("/health"))?.0, 200);
    let (status, body) = http_get(&query)?;
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["errorType"], "unauthorized");
    let (status, _) = http_post(
        &core.url("/write"),
        "text/plain",
        &[],
        b"plant,site=a temp=21.5",
    )?;
    assert_eq!(status, 401);

    // acme writes with its write token; its read token (basic auth, as Grafana sends it)
    // sees the sample, the write token may not read.
    let (status, body) = http_post(
        &core.url("/write"),
        "text/plain",
        &[("Authorization", &format!("Bearer {acme_write}"))],
        b"plant,site=a temp=21.5",
    )?;
    assert_eq!(status, 204, "{body}");
    let (status, body) = get_with(&query, &basic("grafana", &acme_read))?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("21.5"), "{body}");
    assert_eq!(get_with(&query, &format!("Bearer {acme_write}"))?.0, 403);

    // A token made while the node runs works within a reload, and sees only its tenant.
    let globex_read = create(&data_dir, "globex", "read")?;
    let (status, body) = wait_for(
        "the new token to be picked up",
        Duration::from_secs(10),
        || {
            get_with(&query, &format!("Bearer {globex_read}"))
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )?;
    assert_eq!(status, 200);
    assert!(!body.contains("21.5"), "globex sees acme's sample: {body}");

    // Revoked from the CLI: refused by the running node within seconds.
    let id = acme_read
        .strip_prefix("updraft_")
        .and_then(|rest| rest.split('_').next())
        .context("token id")?
        .to_owned();
    let listed = tokens(&data_dir, &["list"])?;
    assert!(
        listed.contains(&id) && !listed.contains(&acme_read),
        "{listed}"
    );
    tokens(&data_dir, &["revoke", &id])?;
    wait_for(
        "the revoked token to be refused",
        Duration::from_secs(10),
        || {
            matches!(
                get_with(&query, &format!("Bearer {acme_read}")),
                Ok((401, _))
            )
            .then_some(())
        },
    )?;
    assert!(!tokens(&data_dir, &["list"])?.contains(&id));

    let metrics = get_with(&core.url("/metrics"), &format!("Bearer {globex_read}"))?.1;
    assert!(
        metric_sum(
            &metrics,
            "updraft_core_auth_failures_total",
            Some("reason=\"missing\"")
        ) >= 2.0
    );
    assert!(
        metric_sum(
            &metrics,
            "updraft_core_auth_failures_total",
            Some("reason=\"forbidden\"")
        ) >= 1.0
    );
    assert!(core.process.log_text().contains("auth_failed"));
    Ok(())
}

#[test]
fn an_agent_bound_to_one_tenant_cannot_write_another() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    // `core-node certs` binds the agent certificate to tenant "default".
    make_certs(&certs)?;
    let core = Core::start_secure(work.path(), &certs)?;
    let agent = Agent::start(work.path(), &certs, core.quic, &["--tenant", "acme"])?;
    agent.publish("site1/dev1/temp", b"21.5")?;
    let admin = create(&core.data_dir, "acme", "admin")?;
    wait_for("the batch to be refused", Duration::from_secs(30), || {
        // The new token is picked up within a second; until then /metrics answers 401.
        let (status, metrics) = get_with(&core.url("/metrics"), &format!("Bearer {admin}")).ok()?;
        if status != 200 {
            return None;
        }
        // The counter appears with its first event: absent means not yet.
        let refused = metric_sum_if_present(
            &metrics,
            "updraft_core_auth_failures_total",
            Some("reason=\"tenant_mismatch\""),
        )?;
        (refused >= 1.0).then_some(())
    })?;
    Ok(())
}

#[test]
fn a_token_with_an_expiry_works_until_then_and_is_refused_after() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let data_dir = work.path().join("core-data");
    let admin = create(&data_dir, "acme", "admin")?;
    let core = Core::start_secure(work.path(), &certs)?;
    let query = core.url(&format!("/api/v1/query?query={}", encode("up")));

    // Made while the node runs; long enough to be picked up (the node re-reads the store
    // every second) and used before it expires.
    let short = tokens(
        &data_dir,
        &[
            "create",
            "--tenant",
            "acme",
            "--role",
            "read",
            "--expires-in",
            "10s",
        ],
    )?;
    let id = short
        .strip_prefix("updraft_")
        .and_then(|rest| rest.split('_').next())
        .context("token id")?
        .to_owned();
    let listed = tokens(&data_dir, &["list"])?;
    let row = listed
        .lines()
        .find(|l| l.starts_with(&id))
        .context("listed")?;
    assert!(!row.contains("never") && !row.contains("expired"), "{row}");
    assert!(
        listed.contains("never"),
        "the admin token has no expiry: {listed}"
    );

    // Accepted while valid: Argon2 the first time, the verification cache after.
    wait_for(
        "the new token to be accepted",
        Duration::from_secs(8),
        || matches!(get_with(&query, &format!("Bearer {short}")), Ok((200, _))).then_some(()),
    )?;
    assert_eq!(get_with(&query, &format!("Bearer {short}"))?.0, 200);

    // Refused once its expiry passes, though the node verified (and cached) it before.
    let (status, body) = wait_for("the token to expire", Duration::from_secs(60), || {
        get_with(&query, &format!("Bearer {short}"))
            .ok()
            .filter(|(s, _)| *s != 200)
    })?;
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["status"], "error");
    assert_eq!(v["errorType"], "unauthorized");
    assert_eq!(v["error"], "token expired");

    let metrics = get_with(&core.url("/metrics"), &format!("Bearer {admin}"))?.1;
    assert!(
        metric_sum(
            &metrics,
            "updraft_core_auth_failures_total",
            Some("reason=\"expired\"")
        ) >= 1.0,
        "{metrics}"
    );
    let log = core.process.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("auth_failed") && l.contains("expired") && l.contains(&id)),
        "no audit line for the expired token in:\n{log}"
    );
    let listed = tokens(&data_dir, &["list"])?;
    let row = listed
        .lines()
        .find(|l| l.starts_with(&id))
        .context("still listed")?;
    assert!(row.contains("(expired)"), "{row}");

    // The admin API takes a lifetime too, and says when the token expires.
    let (status, body) = http_post(
        &core.url("/api/v1/admin/tokens"),
        "application/json",
        &[("Authorization", &format!("Bearer {admin}"))],
        br#"{"role":"write","expires_in":"30d"}"#,
    )?;
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert!(v["data"]["expires"].is_string(), "{body}");
    Ok(())
}
