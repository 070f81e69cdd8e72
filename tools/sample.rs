//! `vecrec-sample`: writes the seeded demonstration catalogue and interaction
//! log. All logic lives in `vecrec::sample`; this file only parses arguments
//! and reports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use vecrec::sample::{generate, write_sample, SampleConfig};

/// Generate a small, seeded, licence-clean sample catalogue and interaction log.
#[derive(Debug, Parser)]
#[command(
    name = "vecrec-sample",
    version,
    about = "Generate a small, seeded, licence-clean sample catalogue and interaction log",
    long_about = "Generate a small, seeded, licence-clean sample catalogue and interaction log.\n\n\
        Items belong to twelve readable categories of a media and shop catalogue (space \
        science fiction, cooking and recipes, gardening, jazz music, ...); each item's title, \
        text and tags come from templates and a vocabulary of its own category, so texts of \
        one category sit close together in a BERT (MiniLM) embedding space. Every user has \
        one or two favourite categories, and 85% of their history is drawn from them with a \
        mild popularity skew; the rest is noise. A content-based recommender should recover \
        these planted tastes. The same seed and counts always produce identical files.\n\n\
        Files written to --out (each via a temporary file and rename):\n  \
        catalog.jsonl     one JSON object per item: id, title, text, categories, tags, year, price\n  \
        interactions.csv  user,item,timestamp,event,weight (view 1.0, click 2.0, purchase 4.0)\n  \
        users.csv         user,favourite_categories (joined with |): the planted truth\n  \
        README.md         what the files are and the seed used"
)]
struct Args {
    /// Seed of the random stream; the same seed gives the same files.
    #[arg(long, default_value_t = SampleConfig::default().seed)]
    seed: u64,

    /// Number of catalogue items (at least 60, five per category).
    #[arg(long, default_value_t = SampleConfig::default().items)]
    items: usize,

    /// Number of users.
    #[arg(long, default_value_t = SampleConfig::default().users)]
    users: usize,

    /// Shortest user history, in interactions.
    #[arg(long, default_value_t = SampleConfig::default().min_history)]
    min_history: usize,

    /// Longest user history, in interactions (inclusive).
    #[arg(long, default_value_t = SampleConfig::default().max_history)]
    max_history: usize,

    /// Output directory; created if missing, existing sample files are replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

impl Args {
    /// The generator settings these flags ask for.
    fn config(&self) -> SampleConfig {
        SampleConfig {
            seed: self.seed,
            items: self.items,
            users: self.users,
            min_history: self.min_history,
            max_history: self.max_history,
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let cfg = args.config();
    let sample = generate(&cfg)?;
    write_sample(&sample, &args.out)
        .with_context(|| format!("write sample to {}", args.out.display()))?;
    println!(
        "wrote {} items, {} users, {} interactions to {} (seed {}) in {:.2}s",
        sample.items.len(),
        sample.users.len(),
        sample.interactions.len(),
        args.out.display(),
        cfg.seed,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn cli_defaults_match_library_defaults() {
        let args = Args::parse_from(["vecrec-sample", "--out", "x"]);
        let cfg = args.config();
        assert_eq!(cfg, SampleConfig::default());
    }
}
