//! Offline evaluation under `shared/EVAL.md`: temporal split of MovieLens,
//! full ranking through the same [`Engine`](crate::engine::Engine) code the
//! server runs, and the metrics Precision, Recall, F1, NDCG (Järvelin &
//! Kekäläinen 2002), MAP, hit rate and catalogue coverage at K = 10 and 20.
//! The stages live in `stages.rs`; `run` reads the data, embeds it once and
//! runs them in order.
//!
//! Every parameter is chosen on the validation split (`val_train` → `val`);
//! the chosen setting is then refitted on TRAIN and scored once on TEST.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::encoder::Encoder;
use crate::error::Result;
use crate::movielens::{split, write_split, MovieLens};
use crate::pipeline::embed_catalog;

mod cold;
mod metrics;
mod neighbourhood;
mod peers;
mod protocol;
mod refit;
mod report;
mod stages;
mod tuning;

pub use cold::{ColdReport, ColdRow};
pub use metrics::{summarise, user_metrics, Summary, UserMetrics, KS};
pub use peers::{PeerFile, PeerRow};
use protocol::{tempfile_dir, Who};
pub use report::{
    table, validation_table, AblationRow, EvalReport, GridPoint, PairedDiff, Trial, Tuned,
    TunedRerank, TunedSequence, TunedTrain, ValidationReport,
};
pub use tuning::{
    FusionGrid, HeadAuc, ALS_GRID, DECAYS, FUSION_WEIGHTS, LAMBDAS, MAX_ITEMS, RERANK_WEIGHTS,
    SEQUENCE_WEIGHTS, SOURCE_DECAYS,
};

/// Options of an evaluation run.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The ml-latest-small directory.
    pub movielens: PathBuf,
    /// Where to write the split, if anywhere.
    pub write_split: Option<PathBuf>,
    /// Where to build the evaluation index (a temporary directory if `None`).
    pub work_dir: Option<PathBuf>,
    /// Base configuration (encoder files, search ef).
    pub config: Config,
    /// Draw progress bars.
    pub progress: bool,
    /// The peers' figures on the same split (`benches/peers/results/peers.json`):
    /// the report lists them and pairs the full pipeline with the best.
    pub peers: Option<PathBuf>,
}

/// Runs the whole evaluation: validation, then the refit on TRAIN and TEST.
pub fn run(opts: &EvalOptions) -> Result<EvalReport> {
    // Read before hours of work, so a bad file fails at once.
    let peers = opts.peers.as_deref().map(PeerFile::load).transpose()?;
    validated(opts, |run, chosen, tps, start| {
        run.test(chosen, tps, start, peers.as_ref())
    })
}

/// Runs the validation stages only and never reads TEST: for model choices
/// (an encoder, a training change) that must be made on validation data.
pub fn validate(opts: &EvalOptions) -> Result<ValidationReport> {
    validated(opts, |run, chosen, tps, start| {
        Ok(run.validation_report(chosen, tps, start))
    })
}

/// Reads the data, embeds it once, runs every validation stage and hands
/// what they chose to `finish`.
fn validated<T>(
    opts: &EvalOptions,
    finish: impl FnOnce(stages::Run<'_>, stages::Chosen, f64, Instant) -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    let ml = MovieLens::load(&opts.movielens)?;
    let sp = split(&ml.positives);
    if let Some(dir) = &opts.write_split {
        write_split(dir, &sp, &ml.items)?;
        tracing::info!(dir = %dir.display(), "split written");
    }
    let mut cfg = opts.config.clone();
    cfg.limits.max_history = usize::MAX;
    // Every source is measured, the sequence model too.
    cfg.train.sequence.enabled = true;
    cfg.limits.max_k = cfg.limits.max_k.max(KS[1]);
    let encoder = Encoder::load(&cfg.encoder, 1)?;
    let t = Instant::now();
    let vectors = embed_catalog(&encoder, &ml.items, opts.progress)?;
    let tps = ml.items.len() as f64 / t.elapsed().as_secs_f64().max(1e-9);

    let tmp;
    let root: &Path = match &opts.work_dir {
        Some(d) => d,
        None => {
            tmp = tempfile_dir()?;
            &tmp.0
        }
    };
    let mut histories: HashMap<u32, Vec<(i64, u32)>> = HashMap::new();
    for &(u, i, t) in &sp.val_train {
        histories.entry(u).or_default().push((t, i));
    }
    let histories: HashMap<u32, Vec<String>> = histories
        .into_iter()
        .map(|(u, mut h)| {
            h.sort_unstable();
            (u, h.into_iter().map(|(_, i)| i.to_string()).collect())
        })
        .collect();
    let mut run = stages::Run {
        opts,
        ml: &ml,
        sp: &sp,
        cfg,
        vectors: &vectors,
        root,
        val: Who::History(histories.clone()),
        histories,
        trials: Vec::new(),
    };
    let (users, profile, grid) = run.content_profile()?;
    let (lambda, ease_decay, plain_lambda) = run.ease(&users)?;
    let ease_neighbours = run.ease_neighbourhood(&users, plain_lambda)?;
    let als = run.als(&users, lambda)?;
    let fused = run.fusion(&users, lambda, ease_decay, &als)?;
    let cold_validation = run.cold_start(
        "validation",
        &sp.val_train,
        &sp.val,
        &users,
        lambda,
        &als,
        &fused.hybrid,
        fused.rerank_weight,
    )?;
    let chosen = stages::Chosen {
        grid,
        profile,
        users,
        lambda,
        plain_lambda,
        ease_neighbours,
        als,
        fused,
        cold_validation,
    };
    finish(run, chosen, tps, start)
}
