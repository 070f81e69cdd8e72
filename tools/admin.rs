//! `vecrec-admin`: maintenance of what `vecrec serve` uses. `wal check`
//! reads the write-ahead log without changing anything and tells what is
//! intact and what damage would cost; `wal repair --salvage` keeps every
//! intact record, also those after damage, and saves the damaged file
//! beside the log (logic in `vecrec_index::wal`). `token new` makes a bearer
//! token and stores only its hash (logic in `vecrec::grpc::auth`).
//! `snapshot` and `restore` back an index root up while it is served
//! (logic in `vecrec::serving::backup`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vecrec_index::wal;

#[derive(Debug, Parser)]
#[command(
    name = "vecrec-admin",
    version,
    about = "Check and repair what `vecrec serve` keeps under an index directory",
    long_about = "Check and repair what `vecrec serve` keeps under an index directory.\n\n\
        The write-ahead log (INDEX/wal/wal.log) holds every acknowledged write not yet folded \
        into a generation. On start the server cuts off only the torn tail of an append that \
        a crash interrupted (never acknowledged); any other damage stops the start, naming the \
        byte offset, so that no acknowledged write is dropped without someone deciding to. \
        `wal check` shows what is intact; `wal repair --salvage` keeps every intact record \
        and saves the damaged file as wal.log.damaged-<unix seconds>. A server that takes \
        writes holds the log's lock (INDEX/wal/LOCK) while it runs: a second server on the \
        same index, and a repair, are refused until it stops."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The write-ahead log.
    Wal {
        #[command(subcommand)]
        action: WalAction,
    },
    /// Write a consistent backup of an index root, served or not, to one
    /// tar file: the served generation, CURRENT, and the write-ahead log up
    /// to its last complete record.
    Snapshot {
        /// The index directory.
        #[arg(long)]
        index: PathBuf,
        /// The tar file to write (through a temporary file and a rename).
        #[arg(long)]
        out: PathBuf,
    },
    /// Unpack a snapshot into a new index directory after checking every
    /// file's checksum and the log; serve it with `vecrec serve --index`.
    Restore {
        /// The tar file `snapshot` wrote.
        #[arg(long)]
        from: PathBuf,
        /// The new index directory (must not exist, or be empty).
        #[arg(long)]
        index: PathBuf,
    },
    /// Bearer tokens (security.tokens_file).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Make a random token, add its SHA-256 to the token file (created if
    /// missing) and print the token once: it is stored nowhere else. The
    /// server reads the file at start and on SIGHUP.
    New {
        /// The token file (security.tokens_file).
        #[arg(long)]
        file: PathBuf,
        /// Who holds it (shown in logs and rate-limit errors); unique in the file.
        #[arg(long)]
        name: String,
        /// read (Recommend, SimilarItems, SearchText, Embed, GetItem), write
        /// (also UpsertItems, DeleteItems, RecordEvents) or admin (everything).
        #[arg(long)]
        role: vecrec::grpc::auth::Role,
    },
}

#[derive(Debug, Subcommand)]
enum WalAction {
    /// Read the log without changing it: intact records, damage, what a
    /// repair would keep. Exits 1 if the server would refuse to start.
    Check {
        /// The index directory (the one given to `vecrec serve --index`).
        #[arg(long)]
        index: PathBuf,
    },
    /// Rewrite a damaged log keeping every intact record (also those after
    /// the damage); the damaged file is kept beside it.
    Repair {
        /// The index directory.
        #[arg(long)]
        index: PathBuf,
        /// Confirm: drop what cannot be read back and keep the rest.
        #[arg(long)]
        salvage: bool,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vecrec-admin: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let action = match args.command {
        Command::Wal { action } => action,
        Command::Snapshot { index, out } => {
            let s = vecrec::serving::backup::snapshot(&index, &out)?;
            println!(
                "{}: {} and {} log records (up to number {})",
                out.display(),
                s.generation,
                s.records,
                s.wal_seq
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Restore { from, index } => {
            let s = vecrec::serving::backup::restore(&from, &index)?;
            println!(
                "{}: restored {} and {} log records (up to number {}), taken at {} (Unix seconds)",
                index.display(),
                s.generation,
                s.records,
                s.wal_seq,
                s.taken_at
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Token {
            action: TokenAction::New { file, name, role },
        } => {
            let (token, entry) = vecrec::grpc::auth::new_token(&name, role);
            vecrec::grpc::auth::add_token(&file, entry)?;
            eprintln!(
                "added {name:?} ({role}) to {}; send SIGHUP to a running server to load it. \
                 The token, shown only now:",
                file.display()
            );
            println!("{token}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    match action {
        WalAction::Check { index } => {
            let path = index.join(vecrec::layout::WAL_FILE);
            let r = wal::check(&path).with_context(|| format!("reading {}", path.display()))?;
            println!(
                "{}: format {}, {} bytes; {} intact records (last number {}) in the first {} bytes",
                path.display(),
                r.version,
                r.file_len,
                r.records,
                r.last_seq,
                r.end
            );
            match r.damage {
                None => {
                    println!("no damage");
                    Ok(ExitCode::SUCCESS)
                }
                Some(d) if d.torn_tail => {
                    println!(
                        "at byte {}: {} (the torn tail of an append that was never acknowledged; \
                         the server cuts it off on start)",
                        d.offset, d.reason
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some(d) => {
                    println!("DAMAGE at byte {}: {}", d.offset, d.reason);
                    match (d.after.first(), d.after.last()) {
                        (Some(a), Some(b)) => println!(
                            "{} intact records after the damage (numbers {}..={}); `wal repair --salvage` keeps them",
                            d.after.len(),
                            a.0,
                            b.0
                        ),
                        _ => println!("no intact record after the damage"),
                    }
                    println!("the server refuses to start until the log is repaired");
                    Ok(ExitCode::from(1))
                }
            }
        }
        WalAction::Repair { index, salvage } => {
            let path = index.join(vecrec::layout::WAL_FILE);
            if !salvage {
                anyhow::bail!(
                    "repair rewrites the log and drops what cannot be read back: \
                     run `vecrec-admin wal check --index {}` first, then add --salvage",
                    index.display()
                );
            }
            let r = wal::repair(&path).with_context(|| format!("repairing {}", path.display()))?;
            println!(
                "{}: kept {} intact records ({} of them found after the damage); the damaged file is {}",
                path.display(),
                r.kept,
                r.salvaged,
                r.backup.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
