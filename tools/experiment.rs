//! `vecrec-experiment`: an experiment's report from the exposure log under
//! an index directory. All logic lives in `vecrec::analysis` (statistics)
//! and `vecrec::exposure` (the log); this file parses arguments and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vecrec-experiment",
    version,
    about = "Report on an A/B or interleaving experiment from its exposure log",
    long_about = "Report on an A/B or interleaving experiment from its exposure log.\n\n\
        `vecrec serve` logs every list it serves under an experiment, and every RecordEvents \
        event that names its request_id, under INDEX/experiments/. The report gives per arm: \
        users, requests, exposed items, clicks, CTR (clicks / exposed items) with a 95% interval \
        computed over users (the unit of assignment, by the delta method), users with a click, \
        mean reciprocal rank of clicks; per treatment: relative lift over the control with its \
        interval, a fixed-horizon p-value and an always-valid sequential (mSPRT) p-value that \
        stays valid however often the report is read; a sample-ratio-mismatch check of users per \
        arm against the shares (flagged below p = 0.001); in interleaving mode, per-user wins, \
        losses and ties with a sign test. Forced requests are left out."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the report (and write it as JSON with --json).
    Report {
        /// The index directory the server writes its exposure log under.
        #[arg(long)]
        index: PathBuf,
        /// The experiment's name.
        #[arg(long)]
        experiment: String,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vecrec-experiment: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn fmt_p(p: Option<f64>) -> String {
    p.map_or_else(|| "—".into(), |p| format!("{p:.4}"))
}

fn run(args: Args) -> anyhow::Result<()> {
    let Command::Report {
        index,
        experiment,
        json,
    } = args.command;
    let entries = vecrec::exposure::read_all(&index)
        .with_context(|| format!("reading the exposure log under {}", index.display()))?;
    let r = vecrec::analysis::report(&entries, &experiment).with_context(|| {
        format!(
            "no experiment {experiment:?} in the exposure log under {} (has it served a list?)",
            index.display()
        )
    })?;
    println!(
        "experiment {} ({}), {} forced requests left out",
        r.experiment, r.mode, r.forced_requests
    );
    println!(
        "{:<16} {:>6} {:>8} {:>9} {:>7} {:>8} {:>19} {:>8} {:>7} {:>19} {:>8} {:>8}",
        "arm",
        "share",
        "users",
        "requests",
        "clicks",
        "ctr",
        "ctr 95%",
        "mrr",
        "lift",
        "lift 95%",
        "p",
        "seq p"
    );
    for a in &r.arms {
        println!(
            "{:<16} {:>6.3} {:>8} {:>9} {:>7} {:>8.5} [{:>8.5}, {:>8.5}] {:>8.4} {:>7} {:>19} {:>8} {:>8}",
            a.name,
            a.share,
            a.users,
            a.requests,
            a.clicks,
            a.ctr,
            a.ctr_ci[0],
            a.ctr_ci[1],
            a.mrr,
            a.lift.map_or_else(|| "—".into(), |l| format!("{:+.1}%", 100.0 * l)),
            a.lift_ci.map_or_else(
                || "—".into(),
                |c| format!("[{:+.1}%, {:+.1}%]", 100.0 * c[0], 100.0 * c[1])
            ),
            fmt_p(a.p_value),
            fmt_p(a.sequential_p_value),
        );
    }
    println!(
        "sample ratio: p = {:.4}{}",
        r.srm_p_value,
        if r.srm_flag {
            " — MISMATCH: users per arm do not follow the shares; do not trust the figures above"
        } else {
            ""
        }
    );
    if let Some(i) = &r.interleaving {
        println!(
            "interleaving: {} users prefer the treatment, {} the control, {} tie; preference {:+.3} [{:+.3}, {:+.3}], sign test p = {:.4}",
            i.wins, i.losses, i.ties, i.preference, i.preference_ci[0], i.preference_ci[1], i.p_value
        );
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&r)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
