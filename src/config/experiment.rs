//! `[[experiments]]`: A/B and interleaving experiments over the serving
//! settings of `Recommend`. Each arm overrides some settings of `[hybrid]`
//! and `[rerank]`; the first arm is the control. Assignment and
//! interleaving live in [`crate::experiment`].

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use super::{Config, FusionMethod, RerankKind};

/// How an experiment compares its arms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentMode {
    /// Each user sees one arm's list.
    #[default]
    Ab,
    /// Each user sees the control's and the treatment's lists interleaved
    /// by team draft (exactly two arms).
    Interleave,
}

impl ExperimentMode {
    /// The name the config and the exposure log use.
    pub fn name(self) -> &'static str {
        match self {
            ExperimentMode::Ab => "ab",
            ExperimentMode::Interleave => "interleave",
        }
    }
}

/// One experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Unique name.
    pub name: String,
    /// Mixed into the assignment hash: a new salt reshuffles users.
    pub salt: String,
    /// `ab` or `interleave`. Default `ab`.
    #[serde(default)]
    pub mode: ExperimentMode,
    /// Whether it serves traffic. Default true. At most one experiment is
    /// enabled at a time.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The arms, control first; shares sum to 1.
    pub arms: Vec<ArmConfig>,
}

fn enabled() -> bool {
    true
}

/// One arm: a traffic share and the settings it overrides.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    /// Unique within the experiment.
    pub name: String,
    /// Fraction of users, in (0, 1].
    pub share: f64,
    /// `hybrid.fusion`.
    pub fusion: Option<FusionMethod>,
    /// `hybrid.candidates` (per source).
    pub candidates: Option<usize>,
    /// `rerank.weight` (0 turns the reranker off).
    pub rerank_weight: Option<f32>,
    /// `rerank.candidates`.
    pub rerank_candidates: Option<usize>,
    /// `hybrid.ease_weight`.
    pub ease_weight: Option<f32>,
    /// `hybrid.transitions_weight`.
    pub transitions_weight: Option<f32>,
    /// `hybrid.content_weight`.
    pub content_weight: Option<f32>,
    /// `hybrid.popularity_weight`.
    pub popularity_weight: Option<f32>,
    /// `hybrid.als_weight`.
    pub als_weight: Option<f32>,
    /// `hybrid.two_tower_weight`.
    pub two_tower_weight: Option<f32>,
    /// `hybrid.sequence_weight`.
    pub sequence_weight: Option<f32>,
    /// `rerank.kind`: `din` (the generation's cross-attention model) or
    /// `cross_encoder` (this arm's `cross_encoder_model`).
    pub rerank_kind: Option<RerankKind>,
    /// The arm's cross-encoder ONNX file (with `rerank_kind = "cross_encoder"`),
    /// loaded when the experiments are loaded.
    pub cross_encoder_model: Option<PathBuf>,
    /// Its tokenizer.json; default: the served `[rerank]` one, else the
    /// sentence encoder's.
    pub cross_encoder_tokenizer: Option<PathBuf>,
}

impl ArmConfig {
    /// Writes this arm's overrides into `cfg`.
    pub fn apply(&self, cfg: &mut Config) {
        let h = &mut cfg.hybrid;
        let set = |slot: &mut f32, v: Option<f32>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        if let Some(f) = self.fusion {
            h.fusion = f;
        }
        if let Some(n) = self.candidates {
            h.candidates = n;
        }
        set(&mut h.ease_weight, self.ease_weight);
        set(&mut h.transitions_weight, self.transitions_weight);
        set(&mut h.content_weight, self.content_weight);
        set(&mut h.popularity_weight, self.popularity_weight);
        set(&mut h.als_weight, self.als_weight);
        set(&mut h.two_tower_weight, self.two_tower_weight);
        set(&mut h.sequence_weight, self.sequence_weight);
        set(&mut cfg.rerank.weight, self.rerank_weight);
        if let Some(k) = self.rerank_kind {
            cfg.rerank.kind = k;
        }
        if let Some(m) = &self.cross_encoder_model {
            cfg.rerank.cross_encoder_model = Some(m.clone());
        }
        if let Some(t) = &self.cross_encoder_tokenizer {
            cfg.rerank.cross_encoder_tokenizer = Some(t.clone());
        }
        if let Some(n) = self.rerank_candidates {
            cfg.rerank.candidates = n;
        }
    }

    fn weights(&self) -> [(&'static str, Option<f32>); 8] {
        [
            ("rerank_weight", self.rerank_weight),
            ("ease_weight", self.ease_weight),
            ("transitions_weight", self.transitions_weight),
            ("content_weight", self.content_weight),
            ("popularity_weight", self.popularity_weight),
            ("als_weight", self.als_weight),
            ("two_tower_weight", self.two_tower_weight),
            ("sequence_weight", self.sequence_weight),
        ]
    }
}

/// Checks a list of experiments: names unique and non-empty, at most one
/// enabled, at least two arms with unique names and shares in (0, 1]
/// summing to 1, exactly two arms to interleave, overrides in range. The
/// message names the experiment, the arm and the key.
pub fn validate(list: &[ExperimentConfig]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for (i, e) in list.iter().enumerate() {
        let at = format!("experiments[{i}] ({:?})", e.name);
        if e.name.trim().is_empty() {
            return Err(format!("experiments[{i}].name must not be empty"));
        }
        if !names.insert(e.name.as_str()) {
            return Err(format!(
                "{at}: name: two experiments are named {:?}",
                e.name
            ));
        }
        if e.salt.is_empty() {
            return Err(format!("{at}: salt must not be empty"));
        }
        if e.arms.len() < 2 {
            return Err(format!("{at}: arms: an experiment needs at least two arms"));
        }
        if e.mode == ExperimentMode::Interleave && e.arms.len() != 2 {
            return Err(format!(
                "{at}: arms: interleaving compares exactly two arms, got {}",
                e.arms.len()
            ));
        }
        let mut arms = std::collections::HashSet::new();
        let mut total = 0.0;
        for (j, a) in e.arms.iter().enumerate() {
            let at = format!("{at}.arms[{j}] ({:?})", a.name);
            if a.name.trim().is_empty() {
                return Err(format!("{at}: name must not be empty"));
            }
            if !arms.insert(a.name.as_str()) {
                return Err(format!("{at}: name: two arms are named {:?}", a.name));
            }
            if !(a.share > 0.0 && a.share <= 1.0) {
                return Err(format!("{at}: share must be in (0, 1], got {}", a.share));
            }
            total += a.share;
            for (key, w) in a.weights() {
                if let Some(w) = w {
                    if !(w >= 0.0 && w.is_finite()) {
                        return Err(format!("{at}: {key} must be a finite number ≥ 0, got {w}"));
                    }
                }
            }
            let cross = a.rerank_kind == Some(RerankKind::CrossEncoder);
            if cross && a.cross_encoder_model.is_none() {
                return Err(format!(
                    "{at}: rerank_kind = \"cross_encoder\" needs cross_encoder_model"
                ));
            }
            if !cross && (a.cross_encoder_model.is_some() || a.cross_encoder_tokenizer.is_some()) {
                return Err(format!(
                    "{at}: cross_encoder_model and cross_encoder_tokenizer need rerank_kind = \"cross_encoder\""
                ));
            }
            if a.candidates == Some(0) || a.rerank_candidates == Some(0) {
                return Err(format!(
                    "{at}: candidates and rerank_candidates must be ≥ 1"
                ));
            }
        }
        if (total - 1.0).abs() > 1e-6 {
            return Err(format!("{at}: arms: shares sum to {total}, not 1"));
        }
    }
    let on: Vec<&str> = list
        .iter()
        .filter(|e| e.enabled)
        .map(|e| e.name.as_str())
        .collect();
    if on.len() > 1 {
        return Err(format!(
            "experiments: at most one may be enabled at a time, got {on:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(toml).map_err(|e| e.to_string())?;
        validate(&cfg.experiments)?;
        Ok(cfg)
    }

    const GOOD: &str = r#"
        [[experiments]]
        name = "rerank"
        salt = "s1"
        [[experiments.arms]]
        name = "control"
        share = 0.5
        [[experiments.arms]]
        name = "no-rerank"
        share = 0.5
        rerank_weight = 0.0
        fusion = "rrf"
    "#;

    #[test]
    fn a_good_experiment_parses_and_applies() {
        let cfg = parse(GOOD).unwrap();
        let e = &cfg.experiments[0];
        assert!(e.enabled);
        assert_eq!(e.mode, ExperimentMode::Ab);
        let mut c = Config::default();
        e.arms[1].apply(&mut c);
        assert_eq!(c.rerank.weight, 0.0);
        assert_eq!(c.hybrid.fusion, FusionMethod::Rrf);
        assert_eq!(c.hybrid.ease_weight, Config::default().hybrid.ease_weight);
        let cross = GOOD.replace(
            "fusion = \"rrf\"",
            "rerank_kind = \"cross_encoder\"\n        cross_encoder_model = \"ce.onnx\"",
        );
        let cfg = parse(&cross).unwrap();
        let mut c = Config::default();
        cfg.experiments[0].arms[1].apply(&mut c);
        assert_eq!(c.rerank.kind, RerankKind::CrossEncoder);
        assert_eq!(c.rerank.cross_encoder_model, Some(PathBuf::from("ce.onnx")));
    }

    #[test]
    fn bad_experiments_are_refused_naming_the_key() {
        let bad_share = GOOD.replace(
            "share = 0.5\n        rerank_weight",
            "share = 0.4\n        rerank_weight",
        );
        assert!(parse(&bad_share).unwrap_err().contains("shares sum to 0.9"));
        let unknown = GOOD.replace("fusion = \"rrf\"", "fusoin = \"rrf\"");
        assert!(
            parse(&unknown).unwrap_err().contains("fusoin"),
            "{}",
            parse(&unknown).unwrap_err()
        );
        let twice = format!(
            "{GOOD}{}",
            GOOD.replace("salt = \"s1\"", "salt = \"s2\"\n        enabled = false")
        );
        assert!(parse(&twice)
            .unwrap_err()
            .contains("two experiments are named"));
        let dup_arm = GOOD.replace("name = \"no-rerank\"", "name = \"control\"");
        assert!(parse(&dup_arm).unwrap_err().contains("two arms are named"));
        let neg = GOOD.replace("rerank_weight = 0.0", "rerank_weight = -1.0");
        assert!(parse(&neg).unwrap_err().contains("rerank_weight"));
        let three = format!(
            "{}\n        [[experiments.arms]]\n        name = \"c\"\n        share = 0.2\n",
            GOOD.replace(
                "salt = \"s1\"",
                "salt = \"s1\"\n        mode = \"interleave\""
            )
            .replace("share = 0.5\n        rerank", "share = 0.3\n        rerank")
        );
        assert!(parse(&three).unwrap_err().contains("exactly two arms"));
        let no_model = GOOD.replace("fusion = \"rrf\"", "rerank_kind = \"cross_encoder\"");
        assert!(parse(&no_model)
            .unwrap_err()
            .contains("needs cross_encoder_model"));
        let stray = GOOD.replace("fusion = \"rrf\"", "cross_encoder_model = \"m.onnx\"");
        assert!(parse(&stray).unwrap_err().contains("need rerank_kind"));
    }
}
