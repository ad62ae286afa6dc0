//! The QUIC ingest listener: edge agents deliver [`WriteBatch`]es here.
//!
//! One batch per bidirectional stream: the agent writes one frame and finishes its side; we
//! read at most [`MAX_FRAME_BYTES`], hand the batch to [`Storage`], and answer with one
//! [`BatchAck`] frame only after the outcome is final (for a stored batch: durable). A
//! malformed frame is answered with `bad_data` and counted; it never affects other streams or
//! connections.
//!
//! # Tenants
//!
//! An agent's client certificate binds it to one tenant (SAN URI `updraft://tenant/<t>`,
//! written by `core-node certs --tenant T`; [`crate::certs::tenant_of`]). A batch for any
//! other tenant is refused with `unauthorized`, logged to the `audit` target and counted
//! (`updraft_core_batches_rejected_total{reason="tenant_mismatch"}` and
//! `updraft_core_auth_failures_total{reason="tenant_mismatch"}`). A certificate that names no
//! tenant (issued before tenants were bound) may write any tenant only in development mode;
//! otherwise its batches are refused (`reason="cert_without_tenant"`).
//!
//! # Agent ids
//!
//! The certificate also names the agent (SAN URI `updraft://agent/<id>`, written by
//! `core-node certs --agent-id ID`; [`crate::certs::agent_of`]). A batch or resume query
//! carrying another agent id is refused the same way (`reason="agent_mismatch"`): an agent
//! cannot write under, or read the resume point of, another agent's id (which would let it
//! make the core drop that agent's batches as duplicates). A certificate without an agent id
//! may use any id only in development mode (`reason="cert_without_agent_id"` otherwise).
//!
//! Agents whose certificate does not chain to the configured CA never get a connection: the
//! handshake fails, is logged (`quic handshake failed`) and counted in
//! `updraft_core_quic_handshake_failures_total`.
//!
//! # Memory
//!
//! Connections, streams per connection, receive windows and the bytes of frames held
//! node-wide are all bounded ([`limits`]): a flood of connections or of maximum-size frames
//! is refused or made to wait, never buffered without limit.
//!
//! # Certificates
//!
//! The listener's certificate, key and client CA are re-read without a restart when their
//! files change or on SIGHUP ([`crate::tls::QuicCert`], which replaces the endpoint's server
//! configuration): new handshakes use the new files, open connections keep theirs.

use crate::auth::AUTH_FAILURES;
use crate::certs::{AgentBinding, TenantBinding, agent_of, tenant_of};
use crate::storage::{Storage, SubmitError};
use protocols::wire::{
    AckOutcome, BatchAck, ErrorCode, MAX_FRAME_BYTES, Message, ResumePoint, WireError, WriteBatch,
};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub mod limits;
use limits::{
    BUDGET_WAIT, ByteBudget, ConnectionSlots, GRANT_BYTES, Held, LogLimiter, QuicLimits, REFUSALS,
};

/// How long a peer may take to send one frame.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Which tenants and agent ids an agent may write.
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantPolicy {
    /// Development mode: a certificate without a tenant (or without an agent id) may write
    /// any tenant (or use any agent id).
    pub unbound_may_write_any: bool,
}

/// Every reason `updraft_core_batches_rejected_total` takes on this listener.
const REJECT_REASONS: [&str; 11] = [
    "frame_too_large",
    "timeout",
    "unexpected_message",
    "unsupported_version",
    "malformed",
    "no_agent_id",
    "agent_mismatch",
    "cert_without_agent_id",
    "tenant_mismatch",
    "cert_without_tenant",
    "memory_budget",
];

/// Exports the listener's counters at 0 with every label value they take, so that a rate or
/// an alert over them works before the first refusal (and a renamed one is missed at once).
fn register_metrics() {
    for reason in REJECT_REASONS {
        metrics::counter!("updraft_core_batches_rejected_total", "reason" => reason).increment(0);
    }
    for reason in [
        "agent_mismatch",
        "cert_without_agent_id",
        "tenant_mismatch",
        "cert_without_tenant",
    ] {
        metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(0);
    }
    for reason in ["connection_limit", "memory_budget"] {
        metrics::counter!(REFUSALS, "reason" => reason).increment(0);
    }
    for code in [
        ErrorCode::BadData,
        ErrorCode::Unavailable,
        ErrorCode::TooManyRequests,
        ErrorCode::Unauthorized,
        ErrorCode::Timeout,
    ] {
        metrics::counter!("updraft_core_samples_rejected_total", "reason" => code.as_str())
            .increment(0);
    }
    metrics::counter!("updraft_core_quic_handshake_failures_total").increment(0);
    metrics::counter!("updraft_core_samples_received_total").increment(0);
}

/// Accepts connections until `shutdown` resolves, then closes the endpoint. `limits` bounds
/// connections and in-flight bytes ([`limits`]; the endpoint's transport configuration
/// carries the flow-control part).
pub async fn serve(
    endpoint: quinn::Endpoint,
    storage: Sink,
    policy: TenantPolicy,
    limits: QuicLimits,
    shutdown: impl Future<Output = ()>,
) {
    register_metrics();
    tokio::pin!(shutdown);
    let slots = ConnectionSlots::new(limits.max_connections);
    let budget = ByteBudget::new(limits.inflight_bytes);
    let refusals_log = LogLimiter::default();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                let Some(slot) = slots.take() else {
                    // Before the handshake: a refused peer costs no TLS work.
                    incoming.refuse();
                    metrics::counter!(REFUSALS, "reason" => "connection_limit").increment(1);
                    if let Some(suppressed) = refusals_log.allow() {
                        tracing::warn!(%remote, max = limits.max_connections, suppressed,
                            "quic connection refused: the node has --quic-max-connections open \
                             (suppressed: refusals since the last such line)");
                    }
                    continue;
                };
                let storage = storage.clone();
                let budget = budget.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, storage, policy, budget).await,
                        Err(e) => {
                            metrics::counter!("updraft_core_quic_handshake_failures_total").increment(1);
                            tracing::warn!(%remote, error = %e, "quic handshake failed");
                        }
                    }
                    drop(slot);
                });
            }
        }
    }
    endpoint.close(0u32.into(), b"shutting down");
}

/// What the peer's (already verified) leaf certificate binds it to.
#[derive(Debug)]
struct Binding {
    tenant: TenantBinding,
    agent: AgentBinding,
}

fn peer_binding(conn: &quinn::Connection) -> Binding {
    let leaf = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().map(|leaf| leaf.to_vec()));
    match leaf {
        Some(der) => Binding {
            tenant: tenant_of(&der),
            agent: agent_of(&der),
        },
        None => Binding {
            tenant: TenantBinding::Invalid("no client certificate".into()),
            agent: AgentBinding::Invalid("no client certificate".into()),
        },
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    storage: Sink,
    policy: TenantPolicy,
    budget: ByteBudget,
) {
    let remote = conn.remote_address();
    let binding = std::sync::Arc::new(peer_binding(&conn));
    tracing::info!(%remote, tenant = ?binding.tenant, agent = ?binding.agent, "agent connected");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let storage = storage.clone();
                let allowed = Allowed {
                    binding: std::sync::Arc::clone(&binding),
                    policy,
                };
                let budget = budget.clone();
                tokio::spawn(serve_stream(send, recv, storage, remote, allowed, budget));
            }
            Err(e) => {
                tracing::info!(%remote, reason = %e, "agent disconnected");
                break;
            }
        }
    }
}

/// What one connection's batches may write.
struct Allowed {
    binding: std::sync::Arc<Binding>,
    policy: TenantPolicy,
}

impl Allowed {
    /// `Err((reason, message))` when the agent id is not the one the certificate names.
    fn check_agent(&self, agent: &protocols::wire::AgentId) -> Result<(), (&'static str, String)> {
        match &self.binding.agent {
            AgentBinding::Bound(id) if *id == agent.0 => Ok(()),
            AgentBinding::Bound(id) => Err((
                "agent_mismatch",
                format!(
                    "this agent's certificate is bound to agent id {id:?}, not {:?}",
                    agent.0
                ),
            )),
            AgentBinding::Unbound if self.policy.unbound_may_write_any => Ok(()),
            AgentBinding::Unbound => Err((
                "cert_without_agent_id",
                "the agent certificate names no agent id: issue one with \
                 `core-node certs --force --agent-id ID`"
                    .into(),
            )),
            AgentBinding::Invalid(why) => Err((
                "cert_without_agent_id",
                format!("the agent certificate's agent id is invalid: {why}"),
            )),
        }
    }

    /// `Err((reason, message))` when the batch's tenant or agent id is not this agent's.
    fn check(
        &self,
        tenant: &protocols::Tenant,
        agent: &protocols::wire::AgentId,
    ) -> Result<(), (&'static str, String)> {
        self.check_agent(agent)?;
        match &self.binding.tenant {
            TenantBinding::Bound(t) if t == tenant => Ok(()),
            TenantBinding::Bound(t) => Err((
                "tenant_mismatch",
                format!(
                    "this agent's certificate is bound to tenant {:?}, not {:?}",
                    t.as_str(),
                    tenant.as_str()
                ),
            )),
            TenantBinding::Unbound if self.policy.unbound_may_write_any => Ok(()),
            TenantBinding::Unbound => Err((
                "cert_without_tenant",
                "the agent certificate names no tenant: issue one with `core-node certs --tenant T`"
                    .into(),
            )),
            TenantBinding::Invalid(why) => Err((
                "cert_without_tenant",
                format!("the agent certificate's tenant is invalid: {why}"),
            )),
        }
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    storage: Sink,
    remote: SocketAddr,
    allowed: Allowed,
    budget: ByteBudget,
) {
    // Held until the answer is written: for a batch, until storage made it durable.
    let (frame, _held) = match tokio::time::timeout(READ_TIMEOUT, read_frame(&mut recv, &budget))
        .await
    {
        Ok(Ok(read)) => read,
        Ok(Err(ReadFailure::TooLong)) => {
            reject(
                &mut send,
                remote,
                0,
                0,
                "frame_too_large",
                ErrorCode::BadData,
                format!("frame larger than {MAX_FRAME_BYTES} bytes"),
            )
            .await;
            return;
        }
        Ok(Err(ReadFailure::OverBudget)) => {
            // Stop the sender now rather than let its window fill for nothing.
            let _ = recv.stop(0u32.into());
            metrics::counter!(REFUSALS, "reason" => "memory_budget").increment(1);
            metrics::counter!("updraft_core_batches_rejected_total", "reason" => "memory_budget")
                .increment(1);
            if let Some(suppressed) = BUDGET_LOG.allow() {
                tracing::warn!(%remote, waited = ?BUDGET_WAIT, suppressed,
                    "quic frame refused with too_many_requests: the in-flight byte budget \
                     (--quic-inflight-bytes) stayed exhausted (suppressed: refusals since the \
                     last such line)");
            }
            answer(
                &mut send,
                0,
                0,
                ErrorCode::TooManyRequests,
                "the node's ingest memory budget is exhausted, retry later".into(),
            )
            .await;
            return;
        }
        Ok(Err(ReadFailure::Stream(e))) => {
            tracing::debug!(%remote, error = %e, "stream read failed");
            return;
        }
        Err(_) => {
            reject(
                &mut send,
                remote,
                0,
                0,
                "timeout",
                ErrorCode::Timeout,
                "frame not received in time".into(),
            )
            .await;
            return;
        }
    };
    let batch = match Message::decode(&frame) {
        Ok(Message::WriteBatch(b)) => b,
        Ok(Message::ResumeQuery(q)) => {
            if let Err((reason, message)) = allowed.check_agent(&q.agent_id) {
                refuse(&mut send, remote, 0, 0, &q.agent_id, None, reason, message).await;
                return;
            }
            let storage = storage.clone();
            let agent = q.agent_id.0.clone();
            let applied = tokio::task::spawn_blocking(move || storage.agent_offset(&agent)).await;
            match applied {
                Ok(Ok(applied)) => {
                    let reply = Message::ResumePoint(ResumePoint { applied });
                    write_ack(&mut send, &reply).await;
                }
                Ok(Err(e)) => tracing::warn!(%remote, error = %e, "resume query failed"),
                Err(e) => tracing::warn!(%remote, error = %e, "resume query task failed"),
            }
            return;
        }
        Ok(other) => {
            let kind = match other {
                Message::BatchAck(_) => "batch_ack",
                Message::ResumePoint(_) => "resume_point",
                Message::WriteBatch(_) | Message::ResumeQuery(_) => "unexpected",
            };
            reject(
                &mut send,
                remote,
                0,
                0,
                "unexpected_message",
                ErrorCode::BadData,
                format!("unexpected message {kind}"),
            )
            .await;
            return;
        }
        Err(e) => {
            let reason = match e {
                WireError::UnsupportedVersion(_) => "unsupported_version",
                _ => "malformed",
            };
            reject(
                &mut send,
                remote,
                0,
                0,
                reason,
                ErrorCode::BadData,
                e.to_string(),
            )
            .await;
            return;
        }
    };
    let (epoch, sequence) = (batch.epoch, batch.sequence);
    if batch.agent_id.is_untracked() {
        // The empty id is how HTTP ingest says "no agent": over QUIC it would turn off the
        // duplicate check, so a resent batch could be stored twice.
        reject(
            &mut send,
            remote,
            epoch,
            sequence,
            "no_agent_id",
            ErrorCode::BadData,
            "a batch over QUIC needs a non-empty agent id".into(),
        )
        .await;
        return;
    }
    if let Err((reason, message)) = allowed.check(&batch.tenant, &batch.agent_id) {
        refuse(
            &mut send,
            remote,
            epoch,
            sequence,
            &batch.agent_id,
            Some(&batch.tenant),
            reason,
            message,
        )
        .await;
        return;
    }
    let samples = batch.sample_count() as u64;
    metrics::counter!("updraft_core_samples_received_total").increment(samples);
    let outcome = apply(&storage, batch).await;
    if let AckOutcome::Failed { code, message } = &outcome {
        metrics::counter!("updraft_core_samples_rejected_total", "reason" => code.as_str())
            .increment(samples);
        tracing::warn!(%remote, epoch, sequence, code = code.as_str(), %message, "batch not stored");
    }
    let ack = Message::BatchAck(BatchAck {
        epoch,
        sequence,
        outcome,
    });
    write_ack(&mut send, &ack).await;
}

/// Where agents' batches go: the node's storage, or (clustered) the shard groups of their
/// series (see `cluster::writes`).
#[derive(Clone)]
pub struct Sink {
    storage: Storage,
    cluster: Option<std::sync::Arc<crate::cluster::node::ClusterNode>>,
}

impl Sink {
    pub fn new(
        storage: Storage,
        cluster: Option<std::sync::Arc<crate::cluster::node::ClusterNode>>,
    ) -> Self {
        Self { storage, cluster }
    }

    /// The last `(epoch, sequence)` applied for `agent`. A cluster answers none: the batches
    /// of an agent are split across groups, and resending is harmless (each group
    /// deduplicates its part), where skipping a batch one group lacks would not be.
    fn agent_offset(
        &self,
        agent: &str,
    ) -> Result<Option<(u64, u64)>, crate::storage::StorageError> {
        match self.cluster {
            Some(_) => Ok(None),
            None => self.storage.agent_offset(agent),
        }
    }
}

async fn apply(sink: &Sink, batch: WriteBatch) -> AckOutcome {
    if let Some(cluster) = &sink.cluster {
        return cluster.write_batch(batch).await;
    }
    let pending = match sink.storage.submit(batch) {
        Ok(p) => p,
        Err(SubmitError::Busy(_)) => {
            return AckOutcome::Failed {
                code: ErrorCode::TooManyRequests,
                message: "write queue is full, retry later".into(),
            };
        }
        Err(SubmitError::Stopped(_)) => {
            return AckOutcome::Failed {
                code: ErrorCode::Unavailable,
                message: "storage is shutting down".into(),
            };
        }
        // Read-only (disk almost full) or failed: the agent keeps buffering and retries.
        Err(SubmitError::Unavailable { reason, .. }) => {
            return AckOutcome::Failed {
                code: ErrorCode::Unavailable,
                message: format!("storage refuses writes: {reason}"),
            };
        }
    };
    match pending.await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => AckOutcome::Failed {
            code: ErrorCode::Unavailable,
            message: e.to_string(),
        },
        Err(_) => AckOutcome::Failed {
            code: ErrorCode::Unavailable,
            message: "storage writer stopped".into(),
        },
    }
}

/// Refuses a frame the agent's certificate does not allow: audit log, auth-failure counter,
/// `unauthorized` answer.
#[allow(clippy::too_many_arguments)]
async fn refuse(
    send: &mut quinn::SendStream,
    remote: SocketAddr,
    epoch: u64,
    sequence: u64,
    agent: &protocols::wire::AgentId,
    tenant: Option<&protocols::Tenant>,
    reason: &'static str,
    message: String,
) {
    metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
    tracing::warn!(
        target: "audit",
        event = "batch_refused",
        %remote,
        agent = %agent.0,
        tenant = tenant.map_or("", |t| t.as_str()),
        reason,
        "QUIC frame for a tenant or agent id the agent certificate does not allow"
    );
    reject(
        send,
        remote,
        epoch,
        sequence,
        reason,
        ErrorCode::Unauthorized,
        message,
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn reject(
    send: &mut quinn::SendStream,
    remote: SocketAddr,
    epoch: u64,
    sequence: u64,
    reason: &'static str,
    code: ErrorCode,
    message: String,
) {
    metrics::counter!("updraft_core_batches_rejected_total", "reason" => reason).increment(1);
    tracing::warn!(%remote, reason, %message, "rejected frame");
    answer(send, epoch, sequence, code, message).await;
}

/// Answers a frame that was not stored.
async fn answer(
    send: &mut quinn::SendStream,
    epoch: u64,
    sequence: u64,
    code: ErrorCode,
    message: String,
) {
    let ack = Message::BatchAck(BatchAck {
        epoch,
        sequence,
        outcome: AckOutcome::Failed { code, message },
    });
    write_ack(send, &ack).await;
}

/// Refusals for want of budget are logged at most every [`limits::LOG_EVERY`].
static BUDGET_LOG: std::sync::LazyLock<LogLimiter> = std::sync::LazyLock::new(LogLimiter::default);

/// Why a frame was not read whole.
#[derive(Debug)]
enum ReadFailure {
    TooLong,
    OverBudget,
    Stream(quinn::ReadError),
}

/// Reads one frame to the stream's end, taking budget before each read (see [`limits`]).
/// Returns the frame and the budget it holds (its length).
async fn read_frame(
    recv: &mut quinn::RecvStream,
    budget: &ByteBudget,
) -> Result<(Vec<u8>, Held), ReadFailure> {
    let mut held = Held::default();
    let mut waited = Duration::ZERO;
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    let mut len = 0usize;
    loop {
        // One byte past the maximum is enough to know a frame is too long.
        let want = GRANT_BYTES.min(MAX_FRAME_BYTES + 1 - len);
        budget
            .grow(&mut held, want, &mut waited)
            .await
            .map_err(|_| ReadFailure::OverBudget)?;
        let mut left = want;
        while left > 0 {
            match recv.read_chunk(left, true).await {
                Ok(Some(chunk)) => {
                    left -= chunk.bytes.len();
                    len += chunk.bytes.len();
                    chunks.push(chunk.bytes);
                }
                Ok(None) => {
                    held.shrink_to(len);
                    let mut frame = Vec::with_capacity(len);
                    for c in chunks {
                        frame.extend_from_slice(&c);
                    }
                    return Ok((frame, held));
                }
                Err(e) => return Err(ReadFailure::Stream(e)),
            }
        }
        if len > MAX_FRAME_BYTES {
            return Err(ReadFailure::TooLong);
        }
    }
}

async fn write_ack(send: &mut quinn::SendStream, ack: &Message) {
    if let Err(e) = send.write_all(&ack.encode()).await {
        tracing::debug!(error = %e, "ack not delivered");
        return;
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::wire::AgentId;

    fn allowed(agent: AgentBinding, dev: bool) -> Allowed {
        Allowed {
            binding: std::sync::Arc::new(Binding {
                tenant: TenantBinding::Bound(protocols::Tenant::default()),
                agent,
            }),
            policy: TenantPolicy {
                unbound_may_write_any: dev,
            },
        }
    }

    #[test]
    fn agent_ids_are_held_to_the_certificate_unless_it_names_none_in_dev_mode() {
        let tenant = protocols::Tenant::default();
        let id = |s: &str| AgentId(s.to_owned());
        let reason = |a: &Allowed, s: &str| a.check(&tenant, &id(s)).err().map(|(r, _)| r);
        for dev in [false, true] {
            let bound = allowed(AgentBinding::Bound("edge-1".into()), dev);
            assert_eq!(reason(&bound, "edge-1"), None);
            assert_eq!(reason(&bound, "edge-2"), Some("agent_mismatch"));
            let invalid = allowed(AgentBinding::Invalid("two ids".into()), dev);
            assert_eq!(reason(&invalid, "edge-1"), Some("cert_without_agent_id"));
        }
        let unbound = allowed(AgentBinding::Unbound, false);
        assert_eq!(reason(&unbound, "edge-1"), Some("cert_without_agent_id"));
        let unbound_dev = allowed(AgentBinding::Unbound, true);
        assert_eq!(reason(&unbound_dev, "anyone"), None);
    }
}
