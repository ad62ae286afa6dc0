//! The QUIC ingest listener: edge agents deliver [`WriteBatch`]es here.
//!
//! One batch per bidirectional stream: the agent writes one frame and finishes its side; we
//! read at most [`MAX_FRAME_BYTES`], hand the batch to [`Storage`], and answer with one
//! [`BatchAck`] frame only after the outcome is final (for a stored batch: durable). A
//! malformed frame is answered with `bad_data` and counted; it never affects other streams or
//! connections.

use crate::storage::{Storage, SubmitError};
use protocols::wire::{
    AckOutcome, BatchAck, ErrorCode, MAX_FRAME_BYTES, Message, ResumePoint, WireError, WriteBatch,
};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a peer may take to send one frame.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until `shutdown` resolves, then closes the endpoint.
pub async fn serve(
    endpoint: quinn::Endpoint,
    storage: Storage,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let storage = storage.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, storage).await,
                        Err(e) => {
                            metrics::counter!("updraft_core_quic_handshake_failures_total").increment(1);
                            tracing::warn!(%remote, error = %e, "quic handshake failed");
                        }
                    }
                });
            }
        }
    }
    endpoint.close(0u32.into(), b"shutting down");
}

fn peer_name(conn: &quinn::Connection) -> String {
    // The verifier already checked the chain; the name is only for logs.
    conn.peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|certs| format!("{} cert(s)", certs.len()))
        .unwrap_or_else(|| "unknown".into())
}

async fn serve_connection(conn: quinn::Connection, storage: Storage) {
    let remote = conn.remote_address();
    tracing::info!(%remote, peer = %peer_name(&conn), "agent connected");
    metrics::gauge!("updraft_core_quic_connections").increment(1);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let storage = storage.clone();
                tokio::spawn(serve_stream(send, recv, storage, remote));
            }
            Err(e) => {
                tracing::info!(%remote, reason = %e, "agent disconnected");
                break;
            }
        }
    }
    metrics::gauge!("updraft_core_quic_connections").decrement(1);
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    storage: Storage,
    remote: SocketAddr,
) {
    let frame = match tokio::time::timeout(READ_TIMEOUT, recv.read_to_end(MAX_FRAME_BYTES)).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
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
        Ok(Err(e)) => {
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

async fn apply(storage: &Storage, batch: WriteBatch) -> AckOutcome {
    let pending = match storage.submit(batch) {
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
    let ack = Message::BatchAck(BatchAck {
        epoch,
        sequence,
        outcome: AckOutcome::Failed { code, message },
    });
    write_ack(send, &ack).await;
}

async fn write_ack(send: &mut quinn::SendStream, ack: &Message) {
    if let Err(e) = send.write_all(&ack.encode()).await {
        tracing::debug!(error = %e, "ack not delivered");
        return;
    }
    let _ = send.finish();
}
