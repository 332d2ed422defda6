//! `raftline`: the command-line front end of raftline.

mod bench_fsync;
mod node;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// raftline: a Raft-replicated, group-committing log appliance.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks: measure this machine's limits before trusting it with a node.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Profile a disk the way a Raft log uses it: fdatasync latency, group-commit curve, bandwidth, verdict.
    #[command(long_about = bench_fsync::LONG_ABOUT)]
    Fsync(bench_fsync::FsyncArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(BenchCommand::Fsync(args)) => bench_fsync::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
