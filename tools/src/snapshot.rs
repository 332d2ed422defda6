//! `raftline snapshot now`: ask nodes to snapshot their state and compact their log now.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use raftline_netio::client::{snapshot_now, status_of_all};

use crate::cluster_args::ClusterArgs;

/// The long `--help` of `raftline snapshot now`.
pub const LONG_ABOUT: &str = "Ask a node (--node N) or every --bootstrap node to take a \
snapshot of everything it has applied, and wait until it is durable; prints each node's \
snapshot index and the offset its log continues at. The node then drops the log segments the \
snapshot and --retain-mib make unnecessary, as after a size-triggered snapshot. Nodes snapshot \
independently (each from its own committed log). A node whose state outgrew --state-mib-max \
refuses, saying so.";

/// `raftline snapshot …`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot now and compact the log.
    #[command(long_about = LONG_ABOUT)]
    Now(SnapshotNowArgs),
}

/// Flags of `raftline snapshot now`.
#[derive(Args, Debug)]
pub struct SnapshotNowArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only this node (its id), found among the --bootstrap nodes.
    #[arg(long, value_name = "N")]
    pub node: Option<u64>,
    /// How long to wait for each node's snapshot to be durable, in seconds.
    #[arg(long, default_value_t = 120)]
    pub wait_s: u64,
}

/// Runs `raftline snapshot …`.
pub fn run(command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    let SnapshotCommand::Now(args) = command;
    let config = args.cluster.client_config()?;
    let nodes: Vec<(Option<u64>, String)> = match args.node {
        Some(id) => {
            let found = status_of_all(&config)
                .into_iter()
                .find(|r| r.result.as_ref().is_ok_and(|s| s.node_id == id))
                .with_context(|| {
                    format!(
                        "no node with id {id} answered at {}",
                        config.bootstrap.join(",")
                    )
                })?;
            vec![(Some(id), found.address)]
        }
        None => config.bootstrap.iter().map(|a| (None, a.clone())).collect(),
    };
    let mut failed = 0;
    for (id, address) in nodes {
        let name = id.map_or(address.clone(), |id| format!("node {id} ({address})"));
        match snapshot_now(&address, &config, Duration::from_secs(args.wait_s)) {
            Ok((index, cut)) => {
                println!("{name}: snapshot at index {index}, the log continues at offset {cut}")
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
