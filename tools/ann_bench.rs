//! `vecrec-ann-bench`: builds an ANN index over TEXMEX vectors, reopens it from
//! disk in a fresh process and sweeps `ef`, printing one JSON object per line.
//! All index logic lives in the `vecrec-index` crate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use vecrec_index::generation::GenerationWriter;
use vecrec_index::{
    texmex, write_index, HnswParams, Index, ItemMeta, Metric, SearchParams, StoreBuilder,
};

/// Benchmark an ANN backend on TEXMEX files (.fvecs/.bvecs base and queries, .ivecs ground truth).
///
/// Prints JSON lines: first a build line (`build_s`, `mem_mb` = resident memory
/// of a fresh process after opening the on-disk index and running the sweep,
/// `open_s` = time from process start of the reopen to the first answer), then
/// one line per ef (`ef`, `recall@10`, `qps` single-threaded).
#[derive(Parser)]
#[command(name = "vecrec-ann-bench", version, about, long_about)]
struct Args {
    /// Backend: `hnsw` (vecrec's own) or `exact` (brute force).
    #[arg(long, default_value = "hnsw")]
    backend: String,
    /// Base vectors (.fvecs or .bvecs).
    #[arg(long)]
    base: PathBuf,
    /// Query vectors (.fvecs or .bvecs).
    #[arg(long)]
    queries: PathBuf,
    /// Ground truth neighbours (.ivecs), at least 10 per query.
    #[arg(long)]
    gt: PathBuf,
    /// Metric: l2, cosine or ip.
    #[arg(long, default_value = "l2")]
    metric: String,
    /// HNSW links per node.
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// HNSW build candidate list.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Comma-separated ef values to sweep.
    #[arg(long, default_value = "10,16,32,64,128,256", value_delimiter = ',')]
    ef: Vec<usize>,
    /// Build threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where to write the index (a temporary directory if unset).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: search an existing index in this (fresh) process.
    #[arg(long, hide = true)]
    search_only: Option<PathBuf>,
}

const K: usize = 10;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<f64>().ok())
        })
        .map_or(0.0, |pages| pages * 4096.0 / 1e6)
}

fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    let metric =
        Metric::parse(&a.metric).with_context(|| format!("unknown metric {:?}", a.metric))?;
    if !matches!(a.backend.as_str(), "hnsw" | "exact") {
        bail!(
            "backend {:?} is not available in this build (hnsw, exact)",
            a.backend
        );
    }
    if let Some(dir) = &a.search_only {
        return search(&a, dir);
    }
    let tmp = std::env::temp_dir().join(format!("vecrec-ann-bench-{}", std::process::id()));
    let root = a.out.clone().unwrap_or_else(|| tmp.clone());
    let (base, dim) = texmex::read_vectors(&a.base)?;
    let t = Instant::now();
    let mut sb = StoreBuilder::new(dim, metric)?;
    for (i, v) in base.chunks_exact(dim).enumerate() {
        sb.add(&i.to_string(), v, ItemMeta::default())?;
    }
    drop(base);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build()?;
    let params = HnswParams {
        m: a.m,
        ef_construction: a.ef_construction,
        ..Default::default()
    };
    let writer = GenerationWriter::begin(&root)?;
    pool.install(|| write_index(writer.dir(), &sb, &params, serde_json::Value::Null, &|_| {}))?;
    let gen = writer.commit()?;
    let build_s = t.elapsed().as_secs_f64();
    drop(sb);
    // Reopen and search in a fresh process, so memory and cold start are honest.
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--search-only")
        .arg(&gen)
        .output()?;
    if !out.status.success() {
        bail!(
            "search process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let first: serde_json::Value = serde_json::from_str(lines.next().unwrap_or("{}"))?;
    println!(
        "{}",
        serde_json::json!({
            "backend": a.backend, "event": "build", "n": sb_len(&gen)?, "dim": dim, "m": a.m,
            "ef_construction": a.ef_construction, "threads": a.threads, "build_s": build_s,
            "mem_mb": first["mem_mb"], "open_s": first["open_s"],
        })
    );
    for l in lines {
        println!("{l}");
    }
    if a.out.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

fn sb_len(gen: &Path) -> anyhow::Result<usize> {
    Ok(Index::open(gen)?.store().len())
}

fn search(a: &Args, gen: &Path) -> anyhow::Result<()> {
    let (queries, qdim) = texmex::read_vectors(&a.queries)?;
    let (gt, gdim) = texmex::read_ivecs(&a.gt)?;
    if gdim < K {
        bail!("ground truth has {gdim} neighbours per query, need {K}");
    }
    let t = Instant::now();
    let index = Index::open(gen)?;
    let exact = a.backend == "exact";
    index.search(
        &queries[..qdim],
        &SearchParams {
            k: K,
            ef: a.ef[0],
            exact,
        },
        None,
    )?;
    let open_s = t.elapsed().as_secs_f64();
    let nq = queries.len() / qdim;
    let mut rows = Vec::new();
    let efs: Vec<usize> = if exact { vec![0] } else { a.ef.clone() };
    for &ef in &efs {
        let params = SearchParams { k: K, ef, exact };
        let mut hits = 0;
        let mut results = Vec::with_capacity(nq);
        for q in queries.chunks_exact(qdim) {
            results.push(index.search(q, &params, None)?.0);
        }
        // Timed passes over all queries until at least 0.5 s have gone by.
        let (mut done, t) = (0usize, Instant::now());
        while t.elapsed().as_secs_f64() < 0.5 {
            for q in queries.chunks_exact(qdim) {
                std::hint::black_box(index.search(q, &params, None)?);
            }
            done += nq;
        }
        let secs = t.elapsed().as_secs_f64();
        for (qi, r) in results.iter().enumerate() {
            let truth = &gt[qi * gdim..qi * gdim + K];
            hits += r.iter().filter(|n| truth.contains(&(n.id as i32))).count();
        }
        rows.push(serde_json::json!({
            "backend": a.backend, "ef": ef, "recall@10": hits as f64 / (nq * K) as f64, "qps": done as f64 / secs,
        }));
    }
    println!(
        "{}",
        serde_json::json!({"mem_mb": rss_mb(), "open_s": open_s})
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
