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
/// Prints JSON lines: first a build line, then one line per ef (`ef`,
/// `recall@10`, `qps`: queries one at a time on one thread), then, with
/// `--selectivity`, one line per (selectivity, ef) of filtered search (a
/// seeded pseudo-random subset of that share of the rows passes; recall
/// against brute force over the subset).
///
/// The build line: `build_s` (vectors already loaded), `disk_mb` (the
/// index's files), and from a fresh process that reopens the index and runs
/// the sweep: `mem_mb` (its resident memory after the sweep), `rss_delta_mb`
/// (that minus its resident memory before it opened the index, queries and
/// ground truth already loaded), `resident_mb` (its anonymous memory growth
/// plus the index files' pages in the page cache after the sweep, by mincore:
/// what the index holds in memory, mapped or read through, counted once; the
/// files' cached pages are dropped right after the open, so pages left from
/// writing them do not count), `open_s` (start of the reopen to the first
/// answer, page cache warm) and `open_mb`. `benches/ann/peers.py` measures
/// its contenders the same way.
#[derive(Parser)]
#[command(name = "vecrec-ann-bench", version, about, long_about)]
struct Args {
    /// Backend: `hnsw` (vecrec's own), `hnsw-int8` (the same graph walked on
    /// int8 codes, rescored exactly), `hnsw-int8-codes` (walked and ranked
    /// on the codes alone, no f32 row read), `hnsw-f16`, `exact` (brute force), `hnsw_rs` (the
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
    /// their int8 codes (the default; searches are unaffected). The lines
    /// then name the backend with `+f32-build` appended.
    #[arg(long)]
    build_on_floats: bool,
    /// Comma-separated shares of rows passing a filter (e.g. 0.01,0.1,0.5) for
    /// the filtered-search sweep; none by default.
    #[arg(long, value_delimiter = ',')]
    selectivity: Vec<f64>,
    /// Threads sharing the timed search passes (queries split among them);
    /// recall is measured the same either way. Copied into every line.
    #[arg(long, default_value_t = 1)]
    search_threads: usize,
    /// Round number, copied into every line (for interleaved repeats).
    #[arg(long, default_value_t = 1)]
    round: usize,
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

/// A memory line of /proc/self/status (`VmRSS`, `RssAnon`) in MB.
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0 / 1e6)
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(files_under(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// MB of `path` in the page cache now: mincore over a fresh read-only
/// mapping, which faults nothing in.
fn cached_mb(path: &Path) -> anyhow::Result<f64> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(0.0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    // SAFETY: a fresh shared read-only mapping of an open file of `len`
    // bytes; only its address is used (by mincore), never dereferenced.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        bail!(
            "mmap {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `addr` maps `len` bytes and `vec` holds one byte per page of them.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        bail!("mincore {}: {err}", path.display());
    }
    let pages = vec.iter().filter(|&&b| b & 1 == 1).count();
    Ok((pages * page) as f64 / 1e6)
}

/// Drops `path`'s clean pages that no process maps from the page cache.
fn drop_cached(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    f.sync_all()?;
    // SAFETY: a valid open descriptor; advice only, no memory is touched.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!(
            "posix_fadvise {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    let metric =
        Metric::parse(&a.metric).with_context(|| format!("unknown metric {:?}", a.metric))?;
    let backend = Backend::parse(&a.backend).with_context(|| {
        format!(
            "unknown backend {:?} (hnsw, hnsw-int8, hnsw-int8-codes, hnsw-f16, exact, hnsw_rs, faiss:<factory>, faiss-gpu:<factory>)",
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
    let label = if a.build_on_floats {
        format!("{}+f32-build", a.backend)
    } else {
        a.backend.clone()
    };
    if let Some(dir) = &a.search_only {
        return search(&a, &label, &backend, dir);
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
    let mut disk_bytes = 0;
    for f in files_under(&gen)? {
        disk_bytes += std::fs::metadata(&f)?.len();
    }
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
            "backend": label, "event": "build", "round": a.round, "n": n, "dim": dim, "m": a.m,
            "ef_construction": a.ef_construction, "threads": a.threads,
            "search_threads": a.search_threads, "build_s": build_s,
            "disk_mb": disk_bytes as f64 / 1e6, "mem_mb": first["mem_mb"],
            "rss_delta_mb": first["rss_delta_mb"], "resident_mb": first["resident_mb"],
            "open_s": first["open_s"], "open_mb": first["open_mb"],
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

/// Timed passes of `f` over all queries until at least 0.5 s have gone by,
/// each pass shared by `threads` threads (query `i` on thread `i % threads`);
/// queries/s.
fn qps(
    queries: &[f32],
    dim: usize,
    threads: usize,
    f: &(dyn Fn(&[f32]) -> anyhow::Result<()> + Sync),
) -> anyhow::Result<f64> {
    let (mut done, t) = (0usize, Instant::now());
    let threads = threads.max(1);
    while t.elapsed().as_secs_f64() < 0.5 {
        if threads == 1 {
            for q in queries.chunks_exact(dim) {
                f(q)?;
            }
        } else {
            std::thread::scope(|s| {
                let parts: Vec<_> = (0..threads)
                    .map(|j| {
                        s.spawn(move || -> anyhow::Result<()> {
                            for q in queries.chunks_exact(dim).skip(j).step_by(threads) {
                                f(q)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                parts.into_iter().try_for_each(|p| {
                    p.join()
                        .map_err(|_| anyhow::anyhow!("a search thread panicked"))?
                })
            })?;
        }
        done += queries.len() / dim;
    }
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

fn search(a: &Args, label: &str, backend: &Backend, gen: &Path) -> anyhow::Result<()> {
    let (queries, qdim) = texmex::read_vectors(&a.queries)?;
    let (gt, gdim) = texmex::read_ivecs(&a.gt)?;
    if gdim < K {
        bail!("ground truth has {gdim} neighbours per query, need {K}");
    }
    let (rss0, anon0) = (status_mb("VmRSS"), status_mb("RssAnon"));
    let t = Instant::now();
    let index: Box<dyn AnnIndex> = backends::open(backend, gen)?;
    index.search(&queries[..qdim], K, a.ef[0], None)?;
    let open_s = t.elapsed().as_secs_f64();
    let open_mb = status_mb("VmRSS");
    index.settle()?;
    let files = files_under(gen)?;
    for f in &files {
        drop_cached(f)?;
    }
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
        let qps = qps(&queries, qdim, a.search_threads, &|q| {
            std::hint::black_box(index.search(q, K, ef, None)?);
            Ok(())
        })?;
        rows.push(serde_json::json!({
            "backend": label, "round": a.round, "ef": ef, "search_threads": a.search_threads,
            "recall@10": hits as f64 / (nq * K) as f64, "qps": qps,
        }));
    }
    let mem_mb = status_mb("VmRSS");
    let mut cached = 0.0;
    for f in &files {
        cached += cached_mb(f)?;
    }
    let resident_mb = status_mb("RssAnon") - anon0 + cached;
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
                        bail!("{label}: a filtered result fails the filter");
                    }
                    hits += got.iter().filter(|n| t.contains(&n.id)).count();
                    total += t.len();
                }
                let qps = qps(&queries, qdim, a.search_threads, &|q| {
                    std::hint::black_box(index.search(q, K, ef, Some(&f))?);
                    Ok(())
                })?;
                rows.push(serde_json::json!({
                    "backend": label, "round": a.round, "selectivity": s, "ef": ef,
                    "search_threads": a.search_threads,
                    "recall@10": hits as f64 / total.max(1) as f64, "qps": qps,
                }));
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "mem_mb": mem_mb, "rss_delta_mb": mem_mb - rss0, "resident_mb": resident_mb,
            "open_s": open_s, "open_mb": open_mb,
        })
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
