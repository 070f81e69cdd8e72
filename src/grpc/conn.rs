//! Accepting connections: a bound on how many are open, TLS, and closing
//! the idle ones.
//!
//! One task accepts. A connection beyond `server.max_connections` is closed
//! as soon as it is accepted, so its client fails at once instead of
//! hanging in the kernel's queue; an accept error (out of file descriptors,
//! say) waits 50 ms before the next try instead of spinning a core. Every
//! accepted socket gets `TCP_NODELAY` (without it every answer waits for the
//! client's delayed ACK, about 40 ms on Linux) and TCP keepalive. The TLS
//! handshake runs on a task of its own with `server.handshake_timeout_ms`,
//! so a slow or silent client cannot hold up the others. The certificate,
//! key and client CAs are re-read on SIGHUP ([`Tls::reload`]); connections
//! already open keep theirs.
//!
//! A connection with no call in progress for `server.idle_timeout_s` is
//! closed: [`ConnInfo`] travels with each call (tonic puts it in the call's
//! extensions, and [`super::auth`]'s layer marks a call's start and end),
//! and the connection's reader reports the end of the stream once it has
//! been idle that long. HTTP/2 pings do not count as calls.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{SecurityConfig, ServerConfig};
use crate::error::{Error, Result};
use crate::telemetry;

/// The TLS settings in force (none: plain TCP), swapped on SIGHUP.
#[derive(Clone, Default)]
pub struct Tls {
    cfg: SecurityConfig,
    acceptor: Arc<RwLock<Option<TlsAcceptor>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cfg.tls_cert)
            .field("client_ca", &self.cfg.tls_client_ca)
            .finish()
    }
}

fn tls_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// A TLS acceptor for the files of `cfg` (HTTP/2 by ALPN; client
/// certificates required when `tls_client_ca` is set).
fn acceptor(cfg: &SecurityConfig) -> Result<Option<TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let chain = certs(cert)?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    let builder = match &cfg.tls_client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| tls_err(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| tls_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

impl Tls {
    /// Loads the certificate and key of `cfg`, if any.
    pub fn new(cfg: &SecurityConfig) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            acceptor: Arc::new(RwLock::new(acceptor(cfg)?)),
        })
    }

    /// Whether connections are TLS.
    pub fn enabled(&self) -> bool {
        self.acceptor.read().is_some()
    }

    /// Re-reads the files; on failure the ones in force stay.
    pub fn reload(&self) -> Result<()> {
        if let Some(a) = acceptor(&self.cfg)? {
            *self.acceptor.write() = Some(a);
        }
        Ok(())
    }

    fn current(&self) -> Option<TlsAcceptor> {
        self.acceptor.read().clone()
    }
}

/// Calls in progress on a connection and when the last one started or ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch`.
    last: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// What tonic hands each call about its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    activity: Arc<Activity>,
}

/// A call in progress on a connection: started when made, ended when
/// dropped (answered or cancelled).
#[derive(Debug)]
pub(super) struct Active(ConnInfo);

impl Active {
    /// Marks a call started on `c`'s connection.
    pub(super) fn start(c: ConnInfo) -> Self {
        c.started();
        Self(c)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.finished();
    }
}

impl ConnInfo {
    /// A new connection's: no call yet, idle from now.
    fn new(remote: Option<SocketAddr>) -> Self {
        Self {
            remote,
            activity: Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                last: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// A call started on this connection.
    fn started(&self) {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        self.activity
            .last
            .store(self.activity.now(), Ordering::Release);
    }

    /// A call ended on this connection.
    fn finished(&self) {
        self.activity
            .last
            .store(self.activity.now(), Ordering::Release);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection: its stream, its place under the connection
/// bound, and its idle timer.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

impl Conn {
    /// The TCP socket under any TLS.
    pub fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the connection has had no call for its idle timeout (then
    /// the reader reports the end of the stream and hyper closes it).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((timeout, sleep)) = &mut self.idle else {
            return false;
        };
        let a = &self.info.activity;
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = a.now();
            let last = a.last.load(Ordering::Acquire);
            let idle_ms = timeout.as_millis() as u64;
            if a.in_flight.load(Ordering::Acquire) == 0 && now.saturating_sub(last) >= idle_ms {
                metrics::counter!(telemetry::CONNECTIONS_CLOSED, "reason" => "idle").increment(1);
                self.idle = None;
                return true;
            }
            let wait = if a.in_flight.load(Ordering::Acquire) > 0 {
                idle_ms
            } else {
                (last + idle_ms).saturating_sub(now).max(1)
            };
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(wait));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::CONNECTIONS).decrement(1.0);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.idle_expired(cx) {
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Raises the soft limit on open files to the hard limit (as servers do),
/// and returns the soft limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Binds `addr` with a listen backlog of `backlog` (port 0 picks a free
/// port).
pub fn bind_with_backlog(addr: &str, backlog: u32) -> Result<TcpListener> {
    let sa: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Config(format!("cannot resolve listen address {addr:?}")))?;
    let io = |e: std::io::Error| Error::Config(format!("cannot listen on {addr}: {e}"));
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sa),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    socket.set_nonblocking(true).map_err(io)?;
    socket.bind(&sa.into()).map_err(io)?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(io)?;
    TcpListener::from_std(socket.into()).map_err(io)
}

/// The connections accepted on `listener`, set up as the module header
/// says. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    cfg: &ServerConfig,
    tls: Tls,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Conn>>(64);
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let keepalive = (cfg.tcp_keepalive_s > 0).then(|| Duration::from_secs(cfg.tcp_keepalive_s));
    let idle = (cfg.idle_timeout_s > 0).then(|| Duration::from_secs(cfg.idle_timeout_s));
    let handshake = Duration::from_millis(cfg.handshake_timeout_ms);
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => break,
            };
            let (stream, remote) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "accept failed; retrying in 50 ms");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                metrics::counter!(telemetry::CONNECTIONS_CLOSED, "reason" => "limit").increment(1);
                // Reset rather than a polite close: the client learns at once.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            if let Some(k) = keepalive {
                let _ = socket2::SockRef::from(&stream)
                    .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(k));
            }
            let acceptor = tls.current();
            let tx = tx.clone();
            tokio::spawn(async move {
                let io = match acceptor {
                    None => Io::Plain(stream),
                    Some(a) => match tokio::time::timeout(handshake, a.accept(stream)).await {
                        Ok(Ok(s)) => Io::Tls(Box::new(s)),
                        failed => {
                            // A handshake error, or none within the timeout.
                            tracing::debug!(%remote, ?failed, "TLS handshake failed");
                            metrics::counter!(telemetry::CONNECTIONS_CLOSED, "reason" => "handshake")
                                .increment(1);
                            return;
                        }
                    },
                };
                metrics::gauge!(telemetry::CONNECTIONS).increment(1.0);
                let conn = Conn {
                    io,
                    info: ConnInfo::new(Some(remote)),
                    idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
                    _permit: permit,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_dropped_before_its_answer_still_ends() {
        let info = ConnInfo::new(None);
        let calls = || info.activity.in_flight.load(Ordering::Acquire);
        let answered = Active::start(info.clone());
        let cancelled = Active::start(info.clone());
        assert_eq!(calls(), 2);
        drop(answered);
        // A future dropped mid-call (the client gave up) drops its guard.
        let fut = async move {
            let _active = cancelled;
            std::future::pending::<()>().await
        };
        drop(fut);
        assert_eq!(calls(), 0, "a cancelled call kept its connection busy");
    }
}
