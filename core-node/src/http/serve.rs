//! The HTTP listener's accept loop, with the limits that protect it from slow or greedy
//! clients (axum's own `serve` sets no timer, so hyper's header timeout would not run):
//!
//! - [`HEADER_READ_TIMEOUT`]: a connection must deliver a request's headers within this
//!   long, including the wait for the next request on a kept-alive connection; else it is
//!   closed (slowloris).
//! - [`BODY_READ_TIMEOUT`]: a request's body must arrive within this long of its headers;
//!   else reading it fails and the request is refused (400).
//! - [`MAX_CONNECTIONS`]: connections served at once; past it, new ones wait in the kernel's
//!   accept queue.
//!
//! Body size limits are the routes' own (see the module above). Each request carries the
//! client's address (`ConnectInfo<SocketAddr>`) for the audit log.
//!
//! With TLS ([`crate::tls::HttpTls`]) every connection first completes its handshake, within
//! [`HEADER_READ_TIMEOUT`] (a connection that stalls or speaks plain HTTP is closed and counted
//! in `updraft_core_http_tls_handshake_failures_total`); the certificate it is shown is the
//! one current at that moment, so a reload applies to new connections.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 1024;

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` resolves, then
/// lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let closing = close_rx.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, remote, app, closing).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, remote, app, closing).await,
                        Ok(Err(e)) => {
                            metrics::counter!("updraft_core_http_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(%remote, error = %e, "HTTP TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("updraft_core_http_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(%remote, "HTTP TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    let _ = close_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One HTTP/1.1 connection, plain or TLS, until it ends or the listener closes.
async fn serve_connection<S>(
    stream: S,
    remote: std::net::SocketAddr,
    app: Router,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        let req = req.map(|body| Body::new(TimedBody::new(body, BODY_READ_TIMEOUT)));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = async { let _ = closing.wait_for(|c| *c).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A request body that fails once its deadline passes.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = hyper::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(format!(
                "request body not received within {BODY_READ_TIMEOUT:?}"
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
