//! `raftline`: the command-line front end of raftline.

mod bench_fsync;
mod node;
mod server;
mod server_config;

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
    /// Run one node of a raftline cluster.
    #[command(long_about = server::LONG_ABOUT)]
    Server(Box<server_config::ServerArgs>),
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

/// Structured logs on stderr; `RUST_LOG` filters them (default: info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Server(args) => server::run(*args),
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
