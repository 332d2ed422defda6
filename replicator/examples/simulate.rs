//! Runs the deterministic Raft simulator: one seed with an optional readable trace, or a swarm
//! of seeds with random fault mixes and a summary (ticks to recovery after leader loss).
//!
//! cargo run --release -p raftline-replicator --example simulate -- --seed 7 --trace
//! cargo run --release -p raftline-replicator --example simulate -- --swarm --seeds 1000

use std::process::ExitCode;

use clap::Parser;
use raftline_replicator::sim::{self, SimConfig};
use raftline_replicator::Mutation;

#[derive(Parser, Debug)]
#[command(
    about = "Deterministic simulation of a raftline Raft cluster under faults. \
Every run is reproducible from its seed; a failing run prints the seed to replay with --trace."
)]
struct Args {
    /// Seed of the (first) run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print a readable trace of every event (single-seed mode).
    #[arg(long)]
    trace: bool,
    /// Run many seeds (see --mix).
    #[arg(long)]
    swarm: bool,
    /// Fault mix: "random" (cluster size, faults, pre-vote, check-quorum and message size drawn
    /// from each seed; the default with --swarm), "standard" (every fault at a moderate rate on
    /// --nodes nodes; the default without --swarm), "churn" (3 nodes, new leaders crash soon),
    /// "lease" (3 nodes with lease reads, drifting clocks, many slow messages and partitions) or
    /// "forgery" (a random mix plus forged and corrupted peer messages while faults are on;
    /// the tests run it with --ticks 600) or "bitrot" (a random mix whose crashes often damage
    /// the crashed node's durable log tail; try it with --mutation cut-and-carry-on).
    #[arg(long)]
    mix: Option<String>,
    /// Number of seeds in swarm mode, starting at --seed.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Cluster size for a single run without --swarm (3, 5 or 7).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Ticks with faults on before the recovery checks.
    #[arg(long, default_value_t = 1000)]
    ticks: u64,
    /// Inject a protocol bug to see the simulator catch it: commit-previous-term,
    /// skip-up-to-date, vote-before-persist, ack-before-durable, install-stale-snapshot,
    /// lease-without-quorum, trust-peers (peer-message checks off; try it with --mix forgery),
    /// cut-and-carry-on (a damaged log tail is cut silently; try it with --mix bitrot),
    /// ignore-lost-match (a follower that lost acknowledged entries unaware is probed at its
    /// old match for ever; --mix bitrot).
    #[arg(long)]
    mutation: Option<String>,
}

fn parse_mutation(name: &str) -> Result<Mutation, String> {
    Ok(match name {
        "commit-previous-term" => Mutation::CommitPreviousTerm,
        "skip-up-to-date" => Mutation::SkipUpToDateCheck,
        "vote-before-persist" => Mutation::VoteBeforePersist,
        "ack-before-durable" => Mutation::AckBeforeDurable,
        "install-stale-snapshot" => Mutation::InstallStaleSnapshot,
        "lease-without-quorum" => Mutation::LeaseWithoutQuorum,
        "trust-peers" => Mutation::TrustPeers,
        "cut-and-carry-on" => Mutation::CutAndCarryOn,
        "ignore-lost-match" => Mutation::IgnoreLostMatch,
        other => return Err(format!("unknown mutation {other:?}")),
    })
}

fn config(args: &Args, seed: u64, mutation: Mutation) -> SimConfig {
    let mix = args
        .mix
        .as_deref()
        .unwrap_or(if args.swarm { "random" } else { "standard" });
    let mut cfg = match mix {
        "random" => SimConfig::swarm(seed),
        "churn" => SimConfig::churn(seed),
        "lease" => SimConfig::lease(seed),
        "forgery" => SimConfig::forgery(seed),
        "bitrot" => SimConfig::bit_rot(seed),
        _ => SimConfig::standard(seed, args.nodes),
    };
    cfg.fault_ticks = args.ticks;
    cfg.mutation = mutation;
    cfg
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(mix) = args
        .mix
        .as_deref()
        .filter(|m| !["random", "standard", "churn", "lease", "forgery", "bitrot"].contains(m))
    {
        eprintln!("unknown --mix {mix:?}: use random, standard, churn, lease, forgery or bitrot");
        return ExitCode::FAILURE;
    }
    let mutation = match args.mutation.as_deref().map(parse_mutation).transpose() {
        Ok(m) => m.unwrap_or(Mutation::None),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.swarm {
        let cfg = config(&args, args.seed, mutation);
        println!("{cfg:?}");
        let result = if args.trace {
            sim::run_traced(&cfg, &mut |line| println!("{line}"))
        } else {
            sim::run(&cfg)
        };
        return match result {
            Ok(report) => {
                println!("ok: {report:?}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                println!("FAILED seed {}: {failure:?}", failure.seed);
                ExitCode::FAILURE
            }
        };
    }
    let (mut steps, mut ticks, mut acked) = (0u64, 0u64, 0u64);
    let (mut snapshots_taken, mut snapshots_installed, mut crashes) = (0u64, 0u64, 0u64);
    let (mut membership_changes, mut reads, mut lease_reads) = (0u64, 0u64, 0u64);
    let (mut forged, mut refused) = (0u64, 0u64);
    let (mut tails_damaged, mut hard_states_lost, mut repairs) = (0u64, 0u64, 0u64);
    let mut silent_losses = 0u64;
    let mut leader_loss = Vec::new();
    let mut heal = Vec::new();
    let mut failures = 0;
    for seed in args.seed..args.seed + args.seeds {
        match sim::run(&config(&args, seed, mutation)) {
            Ok(r) => {
                steps += r.steps;
                ticks += r.ticks;
                acked += r.acked as u64;
                snapshots_taken += r.snapshots_taken;
                snapshots_installed += r.snapshots_installed;
                crashes += r.crashes;
                membership_changes += r.membership_changes;
                reads += r.reads_confirmed;
                lease_reads += r.lease_reads;
                forged += r.forged;
                refused += r.refused;
                tails_damaged += r.tails_damaged;
                hard_states_lost += r.hard_states_lost;
                repairs += r.repairs;
                silent_losses += r.silent_losses;
                leader_loss.push(r.leader_loss_recovery_ticks);
                heal.push(r.heal_recovery_ticks);
            }
            Err(f) => {
                failures += 1;
                println!(
                    "FAILED seed {} at tick {} step {}: {}",
                    f.seed, f.tick, f.step, f.violation
                );
                println!("  replay: cargo run --release -p raftline-replicator --example simulate -- --mix {} --seed {} --ticks {} --trace", args.mix.as_deref().unwrap_or("random"), f.seed, args.ticks);
            }
        }
    }
    println!(
        "seeds {} failed {failures} steps {steps} ticks {ticks} acked {acked} crashes {crashes} \
         snapshots taken {snapshots_taken} installed {snapshots_installed} \
         membership changes {membership_changes} reads {reads} (from a lease {lease_reads}) \
         forged {forged} refused {refused} logs damaged {tails_damaged} hard states lost \
         {hard_states_lost} repairs {repairs} groups lost unnoticed {silent_losses}",
        args.seeds
    );
    for (name, v) in [
        ("leader-loss recovery ticks", &mut leader_loss),
        ("heal recovery ticks", &mut heal),
    ] {
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        println!(
            "{name}: p50 {} p99 {} max {} (n={})",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v[v.len() - 1],
            v.len()
        );
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
