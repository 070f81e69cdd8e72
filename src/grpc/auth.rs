//! Who may call what: bearer tokens with roles, checked by a tower layer in
//! front of every service, and per-token rates for writes.
//!
//! Tokens live in a TOML file (`security.tokens_file`) as the SHA-256 of
//! the token, never the token itself, each with a name and a role. A call
//! presents `authorization: Bearer <token>`; its hash is compared with every
//! stored hash in constant time (no early exit, so the time does not tell
//! how much of a hash matched). Roles nest: `read` may call Recommend,
//! SimilarItems, SearchText, SearchVector, Embed, GetItem, ShardSources,
//! ItemStates and reflection; `write` also UpsertItems, DeleteItems, RecordEvents and
//! UserEvents (a user's recorded behaviour); `admin` anything, including
//! methods added later that name no role. Health is open to all, so load
//! balancers need no token. No token: `UNAUTHENTICATED`; too weak a role:
//! `PERMISSION_DENIED`. The file is re-read on SIGHUP; a file that does not
//! parse keeps the tokens in force and logs why.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::config::SecurityConfig;
use crate::error::{Error, Result};

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Recommend, SimilarItems, SearchText, SearchVector, Embed, GetItem,
    /// ShardSources, ItemStates, reflection.
    Read,
    /// Also UpsertItems, DeleteItems, RecordEvents, UserEvents.
    Write,
    /// Everything.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?} (read, write or admin)")),
        }
    }
}

/// The caller of a request, put into its extensions by the layer.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name ("anonymous" when tokens are off).
    pub name: Arc<str>,
    /// Its role.
    pub role: Role,
}

/// One entry of the token file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds the token (shown in logs and rate-limit errors).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// The tokens in force.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Equality of two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Tokens {
    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: TokenFile =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let mut entries = Vec::with_capacity(file.tokens.len());
        for t in file.tokens {
            let hash = unhex(&t.sha256).ok_or_else(|| {
                Error::Config(format!(
                    "{}: token {:?}: sha256 must be 64 hex digits",
                    path.display(),
                    t.name
                ))
            })?;
            if entries
                .iter()
                .any(|(_, c): &(_, Caller)| *c.name == *t.name)
            {
                return Err(Error::Config(format!(
                    "{}: two tokens are named {:?}",
                    path.display(),
                    t.name
                )));
            }
            entries.push((
                hash,
                Caller {
                    name: t.name.into(),
                    role: t.role,
                },
            ));
        }
        Ok(Self { entries })
    }

    /// The caller holding `token`, if it is one of ours.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        let h = sha256(token);
        let mut found = None;
        for (stored, caller) in &self.entries {
            if same(stored, &h) {
                found = Some(caller.clone());
            }
        }
        found
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A new random token (`vrt_` and 64 hex digits) and its file entry.
pub fn new_token(name: &str, role: Role) -> (String, TokenEntry) {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("vrt_{}", hex(&raw));
    let entry = TokenEntry {
        name: name.to_owned(),
        role,
        sha256: hex(&sha256(&token)),
    };
    (token, entry)
}

/// Appends `entry` to the token file at `path` (created if missing), after
/// checking the name is new; written whole through a temporary file.
pub fn add_token(path: &Path, entry: TokenEntry) -> Result<()> {
    let mut file: TokenFile = match std::fs::read_to_string(path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
        Err(e) => return Err(Error::io(path, e)),
    };
    if file.tokens.iter().any(|t| t.name == entry.name) {
        return Err(Error::invalid(format!(
            "{}: a token named {:?} exists",
            path.display(),
            entry.name
        )));
    }
    file.tokens.push(entry);
    let text = toml::to_string(&file).map_err(|e| Error::Config(e.to_string()))?;
    vecrec_index::generation::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// The role a gRPC method needs; `None`: open to all (health).
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "grpc.health.v1.Health" => None,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Some(Role::Read)
        }
        "vecrec.v1.Recommender" => Some(match method {
            // UserEvents lists a user's behaviour, which no read call shows.
            "UpsertItems" | "DeleteItems" | "RecordEvents" | "UserEvents" => Role::Write,
            "Recommend" | "SimilarItems" | "SearchText" | "SearchVector" | "Embed" | "GetItem"
            | "ShardSources" | "ItemStates" => Role::Read,
            _ => Role::Admin,
        }),
        _ => Some(Role::Admin),
    }
}

/// The tokens in force (none: authentication off), swapped on SIGHUP.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    file: Option<PathBuf>,
    tokens: Arc<RwLock<Option<Arc<Tokens>>>>,
}

impl Auth {
    /// Loads the token file of `cfg`, if any.
    pub fn new(cfg: &SecurityConfig) -> Result<Self> {
        let tokens = cfg
            .tokens_file
            .as_deref()
            .map(Tokens::load)
            .transpose()?
            .map(Arc::new);
        Ok(Self {
            file: cfg.tokens_file.clone(),
            tokens: Arc::new(RwLock::new(tokens)),
        })
    }

    /// Whether calls need a token.
    pub fn enabled(&self) -> bool {
        self.tokens.read().is_some()
    }

    /// Re-reads the token file; on failure the tokens in force stay.
    pub fn reload(&self) -> Result<usize> {
        let Some(path) = &self.file else { return Ok(0) };
        let t = Tokens::load(path)?;
        let n = t.len();
        *self.tokens.write() = Some(Arc::new(t));
        Ok(n)
    }

    /// Checks a call to `path` with `authorization` header value `header`.
    fn authorize(&self, path: &str, header: Option<&str>) -> std::result::Result<Caller, Status> {
        let Some(tokens) = self.tokens.read().clone() else {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        };
        let Some(need) = required_role(path) else {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Read,
            });
        };
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("this server needs `authorization: Bearer <token>`")
            })?;
        let caller = tokens
            .verify(token)
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))?;
        if caller.role < need {
            return Err(Status::permission_denied(format!(
                "token {:?} has role {}; {path} needs {need}",
                &*caller.name, caller.role
            )));
        }
        Ok(caller)
    }
}

/// The tower layer that authorizes every call before it reaches a service.
#[derive(Clone, Debug)]
pub struct AuthLayer(pub Auth);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            auth: self.0.clone(),
            inner,
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    auth: Auth,
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = std::result::Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.auth.authorize(req.uri().path(), header) {
            Ok(caller) => {
                if let Some(c) = req.extensions().get::<super::conn::ConnInfo>() {
                    // Ends the call on its connection when the answer is
                    // made or when the call is dropped (the client gave up),
                    // so a cancelled call cannot keep the connection busy.
                    let active = super::conn::Active::start(c.clone());
                    req.extensions_mut().insert(caller);
                    let fut = self.inner.call(req);
                    return Box::pin(async move {
                        let _active = active;
                        fut.await
                    });
                }
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                metrics::counter!(crate::telemetry::REFUSED, "reason" => match status.code() {
                    tonic::Code::PermissionDenied => "permission_denied",
                    _ => "unauthenticated",
                })
                .increment(1);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-caller rates of write calls and of events (`security.write_rate`,
/// `security.event_rate`).
#[derive(Debug)]
pub struct Rates {
    write: (f64, f64),
    event: (f64, f64),
    buckets: Mutex<HashMap<(Arc<str>, bool), Bucket>>,
}

impl Rates {
    /// The rates of `cfg`.
    pub fn new(cfg: &SecurityConfig) -> Self {
        Self {
            write: (cfg.write_rate, cfg.write_burst),
            event: (cfg.event_rate, cfg.event_burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one write call and `events` events from `caller`'s buckets, or
    /// refuses (taking nothing) when either is short.
    pub fn charge(&self, caller: &str, events: usize) -> Result<()> {
        let now = Instant::now();
        let mut b = self.buckets.lock();
        let mut take = |kind: bool, (rate, burst): (f64, f64), n: f64, dry: bool| {
            if rate <= 0.0 || n == 0.0 {
                return true;
            }
            let bucket = b.entry((caller.into(), kind)).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            let filled =
                (bucket.tokens + rate * now.duration_since(bucket.at).as_secs_f64()).min(burst);
            if filled < n {
                return false;
            }
            if !dry {
                bucket.tokens = filled - n;
                bucket.at = now;
            }
            true
        };
        let n = events as f64;
        if !take(false, self.write, 1.0, true) {
            return Err(Error::Overloaded(format!(
                "{caller:?} is over its rate of {} write calls a second",
                self.write.0
            )));
        }
        if !take(true, self.event, n, true) {
            return Err(Error::Overloaded(format!(
                "{caller:?} is over its rate of {} events a second",
                self.event.0
            )));
        }
        take(false, self.write, 1.0, false);
        take(true, self.event, n, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_health_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        let (reader, e) = new_token("dashboard", Role::Read);
        add_token(&file, e).unwrap();
        let (writer, e) = new_token("ingest", Role::Write);
        add_token(&file, e).unwrap();
        assert!(add_token(&file, new_token("ingest", Role::Admin).1).is_err());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&reader) && !text.contains(&writer), "{text}");
        let auth = Auth::new(&SecurityConfig {
            tokens_file: Some(file),
            ..Default::default()
        })
        .unwrap();
        let call = |path: &str, token: Option<&str>| {
            let h = token.map(|t| format!("Bearer {t}"));
            auth.authorize(path, h.as_deref()).map_err(|s| s.code())
        };
        use tonic::Code;
        let upsert = "/vecrec.v1.Recommender/UpsertItems";
        let search = "/vecrec.v1.Recommender/SearchText";
        assert_eq!(call(upsert, None).unwrap_err(), Code::Unauthenticated);
        assert_eq!(
            call(upsert, Some("vrt_guess")).unwrap_err(),
            Code::Unauthenticated
        );
        assert_eq!(
            call(upsert, Some(&reader)).unwrap_err(),
            Code::PermissionDenied
        );
        assert_eq!(&*call(upsert, Some(&writer)).unwrap().name, "ingest");
        assert_eq!(&*call(search, Some(&reader)).unwrap().name, "dashboard");
        assert!(call("/grpc.health.v1.Health/Check", None).is_ok());
        // A user's recorded events are not for every reader.
        let events = "/vecrec.v1.Recommender/UserEvents";
        assert_eq!(
            call(events, Some(&reader)).unwrap_err(),
            Code::PermissionDenied
        );
        assert!(call(events, Some(&writer)).is_ok());
        assert!(call("/vecrec.v1.Recommender/ShardSources", Some(&reader)).is_ok());
        assert!(call("/vecrec.v1.Recommender/ItemStates", Some(&reader)).is_ok());
        assert_eq!(
            call("/vecrec.v1.Recommender/Compact", Some(&writer)).unwrap_err(),
            Code::PermissionDenied,
            "an unknown method needs admin"
        );
    }

    #[test]
    fn rates_refuse_beyond_the_burst_without_charging() {
        let r = Rates::new(&SecurityConfig {
            write_rate: 0.001,
            write_burst: 2.0,
            event_rate: 0.001,
            event_burst: 10.0,
            ..Default::default()
        });
        r.charge("a", 6).unwrap();
        // 4 events left: a call of 5 is refused and takes nothing.
        assert!(r.charge("a", 5).is_err());
        r.charge("a", 4).unwrap();
        // Two write calls were taken: the burst is spent.
        assert!(r
            .charge("a", 0)
            .unwrap_err()
            .to_string()
            .contains("write calls"));
        // Another caller has buckets of its own.
        r.charge("b", 10).unwrap();
    }
}
