//! Training hyper-parameters of the bulk build: the item-item models (EASE,
//! transitions), ALS, the two-tower user encoder, the sequence model and
//! the reranker. Plain
//! data read from `[train]`; the code that uses them lives in `retrieve/`,
//! `rerank/` and `build`.

use serde::{Deserialize, Serialize};

/// Training options of the interaction-based sources.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// EASE L2 regularisation λ. Default 100 (chosen on the ml-latest-small validation split).
    pub ease_lambda: f32,
    /// Weights kept per EASE row. Default 500.
    pub ease_keep: usize,
    /// Most items (with an interaction) EASE is solved for exactly; above
    /// it, the neighbourhood approximation. Default 10000 (2.4 GB while solving).
    pub ease_max_items: usize,
    /// Items each EASE column is regressed on in the neighbourhood
    /// approximation. Default 64, chosen on ml-latest-small validation.
    pub ease_neighbours: usize,
    /// Steps after an item that count as its transitions. Default 5.
    pub transitions_window: usize,
    /// Weights kept per transitions row. Default 200.
    pub transitions_keep: usize,
    /// Implicit ALS; its item factors get their own HNSW index.
    pub als: AlsOptions,
    /// Train the neural models (two-tower user encoder, sequence model and
    /// reranker). Default true.
    pub neural: bool,
    /// The two-tower user encoder.
    pub two_tower: TwoTowerOptions,
    /// The self-attentive sequential source (SASRec).
    pub sequence: SequenceOptions,
    /// The cross-attention reranker.
    pub reranker: DinOptions,
    /// Most users whose held-out interactions the learned fusion is fitted
    /// on (a stable sample by user id beyond it). Default 5000.
    pub fusion_fit_users: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            ease_lambda: 100.0,
            ease_keep: 500,
            ease_max_items: 10_000,
            ease_neighbours: 64,
            transitions_window: 5,
            transitions_keep: 200,
            als: AlsOptions::default(),
            neural: true,
            two_tower: TwoTowerOptions::default(),
            sequence: SequenceOptions::default(),
            reranker: DinOptions::default(),
            fusion_fit_users: 5_000,
        }
    }
}

/// ALS hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlsOptions {
    /// Latent factors. Default 64.
    pub factors: usize,
    /// L2 regularisation λ. Default 20 (chosen on the ml-latest-small validation split).
    pub regularization: f32,
    /// Confidence of an observed pair, `1 + alpha`. Default 4.
    pub alpha: f32,
    /// Alternating iterations. Default 15.
    pub iterations: usize,
    /// Conjugate-gradient steps per row and half-step, each started from the
    /// row's factors of the previous iteration (Takács, Pilászy & Tikk, RecSys
    /// 2011); 0 solves every row exactly (Cholesky), which costs f³/3 per
    /// row instead of a few f² + f·(observed). Default 3.
    pub cg_steps: usize,
    /// Seed of the initial factors.
    pub seed: u64,
}

impl Default for AlsOptions {
    fn default() -> Self {
        Self {
            factors: 64,
            regularization: 20.0,
            alpha: 4.0,
            iterations: 15,
            cg_steps: 3,
            seed: 42,
        }
    }
}

/// Hyper-parameters of the two-tower model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TwoTowerOptions {
    /// Output (embedding) dimension. Default 64.
    pub dim: usize,
    /// Hidden width of the user tower. Default 128.
    pub hidden: usize,
    /// History items pooled. Default 50.
    pub history: usize,
    /// Recency decay of the pooling weights. Default 0.9.
    pub decay: f32,
    /// Softmax temperature τ. Default 0.05.
    pub temperature: f32,
    /// Passes over the training pairs. Default 8.
    pub epochs: usize,
    /// Pairs per batch (the in-batch negatives). Default 512.
    pub batch: usize,
    /// Adam learning rate. Default 0.002.
    pub lr: f32,
    /// Most training pairs taken from one user (the newest ones). Default 64.
    pub max_pairs_per_user: usize,
    /// Seed of the initial weights and the batch order.
    pub seed: u64,
    /// Probability that a training target's ALS factors are zeroed in the
    /// item tower, so that it places items without interactions (new ones)
    /// from their content vector alone. Default 0.8, chosen on
    /// ml-latest-small's validation split over {0, 0.3, 0.5, 0.8}: the
    /// hybrid with its reranker 0.1557, 0.1548, 0.1537, 0.1550 (level within
    /// noise), the cold-start protocol's full pipeline on new items 0.0969,
    /// 0.0974, 0.1210, 0.1300 (content alone 0.0863).
    pub collab_dropout: f32,
}

impl Default for TwoTowerOptions {
    fn default() -> Self {
        Self {
            dim: 64,
            hidden: 128,
            history: 50,
            decay: 0.9,
            temperature: 0.05,
            epochs: 8,
            batch: 512,
            lr: 0.002,
            max_pairs_per_user: 64,
            seed: 7,
            collab_dropout: 0.8,
        }
    }
}

/// Hyper-parameters of the self-attentive sequential source
/// ([`crate::retrieve::sequence`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SequenceOptions {
    /// Train it (with `neural`). Default false: on ml-latest-small's
    /// validation split the fusion gains little or nothing from it (the
    /// evaluation of 2026-12-05: weight 0.25 / 0.5 / 1 / 2 / 4 gave 0.1500 /
    /// 0.1490 / 0.1492 / 0.1457 / 0.1331, without it 0.1523; the one of
    /// 2026-12-06, whose choice `hybrid.sequence_weight` = 0.25 is: 0.1523
    /// against 0.1515 without it), so a build spends its training time
    /// (20–28 s on TRAIN) and a Recommend its forward pass only when asked;
    /// `vecrec-eval` always trains it. Without it the source is skipped,
    /// whatever `hybrid.sequence_weight` says.
    pub enabled: bool,
    /// Width of the item embeddings and of every layer. Default 64
    /// (validation: 96 0.1099 against 0.1107).
    pub dim: usize,
    /// Newest items of a history it reads. Default 50.
    pub max_len: usize,
    /// Transformer blocks (self-attention and feed-forward). Default 2
    /// (validation: 1 block 0.1073 against 0.1107).
    pub blocks: usize,
    /// Hidden width of the feed-forward layers. Default 128.
    pub hidden: usize,
    /// Passes over the training windows. Default 40 (ml-latest-small
    /// validation, the source alone, 1,024 negatives: 30 epochs 0.1065, 40
    /// 0.1107; with 256 negatives 20 / 40 / 60 / 80 / 100 epochs 0.0823 /
    /// 0.1004 / 0.0948 / 0.1023 / 0.1008).
    pub epochs: usize,
    /// Windows per batch. Default 64 (validation, 256 negatives: 32 0.0991,
    /// 64 0.1004).
    pub batch: usize,
    /// Items drawn uniformly per batch as the softmax's negatives. Default
    /// 1024 (validation at 40 epochs: 256 0.1004, 1024 0.1107, 2048 0.1117,
    /// 4096 0.1085; training time grows with it).
    pub negatives: usize,
    /// Adam learning rate. Default 0.001.
    pub lr: f32,
    /// Dropout of the input embeddings. Default 0.1 (validation, 1,024
    /// negatives: 0.1 0.1165, 0.2 0.1107, 0.3 0.1113; 0 with 2,048
    /// negatives 0.1020 against 0.1117 at 0.2).
    pub dropout: f32,
    /// Decoupled weight decay per step. Default 0.0001.
    pub weight_decay: f32,
    /// Seed of the initial weights, the batch order, the negatives and the dropout.
    pub seed: u64,
}

impl Default for SequenceOptions {
    fn default() -> Self {
        Self {
            enabled: false,
            dim: 64,
            max_len: 50,
            blocks: 2,
            hidden: 128,
            epochs: 40,
            batch: 64,
            negatives: 1024,
            lr: 0.001,
            dropout: 0.1,
            weight_decay: 1e-4,
            seed: 11,
        }
    }
}

/// Hyper-parameters of the reranker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DinOptions {
    /// Attention width A. Default 32.
    pub attention: usize,
    /// Hidden width of the scoring MLP. Default 64.
    pub hidden: usize,
    /// History items attended over (newest first). Default 20.
    pub history: usize,
    /// Sampled negatives per positive, half by popularity^0.75, half uniform. Default 4.
    pub negatives: usize,
    /// Hard negatives per positive, drawn from the items a retrieval model
    /// ranks highest for the history prefix (the two-tower model in the
    /// build), so training sees candidates like the ones it reranks. Default 0:
    /// on ml-latest-small, 4 of them lowered the reranker's AUC on validation
    /// heads from 0.622 to 0.583 (the two-tower model's in-sample favourites
    /// are often items the user simply had not reached yet).
    pub hard_negatives: usize,
    /// How many of the retrieval model's top items hard negatives come from. Default 100.
    pub hard_pool: usize,
    /// Passes over the training pairs. Default 3.
    pub epochs: usize,
    /// Examples per batch. Default 512.
    pub batch: usize,
    /// Adam learning rate. Default 0.002.
    pub lr: f32,
    /// Most positives taken from one user (the newest). Default 64.
    pub max_pairs_per_user: usize,
    /// Seed of weights, negatives and batch order.
    pub seed: u64,
    /// Train the reranker on what it will rerank (default true): the build
    /// holds out every user's newest fifth, trains the sources a second time
    /// on the rest, fuses their candidates for each held-out user and learns
    /// to order that head (listwise loss) from the sources' scores and
    /// ranks, the fused score, popularity, history length and the
    /// candidate's attention over the history. False: the older model,
    /// trained on (history prefix → next item) pairs with sampled negatives
    /// and popularity as its only feature (one training of the sources).
    pub listwise: bool,
    /// Passes over the held-out heads when `listwise`. Default 20 (40 gave
    /// validation NDCG@10 0.1550 with the reranker's list against 0.1547,
    /// AUC 0.705 against 0.701: level, at twice the time).
    pub head_epochs: usize,
    /// Weight of the pointwise (logistic) term beside the listwise loss
    /// when `listwise`. Default 3, chosen on ml-latest-small's validation
    /// split over {0, 1, 3, 10}: the reranker's AUC over the heads 0.607,
    /// 0.658, 0.701, 0.718 (the fusion score's 0.655), validation NDCG@10
    /// with its list fused in 0.1531 (10 epochs), 0.1532, 0.1547, 0.1521.
    pub head_pointwise: f32,
    /// Most held-out users whose heads train the reranker (a stable sample
    /// by user id), per fold. Default 20,000.
    pub head_users: usize,
    /// Holdout folds the heads come from when `listwise`: fold 0 holds out
    /// each user's newest fifth, fold 1 the fifth before it (with the
    /// sources trained once more, on what came before), and so on. Default
    /// 2, chosen on ml-latest-small's validation split (`vecrec-eval
    /// --validation-only`) over {1, 2, 3, 4}: NDCG@10 with the reranker's
    /// list 0.1556 and 0.1554 (two runs), 0.1584 and 0.1591, 0.1554, 0.1562;
    /// the reranker's AUC over the heads 0.741, 0.761, 0.763, 0.755.
    pub head_folds: usize,
}

impl Default for DinOptions {
    fn default() -> Self {
        Self {
            attention: 32,
            hidden: 64,
            history: 20,
            negatives: 4,
            hard_negatives: 0,
            hard_pool: 100,
            epochs: 3,
            batch: 512,
            lr: 0.002,
            max_pairs_per_user: 64,
            seed: 11,
            listwise: true,
            head_epochs: 20,
            head_pointwise: 3.0,
            head_users: 20_000,
            head_folds: 2,
        }
    }
}
