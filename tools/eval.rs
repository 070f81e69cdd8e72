//! `vecrec-eval`: offline evaluation under shared/EVAL.md. All logic lives in
//! `vecrec::eval`; this file parses arguments and reports.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vecrec::config::Config;
use vecrec::eval::{run, table, validate, validation_table, EvalOptions, Tuned};

/// Evaluate vecrec's recommendations on MovieLens under shared/EVAL.md.
///
/// Reproduces the protocol's temporal split (bit-identical to
/// split/*.csv), embeds every item, chooses the user-profile settings on the
/// validation split (val_train → val), refits on TRAIN and scores TEST with
/// full ranking through the same engine code the server runs (exact ranking as
/// the protocol asks, and the served HNSW search beside it). Prints a table
/// next to the peers' figures and optionally writes JSON.
#[derive(Parser)]
#[command(name = "vecrec-eval", version, about, long_about)]
struct Args {
    /// The ml-latest-small directory (ratings.csv, movies.csv, tags.csv).
    #[arg(long)]
    movielens: PathBuf,
    /// Write all figures as a JSON object to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write train.csv, test.csv, val_train.csv, val.csv, items.csv and item_text.csv here.
    #[arg(long)]
    write_split: Option<PathBuf>,
    /// Build the evaluation index here instead of a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// TOML configuration (encoder files, search ef).
    #[arg(long)]
    config: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// The peers' figures on the same split, as `benches/peers/run.sh`
    /// writes them (benches/peers/results/peers.json): the table lists them
    /// and gives the full pipeline's paired per-user difference against the
    /// best of them. Without it the table quotes EVAL.md's figures.
    #[arg(long)]
    peers: Option<PathBuf>,
    /// Run the validation stages only and print each stage's best validation
    /// NDCG@10; TEST is never read. Use it to choose between models (an
    /// encoder, a training change) before reading TEST once.
    #[arg(long)]
    validation_only: bool,
    /// Write the settings validation chose ([users], [hybrid], the
    /// reranker's weight, EASE's λ and ALS) as a TOML file for
    /// `vecrec-build --config` and `vecrec serve --config`, so the index
    /// built and served from it is the pipeline this run scored. Works with
    /// --validation-only (TEST unread).
    #[arg(long)]
    write_config: Option<PathBuf>,
}

fn main() {
    vecrec::main_with(main_inner);
}

fn main_inner() -> anyhow::Result<()> {
    let a = Args::parse();
    let opts = EvalOptions {
        movielens: a.movielens,
        write_split: a.write_split,
        work_dir: a.work_dir,
        config: Config::load(a.config.as_deref())?,
        progress: !a.quiet,
        peers: a.peers,
    };
    if a.validation_only {
        let report = validate(&opts).context("validation failed")?;
        let (tps, seconds) = (report.embed_texts_per_second, report.seconds);
        write_config(
            a.write_config,
            &report.tuned(),
            "`vecrec-eval --validation-only`",
        )?;
        return print_report(&validation_table(&report), tps, seconds, &report, a.json);
    }
    let report = run(&opts).context("evaluation failed")?;
    let (tps, seconds) = (report.embed_texts_per_second, report.seconds);
    write_config(a.write_config, &report.tuned(), "`vecrec-eval`")?;
    print_report(&table(&report), tps, seconds, &report, a.json)
}

/// Writes the chosen settings to `path`, if asked.
fn write_config(path: Option<PathBuf>, tuned: &Tuned, origin: &str) -> anyhow::Result<()> {
    let Some(p) = path else { return Ok(()) };
    std::fs::write(&p, tuned.to_toml(origin)?)
        .with_context(|| format!("writing {}", p.display()))?;
    println!("wrote the chosen settings to {}", p.display());
    Ok(())
}

/// Prints the table and the timing line, and writes the JSON if asked.
fn print_report(
    table: &str,
    texts_per_second: f64,
    seconds: f64,
    report: &impl serde::Serialize,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    print!("{table}");
    println!("embedding: {texts_per_second:.0} texts/s; total {seconds:.1}s");
    if let Some(p) = json {
        let body = serde_json::to_string_pretty(report)?;
        std::fs::write(&p, body + "\n").with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
