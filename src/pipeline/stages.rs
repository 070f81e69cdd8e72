//! What each stage of a build cost: wall time and peak resident memory,
//! with the progress bars the stages draw.
//!
//! Peak memory per stage comes from the kernel's high-water mark of this
//! process (`VmHWM` in `/proc/self/status`), reset at the start of every
//! stage by writing `5` to `/proc/self/clear_refs` (Linux ≥ 4.0). Where the
//! reset is refused, a stage reports the process's peak so far, which is
//! an upper bound; where `/proc` is missing, it reports nothing.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::Result;

/// The cost of one stage.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    /// Its name (`embedding`, `hnsw`, `ease`, …).
    pub stage: String,
    /// Wall seconds.
    pub seconds: f64,
    /// Peak resident memory of the process during the stage, MiB (0 when
    /// the platform does not say).
    pub peak_rss_mib: f64,
    /// What it worked through, in words (`30000 texts, 29700 reused`).
    pub work: String,
}

/// The stages of one build, in order.
#[derive(Debug, Default)]
pub struct Stages {
    list: Vec<StageReport>,
    before_mib: f64,
}

impl Stages {
    /// Starts the record; the peak memory before the first stage counts
    /// towards the build's peak.
    pub fn new() -> Self {
        Self {
            list: Vec::new(),
            before_mib: peak_rss_mib(),
        }
    }

    /// Runs a stage, recording its time and peak memory; `f` returns its
    /// result and a description of the work done.
    pub fn run<T>(&mut self, stage: &str, f: impl FnOnce() -> Result<(T, String)>) -> Result<T> {
        reset_peak_rss();
        let t = Instant::now();
        let (value, work) = f()?;
        self.list.push(StageReport {
            stage: stage.to_owned(),
            seconds: t.elapsed().as_secs_f64(),
            peak_rss_mib: peak_rss_mib(),
            work,
        });
        Ok(value)
    }

    /// The peak over every stage (and before the first).
    pub fn peak_mib(&self) -> f64 {
        self.list
            .iter()
            .map(|s| s.peak_rss_mib)
            .fold(self.before_mib, f64::max)
    }

    /// Seconds of the stages named.
    pub fn seconds_of(&self, names: &[&str]) -> f64 {
        self.list
            .iter()
            .filter(|s| names.contains(&s.stage.as_str()))
            .map(|s| s.seconds)
            .sum()
    }

    /// The record.
    pub fn into_list(self) -> Vec<StageReport> {
        self.list
    }
}

/// The table of a build's stages, for a terminal.
pub fn stage_table(stages: &[StageReport]) -> String {
    let mut s = format!(
        "{:<14} {:>9} {:>14}  {}\n",
        "stage", "seconds", "peak RSS MiB", "work"
    );
    for r in stages {
        s.push_str(&format!(
            "{:<14} {:>9.1} {:>14.0}  {}\n",
            r.stage, r.seconds, r.peak_rss_mib, r.work
        ));
    }
    s
}

/// The process's peak resident memory (MiB) since the last reset; 0 where
/// `/proc` does not say.
pub fn peak_rss_mib() -> f64 {
    status_kib("VmHWM:").map_or(0.0, |k| k as f64 / 1024.0)
}

fn status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak to the current resident memory; returns whether the
/// kernel took it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// A progress bar of `len` steps with rate and ETA, or a hidden one when
/// `on` is false.
pub fn bar(len: usize, msg: impl Into<std::borrow::Cow<'static, str>>, on: bool) -> ProgressBar {
    if !on {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed} gone, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// A spinner with the elapsed time, for a stage with no steps to count, or a
/// hidden one when `on` is false.
pub fn spinner(msg: impl Into<std::borrow::Cow<'static, str>>, on: bool) -> ProgressBar {
    if !on {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's resident memory now (MiB).
    fn rss_mib() -> f64 {
        status_kib("VmRSS:").map_or(0.0, |k| k as f64 / 1024.0)
    }

    /// Memory is measured per process, so the check runs in a child process
    /// of this test binary with no other test beside it.
    #[test]
    fn a_stage_sees_the_memory_it_touches() {
        const CHILD: &str = "VECREC_STAGES_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "pipeline::stages::tests::a_stage_sees_the_memory_it_touches",
                    "--test-threads",
                    "1",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        if !reset_peak_rss() {
            eprintln!("the kernel refuses to reset the peak here; nothing to check");
            return;
        }
        let mut st = Stages::new();
        let base = rss_mib();
        let v = st
            .run("touch", || {
                // 256 MiB, every page written.
                let v = vec![1u8; 256 << 20];
                let sum = v.iter().step_by(4096).map(|&b| b as u64).sum::<u64>();
                Ok((sum, "pages".into()))
            })
            .unwrap();
        assert_eq!(v, (256 << 20) / 4096);
        st.run("idle", || Ok(((), String::new()))).unwrap();
        let peak = st.peak_mib();
        let l = st.into_list();
        assert!(
            l[0].peak_rss_mib >= base + 200.0,
            "touch peaked at {} MiB from {base}",
            l[0].peak_rss_mib
        );
        // The second stage starts from a reset peak, after the vector is freed.
        assert!(
            l[1].peak_rss_mib < l[0].peak_rss_mib - 200.0,
            "{} then {}",
            l[0].peak_rss_mib,
            l[1].peak_rss_mib
        );
        assert_eq!(peak, l[0].peak_rss_mib);
        assert!(stage_table(&l).contains("touch"));
    }
}
