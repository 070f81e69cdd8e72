//! `vecrec-build`: bulk (re)build of an index generation. All logic lives in
//! `vecrec::pipeline`; this file parses arguments and reports.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use vecrec::catalog::{read_catalog, read_interactions};
use vecrec::config::Config;
use vecrec::encoder::Encoder;
use vecrec::movielens::MovieLens;
use vecrec::pipeline::{build, build_shards, BuildOptions, ShardWork};
use vecrec_index::HnswParams;

/// Build a new vecrec index generation from a catalogue and an interaction log.
///
/// Embeds every item's text with the sentence encoder, writes vectors, ids and
/// attributes into a memory-mapped store, builds the HNSW graph, precomputes a
/// profile for every user, and switches the index root's CURRENT pointer to the
/// new generation atomically (a running server keeps serving the old one until
/// it reopens). A failed build leaves nothing behind. The newest --keep
/// generations are kept.
///
/// Texts embedded by the previous build into the same --out are taken from
/// its embedding cache (`<out>/embedding-cache/`, keyed by a hash of the model
/// files and the text), so a rebuild embeds only new or changed texts. Every
/// model is trained once. At the end a table gives each stage's time and
/// peak memory (also as JSON with --report F).
///
/// Inputs (see README, "Data formats"): --catalog FILE (.jsonl or .csv) and
/// --interactions FILE (.csv: user,item,timestamp[,event][,weight]); or
/// --movielens DIR (ml-latest-small layout: every rated movie, ratings ≥ 4 as
/// interactions, text "title | genres | tags").
#[derive(Parser)]
#[command(name = "vecrec-build", version, about, long_about)]
struct Args {
    /// Item catalogue (.jsonl or .csv).
    #[arg(long, requires = "interactions", conflicts_with = "movielens")]
    catalog: Option<PathBuf>,
    /// Interaction log (.csv).
    #[arg(long, requires = "catalog")]
    interactions: Option<PathBuf>,
    /// A MovieLens ml-latest-small directory instead of --catalog/--interactions.
    #[arg(long)]
    movielens: Option<PathBuf>,
    /// Index root directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// TOML configuration (encoder files, [users] profile settings).
    #[arg(long)]
    config: Option<PathBuf>,
    /// HNSW links per node (level 0 keeps twice as many).
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// HNSW build candidate list size.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Generations to keep, the new one included.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Skip training the interaction-based sources (EASE, transitions): content only.
    #[arg(long)]
    content_only: bool,
    /// Embed every text, ignoring (and not writing) the embedding cache.
    #[arg(long)]
    no_embedding_cache: bool,
    /// Split the catalogue into this many shards by a stable hash of each
    /// item's id and write one index root per shard, OUT/shard-<i>/, each
    /// served by its own `vecrec serve` behind `vecrec route`
    /// (docs/scale-out.md). Every user's profile is made over the whole
    /// catalogue and stored in every shard. With training (no
    /// --content-only), one node's generation over the whole catalogue is
    /// built first as OUT/front/ (served by `vecrec route --front`: users,
    /// models, fusion, reranker), and each shard also gets its items' slice
    /// of every trained source.
    #[arg(long)]
    shards: Option<usize>,
    /// With --shards: build only this shard (0-based), e.g. one pod of an
    /// indexed Job; the whole catalogue is still embedded (through the
    /// embedding cache under --out) for the users' profiles. With
    /// training, the shard is cut from the front that `--front-only` left
    /// pending for the same catalogue, interactions and settings, and the
    /// build that cuts the last shard publishes the front and every shard
    /// together (nothing to do when that build is served already).
    #[arg(long, requires = "shards")]
    shard: Option<usize>,
    /// With --shards and training: only train and write the front tier's
    /// generation (OUT/front/), left pending, unpublished, for the
    /// `--shard i` builds to cut their shards from (one pod's work; the
    /// shard builds may run anywhere that sees OUT). Nothing is trained
    /// when a front of the same inputs and settings is pending already, or
    /// is served already with its shards (a rebuild run again).
    #[arg(long, requires = "shards", conflicts_with_all = ["shard", "content_only", "embed_only"])]
    front_only: bool,
    /// With --shard and training: wait up to this many seconds for a
    /// `--front-only` build of the same inputs to leave its front pending
    /// (checked every second), instead of failing at once.
    #[arg(long, requires = "shard", default_value_t = 0)]
    wait_front: u64,
    /// With --shards and --shard: only embed that shard's texts into its
    /// part of the embedding cache (OUT/embedding-parts/), then stop. Run
    /// by every pod of a rebuild Job first, it spreads the embedding over
    /// the pods; each shard's build then takes the vectors from the parts
    /// (a text no part holds yet is embedded by the build itself).
    #[arg(long, requires = "shard")]
    embed_only: bool,
    /// With --shards: fold the changes each shard's log holds beyond its
    /// served generation (OUT/shard-<i>/wal/wal.log, written by the
    /// shard's servers: upserts, deletes, events) into this build's
    /// catalogue and interactions, as one node's compaction does. Each new
    /// shard generation records the last record it took in, so its servers
    /// apply only later writes and drop these from the log once they serve
    /// it. The inputs as folded are written to OUT/folded/catalog.jsonl and
    /// interactions.csv (before anything is published), with a record of
    /// the log records they hold (OUT/folded/FOLDED.json): start the next
    /// build from them, again with --fold-log, since the logs will no
    /// longer hold these; it folds only the records they do not hold, even
    /// when the build that wrote them never published, and refuses inputs
    /// older than what the shards serve. A plain build over the shards
    /// replays every record still in their logs.
    ///
    /// In a split rebuild (all with the same --run): --embed-only folds
    /// before embedding (nothing written); --front-only folds, writes
    /// OUT/folded/ and trains; --shard i (no input files) cuts from the
    /// inputs that front folded.
    #[arg(long, requires = "shards")]
    fold_log: bool,
    /// With --front-only or --shard i: the split rebuild this build belongs
    /// to, shared by its pods and new for each rebuild (e.g. the Job's uid:
    /// letters, digits, '.', '_', '-'). A --front-only whose rebuild's
    /// front is pending already trains nothing (a restarted pod); with
    /// --fold-log it is needed, and each shard cuts from its rebuild's
    /// front.
    ///
    /// Needed by --front-only and by --shard i with training.
    ///
    /// Every build with --shards holds OUT's build lease (OUT/BUILD.lock)
    /// while it works, so a compaction, a one-process build and a split
    /// rebuild never interleave; the pods of one --run share it until the
    /// build that cuts the last shard publishes. A lease none of whose
    /// processes renewed it for 10 minutes is taken over, and its
    /// rebuild's later pods stop at once (start it again with a new
    /// --run). A --content-only pod, and an --embed-only pod without
    /// --run, hold none.
    #[arg(long, value_name = "ID")]
    run: Option<String>,
    /// With --shards: wait up to this many seconds while another build of
    /// OUT (a compaction, another rebuild) holds its build lease, instead
    /// of failing at once. A lease its rebuild stopped renewing (every
    /// process of it gone) is taken over 10 minutes after its last
    /// renewal.
    #[arg(long, requires = "shards", default_value_t = 0, value_name = "SECONDS")]
    wait_lock: u64,
    /// With --shards, instead of --catalog/--interactions: rebuild the
    /// partitioned build under OUT from what it serves, as one node's
    /// compaction does: the front generation's catalogue and users'
    /// histories (in order; their times are not kept), with each shard's
    /// log folded in as --fold-log does. Texts come from the embedding
    /// cache, so only upserted items are embedded. Needs a build with
    /// training (the front holds the whole catalogue). The inputs it
    /// rebuilt from are written to OUT/folded/ as --fold-log writes them.
    #[arg(
        long,
        requires = "shards",
        conflicts_with_all = ["catalog", "interactions", "movielens", "shard", "front_only",
                              "embed_only", "content_only", "fold_log"]
    )]
    compact: bool,
    /// Write the build's report (counts, per-stage seconds and peak memory) as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bars and no stage table.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    vecrec::main_with(run);
}

fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    let start = Instant::now();
    let cfg = Config::load(a.config.as_deref())?;
    check_split(&a)?;
    let _lease = match take_lease(&a).context("taking the build lease")? {
        Lease::Finished(run) => {
            println!("nothing to do: rebuild {run} is published or found served already");
            return Ok(());
        }
        Lease::Held(lease) => Some(lease),
        Lease::None => None,
    };
    let mut folded_through = Vec::new();
    // A shard of a folding split rebuild: cut with what its front folded.
    if let (true, Some(shards), Some(index), false) = (a.fold_log, a.shards, a.shard, a.embed_only)
    {
        let encoder = Encoder::load(&cfg.encoder, 1).context("loading the encoder")?;
        let mut opts = build_options(&a, &cfg, Vec::new());
        let wait = std::time::Duration::from_secs(a.wait_front);
        let Some(cut) = vecrec::pipeline::folded_cut(&a.out, &encoder, &opts, shards, wait)
            .context("finding the front to cut this shard from")?
        else {
            let run = a.run.as_deref().unwrap_or_default();
            // Its build is served: the rebuild is over.
            vecrec::pipeline::release_run(&a.out, run);
            println!(
                "nothing to do: rebuild {run} found its front and shards served already, or \
                 published them"
            );
            return Ok(());
        };
        opts.folded_through = cut.folded_through;
        let work = ShardWork::One {
            index,
            wait_front: std::time::Duration::ZERO,
        };
        let reports = build_shards(
            &a.out,
            &encoder,
            &cut.items,
            &cut.interactions,
            &opts,
            shards,
            work,
        )
        .context("building the shard")?;
        return report_shards(&a, &reports, shards, start);
    }
    if let (true, Some(shards), Some(run)) = (a.front_only, a.shards, &a.run) {
        if let Some(p) = vecrec::pipeline::pending_of_run(&a.out, shards, run)? {
            println!(
                "nothing to do: the front of rebuild {run} ({}) is written already",
                p.generation
            );
            return Ok(());
        }
    }
    let (mut items, mut interactions) = match (&a.catalog, &a.interactions, &a.movielens) {
        _ if a.compact => {
            let shards = a.shards.unwrap_or(0);
            let (items, interactions, changes) = vecrec::pipeline::served_inputs(&a.out, shards)
                .context("reading what is served")?;
            say_folded(&changes);
            folded_through = changes.iter().map(|c| c.through).collect();
            eprintln!(
                "rebuilding {} items and {} interactions from the served front generation",
                items.len(),
                interactions.len()
            );
            (items, interactions)
        }
        (Some(c), Some(i), None) => (
            read_catalog(c).context("reading the catalogue")?,
            read_interactions(i).context("reading the interactions")?,
        ),
        (None, None, Some(dir)) => {
            let ml = MovieLens::load(dir)
                .with_context(|| format!("reading MovieLens from {}", dir.display()))?;
            let inter = MovieLens::interactions(&ml.positives);
            (ml.items, inter)
        }
        _ => bail!(
            "give either --catalog FILE --interactions FILE, or --movielens DIR (or --shards N \
             --compact to rebuild from what is served)"
        ),
    };
    if let (true, Some(shards)) = (a.fold_log, a.shards) {
        // An --embed-only pod only embeds, so inputs it reads while the
        // front's pod rewrites them need not be refused.
        let files: Vec<&std::path::Path> = [&a.catalog, &a.interactions]
            .into_iter()
            .flatten()
            .filter(|_| !a.embed_only)
            .map(|p| p.as_path())
            .collect();
        let changes =
            vecrec::pipeline::fold_logs(&a.out, shards, &mut items, &mut interactions, &files)
                .context("folding the shards' logs")?;
        say_folded(&changes);
        folded_through = changes.iter().map(|c| c.through).collect();
    }
    // An --embed-only pod only embeds: the front's pod writes the inputs.
    if (a.fold_log && !a.embed_only) || a.compact {
        (items, interactions) =
            vecrec::pipeline::write_folded(&a.out, &items, &interactions, &folded_through)
                .context("writing the folded inputs")?;
    }
    let encoder = Encoder::load(&cfg.encoder, 1).context("loading the encoder")?;
    let opts = build_options(&a, &cfg, folded_through);
    if let (true, Some(shards), Some(i)) = (a.embed_only, a.shards, a.shard) {
        let r = vecrec::pipeline::embed_part(&a.out, &encoder, &items, shards, i, !a.quiet)
            .context("embedding the shard's texts")?;
        if let Some(path) = &a.report {
            let json = serde_json::to_string_pretty(&r)?;
            std::fs::write(path, json + "\n")
                .with_context(|| format!("writing the report to {}", path.display()))?;
        }
        println!(
            "embedded shard {i} of {shards}: {} texts, {} embedded ({:.0} texts/s), {} from the cache, into {} in {:.1}s",
            r.texts,
            r.embedded,
            r.embedded as f64 / r.encode_seconds.max(1e-9),
            r.reused,
            r.path.display(),
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if let Some(shards) = a.shards {
        let reports = build_shards(
            &a.out,
            &encoder,
            &items,
            &interactions,
            &opts,
            shards,
            match (a.front_only, a.shard) {
                (true, _) => ShardWork::Front,
                (false, Some(index)) => ShardWork::One {
                    index,
                    wait_front: std::time::Duration::from_secs(a.wait_front),
                },
                (false, None) => ShardWork::All,
            },
        )
        .context("building the shards")?;
        if a.fold_log || a.compact {
            eprintln!(
                "the inputs as folded ({} items, {} interactions) are in {}: start the next \
                 build from them, with --fold-log (it folds only the log records they do not \
                 hold)",
                items.len(),
                interactions.len(),
                a.out.join("folded").display()
            );
        }
        return report_shards(&a, &reports, shards, start);
    }
    let report =
        build(&a.out, &encoder, &items, &interactions, &opts).context("building the index")?;
    if !a.quiet {
        eprint!("{}", vecrec::pipeline::stage_table(&report.stages));
    }
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    println!(
        "built {} ({} items, {} users, {} interactions{}) in {:.1}s: embedding {:.1}s ({} embedded at {:.0} texts/s, {} from the cache), hnsw {:.1}s, sources {:.1}s; peak RSS {:.0} MiB",
        report.generation.display(),
        report.items,
        report.users,
        report.interactions,
        if report.skipped_unknown_items > 0 {
            format!(", {} skipped for unknown items", report.skipped_unknown_items)
        } else {
            String::new()
        },
        start.elapsed().as_secs_f64(),
        report.embed_seconds,
        report.embedded,
        report.texts_per_second,
        report.reused_embeddings,
        report.hnsw_seconds,
        report.train_seconds,
        report.peak_rss_mib
    );
    Ok(())
}

/// Refuses flags a split rebuild cannot run with.
fn check_split(a: &Args) -> anyhow::Result<()> {
    let cut = a.shard.is_some() && !a.embed_only;
    if (a.front_only || (cut && !a.content_only)) && a.run.is_none() {
        bail!(
            "a split rebuild's --front-only and --shard i builds each need --run ID, the same \
             for every pod of the rebuild and new for the next: the pods share OUT's build lease \
             under it (so no compaction or other build runs until they publish), and each \
             shard is cut from its rebuild's front (with --fold-log, from the inputs it folded)"
        );
    }
    if a.fold_log && cut {
        if a.content_only {
            bail!(
                "a --content-only partitioned build has no front to fold for its shards: fold \
                 in one process (--shards N --fold-log, without --shard)"
            );
        }
        if a.catalog.is_some() || a.movielens.is_some() {
            bail!(
                "a shard of a folding split rebuild is cut with the inputs its front folded \
                 (OUT/folded/): give it no --catalog, --interactions or --movielens"
            );
        }
    }
    if let Some(run) = &a.run {
        if !(a.front_only || a.shard.is_some()) {
            bail!(
                "--run names the split rebuild of a --front-only, --shard i or --embed-only build"
            );
        }
        vecrec::pipeline::check_run(run)?;
    }
    Ok(())
}

/// OUT's build lease for a partitioned build (none without --shards):
/// shared with the pods of its --run, or this process's own (released
/// when it ends). A --content-only pod (it has no front, folds nothing
/// and publishes only its shard) and an --embed-only pod without --run
/// (it writes only its cache part) take none.
fn take_lease(a: &Args) -> anyhow::Result<Lease> {
    if a.shards.is_none() || (a.content_only && a.shard.is_some()) {
        return Ok(Lease::None);
    }
    let what = if a.compact {
        "compact"
    } else if a.embed_only {
        "embed-only"
    } else if a.front_only {
        "front-only"
    } else if a.shard.is_some() {
        "shard"
    } else {
        "build"
    };
    let split = a.front_only || a.shard.is_some();
    let (run, own) = match &a.run {
        Some(run) => (run.clone(), false),
        None if split => return Ok(Lease::None),
        None => (vecrec::pipeline::own_run(what), true),
    };
    let wait = std::time::Duration::from_secs(a.wait_lock);
    Ok(
        match vecrec::pipeline::lock_build(&a.out, &run, what, wait, own)? {
            Some(lease) => Lease::Held(lease),
            None => Lease::Finished(run),
        },
    )
}

/// What [`take_lease`] found.
enum Lease {
    /// This build takes no lease.
    None,
    /// The lease, held.
    Held(vecrec::pipeline::BuildLock),
    /// The rebuild (`--run`) is published or found served already.
    Finished(String),
}

/// The build's options from the flags and configuration.
fn build_options(a: &Args, cfg: &Config, folded_through: Vec<u64>) -> BuildOptions {
    BuildOptions {
        hnsw: HnswParams {
            m: a.m,
            ef_construction: a.ef_construction,
            ..BuildOptions::default().hnsw
        },
        users: cfg.users.clone(),
        keep_generations: a.keep,
        progress: !a.quiet,
        train: (!a.content_only).then(|| cfg.train.clone()),
        learn_fusion: (!a.content_only).then(|| cfg.hybrid.clone()),
        embedding_cache: !a.no_embedding_cache,
        head_hybrid: Some(cfg.hybrid.clone()),
        embedding_parts: None,
        publish: true,
        folded_through,
        run: a.run.clone(),
    }
}

/// Reports what a partitioned build wrote.
fn report_shards(
    a: &Args,
    reports: &[vecrec::pipeline::BuildReport],
    shards: usize,
    start: Instant,
) -> anyhow::Result<()> {
    if !a.quiet {
        if let Some(last) = reports.last() {
            eprint!("{}", vecrec::pipeline::stage_table(&last.stages));
        }
    }
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(reports)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    for r in reports {
        println!(
            "built {} ({} items, {} users with a profile)",
            r.generation.display(),
            r.items,
            r.users
        );
    }
    if reports.is_empty() {
        println!(
            "nothing to do: a front of the same inputs and settings is pending \
             (OUT/front/PENDING.json), or it and its shards are served already \
             (OUT/front/PUBLISHED.json)"
        );
    } else if a.front_only {
        println!(
            "front trained in {:.1}s, pending (not published) until every one of the \
             {shards} shards is cut from it by `vecrec-build --shards {shards} --shard i`",
            start.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{} of {shards} shards built in {:.1}s",
            reports.len(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Says what each shard's log gives the build.
fn say_folded(changes: &[vecrec::live::Changes]) {
    for (s, c) in changes.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
        eprintln!(
            "shard {s}: folding {} upserts, {} deletes and {} events (log records through {})",
            c.upserts.len(),
            c.deleted.len(),
            c.events.len(),
            c.through
        );
    }
}
