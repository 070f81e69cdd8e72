//! ONNX Runtime, set up once for the whole process: the environment loaded
//! from `libonnxruntime.so` (the PyPI wheel's, through `ort`'s
//! `load-dynamic`), sessions on a [`Device`], pools of sessions, the
//! finder for model files, and the padded int64 inputs of BERT-style models.
//!
//! The sentence encoder, the two-tower user encoder and the rerankers all
//! run through here, so a runtime failure is one error kind
//! ([`Error::Runtime`]) whichever model raised it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use parking_lot::Mutex;

pub use crate::config::Device;
use crate::error::{Error, Result};

/// Finds a cached file: `explicit`, else the first set variable of `vars`, else
/// `rel` under `.cache/` in the working directory or any ancestor of it or of the
/// running executable. The error names every place looked at and the fix.
pub fn locate(explicit: Option<&Path>, vars: &[&str], rel: &str, what: &str) -> Result<PathBuf> {
    let mut looked = Vec::new();
    let fix = "run `make setup` (or scripts/setup.sh) to download it";
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        return Err(Error::Config(format!(
            "{what} not found at {} (set in config); {fix}",
            p.display()
        )));
    }
    for v in vars {
        if let Some(p) = std::env::var_os(v).filter(|s| !s.is_empty()) {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(p);
            }
            looked.push(format!("${v}={}", p.display()));
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_owned));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_owned));
    }
    for r in roots {
        let p = r.join(".cache").join(rel);
        if p.is_file() {
            return Ok(p);
        }
    }
    looked.push(format!(
        ".cache/{rel} in the working directory, the executable's directory and their parents"
    ));
    Err(Error::Config(format!(
        "{what} not found (looked at {}); {fix}",
        looked.join(", ")
    )))
}

/// Finds libonnxruntime.so: `explicit` (from config), else the environment,
/// else `.cache/`.
pub fn locate_ort(explicit: Option<&Path>) -> Result<PathBuf> {
    locate(
        explicit,
        &["VECREC_ORT_DYLIB", "ORT_DYLIB_PATH"],
        "onnxruntime/libonnxruntime.so",
        "the ONNX Runtime library (libonnxruntime.so)",
    )
}

static ENVIRONMENT: OnceLock<
    std::result::Result<(PathBuf, ort::environment::Environment), String>,
> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loaded once from `dylib`.
pub fn ort_environment(dylib: &Path) -> Result<ort::environment::Environment> {
    let got = ENVIRONMENT.get_or_init(|| {
        let builder =
            ort::init_from(dylib).map_err(|e| format!("cannot load {}: {e}", dylib.display()))?;
        let env = builder
            .with_name("vecrec")
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
        Ok((dylib.to_owned(), env))
    });
    match got {
        Ok((loaded, env)) => {
            if loaded != dylib {
                tracing::warn!(loaded = %loaded.display(), asked = %dylib.display(), "ONNX Runtime is already loaded from another file; keeping it");
            }
            Ok(env.clone())
        }
        Err(e) => Err(Error::Runtime(e.clone())),
    }
}

/// Where a session's model comes from.
#[derive(Clone, Copy, Debug)]
pub enum ModelSource<'a> {
    /// An `.onnx` file.
    File(&'a Path),
    /// Serialised model bytes (vecrec's own exported models, read from their
    /// checksummed envelope), with a name for error messages.
    Bytes(&'a str, &'a [u8]),
}

/// Builds an ONNX Runtime session for a model given as a file or as bytes,
/// with `threads` intra-op threads (0 = all cores) on `device`.
pub fn build_session_from(
    env: &ort::environment::Environment,
    model: ModelSource<'_>,
    threads: usize,
    device: Device,
) -> Result<Session> {
    build_session_spinning(env, model, threads, device, true, true)
}

/// [`build_session_from`], saying whether idle intra-op threads may spin
/// before they block. Spinning shortens bulk runs that keep every core busy;
/// a server turns it off, because a spinning thread takes the core from the
/// network and search threads beside it. `arena`: whether ONNX Runtime's
/// CPU memory arena is used; without it the buffers of a forward pass are
/// returned to the allocator (and large ones to the system) when it ends,
/// instead of being kept at the largest size any pass needed.
pub fn build_session_spinning(
    env: &ort::environment::Environment,
    model: ModelSource<'_>,
    threads: usize,
    device: Device,
    spin: bool,
    arena: bool,
) -> Result<Session> {
    let label = match model {
        ModelSource::File(p) => p.display().to_string(),
        ModelSource::Bytes(name, _) => name.to_owned(),
    };
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let fail = |e: ort::Error| Error::Runtime(format!("{label}: {e}"));
    let mut builder = Session::builder(env)
        .map_err(fail)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| fail(ort::Error::<()>::from(e)))?
        .with_intra_threads(threads)
        .map_err(|e| fail(ort::Error::<()>::from(e)))?
        .with_intra_op_spinning(spin)
        .map_err(|e| fail(ort::Error::<()>::from(e)))?;
    if !arena {
        builder = builder
            .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
            .map_err(|e| fail(ort::Error::<()>::from(e)))?;
    }
    if device == Device::Cuda {
        builder = with_cuda(builder);
    }
    match model {
        ModelSource::File(p) => builder.commit_from_file(p),
        ModelSource::Bytes(_, b) => builder.commit_from_memory(b),
    }
    .map_err(fail)
}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> ort::session::builder::SessionBuilder {
    let ep = ort::ep::CUDA::default().build().error_on_failure();
    match builder.with_execution_providers([ep]) {
        Ok(b) => {
            tracing::info!("ONNX Runtime: CUDA execution provider registered");
            b
        }
        Err(e) => {
            tracing::warn!(error = %e, "CUDA execution provider unavailable; falling back to CPU");
            e.recover()
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> ort::session::builder::SessionBuilder {
    tracing::warn!(
        "encoder.device = cuda, but this binary was built without the `cuda` feature; using CPU"
    );
    builder
}

/// A model served by ONNX Runtime, with a small pool of sessions (running a
/// session needs exclusive access).
pub struct OnnxModel {
    sessions: Vec<Mutex<Session>>,
    label: String,
    inputs: Vec<String>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("label", &self.label)
            .field("inputs", &self.inputs)
            .finish()
    }
}

/// An input of [`OnnxModel::run`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A float tensor: shape and row-major values.
    F32(Vec<usize>, &'a [f32]),
    /// An int64 tensor.
    I64(Vec<usize>, Vec<i64>),
}

impl OnnxModel {
    /// Loads a model with `pool` sessions of `threads` intra-op threads each,
    /// on `device`.
    pub fn load(
        ort_dylib: &Path,
        source: ModelSource<'_>,
        pool: usize,
        threads: usize,
        device: Device,
    ) -> Result<Self> {
        let env = ort_environment(ort_dylib)?;
        let sessions = (0..pool.max(1))
            .map(|_| build_session_from(&env, source, threads, device).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let inputs = sessions[0]
            .lock()
            .inputs()
            .iter()
            .map(|i| i.name().to_owned())
            .collect();
        let label = match source {
            ModelSource::File(p) => p.display().to_string(),
            ModelSource::Bytes(n, _) => n.to_owned(),
        };
        Ok(Self {
            sessions,
            label,
            inputs,
        })
    }

    /// The model's input names.
    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    /// Runs the model and returns its first output as (shape, values).
    pub fn run(&self, inputs: Vec<(&str, Input<'_>)>) -> Result<(Vec<usize>, Vec<f32>)> {
        let err = |e: ort::Error| Error::Runtime(format!("{}: {e}", self.label));
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let v = match input {
                Input::F32(shape, data) => Tensor::from_array((shape, data.to_vec()))
                    .map_err(err)?
                    .into_dyn(),
                Input::I64(shape, data) => {
                    Tensor::from_array((shape, data)).map_err(err)?.into_dyn()
                }
            };
            values.push((name.to_owned(), v));
        }
        let mut session = self.acquire();
        let outputs = session.run(values).map_err(err)?;
        let out = outputs[0].try_extract_array::<f32>().map_err(err)?;
        Ok((out.shape().to_vec(), out.iter().copied().collect()))
    }

    fn acquire(&self) -> parking_lot::MutexGuard<'_, Session> {
        acquire(&self.sessions)
    }
}

/// A free session of a pool, or, when all are busy, one to wait for
/// (waiters spread over the pool).
pub fn acquire(sessions: &[Mutex<Session>]) -> parking_lot::MutexGuard<'_, Session> {
    for s in sessions {
        if let Some(g) = s.try_lock() {
            return g;
        }
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % sessions.len();
    sessions[i].lock()
}

/// A batch of encodings padded to its longest, as the int64 model inputs.
pub struct Padded {
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub len: usize,
    /// `input_ids`, row-major.
    pub ids: Vec<i64>,
    /// `attention_mask`.
    pub mask: Vec<i64>,
    /// `token_type_ids`.
    pub types: Vec<i64>,
}

/// Pads `batch` to its longest encoding (at least one token).
pub fn pad<E: std::borrow::Borrow<tokenizers::Encoding>>(batch: &[E]) -> Padded {
    let b = batch.len();
    let s = batch
        .iter()
        .map(|e| e.borrow().get_ids().len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut p = Padded {
        batch: b,
        len: s,
        ids: vec![0; b * s],
        mask: vec![0; b * s],
        types: vec![0; b * s],
    };
    for (r, e) in batch.iter().enumerate() {
        let e = e.borrow();
        for (c, ((&id, &m), &t)) in e
            .get_ids()
            .iter()
            .zip(e.get_attention_mask())
            .zip(e.get_type_ids())
            .enumerate()
        {
            p.ids[r * s + c] = id as i64;
            p.mask[r * s + c] = m as i64;
            p.types[r * s + c] = t as i64;
        }
    }
    p
}
