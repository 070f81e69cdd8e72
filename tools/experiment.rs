//! `vecrec-experiment`: an experiment's report from the exposure log under
//! an index directory, and simulated experiments over MovieLens. The logic
//! lives in `vecrec::analysis` (statistics), `vecrec::exposure` (the log)
//! and `vecrec::simulation`; this file parses arguments, prints and plots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vecrec-experiment",
    version,
    about = "Report on an A/B or interleaving experiment from its exposure log, or simulate one",
    long_about = "Report on an A/B or interleaving experiment from its exposure log, or simulate one.\n\n\
        `vecrec serve` logs every list it serves under an experiment, and every RecordEvents \
        event that names its request_id, under INDEX/experiments/. The report gives per arm: \
        users, requests, exposed items, clicks, CTR (clicks / exposed items) with a 95% interval \
        computed over users (the unit of assignment, by the delta method), users with a click, \
        mean reciprocal rank of clicks, each with its interval; per treatment: relative lift over the control with its \
        interval, a fixed-horizon p-value and an always-valid sequential (mSPRT) p-value that \
        stays valid however often the report is read; a sample-ratio-mismatch check of users per \
        arm against the shares (flagged below p = 0.001); in interleaving mode, per-user wins, \
        losses and ties with a sign test. Forced requests are left out. `simulate` replays \
        MovieLens through the same code with simulated users."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the report (and write it as JSON with --json, the lift over
    /// time as a PNG with --plot).
    Report {
        /// The index directory the server writes its exposure log under
        /// (for a router, its --exposure-root; --cuped reads the users from
        /// the index here, so give the front's index root and the routers'
        /// roots with --log).
        #[arg(long)]
        index: PathBuf,
        /// Also read the exposure log under this directory: a router
        /// replica's --exposure-root, or a directory holding several of them
        /// (each subdirectory with an experiments/ log is read). Feedback
        /// taken by one router counts for a list another served.
        #[arg(long = "log", value_name = "DIR")]
        logs: Vec<PathBuf>,
        /// The experiment's name.
        #[arg(long)]
        experiment: String,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw the first treatment's lift and its 95% interval against the
        /// users seen, at 20 points in time, into this PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Add a CUPED-adjusted lift per treatment, with each user's
        /// interactions in the served generation (the history before the
        /// experiment, when the generation was built before it started) as
        /// the covariate.
        #[arg(long)]
        cuped: bool,
    },
    /// Replay the MovieLens TEST period through the real serving code with
    /// simulated users, and measure the experiment statistics: A/A false
    /// positives, A/B detection, and the users A/B (with and without
    /// CUPED) and interleaving need.
    #[command(
        long_about = "Replay the MovieLens TEST period through the real serving code with         simulated users, and measure how the experiment statistics behave.

        An index is built from the TRAIN part of the split (EVAL.md) under --work (reused when         one is there). For each experiment of --config, each TEST user's list is served per arm         by the engine in process through the same code as a forced Recommend. A simulated user         examines position p with probability 1/log2(p+1) and clicks an examined item when it is         in their TEST set. Per seed the assignment salt, the users' order and the clicks change;         the lists are logged as the server logs them and reported by the same code as `report`.

        Printed per experiment: the A/A test (the control against itself, --seeds seeds):         false-positive rates at alpha 0.05 of the fixed-horizon test, of the same test looked at         after every 10% of users, of the sequential test, and of CUPED; the A/B test of the first         two arms and interleaving on the same users; and the users each test needs to reach         p < 0.05 in 80% of --power-seeds seeds (populations drawn with replacement, doubled from         --min-users up to --max-users)."
    )]
    Simulate {
        /// A MovieLens ml-latest-small directory.
        #[arg(long)]
        movielens: PathBuf,
        /// TOML configuration with the [[experiments]] to simulate (and any
        /// serving settings).
        #[arg(long)]
        config: PathBuf,
        /// Seeds of the A/A and A/B runs.
        #[arg(long, default_value_t = 200)]
        seeds: usize,
        /// Seeds per population size of the power sweep.
        #[arg(long, default_value_t = 100)]
        power_seeds: usize,
        /// Smallest population of the power sweep.
        #[arg(long, default_value_t = 50)]
        min_users: usize,
        /// Largest population of the power sweep.
        #[arg(long, default_value_t = 102_400)]
        max_users: usize,
        /// Where the TRAIN index is built (and found by later runs).
        #[arg(long, default_value = "out/simulate")]
        work: PathBuf,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
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
    match args.command {
        Command::Report {
            index,
            logs,
            experiment,
            json,
            plot,
            cuped,
        } => report(&index, &logs, &experiment, json, plot, cuped),
        Command::Simulate {
            movielens,
            config,
            seeds,
            power_seeds,
            min_users,
            max_users,
            work,
            json,
            quiet,
        } => {
            let opts = vecrec::simulation::SimOptions {
                seeds,
                power_seeds,
                max_users,
                min_users,
                k: 10,
                log_dir: work.join("logs"),
                progress: !quiet,
            };
            simulate(&movielens, &config, &work, &opts, json)
        }
    }
}

/// Each user's interactions in the served generation under `index`.
fn covariates(index: &std::path::Path) -> anyhow::Result<vecrec::analysis::Covariates> {
    let engine = vecrec::engine::Engine::open(index, vecrec::config::Config::default(), None)
        .with_context(|| format!("opening the index under {} for --cuped", index.display()))?;
    let users = engine.users();
    Ok((0..users.len() as u32)
        .map(|u| (users.id(u).to_owned(), users.history(u).len() as f64))
        .collect())
}

fn report(
    index: &std::path::Path,
    logs: &[PathBuf],
    experiment: &str,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    cuped: bool,
) -> anyhow::Result<()> {
    let mut roots = vec![index.to_owned()];
    for dir in logs {
        roots.extend(vecrec::exposure::roots_under(dir)?);
    }
    let named = roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let paths: Vec<&std::path::Path> = roots.iter().map(PathBuf::as_path).collect();
    let entries = vecrec::exposure::read_roots(&paths)
        .with_context(|| format!("reading the exposure logs under {named}"))?;
    let x = if cuped {
        Some(covariates(index)?)
    } else {
        None
    };
    let r = vecrec::analysis::report_with(&entries, experiment, x.as_ref()).with_context(|| {
        format!(
            "no experiment {experiment:?} in the exposure logs under {named} (has it served a list?)"
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
    let pct = |l: f64| format!("{:+.1}%", 100.0 * l);
    let ci = |c: [f64; 2]| format!("[{}, {}]", pct(c[0]), pct(c[1]));
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
            a.lift.map_or_else(|| "—".into(), pct),
            a.lift_ci.map_or_else(|| "—".into(), ci),
            fmt_p(a.p_value),
            fmt_p(a.sequential_p_value),
        );
        println!(
            "{:<16} users with a click {} ({:.3} [{:.3}, {:.3}]), mrr 95% [{:.4}, {:.4}]",
            "",
            a.users_with_click,
            a.click_user_rate,
            a.click_user_rate_ci[0],
            a.click_user_rate_ci[1],
            a.mrr_ci[0],
            a.mrr_ci[1]
        );
        if let Some(c) = &a.cuped {
            println!(
                "{:<16} CUPED: lift {} {}, p {}, variance reduced {:.1}%",
                "",
                pct(c.lift),
                ci(c.lift_ci),
                fmt_p(Some(c.p_value)),
                100.0 * c.variance_reduction
            );
        }
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
    if let Some(path) = plot {
        plot_lift(&r, &path).with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(())
}

/// The font the plots are drawn with (Debian's fonts-dejavu-core, which
/// `make setup` installs).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draws the first treatment's lift over time with its interval.
fn plot_lift(r: &vecrec::analysis::Report, path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    if r.over_time.is_empty() {
        anyhow::bail!(
            "no lift over time to draw (an A/B experiment with clicks in both arms has one; {} is {})",
            r.experiment,
            r.mode
        );
    }
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading the font {FONT} (install fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a font"))?;
    let pts: Vec<(f64, f64, f64, f64)> = r
        .over_time
        .iter()
        .map(|c| {
            (
                c.users as f64,
                100.0 * c.lift,
                100.0 * c.lift_ci[0],
                100.0 * c.lift_ci[1],
            )
        })
        .collect();
    let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let lo = pts.iter().map(|p| p.2).fold(0.0, f64::min);
    let hi = pts.iter().map(|p| p.3).fold(0.0, f64::max);
    let pad = 0.05 * (hi - lo).max(1.0);
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let treatment = r.arms.get(1).map_or("treatment", |a| a.name.as_str());
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: lift of {treatment} over {} (CTR), 95% interval",
                r.experiment, r.arms[0].name
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max * 1.02, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("users seen")
        .y_desc("lift, %")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    let band: Vec<(f64, f64)> = pts
        .iter()
        .map(|p| (p.0, p.3))
        .chain(pts.iter().rev().map(|p| (p.0, p.2)))
        .collect();
    chart.draw_series(std::iter::once(Polygon::new(band, BLUE.mix(0.18))))?;
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            BLUE.stroke_width(2),
        ))?
        .label("lift (band: 95% interval)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart.draw_series(LineSeries::new(
        [(0.0, 0.0), (x_max * 1.02, 0.0)],
        BLACK.mix(0.6),
    ))?;
    chart
        .configure_series_labels()
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

fn simulate(
    movielens: &std::path::Path,
    config: &std::path::Path,
    work: &std::path::Path,
    opts: &vecrec::simulation::SimOptions,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    use vecrec::movielens::{split, MovieLens};
    let cfg = vecrec::config::Config::load(Some(config))
        .with_context(|| format!("reading {}", config.display()))?;
    anyhow::ensure!(
        !cfg.experiments.is_empty(),
        "{} defines no [[experiments]] to simulate",
        config.display()
    );
    let ml = MovieLens::load(movielens)
        .with_context(|| format!("reading MovieLens from {}", movielens.display()))?;
    let sp = split(&ml.positives);
    let encoder = std::sync::Arc::new(
        vecrec::encoder::Encoder::load(&cfg.encoder, 1).context("loading the encoder")?,
    );
    if work.join("CURRENT").exists() {
        eprintln!("reusing the TRAIN index under {}", work.display());
    } else {
        eprintln!(
            "building an index of the TRAIN split under {}",
            work.display()
        );
        let train = MovieLens::interactions(&sp.train);
        let build = vecrec::pipeline::BuildOptions {
            users: cfg.users.clone(),
            progress: opts.progress,
            train: Some(cfg.train.clone()),
            learn_fusion: Some(cfg.hybrid.clone()),
            ..Default::default()
        };
        vecrec::pipeline::build(work, &encoder, &ml.items, &train, &build)
            .context("building the TRAIN index")?;
    }
    let engine = vecrec::engine::Engine::open(work, cfg.clone(), Some(encoder))
        .with_context(|| format!("opening {}", work.display()))?;
    let users = vecrec::simulation::movielens_users(&sp);
    let r = vecrec::simulation::simulate_all(&engine, &cfg, &users, opts)?;
    for e in &r.experiments {
        print_sim(e);
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_sim(e: &vecrec::simulation::ExperimentSim) {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let need = |n: Option<usize>| n.map_or_else(|| "not reached".into(), |n| n.to_string());
    println!(
        "experiment {}: {} vs {}, {} TEST users",
        e.experiment, e.arms[0], e.arms[1], e.users
    );
    let a = &e.aa;
    println!(
        "  A/A, {} seeds × {} users: false positives at α 0.05: fixed horizon {}, fixed horizon looked at every 10% {}, sequential {}, CUPED {}; SRM flagged {}",
        a.seeds,
        a.users,
        pct(a.fixed_fpr),
        pct(a.fixed_fpr_peeking),
        pct(a.sequential_fpr),
        pct(a.cuped_fpr),
        pct(a.srm_flagged)
    );
    let b = &e.ab;
    println!(
        "  A/B, {} seeds × {} users: CTR {:.4} vs {:.4}, median lift {:+.1}%, detected (p < 0.05, that sign) {}, sequential {}; CUPED variance reduction {}",
        b.seeds,
        b.users,
        b.control_ctr,
        b.treatment_ctr,
        100.0 * b.median_lift,
        pct(b.detected),
        pct(b.sequential_detected),
        pct(b.cuped_variance_reduction)
    );
    println!(
        "  interleaving on the same users: detected {}, median preference {:+.3}",
        pct(b.interleaving_detected),
        b.interleaving_preference
    );
    println!(
        "  {:>8} {:>8} {:>10} {:>13}",
        "users", "A/B", "A/B+CUPED", "interleaving"
    );
    for p in &e.power {
        println!(
            "  {:>8} {:>8} {:>10} {:>13}",
            p.users,
            pct(p.ab),
            pct(p.ab_cuped),
            pct(p.interleaving)
        );
    }
    println!(
        "  users for 80% power: A/B {}, A/B with CUPED {}, interleaving {}; A/B by the normal approximation from the expected CTRs (difference {:+.5}): {}",
        need(e.users_needed_ab),
        need(e.users_needed_ab_cuped),
        need(e.users_needed_interleaving),
        e.expected_ctr_difference,
        e.users_needed_ab_analytic
            .map_or_else(|| "—".into(), |n| format!("{n:.0}"))
    );
}
