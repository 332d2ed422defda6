//! `raftline`: the command-line front end of raftline.

mod auth_file;
mod cluster_args;
mod dev;
mod member;
mod produce;
mod server;
mod server_config;
mod snapshot;
mod status;
mod systemd;
mod tail;

use std::process::ExitCode;

/// mimalloc, not glibc's malloc: the data path allocates a buffer per entry on one thread and
/// frees it in bursts (when its group is durable, when its answer leaves), a pattern for which
/// glibc's bins spent up to a third of a follower's raft thread in `_int_malloc` (W2, perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use raftline_bench::cluster::null_node;
use raftline_bench::snapshot as snapshot_bench;
use raftline_bench::{cluster, failover, fsync, kafka, profiles};

/// raftline: a Raft-replicated, group-committing log appliance.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local 3-node cluster on loopback (the quickest way to try raftline).
    #[command(long_about = dev::LONG_ABOUT)]
    Dev(dev::DevArgs),
    /// Run one node of a raftline cluster.
    #[command(long_about = server::LONG_ABOUT)]
    Server(Box<server_config::ServerArgs>),
    /// Append records (stdin lines or generated) and print their offsets.
    #[command(long_about = produce::LONG_ABOUT)]
    Produce(produce::ProduceArgs),
    /// Print committed records from an offset, optionally following new ones.
    #[command(long_about = tail::LONG_ABOUT)]
    Tail(tail::TailArgs),
    /// Show every node's role, term, leader, commit index, log range and lag.
    #[command(long_about = status::LONG_ABOUT)]
    Status(status::StatusArgs),
    /// The cluster's members: list, add, promote, remove (one change at a time).
    #[command(subcommand, long_about = member::LONG_ABOUT)]
    Member(member::MemberCommand),
    /// Leadership: hand it to another voter.
    #[command(subcommand)]
    Leader(member::LeaderCommand),
    /// Snapshots: take one now and compact the log.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Client authorisation: make the token digests a server's --auth-file holds.
    #[command(subcommand)]
    Auth(auth_file::AuthCommand),
    /// Benchmarks: measure this machine's limits before trusting it with a node.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Profile a disk the way a Raft log uses it: fdatasync latency, group-commit curve, bandwidth, verdict.
    #[command(long_about = fsync::command::LONG_ABOUT)]
    Fsync(fsync::command::FsyncArgs),
    /// Load a 3-node cluster: records/s, append->ack latency, group commit, beside the disk's own limits.
    #[command(long_about = cluster::LONG_ABOUT)]
    Cluster(Box<cluster::ClusterBenchArgs>),
    /// What group commit buys on (emulated) HDD, SATA and NVMe disks: unbatched vs group-committed.
    #[command(long_about = profiles::LONG_ABOUT)]
    Profiles(profiles::ProfilesArgs),
    /// Kill -9 the leader of a 3-node cluster under load K times: write unavailability, records lost.
    #[command(long_about = failover::LONG_ABOUT)]
    Failover(failover::FailoverBenchArgs),
    /// Snapshots of a large keyed state: size, write time, append latency during them, stream
    /// and InstallSnapshot rebuild times.
    #[command(long_about = snapshot_bench::LONG_ABOUT)]
    Snapshot(snapshot_bench::SnapshotBenchArgs),
    /// The Kafka path beside the native one: produce (confluent-kafka vs native) and consume (kcat vs native).
    #[command(long_about = kafka::LONG_ABOUT)]
    Kafka(kafka::KafkaBenchArgs),
    /// A NULL NODE: a client port answering every append at once, no Raft, no disk (what
    /// `bench cluster --null-node` loads to measure the client path's ceiling).
    NullNode(null_node::NullNodeArgs),
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
        Command::Dev(args) => dev::run(args),
        Command::Produce(args) => produce::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Status(args) => status::run(args),
        Command::Snapshot(command) => snapshot::run(command),
        Command::Member(command) => member::run(command),
        Command::Leader(command) => member::run_leader(command),
        Command::Auth(command) => auth_file::run(command),
        Command::Bench(BenchCommand::Fsync(args)) => fsync::command::run(args),
        Command::Bench(BenchCommand::Cluster(args)) => cluster::run(*args),
        Command::Bench(BenchCommand::Profiles(args)) => profiles::run(args),
        Command::Bench(BenchCommand::Failover(args)) => failover::run(args),
        Command::Bench(BenchCommand::Snapshot(args)) => snapshot_bench::run(args),
        Command::Bench(BenchCommand::Kafka(args)) => kafka::run(args),
        Command::Bench(BenchCommand::NullNode(args)) => null_node::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_report(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and the chain of its sources, joined by ": ", leaving out a source whose message the one
/// before it already holds: most of the project's errors embed their source's message, which
/// anyhow's `{:#}` would print again at every level.
fn error_report(e: &anyhow::Error) -> String {
    let mut report = e.to_string();
    let mut previous = report.clone();
    for cause in e.chain().skip(1) {
        let message = cause.to_string();
        if !previous.contains(&message) {
            report.push_str(": ");
            report.push_str(&message);
        }
        previous = message;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::error_report;
    use anyhow::Context;

    /// An error whose message embeds its source's, as the project's errors do.
    #[derive(Debug)]
    struct Embeds(std::io::Error);

    impl std::fmt::Display for Embeds {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "reading the log: {}", self.0)
        }
    }

    impl std::error::Error for Embeds {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn disk_gone() -> std::io::Error {
        std::io::Error::other("disk gone")
    }

    #[test]
    fn an_error_report_names_each_cause_once() {
        let embedded = Err::<(), _>(Embeds(disk_gone())).context("starting the node");
        assert_eq!(
            error_report(&embedded.unwrap_err()),
            "starting the node: reading the log: disk gone"
        );
        let bare = Err::<(), _>(disk_gone()).context("opening hard_state");
        assert_eq!(
            error_report(&bare.unwrap_err()),
            "opening hard_state: disk gone",
            "a context whose source it does not embed still shows it"
        );
    }
}
