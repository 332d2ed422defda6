//! Fixed-budget simulation runs (CI) and the mutation proof: the simulator must find each
//! injected protocol bug within a bounded number of seeds.
//!
//! Every failure prints its seed. Replay one seed of these tests with RAFTLINE_SIM_SEED=N, or
//! with a trace: `cargo run --release -p raftline-replicator --example simulate -- --mix MIX
//! --seed N --trace`.

use raftline_replicator::sim::checker::Property;
use raftline_replicator::sim::{self, SimConfig, SimFailure, SimReport};
use raftline_replicator::Mutation;

/// The seeds to run: `count` seeds from `first`, or only RAFTLINE_SIM_SEED when set.
fn seeds(first: u64, count: u64) -> Vec<u64> {
    match std::env::var("RAFTLINE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RAFTLINE_SIM_SEED must be a number")],
        Err(_) => (first..first + count).collect(),
    }
}

fn run_all(mix: &str, make: fn(u64) -> SimConfig, first: u64, count: u64) -> Vec<SimReport> {
    seeds(first, count)
        .into_iter()
        .map(|seed| match sim::run(&make(seed)) {
            Ok(report) => report,
            Err(f) => panic!(
                "seed {} broke {:?} at tick {} (step {}): {}\nreplay: cargo run --release -p \
                 raftline-replicator --example simulate -- --mix {mix} --seed {} --ticks {} \
                 --trace",
                f.seed,
                f.violation.property,
                f.tick,
                f.step,
                f.violation.detail,
                f.seed,
                make(f.seed).fault_ticks
            ),
        })
        .collect()
}

#[test]
fn random_fault_mixes_keep_every_safety_property_and_recover() {
    let reports = run_all("random", SimConfig::swarm, 0, 300);
    assert!(
        reports.iter().map(|r| r.acked).sum::<usize>() > 0,
        "clients must get acknowledgements"
    );
    assert!(
        reports.iter().map(|r| r.snapshots_installed).sum::<u64>() > 100,
        "lagging and restarted nodes must catch up by snapshot"
    );
    assert!(
        reports.iter().map(|r| r.membership_changes).sum::<u64>() > 100,
        "learners must be added, promoted and members removed under faults"
    );
    for r in &reports {
        assert!(
            r.leader_loss_recovery_ticks <= 500,
            "seed {}: recovery bound is enforced by the run",
            r.seed
        );
    }
}

#[test]
fn leader_churn_keeps_every_safety_property_and_recovers() {
    run_all("churn", SimConfig::churn, 0, 200);
}

#[test]
fn clusters_of_three_five_and_seven_make_progress_under_standard_faults() {
    for nodes in [3, 5, 7] {
        for seed in seeds(1000, 20) {
            let r = sim::run(&SimConfig::standard(seed, nodes))
                .unwrap_or_else(|f| panic!("{nodes} nodes, seed {}: {}", f.seed, f.violation));
            assert!(
                r.acked > 10,
                "{nodes} nodes, seed {seed}: acknowledged only {} proposals",
                r.acked
            );
        }
    }
}

#[test]
fn fault_free_cluster_commits_nearly_every_proposal() {
    let mut cfg = SimConfig::standard(7, 3);
    cfg.faults = sim::FaultMix::none();
    cfg.fault_ticks = 200;
    let r = sim::run(&cfg).expect("no faults, no violation");
    assert!(
        r.acked as u64 + 20 >= r.proposals,
        "acked {} of {} proposals",
        r.acked,
        r.proposals
    );
    assert_eq!(r.crashes, 1, "only the deliberate leader kill");
}

#[test]
fn same_seed_replays_the_same_run() {
    let cfg = SimConfig::swarm(42);
    let mut a = Vec::new();
    let mut b = Vec::new();
    let ra = sim::run_traced(&cfg, &mut |l| a.push(l.to_string()));
    let rb = sim::run_traced(&cfg, &mut |l| b.push(l.to_string()));
    assert_eq!(ra, rb);
    assert!(a.len() > 100, "the trace describes the run");
    assert_eq!(a, b, "traces differ for one seed");
}

/// Runs seeds until one breaks a property; panics if none does within `budget`.
fn first_failure(mutation: Mutation, make: fn(u64) -> SimConfig, budget: u64) -> SimFailure {
    for seed in seeds(0, budget) {
        let mut cfg = make(seed);
        cfg.mutation = mutation;
        if let Err(f) = sim::run(&cfg) {
            eprintln!(
                "{mutation:?} found by seed {seed} at tick {}: {}",
                f.tick, f.violation
            );
            return f;
        }
    }
    panic!("the simulator did not find {mutation:?} within {budget} seeds");
}

#[test]
fn simulator_finds_commit_of_previous_term_entry_by_counting() {
    let f = first_failure(Mutation::CommitPreviousTerm, SimConfig::churn, 150);
    assert!(
        matches!(
            f.violation.property,
            Property::UnsafeCommit | Property::LeaderCompleteness | Property::StateMachineSafety
        ),
        "{f:?}"
    );
}

#[test]
fn simulator_finds_votes_granted_without_up_to_date_check() {
    let f = first_failure(Mutation::SkipUpToDateCheck, SimConfig::swarm, 20);
    assert!(
        matches!(
            f.violation.property,
            Property::LeaderCompleteness | Property::AckedEntryLost | Property::StateMachineSafety
        ),
        "{f:?}"
    );
}

#[test]
fn simulator_finds_vote_sent_before_it_is_durable() {
    let f = first_failure(Mutation::VoteBeforePersist, SimConfig::churn, 150);
    assert!(
        matches!(
            f.violation.property,
            Property::ElectionSafety | Property::LogMatching
        ),
        "{f:?}"
    );
}

#[test]
fn simulator_finds_follower_ack_before_entries_are_durable() {
    let f = first_failure(Mutation::AckBeforeDurable, SimConfig::swarm, 20);
    // The leader counts a match not on the follower's disk (seen at once), or commits on it.
    assert!(
        matches!(
            f.violation.property,
            Property::AckedMatchLost | Property::CommitDurability
        ),
        "{f:?}"
    );
}

#[test]
fn simulator_finds_a_snapshot_installed_over_entries_the_log_already_holds() {
    let f = first_failure(Mutation::InstallStaleSnapshot, SimConfig::swarm, 60);
    assert!(
        matches!(
            f.violation.property,
            Property::DurableLoss | Property::AckedEntryLost | Property::LeaderCompleteness
        ),
        "{f:?}"
    );
}

#[test]
fn simulator_finds_a_read_lease_renewed_without_a_quorum() {
    let f = first_failure(Mutation::LeaseWithoutQuorum, SimConfig::lease, 60);
    assert_eq!(f.violation.property, Property::StaleRead, "{f:?}");
}

#[test]
fn lease_reads_under_drifting_clocks_are_never_stale() {
    let reports = run_all("lease", SimConfig::lease, 0, 40);
    let lease_reads: u64 = reports.iter().map(|r| r.lease_reads).sum();
    assert!(
        lease_reads > 1000,
        "reads must be served from leases ({lease_reads})"
    );
}

#[test]
fn forged_and_corrupted_messages_never_break_safety_and_the_cluster_recovers() {
    // Every run also asserts that no real message was refused (RefusedLegitimate) and that a
    // proposal made after the forgeries stop is acknowledged within the recovery bound.
    let reports = run_all("forgery", SimConfig::forgery, 0, 100);
    let forged: u64 = reports.iter().map(|r| r.forged).sum();
    let refused: u64 = reports.iter().map(|r| r.refused).sum();
    let ticks: u64 = reports.iter().map(|r| r.ticks).sum();
    eprintln!("forgery: 100 seeds, {ticks} ticks, {forged} forged messages, {refused} refused");
    assert!(forged > 10_000, "the forger must be busy ({forged})");
    assert!(
        refused * 2 > forged,
        "most forgeries contradict what the node knows ({refused} of {forged} refused)"
    );
    assert!(reports.iter().map(|r| r.acked).sum::<usize>() > 0);
}

#[test]
fn simulator_finds_peer_messages_trusted_without_the_checks() {
    let f = first_failure(Mutation::TrustPeers, SimConfig::forgery, 10);
    assert_ne!(f.violation.property, Property::RefusedLegitimate, "{f:?}");
}

#[test]
fn damaged_log_tails_lose_no_acknowledged_entry_and_are_repaired() {
    // Every run also asserts that each damaged member is repaired within the recovery bound
    // after the faults stop, and that no leader counts a lost match without a repair marker.
    let reports = run_all("bitrot", SimConfig::bit_rot, 0, 300);
    let damaged: u64 = reports.iter().map(|r| r.tails_damaged).sum();
    let repairs: u64 = reports.iter().map(|r| r.repairs).sum();
    let silent: u64 = reports.iter().map(|r| r.silent_losses).sum();
    eprintln!(
        "bitrot: 300 seeds, {damaged} tails damaged, {repairs} repairs, {silent} synced groups lost unnoticed"
    );
    assert!(damaged > 1000, "the damage must be frequent ({damaged})");
    assert!(silent > 500, "so must the unnoticed loss ({silent})");
    assert!(
        repairs * 2 > damaged,
        "most damaged nodes are repaired before they crash again ({repairs} of {damaged})"
    );
    assert!(reports.iter().map(|r| r.acked).sum::<usize>() > 0);
}

#[test]
fn simulator_finds_a_damaged_tail_cut_silently() {
    let f = first_failure(Mutation::CutAndCarryOn, SimConfig::bit_rot, 10);
    assert!(
        matches!(
            f.violation.property,
            Property::AckedMatchLost
                | Property::LeaderCompleteness
                | Property::AckedEntryLost
                | Property::UnsafeCommit
                | Property::StateMachineSafety
        ),
        "{f:?}"
    );
}

#[test]
fn simulator_finds_a_match_lost_unnoticed_that_nobody_acts_on() {
    // A follower that lost its acknowledged last group without a marker, probed at its old
    // match for ever: an ever-growing storm of probes and rejections, or a follower never
    // brought up to date after the faults stop.
    let f = first_failure(Mutation::IgnoreLostMatch, SimConfig::bit_rot, 10);
    assert!(
        matches!(
            f.violation.property,
            Property::MessageStorm | Property::Liveness
        ),
        "{f:?}"
    );
}
