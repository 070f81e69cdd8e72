//! Who may reach the service (the security issue's findings 2, 4, 5 and 3):
//! bearer tokens with roles, per-token write rates, TLS with client
//! certificates and reload on SIGHUP, refusing an exposed address without
//! protection, a bound on connections, idle connections closed, and work
//! for a caller who gave up stopped between encoder batches.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;
use vecrec::config::Config;
use vecrec::engine::Engine;
use vecrec::grpc::auth::{add_token, new_token, Role};
use vecrec::grpc::pb;
use vecrec::grpc::pb::recommender_client::RecommenderClient;

use crate::common::{copy_sample, encoder, serve_live};

fn first_item(root: &Path) -> String {
    let e = Engine::open(root, Config::default(), None).unwrap();
    e.index().store().external_id(0).to_owned()
}

async fn plain(addr: std::net::SocketAddr) -> Channel {
    for _ in 0..100 {
        if let Ok(c) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}");
}

/// Sends `authorization: Bearer <token>` (when there is a token) on every call.
#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(r)
    }
}

type Authed = RecommenderClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A client that sends `token` (if any) on every call.
fn with_token(ch: Channel, token: Option<String>) -> Authed {
    RecommenderClient::with_interceptor(ch, Bearer(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_reads_and_who_writes() {
    let dir = copy_sample();
    let root = dir.path();
    let item = first_item(root);
    let tokens = root.join("tokens.toml");
    let (reader, e) = new_token("dashboard", Role::Read);
    add_token(&tokens, e).unwrap();
    let (writer, e) = new_token("ingest", Role::Write);
    add_token(&tokens, e).unwrap();
    let mut cfg = Config::default();
    cfg.security.tokens_file = Some(tokens);
    cfg.security.write_rate = 0.001;
    cfg.security.write_burst = 2.0;
    let (addr, _stop) = serve_live(root, cfg).await;
    let ch = plain(addr).await;
    let get = || pb::GetItemRequest {
        id: item.clone(),
        ..Default::default()
    };
    let del = |id: &str| pb::DeleteItemsRequest {
        ids: vec![id.to_owned()],
    };

    let mut anon = with_token(ch.clone(), None);
    let s = anon.get_item(get()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = anon.delete_items(del(&item)).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // One character changed: the last, to one it cannot already be.
    let last = if writer.ends_with('0') { '1' } else { '0' };
    let mut forged = with_token(
        ch.clone(),
        Some(format!("{}{last}", &writer[..writer.len() - 1])),
    );
    assert_eq!(
        forged.delete_items(del(&item)).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut r = with_token(ch.clone(), Some(reader));
    assert_eq!(r.get_item(get()).await.unwrap().get_ref().id, item);
    let s = r.delete_items(del(&item)).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    let mut w = with_token(ch.clone(), Some(writer));
    assert_eq!(
        w.delete_items(del(&item)).await.unwrap().get_ref().deleted,
        1
    );
    // The burst of two write calls: the second passes validation and the
    // rate, the third is refused for the rate whatever it asks.
    let s = w.delete_items(del("no-such-item")).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = w.delete_items(del("no-such-item")).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("ingest"), "{}", s.message());

    // Health stays open for load balancers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(h.get_ref().status, 1, "SERVING");
}

#[test]
fn an_exposed_address_needs_tls_and_tokens_or_insecure() {
    use vecrec::config::SecurityConfig;
    let open = SecurityConfig::default();
    let everywhere = "0.0.0.0:50051".parse().unwrap();
    let err = vecrec::grpc::check_exposure(everywhere, &open, false).unwrap_err();
    assert!(err.to_string().contains("--insecure"), "{err}");
    vecrec::grpc::check_exposure(everywhere, &open, true).unwrap();
    vecrec::grpc::check_exposure("127.0.0.1:50051".parse().unwrap(), &open, false).unwrap();
    vecrec::grpc::check_exposure("[::1]:50051".parse().unwrap(), &open, false).unwrap();
    let tls_only = SecurityConfig {
        tls_cert: Some("c.pem".into()),
        tls_key: Some("k.pem".into()),
        ..Default::default()
    };
    assert!(vecrec::grpc::check_exposure(everywhere, &tls_only, false).is_err());
    let both = SecurityConfig {
        tokens_file: Some("t.toml".into()),
        ..tls_only
    };
    vecrec::grpc::check_exposure(everywhere, &both, false).unwrap();
}

/// A CA and certificates it signs, written as PEM files.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self {
            ca: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `names` with `usage`: (cert PEM, key PEM).
    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.extended_key_usages = vec![usage];
        let c = p.signed_by(&key, &*self.ca).unwrap();
        (c.pem(), key.serialize_pem())
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn health_of(ch: Channel) -> Result<i32, tonic::Status> {
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .map(|r| r.get_ref().status)
}

/// With `tls_client_ca` set, only clients with a certificate from that CA
/// get through; a plain-text client gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = copy_sample();
    let root = dir.path();
    let servers = Pki::new();
    let clients = Pki::new();
    let (cert, key) = servers.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(root.join("cert.pem"), cert).unwrap();
    std::fs::write(root.join("key.pem"), key).unwrap();
    std::fs::write(root.join("clients.pem"), clients.ca_pem()).unwrap();
    let mut cfg = Config::default();
    cfg.security.tls_cert = Some(root.join("cert.pem"));
    cfg.security.tls_key = Some(root.join("key.pem"));
    cfg.security.tls_client_ca = Some(root.join("clients.pem"));
    let (addr, _stop) = serve_live(root, cfg).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let good = clients.leaf(&["reader"], ExtendedKeyUsagePurpose::ClientAuth);
    let ch = tls_channel(addr, &servers.ca_pem(), Some(&good))
        .await
        .unwrap();
    assert_eq!(health_of(ch).await.unwrap(), 1);

    // No client certificate, or one from another CA: refused.
    let stranger = Pki::new().leaf(&["x"], ExtendedKeyUsagePurpose::ClientAuth);
    for identity in [None, Some(&stranger)] {
        let refused = match tls_channel(addr, &servers.ca_pem(), identity).await {
            Err(_) => true,
            Ok(ch) => health_of(ch).await.is_err(),
        };
        assert!(
            refused,
            "a client without a trusted certificate got through"
        );
    }
    // Plain text to a TLS port.
    let refused = match Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => health_of(ch).await.is_err(),
    };
    assert!(refused, "plain text got through");
}

/// The server binary reloads its certificate on SIGHUP: a client that
/// trusts only the new CA gets through afterwards, one that trusts only
/// the old one no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_reloaded_on_sighup() {
    let dir = copy_sample();
    let root = dir.path();
    let (old, new) = (Pki::new(), Pki::new());
    let install = |pki: &Pki| {
        let (c, k) = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        std::fs::write(root.join("key.pem.tmp"), k).unwrap();
        std::fs::write(root.join("cert.pem.tmp"), c).unwrap();
        std::fs::rename(root.join("key.pem.tmp"), root.join("key.pem")).unwrap();
        std::fs::rename(root.join("cert.pem.tmp"), root.join("cert.pem")).unwrap();
    };
    install(&old);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vecrec"))
        .args(["serve", "--index"])
        .arg(root)
        .args(["--addr", "127.0.0.1:0"])
        .env("VECREC_SECURITY__TLS_CERT", root.join("cert.pem"))
        .env("VECREC_SECURITY__TLS_KEY", root.join("key.pem"))
        .env("VECREC_HYBRID__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = crate::common::first_line(&mut child);
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let ch = tls_channel(addr, &old.ca_pem(), None).await.unwrap();
    assert_eq!(health_of(ch).await.unwrap(), 1);
    assert!(tls_channel(addr, &new.ca_pem(), None).await.is_err());

    install(&new);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let until = Instant::now() + Duration::from_secs(10);
    let reloaded = loop {
        if let Ok(ch) = tls_channel(addr, &new.ca_pem(), None).await {
            if health_of(ch).await.is_ok() {
                break true;
            }
        }
        if Instant::now() > until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let old_refused = tls_channel(addr, &old.ca_pem(), None).await.is_err();
    let _ = child.kill();
    let _ = child.wait();
    assert!(reloaded, "the new certificate was not served after SIGHUP");
    assert!(old_refused, "the old certificate is still served");
}

/// Beyond `server.max_connections` a connection is closed at once (the
/// client learns instead of hanging), and a connection with no call for
/// `server.idle_timeout_s` is closed, which frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_and_idle_ones_closed() {
    let dir = copy_sample();
    let mut cfg = Config::default();
    cfg.server.max_connections = 2;
    cfg.server.idle_timeout_s = 1;
    cfg.server.request_timeout_ms = 500;
    let (addr, _stop) = serve_live(dir.path(), cfg).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The third: closed by the server well within a second (the reset may
    // even reach the client before its connect call returns).
    let mut buf = [0u8; 64];
    if let Ok(mut third) = tokio::net::TcpStream::connect(addr).await {
        tokio::time::timeout(
            Duration::from_millis(800),
            until_closed(&mut third, &mut buf),
        )
        .await
        .expect("the connection over the limit was left hanging");
    }
    // The two held ones send nothing after the server's HTTP/2 settings:
    // closed after the idle timeout.
    let started = Instant::now();
    for mut s in held {
        tokio::time::timeout(Duration::from_secs(5), until_closed(&mut s, &mut buf))
            .await
            .expect("an idle connection was not closed");
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    // Their places are free again.
    let mut c = RecommenderClient::new(plain(addr).await);
    let item = first_item(dir.path());
    c.get_item(pb::GetItemRequest {
        id: item,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Reads until the server closes the connection (or resets it).
async fn until_closed(s: &mut tokio::net::TcpStream, buf: &mut [u8]) {
    use tokio::io::AsyncReadExt;
    while let Ok(n) = s.read(buf).await {
        if n == 0 {
            break;
        }
    }
}

/// An Embed larger than one encoder batch whose deadline passes during
/// the first batch stops before the second (the server used to compute for
/// 14 s after a 1 s client had gone).
#[test]
fn a_large_embed_stops_between_batches_at_its_deadline() {
    let enc = encoder();
    let texts: Vec<String> = (0..256)
        .map(|i| {
            format!(
                "text {i}: {}",
                "a long sentence about many things ".repeat(20)
            )
        })
        .collect();
    let started = Instant::now();
    let whole = enc.encode(&texts[..64]).unwrap();
    let two_batches = started.elapsed();
    assert_eq!(whole.len(), 64);
    let deadline = vecrec::deadline::Deadline::after(two_batches / 8);
    let err = enc.encode_within(&texts, deadline).unwrap_err();
    assert!(
        matches!(err, vecrec::error::Error::DeadlineExceeded { .. }),
        "{err}"
    );
}

/// Bytes of the served vectors changed on disk while serving (the file
/// rewritten in place, as a failing disk or a careless tool would): the
/// next scrub finds it, health turns NOT_SERVING and calls answer
/// DATA_LOSS instead of answers from altered vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_while_serving_is_found_and_answered_data_loss() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = copy_sample();
    let root = dir.path();
    let item = first_item(root);
    let mut cfg = Config::default();
    cfg.server.scrub_interval_s = 1;
    let (addr, _stop) = serve_live(root, cfg).await;
    let ch = plain(addr).await;
    let mut c = RecommenderClient::new(ch.clone());
    let similar = || pb::SimilarItemsRequest {
        item_id: item.clone(),
        k: 5,
        ..Default::default()
    };
    c.similar_items(similar()).await.unwrap();
    assert_eq!(health_of(ch.clone()).await.unwrap(), 1);
    let gen = vecrec_index::generation::current_generation(root).unwrap();
    let vectors = gen.join("vectors.bin");
    let len = std::fs::metadata(&vectors).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&vectors)
        .unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[0x5a; 3647]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let until = Instant::now() + Duration::from_secs(10);
    while health_of(ch.clone()).await.unwrap() == 1 {
        assert!(Instant::now() < until, "the damage was not found");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health_of(ch.clone()).await.unwrap(), 2, "NOT_SERVING");
    let s = c.similar_items(similar()).await.unwrap_err();
    assert_eq!(s.code(), Code::DataLoss, "{s:?}");
    assert!(s.message().contains("vectors.bin"), "{}", s.message());
    let s = c
        .get_item(pb::GetItemRequest {
            id: item.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::DataLoss);
}
