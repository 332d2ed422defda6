//! `raftline`: the command-line front end of raftline.

use clap::Parser;

/// raftline: a Raft-replicated, group-committing log appliance.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    Cli::parse();
}
