//! `vecrec-ann-bench`: builds an ANN index over TEXMEX vectors, reopens it from
//! disk in a fresh process and sweeps `ef`, printing one JSON object per line.
//! All index logic lives in the `vecrec-index` crate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use vecrec_index::backends::{self, AnnIndex, Backend};
use vecrec_index::{texmex, HnswParams, Metric};

/// Benchmark an ANN backend on TEXMEX files (.fvecs/.bvecs base and queries, .ivecs ground truth).
///
/// Prints JSON lines: first a build line (`build_s`, `mem_mb` = resident memory
/// of a fresh process after opening the on-disk index and running the sweep,
/// `open_s` = time from the start of the reopen to the first answer, `open_mb`
/// = resident memory at that first answer), then
/// one line per ef (`ef`, `recall@10`, `qps` single-threaded), then, with
/// `--selectivity`, one line per (selectivity, ef) of filtered search (a
/// seeded pseudo-random subset of that share of the rows passes; recall
/// against brute force over the subset).
#[derive(Parser)]
#[command(name = "vecrec-ann-bench", version, about, long_about)]
struct Args {
    /// Backend: `hnsw` (vecrec's own), `hnsw-int8` (the same graph walked on
    /// int8 codes, rescored exactly), `exact` (brute force), `hnsw_rs` (the
    /// hnsw_rs crate; build with `--features hnsw_rs`) or `faiss:<factory>`
    /// with any FAISS index-factory string, e.g. `faiss:HNSW16`,
    /// `faiss:IVF1024,PQ48` (build with `--features faiss`; `--ef` is
    /// efSearch for HNSW indexes, nprobe for IVF ones), or
    /// `faiss-gpu:<factory>` searching a copy on GPU 0 (`--features faiss-gpu`).
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
    /// Compute the own HNSW build's distances on the f32 vectors instead of
    /// their int8 codes (the default; searches are unaffected).
    #[arg(long)]
    build_on_floats: bool,
    /// Comma-separated shares of rows passing a filter (e.g. 0.01,0.1,0.5) for
    /// the filtered-search sweep; none by default.
    #[arg(long, value_delimiter = ',')]
    selectivity: Vec<f64>,
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
    let backend = Backend::parse(&a.backend).with_context(|| {
        format!(
            "unknown backend {:?} (hnsw, hnsw-int8, exact, hnsw_rs, faiss:<factory>, faiss-gpu:<factory>)",
            a.backend
        )
    })?;
    if !backend.available() {
        bail!(
            "backend {:?} is not in this build; rebuild with `--features {}`",
            a.backend,
            backend.feature().unwrap_or_default()
        );
    }
    if let Some(dir) = &a.search_only {
        return search(&a, &backend, dir);
    }
    // FAISS threads with OpenMP, which reads this before its first parallel
    // region: the build uses `--threads`, the search process one thread.
    std::env::set_var("OMP_NUM_THREADS", a.threads.max(1).to_string());
    let tmp = std::env::temp_dir().join(format!("vecrec-ann-bench-{}", std::process::id()));
    let root = a.out.clone().unwrap_or_else(|| tmp.clone());
    let (base, dim) = texmex::read_vectors(&a.base)?;
    let n = base.len() / dim.max(1);
    let safe_name: String = backend
        .name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let gen = root.join(format!("{safe_name}-{}", std::process::id()));
    std::fs::create_dir_all(&gen).with_context(|| format!("creating {}", gen.display()))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build()?;
    let params = HnswParams {
        m: a.m,
        ef_construction: a.ef_construction,
        build_on_codes: !a.build_on_floats,
        ..Default::default()
    };
    let t = Instant::now();
    pool.install(|| backends::build(&backend, &gen, &base, dim, metric, &params))?;
    let build_s = t.elapsed().as_secs_f64();
    drop(base);
    // Reopen and search in a fresh process, so memory and cold start are honest.
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--search-only")
        .arg(&gen)
        .env("OMP_NUM_THREADS", "1")
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
            "backend": a.backend, "event": "build", "n": n, "dim": dim, "m": a.m,
            "ef_construction": a.ef_construction, "threads": a.threads, "build_s": build_s,
            "mem_mb": first["mem_mb"], "open_s": first["open_s"], "open_mb": first["open_mb"],
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

/// Whether row `i` passes the benchmark's filter of selectivity `s` (a
/// seeded hash, so the subset is the same for every backend).
fn passes(i: u32, s: f64) -> bool {
    let h = (i as u64 ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    ((h >> 11) as f64 / (1u64 << 53) as f64) < s
}

/// Timed passes of `f` over all queries until at least 0.5 s have gone by; queries/s.
fn qps(
    queries: &[f32],
    dim: usize,
    f: &dyn Fn(&[f32]) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let (mut done, t) = (0usize, Instant::now());
    while t.elapsed().as_secs_f64() < 0.5 {
        for q in queries.chunks_exact(dim) {
            f(q)?;
        }
        done += queries.len() / dim;
    }
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

fn search(a: &Args, backend: &Backend, gen: &Path) -> anyhow::Result<()> {
    let (queries, qdim) = texmex::read_vectors(&a.queries)?;
    let (gt, gdim) = texmex::read_ivecs(&a.gt)?;
    if gdim < K {
        bail!("ground truth has {gdim} neighbours per query, need {K}");
    }
    let t = Instant::now();
    let index: Box<dyn AnnIndex> = backends::open(backend, gen)?;
    index.search(&queries[..qdim], K, a.ef[0], None)?;
    let open_s = t.elapsed().as_secs_f64();
    let open_mb = rss_mb();
    let nq = queries.len() / qdim;
    let mut rows = Vec::new();
    let efs: Vec<usize> = if *backend == Backend::Exact {
        vec![0]
    } else {
        a.ef.clone()
    };
    for &ef in &efs {
        let mut hits = 0;
        for (qi, q) in queries.chunks_exact(qdim).enumerate() {
            let truth = &gt[qi * gdim..qi * gdim + K];
            hits += index
                .search(q, K, ef, None)?
                .iter()
                .filter(|n| truth.contains(&(n.id as i32)))
                .count();
        }
        let qps = qps(&queries, qdim, &|q| {
            std::hint::black_box(index.search(q, K, ef, None)?);
            Ok(())
        })?;
        rows.push(serde_json::json!({
            "backend": a.backend, "ef": ef, "recall@10": hits as f64 / (nq * K) as f64, "qps": qps,
        }));
    }
    let mem_mb = rss_mb();
    if !a.selectivity.is_empty() {
        // Filtered ground truth: brute force over the passing rows.
        let exact = if *backend == Backend::Exact {
            None
        } else {
            Some(backends::open(&Backend::Exact, gen).or_else(|_| {
                anyhow::bail!("the filtered sweep needs the vector store beside the index")
            })?)
        };
        let reference: &dyn AnnIndex = exact.as_deref().unwrap_or(index.as_ref());
        for &s in &a.selectivity {
            if !(s > 0.0 && s <= 1.0) {
                bail!("selectivity must be in (0, 1], got {s}");
            }
            let f = move |i: u32| passes(i, s);
            let truth: Vec<Vec<u32>> = queries
                .chunks_exact(qdim)
                .map(|q| {
                    Ok(reference
                        .search(q, K, 0, Some(&f))?
                        .iter()
                        .map(|n| n.id)
                        .collect())
                })
                .collect::<anyhow::Result<_>>()?;
            for &ef in &efs {
                let mut hits = 0;
                let mut total = 0;
                for (q, t) in queries.chunks_exact(qdim).zip(&truth) {
                    let got = index.search(q, K, ef, Some(&f))?;
                    if got.iter().any(|n| !f(n.id)) {
                        bail!("{}: a filtered result fails the filter", a.backend);
                    }
                    hits += got.iter().filter(|n| t.contains(&n.id)).count();
                    total += t.len();
                }
                let qps = qps(&queries, qdim, &|q| {
                    std::hint::black_box(index.search(q, K, ef, Some(&f))?);
                    Ok(())
                })?;
                rows.push(serde_json::json!({
                    "backend": a.backend, "selectivity": s, "ef": ef,
                    "recall@10": hits as f64 / total.max(1) as f64, "qps": qps,
                }));
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"mem_mb": mem_mb, "open_s": open_s, "open_mb": open_mb})
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
