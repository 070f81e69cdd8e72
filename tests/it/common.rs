//! Shared fixtures: the encoder and a small sample index, each built once per test run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use vecrec::catalog::{read_catalog, read_interactions};
use vecrec::config::Config;
use vecrec::encoder::Encoder;
use vecrec::engine::Engine;
use vecrec::pipeline::{build, BuildOptions};
use vecrec::sample::{generate, write_sample, SampleConfig};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shared() -> PathBuf {
    std::env::var_os("VECREC_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"))
}

pub fn encoder() -> Arc<Encoder> {
    static E: OnceLock<Arc<Encoder>> = OnceLock::new();
    E.get_or_init(|| {
        Arc::new(
            Encoder::load(&Config::default().encoder, 2)
                .expect("encoder files missing: run `make setup` first"),
        )
    })
    .clone()
}

pub struct SampleIndex {
    /// Keeps the temporary directory alive for the whole run.
    pub _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub root: PathBuf,
}

/// A sample of 600 items and 60 users, built once.
pub fn sample_index() -> &'static SampleIndex {
    static S: OnceLock<SampleIndex> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sample");
        let cfg = SampleConfig {
            seed: 7,
            items: 600,
            users: 60,
            min_history: 10,
            max_history: 30,
        };
        write_sample(&generate(&cfg).unwrap(), &data).unwrap();
        let root = dir.path().join("index");
        let items = read_catalog(&data.join("catalog.jsonl")).unwrap();
        let inter = read_interactions(&data.join("interactions.csv")).unwrap();
        let mut train = vecrec::config::TrainOptions::default();
        train.sequence.enabled = true;
        let opts = BuildOptions {
            progress: false,
            train: Some(train),
            ..Default::default()
        };
        build(&root, &encoder(), &items, &inter, &opts).unwrap();
        SampleIndex {
            _dir: dir,
            data,
            root,
        }
    })
}

/// A private copy of the sample index's current generation, for tests that
/// write a log beside it.
pub fn copy_sample() -> tempfile::TempDir {
    let s = sample_index();
    let root = tempfile::tempdir().unwrap();
    let gen = vecrec_index::generation::current_generation(&s.root).unwrap();
    crate::cli::copy_dir(&gen, &root.path().join(gen.file_name().unwrap()));
    std::fs::copy(s.root.join("CURRENT"), root.path().join("CURRENT")).unwrap();
    root
}

/// Serves a content-only engine with its log attached over `root` under
/// `cfg`, in process, with no background reload or compaction (so the log
/// holds every write); returns the address and the stop switch.
pub async fn serve_live(
    root: &Path,
    mut cfg: Config,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    cfg.hybrid.enabled = false;
    cfg.server.reload_interval_ms = 0;
    let mut e = Engine::open(root, cfg, Some(encoder())).unwrap();
    let live = vecrec::live::Live::open(root, e.applied_seq()).unwrap();
    e.attach_live(Arc::new(live));
    let slot = Arc::new(vecrec::serving::EngineSlot::new(root, Arc::new(e)));
    let (listener, addr) = vecrec::grpc::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        vecrec::grpc::serve(slot, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, tx)
}

/// The next line a child process prints on its piped stdout (read byte by
/// byte, so nothing after it is consumed), without the newline. The pipe
/// stays open, so the child can go on printing.
pub fn first_line(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut out = child.stdout.take().expect("a piped stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    child.stdout = Some(out);
    String::from_utf8_lossy(&line).trim().to_owned()
}

/// The engine as configured by default (hybrid pipeline when the index has trained sources).
pub fn engine(root: &Path) -> Arc<Engine> {
    Arc::new(Engine::open(root, Config::default(), Some(encoder())).unwrap())
}

/// The engine with the hybrid pipeline switched off: content vectors only.
pub fn content_engine(root: &Path) -> Arc<Engine> {
    let mut cfg = Config::default();
    cfg.hybrid.enabled = false;
    Arc::new(Engine::open(root, cfg, Some(encoder())).unwrap())
}

/// Planted favourite categories per user, from the sample's users.csv.
pub fn favourites(data: &Path) -> Vec<(String, Vec<String>)> {
    let mut r = csv::Reader::from_path(data.join("users.csv")).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (
                rec[0].to_owned(),
                rec[1].split('|').map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// Taken by the tests that load the machine hard (many server processes)
/// or assert on a service's behaviour under load, so that no two of them
/// share the two cores at once: the route test's ten processes starved a
/// load test's SearchText past its 10 s deadline when they overlapped.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
