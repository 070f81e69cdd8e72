//! The sentence encoder: HF `tokenizers` + ONNX Runtime (through `ort`) running
//! a BERT model such as all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT",
//! EMNLP 2019), mean-pooled over the attention mask and L2-normalised.
//!
//! Texts are tokenised once, sorted by token count and cut into batches, so each
//! batch pads only to its own longest text (the shipped `tokenizer.json` pads
//! every text to 128, which wastes most of the work on short texts). ONNX
//! Runtime uses all cores inside each forward pass; sessions sit in a small pool
//! because `Session::run` needs exclusive access.

pub mod batcher;

use std::path::PathBuf;
use std::sync::Arc;

use ort::session::Session;
use ort::value::Tensor;
use parking_lot::Mutex;
use tokenizers::{Tokenizer, TruncationParams};

use crate::config::EncoderConfig;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::runtime::{
    acquire, build_session_spinning, locate, locate_ort, ort_environment, pad, ModelSource, Padded,
};

/// Resolved files of an encoder.
#[derive(Clone, Debug)]
pub struct EncoderFiles {
    /// The ONNX model.
    pub model: PathBuf,
    /// Its tokenizer.json.
    pub tokenizer: PathBuf,
    /// libonnxruntime.so.
    pub ort_dylib: PathBuf,
}

impl EncoderFiles {
    /// Finds the files from config, environment and the `.cache/` written by `make setup`.
    pub fn locate(cfg: &EncoderConfig) -> Result<Self> {
        let model = locate(
            cfg.model.as_deref(),
            &["VECREC_MODEL"],
            "models/minilm/model-a8.onnx",
            "the sentence-encoder ONNX model",
        )?;
        let tokenizer = match &cfg.tokenizer {
            Some(p) => locate(Some(p), &[], "", "tokenizer.json")?,
            None if std::env::var_os("VECREC_TOKENIZER").is_none()
                && model.with_file_name("tokenizer.json").is_file() =>
            {
                model.with_file_name("tokenizer.json")
            }
            None => locate(
                None,
                &["VECREC_TOKENIZER"],
                "models/minilm/tokenizer.json",
                "tokenizer.json",
            )?,
        };
        let ort_dylib = locate_ort(cfg.ort_dylib.as_deref())?;
        Ok(Self {
            model,
            tokenizer,
            ort_dylib,
        })
    }
}

/// A loaded sentence encoder.
///
/// Built by [`Encoder::load`] (bulk work: few sessions, every core inside
/// each forward pass) or [`Encoder::load_serving`] (a session per core with
/// one thread each, run by dedicated worker threads that join the texts of
/// concurrent requests into one forward pass: see [`batcher`]).
pub struct Encoder {
    core: Arc<Core>,
    batcher: Option<batcher::Batcher>,
}

/// The tokenizer and the sessions, shared with the batcher's workers.
pub(crate) struct Core {
    tokenizer: Tokenizer,
    sessions: Vec<Mutex<Session>>,
    has_token_type_ids: bool,
    dim: usize,
    batch_size: usize,
    max_tokens: usize,
    files: EncoderFiles,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("files", &self.core.files)
            .field("sessions", &self.core.sessions.len())
            .field("batching", &self.batcher.is_some())
            .finish()
    }
}

impl Encoder {
    /// Loads tokenizer and model as `cfg` says, with `pool` sessions that
    /// share the cores (`cfg.threads` intra-op threads each when set), and no
    /// batching: for bulk work, which batches itself. One call encodes its
    /// batches one after another on one session, so more than one session
    /// helps only callers encoding at the same time; a lone bulk job wants
    /// `pool` 1 (every core's threads on its one session).
    pub fn load(cfg: &EncoderConfig, pool: usize) -> Result<Self> {
        let core = Core::load(cfg, pool.max(1), true)?;
        Ok(Self {
            core: Arc::new(core),
            batcher: None,
        })
    }

    /// Loads the encoder for serving: `cfg.sessions` sessions (0: one per
    /// core), each with `cfg.threads` intra-op threads (0: the cores shared
    /// out, so one each by default) and its own worker thread, which takes
    /// every request waiting when it comes free, up to `cfg.batch_size`
    /// texts, waiting at most `cfg.max_batch_wait_us` for more.
    pub fn load_serving(cfg: &EncoderConfig) -> Result<Self> {
        let sessions = match cfg.sessions {
            0 => crate::config::cores(),
            n => n,
        };
        let core = Arc::new(Core::load(cfg, sessions, false)?);
        let batcher = batcher::Batcher::start(
            core.clone(),
            sessions,
            cfg.batch_size,
            std::time::Duration::from_micros(cfg.max_batch_wait_us),
        )?;
        Ok(Self {
            core,
            batcher: Some(batcher),
        })
    }

    /// Dimension of the embeddings.
    pub fn dim(&self) -> usize {
        self.core.dim()
    }

    /// Tokens kept of a text (longer ones are truncated).
    pub fn max_tokens(&self) -> usize {
        self.core.max_tokens
    }

    /// The files in use.
    pub fn files(&self) -> &EncoderFiles {
        &self.core.files
    }

    /// What dynamic batching has done so far; `None` for an encoder loaded
    /// without it ([`Encoder::load`]).
    pub fn batch_stats(&self) -> Option<batcher::BatchStats> {
        self.batcher.as_ref().map(batcher::Batcher::stats)
    }

    /// Embeds `texts`; returns one unit-length vector per text, in order.
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        self.encode_within(texts, Deadline::NONE)
    }

    /// [`Encoder::encode`] for a request due by `deadline`: in a serving
    /// encoder, texts wait for a worker, which drops them unencoded
    /// ([`Error::DeadlineExceeded`]) when the deadline has passed by then.
    pub fn encode_within<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        deadline: Deadline,
    ) -> Result<Vec<Vec<f32>>> {
        match &self.batcher {
            Some(b) if !texts.is_empty() && texts.len() <= self.core.batch_size => {
                deadline.check("encode")?;
                b.encode(
                    texts.iter().map(|t| t.as_ref().to_owned()).collect(),
                    deadline,
                )
            }
            _ => {
                deadline.check("encode")?;
                let start = std::time::Instant::now();
                // Larger than one batch: checked again between batches, so
                // work for a caller who gave up stops within one batch.
                let out = self.core.encode_until(texts, deadline, &|_| {});
                crate::telemetry::stage("encode", start.elapsed().as_secs_f64());
                out
            }
        }
    }

    /// [`Encoder::encode`], calling `progress(done)` after each batch; never
    /// goes through the batcher (bulk work).
    pub fn encode_with_progress<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f32>>> {
        self.core.encode(texts, progress)
    }
}

/// Texts tokenised and sorted by length together in a bulk encode: enough
/// for batches of similar lengths, few enough that the token ids of a large
/// catalogue are never all in memory at once.
const SORT_WINDOW: usize = 8192;

impl Core {
    fn load(cfg: &EncoderConfig, pool: usize, spin: bool) -> Result<Self> {
        let files = EncoderFiles::locate(cfg)?;
        let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| Error::Encoder(format!("{}: {e}", files.tokenizer.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: cfg.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::Encoder(format!("truncation: {e}")))?;
        let env = ort_environment(&files.ort_dylib)?;
        let threads = match cfg.threads {
            0 => (crate::config::cores() / pool).max(1),
            n => n,
        };
        let sessions = (0..pool)
            .map(|_| {
                build_session_spinning(
                    &env,
                    ModelSource::File(&files.model),
                    threads,
                    cfg.device,
                    spin,
                    // Bulk encoding keeps the arena; a server may return
                    // a large request's buffers.
                    spin || cfg.memory_arena,
                )
                .map(Mutex::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let (has_token_type_ids, names) = {
            let s = sessions[0].lock();
            let names: Vec<String> = s.inputs().iter().map(|i| i.name().to_owned()).collect();
            (names.iter().any(|n| n == "token_type_ids"), names)
        };
        for need in ["input_ids", "attention_mask"] {
            if !names.iter().any(|n| n == need) {
                return Err(Error::Encoder(format!(
                    "{}: model has no input {need:?} (inputs: {names:?})",
                    files.model.display()
                )));
            }
        }
        let mut core = Self {
            tokenizer,
            sessions,
            has_token_type_ids,
            dim: 0,
            batch_size: cfg.batch_size,
            max_tokens: cfg.max_tokens,
            files,
        };
        let dim = core.encode(&["dimension probe"], &|_| {})?[0].len();
        core.dim = dim;
        if dim == 0 {
            return Err(Error::Encoder(format!(
                "{}: the model returns empty vectors",
                core.files.model.display()
            )));
        }
        tracing::info!(model = %core.files.model.display(), dim, sessions = pool, threads, "encoder loaded");
        Ok(core)
    }

    /// Dimension of the embeddings.
    fn dim(&self) -> usize {
        self.dim
    }

    /// Tokenises `texts` in windows of [`SORT_WINDOW`], sorts each window by
    /// length and runs it in batches of `batch_size`, each padded to its own
    /// longest text.
    pub(crate) fn encode<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f32>>> {
        self.encode_until(texts, Deadline::NONE, progress)
    }

    /// [`Core::encode`] that stops before a batch once `deadline` has passed.
    pub(crate) fn encode_until<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        deadline: Deadline,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Texts are tokenised and sorted by length one window at a time, so
        // a bulk build holds the token ids of one window, not of every text.
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
        let mut done = 0;
        for window in texts.chunks(SORT_WINDOW.max(self.batch_size)) {
            let inputs: Vec<&str> = window.iter().map(|t| t.as_ref()).collect();
            // A server's batch is tokenised on its worker thread: handing a
            // few short texts to the rayon pool costs more than it saves.
            let encodings = if inputs.len() <= self.batch_size {
                inputs
                    .into_iter()
                    .map(|t| self.tokenizer.encode(t, true))
                    .collect::<std::result::Result<Vec<_>, _>>()
            } else {
                self.tokenizer.encode_batch(inputs, true)
            }
            .map_err(|e| Error::Encoder(format!("tokenizer: {e}")))?;
            let mut order: Vec<usize> = (0..encodings.len()).collect();
            order.sort_by_key(|&i| encodings[i].get_ids().len());
            let mut part: Vec<Vec<f32>> = vec![Vec::new(); window.len()];
            for chunk in order.chunks(self.batch_size) {
                deadline.check("encode")?;
                let batch: Vec<&tokenizers::Encoding> =
                    chunk.iter().map(|&i| &encodings[i]).collect();
                let vectors = self.forward(&batch)?;
                for (&i, v) in chunk.iter().zip(vectors) {
                    part[i] = v;
                }
                done += chunk.len();
                progress(done);
            }
            out.extend(part);
        }
        Ok(out)
    }

    fn forward(&self, batch: &[&tokenizers::Encoding]) -> Result<Vec<Vec<f32>>> {
        let Padded {
            batch: b,
            len: s,
            ids,
            mask,
            types,
        } = pad(batch);
        let err = |e: ort::Error| Error::Runtime(format!("sentence encoder: {e}"));
        let t_ids = Tensor::from_array(([b, s], ids)).map_err(err)?;
        let t_mask = Tensor::from_array(([b, s], mask.clone())).map_err(err)?;
        let mut session = self.acquire();
        let outputs = if self.has_token_type_ids {
            let t_types = Tensor::from_array(([b, s], types)).map_err(err)?;
            session.run(ort::inputs! {"input_ids" => t_ids, "attention_mask" => t_mask, "token_type_ids" => t_types})
        } else {
            session.run(ort::inputs! {"input_ids" => t_ids, "attention_mask" => t_mask})
        }
        .map_err(err)?;
        let hidden = outputs
            .get("last_hidden_state")
            .unwrap_or(&outputs[0])
            .try_extract_array::<f32>()
            .map_err(err)?;
        let shape = hidden.shape().to_vec();
        if shape.len() != 3 || shape[0] != b || shape[1] != s {
            return Err(Error::Encoder(format!(
                "unexpected output shape {shape:?} for batch [{b}, {s}]"
            )));
        }
        let h = shape[2];
        let mut result = Vec::with_capacity(b);
        for r in 0..b {
            let mut v = vec![0f32; h];
            let mut count = 0f32;
            for c in 0..s {
                if mask[r * s + c] == 0 {
                    continue;
                }
                count += 1.0;
                for (k, x) in v.iter_mut().enumerate() {
                    *x += hidden[[r, c, k]];
                }
            }
            let count = count.max(1.0);
            v.iter_mut().for_each(|x| *x /= count);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            result.push(v);
        }
        Ok(result)
    }

    fn acquire(&self) -> parking_lot::MutexGuard<'_, Session> {
        acquire(&self.sessions)
    }
}
