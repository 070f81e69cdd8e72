//! The reranking stage of `Recommend`: the fused candidates' head (200 by
//! default) is scored again by a model that sees the candidate and the
//! user's history together, and the reranker's scores join the fusion as one
//! more ranked list (weight `rerank.weight`, or a feature of the learned
//! fusion model).
//!
//! Two kinds:
//! - `din` ([`din`]): vecrec's own cross-attention model, trained by the build
//!   and stored in the generation (`reranker.onnx.bin`), served through ONNX
//!   Runtime.
//! - `cross_encoder`: a user-supplied text cross-encoder ONNX file with inputs
//!   `input_ids` / `attention_mask` (/ `token_type_ids`) and one logit per
//!   pair as output (`[b]` or `[b, 1]`), fed (user context, item text) pairs:
//!   the context is the titles of the newest history items, the item text is
//!   the text the catalogue embedded. No pretrained cross-encoder can be
//!   downloaded here, so the tests build a tiny one.

pub mod din;

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

pub use crate::config::{RerankConfig, RerankKind};
use crate::error::{Error, Result};
use crate::layout::{DIN_FILE, DIN_META_FILE};
use crate::runtime::{pad, Device, Input, ModelSource, OnnxModel, Padded};

/// What a generation records about its reranker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DinMeta {
    /// History slots.
    pub history: usize,
    /// Item-embedding width.
    pub embed: usize,
    /// Training loss of the last epoch.
    pub train_loss: f32,
    /// The sources whose scores and ranks are features, in order (empty
    /// for a model trained on sequences, which sees popularity only).
    #[serde(default)]
    pub sources: Vec<String>,
    /// The feature names, in input order.
    #[serde(default = "sequence_features")]
    pub features: Vec<String>,
    /// How it was trained: `heads` (listwise on held-out fused heads) or
    /// `sequences`.
    #[serde(default = "sequences")]
    pub trained_on: String,
    /// Held-out heads it was trained on (0 for `sequences`).
    #[serde(default)]
    pub heads: usize,
}

fn sequence_features() -> Vec<String> {
    din::FEATURES.iter().map(|f| (*f).to_owned()).collect()
}

fn sequences() -> String {
    "sequences".into()
}

impl DinMeta {
    /// Whether the model reads the head's features ([`din::head_features`]).
    pub fn on_heads(&self) -> bool {
        self.trained_on == "heads"
    }
}

/// A loaded reranker.
#[derive(Debug)]
pub enum Reranker {
    /// The generation's own cross-attention model.
    Din {
        /// The served model.
        model: OnnxModel,
        /// Its settings.
        meta: DinMeta,
    },
    /// A text cross-encoder.
    CrossEncoder {
        /// The served model.
        model: OnnxModel,
        /// Pair tokenizer.
        tokenizer: Box<Tokenizer>,
        /// Whether the model takes `token_type_ids`.
        token_types: bool,
        /// History items in the context.
        context_items: usize,
    },
}

/// What a reranker needs to know about one request.
#[derive(Debug)]
pub struct RerankInput<'a> {
    /// History item numbers, oldest first.
    pub history: &'a [u32],
    /// Candidate item numbers, the fused head's order.
    pub candidates: &'a [u32],
    /// The fused score of each candidate (empty: only the order is known).
    pub fused: &'a [f32],
    /// The sources' candidate lists the head was fused from (empty when
    /// the candidates came from elsewhere: every source feature is 0).
    pub lists: &'a [crate::fusion::SourceList],
    /// Item embeddings of the two towers (`items × embed`).
    pub embeddings: &'a [f32],
    /// Interaction count per item.
    pub popularity: &'a [f32],
    /// The item store, for texts.
    pub store: &'a vecrec_index::VectorStore,
}

impl Reranker {
    /// Loads the generation's cross-attention model from `dir`.
    pub fn open_din(dir: &Path, ort_dylib: &Path, pool: usize, threads: usize) -> Result<Self> {
        let file = vecrec_index::format::CheckedFile::open(
            &dir.join(DIN_FILE),
            vecrec_index::format::Kind::MODEL,
            true,
        )?;
        let meta: DinMeta = vecrec_index::format::read_json(&dir.join(DIN_META_FILE))?;
        let model = OnnxModel::load(
            ort_dylib,
            ModelSource::Bytes(DIN_FILE, file.payload()),
            pool,
            threads,
            Device::Cpu,
        )?;
        Ok(Self::Din { model, meta })
    }

    /// Loads a user-supplied cross-encoder.
    pub fn open_cross_encoder(
        cfg: &RerankConfig,
        default_tokenizer: Option<&Path>,
        ort_dylib: &Path,
        pool: usize,
    ) -> Result<Self> {
        let path = cfg.cross_encoder_model.as_deref().ok_or_else(|| {
            Error::Config("rerank.kind = cross_encoder needs rerank.cross_encoder_model".into())
        })?;
        if !path.is_file() {
            return Err(Error::Config(format!(
                "rerank.cross_encoder_model: {} is not a file",
                path.display()
            )));
        }
        let tok_path = cfg
            .cross_encoder_tokenizer
            .as_deref()
            .or(default_tokenizer)
            .ok_or_else(|| {
                Error::Config("the cross-encoder needs rerank.cross_encoder_tokenizer".into())
            })?;
        let mut tokenizer = Tokenizer::from_file(tok_path)
            .map_err(|e| Error::Encoder(format!("{}: {e}", tok_path.display())))?;
        tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: cfg.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::Encoder(format!("truncation: {e}")))?;
        let model = OnnxModel::load(
            ort_dylib,
            ModelSource::File(path),
            pool,
            cfg.threads,
            Device::Cpu,
        )?;
        let names = model.input_names();
        for need in ["input_ids", "attention_mask"] {
            if !names.iter().any(|n| n == need) {
                return Err(Error::Config(format!(
                    "{}: a cross-encoder needs the input {need:?} (it has {names:?})",
                    path.display()
                )));
            }
        }
        let token_types = names.iter().any(|n| n == "token_type_ids");
        Ok(Self::CrossEncoder {
            model,
            tokenizer: Box::new(tokenizer),
            token_types,
            context_items: cfg.context_items,
        })
    }

    /// The kind's name.
    pub fn name(&self) -> &'static str {
        match self {
            Reranker::Din { .. } => "din",
            Reranker::CrossEncoder { .. } => "cross_encoder",
        }
    }

    /// Whether the reranker learned its items from interactions only (the
    /// cross-attention reranker, whose candidate rows and popularity
    /// feature come from them), so that it knows nothing of an item
    /// without any; the cross-encoder reads every item's text.
    pub fn learned_from_interactions(&self) -> bool {
        matches!(self, Reranker::Din { .. })
    }

    /// One score per candidate, larger is better.
    pub fn score(&self, input: &RerankInput<'_>) -> Result<Vec<f32>> {
        if input.candidates.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Reranker::Din { model, meta } => {
                let e = meta.embed;
                if input.embeddings.len() < input.store.len() * e {
                    return Err(Error::Config(
                        "the cross-attention reranker needs the generation's two-tower item embeddings".into(),
                    ));
                }
                let (hist, mask) =
                    din::history_slots(input.embeddings, e, input.history, meta.history);
                let cands = din::gather(input.embeddings, e, input.candidates);
                let feats = if meta.on_heads() {
                    let n = input.candidates.len();
                    let head: Vec<(u32, f32)> = input
                        .candidates
                        .iter()
                        .enumerate()
                        .map(|(r, &i)| (i, input.fused.get(r).copied().unwrap_or((n - r) as f32)))
                        .collect();
                    din::head_features(
                        &meta.sources,
                        input.lists,
                        &head,
                        input.popularity,
                        input.history.len(),
                    )
                } else {
                    din::features(input.popularity, input.candidates)
                };
                if feats.ncols() != meta.features.len() {
                    return Err(Error::Config(format!(
                        "the reranker expects {} features, {} were computed",
                        meta.features.len(),
                        feats.ncols()
                    )));
                }
                let b = input.candidates.len();
                let (_, out) = model.run(vec![
                    (
                        "history",
                        Input::F32(vec![1, meta.history, e], hist.as_slice().unwrap_or(&[])),
                    ),
                    ("history_mask", Input::F32(vec![1, meta.history], &mask)),
                    (
                        "candidate",
                        Input::F32(vec![b, e], cands.as_slice().unwrap_or(&[])),
                    ),
                    (
                        "features",
                        Input::F32(vec![b, feats.ncols()], feats.as_slice().unwrap_or(&[])),
                    ),
                ])?;
                check_len(out, b)
            }
            Reranker::CrossEncoder {
                model,
                tokenizer,
                token_types,
                context_items,
            } => {
                let context = input
                    .history
                    .iter()
                    .rev()
                    .take(*context_items)
                    .map(|&i| {
                        let title = input.store.title(i);
                        if title.is_empty() {
                            input.store.external_id(i).to_owned()
                        } else {
                            title
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let pairs: Vec<(String, String)> = input
                    .candidates
                    .iter()
                    .map(|&i| {
                        let m = input.store.item(i);
                        let text = if m.text.is_empty() { m.title } else { m.text };
                        (context.clone(), text)
                    })
                    .collect();
                let enc = tokenizer
                    .encode_batch(pairs, true)
                    .map_err(|e| Error::Encoder(format!("tokenising pairs: {e}")))?;
                let Padded {
                    batch: b,
                    len: s,
                    ids,
                    mask: att,
                    types,
                } = pad(&enc);
                let mut inputs = vec![
                    ("input_ids", Input::I64(vec![b, s], ids)),
                    ("attention_mask", Input::I64(vec![b, s], att)),
                ];
                if *token_types {
                    inputs.push(("token_type_ids", Input::I64(vec![b, s], types)));
                }
                let (_, out) = model.run(inputs)?;
                check_len(out, b)
            }
        }
    }
}

fn check_len(out: Vec<f32>, b: usize) -> Result<Vec<f32>> {
    if out.len() != b {
        return Err(Error::Encoder(format!(
            "the reranker returned {} scores for {b} candidates; it must output one logit per pair",
            out.len()
        )));
    }
    Ok(out)
}
