//! The deterministic simulator: a whole cluster in one thread, driven by one seed.
//!
//! Time is simulated in units ([`TICK_UNITS`] per Raft tick). Every source of nondeterminism —
//! message latency, loss, duplication, partitions, fsync latency, crashes, client proposals,
//! election timeouts — is drawn from one ChaCha RNG seeded from [`SimConfig::seed`], so a seed
//! replays a run bit for bit. After every event the [`checker::Checker`] verifies the safety
//! properties; at the end the run heals all faults and checks that the cluster recovers, then
//! kills the leader and measures how long the cluster takes to commit again.

pub mod checker;
pub mod disk;
pub mod network;
pub mod state_machine;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, Mutation};
use crate::membership::MembershipChange;
use crate::message::{Entry, Index, Membership, Message, NodeId, SnapshotMeta, Term};
use crate::raft::{ProposeError, Raft, ReadError, Role};
use checker::{Checker, Property, Violation};
use disk::{SimDisk, SimSnapshot};
use network::Links;
use state_machine::SimStateMachine;

/// Simulated time units per Raft tick.
pub const TICK_UNITS: u64 = 100;

/// Events pending (messages in flight above all) beyond which a run is a message storm:
/// healthy runs stay below 2,000 (300 swarm seeds each of the random, bitrot, forgery and
/// lease mixes).
const EVENTS_PENDING_MAX: usize = 20_000;

/// Which faults a run injects, and how often. Rates are per mille; "per tick" rates are drawn
/// once per tick for the whole cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMix {
    /// Messages lost.
    pub drop_per_mille: u32,
    /// Messages delivered twice.
    pub duplicate_per_mille: u32,
    /// Normal one-way latency is drawn from `1..=latency_units_max`.
    pub latency_units_max: u64,
    /// Messages delayed up to `slow_units_max` instead (reordering across elections and crashes).
    pub slow_per_mille: u32,
    /// Upper bound of a slow message's latency.
    pub slow_units_max: u64,
    /// An fsync takes `1..=fsync_units_max`.
    pub fsync_units_max: u64,
    /// Per tick, when healed: chance of a new partition (split, isolation or one-way cut).
    pub partition_per_mille: u32,
    /// Per tick, when partitioned: chance of healing.
    pub heal_per_mille: u32,
    /// Per tick: chance of crashing a random live node.
    pub crash_per_mille: u32,
    /// Per tick: chance of crashing the leader.
    pub crash_leader_per_mille: u32,
    /// Per fsync started: chance the node crashes before it completes, losing the writes.
    pub crash_syncing_per_mille: u32,
    /// Per election won: chance the new leader crashes within two ticks (leader churn: leaves
    /// uncommitted entries of many terms behind, the ground for Raft's Figure 8).
    pub crash_new_leader_per_mille: u32,
    /// Per tick: chance the leader is asked to hand leadership to a random follower.
    pub transfer_per_mille: u32,
    /// Per tick: chance the leader is asked for a membership change (add a learner, promote
    /// one, or remove a member while more than three voters remain).
    pub membership_per_mille: u32,
    /// A crashed node restarts after `1..=restart_units_max`.
    pub restart_units_max: u64,
    /// Per tick and live node: chance a forged or corrupted message is stepped into it (see
    /// [`Simulator::forge`]). Drawn from its own stream, so 0 leaves the other draws unchanged.
    pub forge_per_mille: u32,
    /// Per crash: chance the node's durable log tail is damaged (a bit flip or a lost write in
    /// its last synced groups, which recovery cuts): it loses its last `1..=damage_entries_max`
    /// durable entries and restarts suspect, told the index it was durable through (see
    /// [`Simulator::crash`]). Never while another node's repair is pending: a majority of
    /// damaged logs is outside the fault model. Drawn from its own stream.
    pub damage_per_mille: u32,
    /// Most entries one damage loses.
    pub damage_entries_max: u64,
    /// Of those damages, per mille that hit anywhere after the snapshot instead (a sealed
    /// segment's damage: the node's log is cut there, issue 14 item 2): the node loses every
    /// entry from a uniformly drawn index on.
    pub damage_anywhere_per_mille: u32,
    /// Per crash without other damage: chance both hard-state slots are lost (term, vote and
    /// any repair marker): the node restarts at term 0 with no vote, suspect through its last
    /// index, as the node does (`storage_repair.rs`). Same stream and rule as the damage.
    pub hard_state_loss_per_mille: u32,
    /// Per crash without other damage: chance the node loses its last synced group of entries
    /// and the marker that would have vouched for it (the residual window of log/FORMAT.md):
    /// it restarts healthy, unaware, while its leader may still count it at its old match.
    /// The window is a known hole (replicator/DRIVER.md, "Residual window"), so this is
    /// injected only where the lost acknowledgements cannot have mattered: every lost entry is
    /// durable on a quorum of the other voters of every configuration, and no other node is
    /// damaged. What it tests is liveness: the leader resends what was lost. Its own stream.
    pub silent_loss_per_mille: u32,
}

impl FaultMix {
    /// A perfect network and disks that never crash (latency only).
    pub fn none() -> Self {
        FaultMix {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            latency_units_max: 30,
            slow_per_mille: 0,
            slow_units_max: 30,
            fsync_units_max: 40,
            partition_per_mille: 0,
            heal_per_mille: 0,
            crash_per_mille: 0,
            crash_leader_per_mille: 0,
            crash_syncing_per_mille: 0,
            crash_new_leader_per_mille: 0,
            transfer_per_mille: 0,
            membership_per_mille: 0,
            restart_units_max: 1,
            forge_per_mille: 0,
            damage_per_mille: 0,
            damage_entries_max: 0,
            damage_anywhere_per_mille: 0,
            hard_state_loss_per_mille: 0,
            silent_loss_per_mille: 0,
        }
    }

    /// Every fault on at a moderate rate.
    pub fn standard() -> Self {
        FaultMix {
            drop_per_mille: 50,
            duplicate_per_mille: 20,
            latency_units_max: 30,
            slow_per_mille: 20,
            slow_units_max: 600,
            fsync_units_max: 60,
            partition_per_mille: 10,
            heal_per_mille: 30,
            crash_per_mille: 10,
            crash_leader_per_mille: 5,
            crash_syncing_per_mille: 20,
            crash_new_leader_per_mille: 50,
            transfer_per_mille: 10,
            membership_per_mille: 10,
            restart_units_max: 800,
            forge_per_mille: 0,
            damage_per_mille: 0,
            damage_entries_max: 0,
            damage_anywhere_per_mille: 0,
            hard_state_loss_per_mille: 0,
            silent_loss_per_mille: 0,
        }
    }

    /// A random mix: each fault is off or on at a random intensity (swarm testing).
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut pick = |max: u32| {
            if rng.gen_bool(0.3) {
                0
            } else {
                rng.gen_range(1..=max)
            }
        };
        FaultMix {
            drop_per_mille: pick(200),
            duplicate_per_mille: pick(100),
            latency_units_max: 30,
            slow_per_mille: pick(100),
            slow_units_max: 800,
            fsync_units_max: 80,
            partition_per_mille: pick(30),
            heal_per_mille: 30,
            crash_per_mille: pick(30),
            crash_leader_per_mille: pick(30),
            crash_syncing_per_mille: pick(200),
            crash_new_leader_per_mille: pick(500),
            transfer_per_mille: pick(50),
            restart_units_max: 1000,
            membership_per_mille: pick(40),
            // Not drawn: the swarm's draws stay those of earlier versions.
            forge_per_mille: 0,
            damage_per_mille: 0,
            damage_entries_max: 0,
            damage_anywhere_per_mille: 0,
            hard_state_loss_per_mille: 0,
            silent_loss_per_mille: 0,
        }
    }
}

/// Everything that defines one simulated run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed; the same config replays the same run.
    pub seed: u64,
    /// Initial cluster size (3, 5 or 7 voters).
    pub nodes: usize,
    /// Further nodes that start outside the cluster (joining: no configuration) and can be
    /// added as learners, promoted, removed and added again.
    pub spare_nodes: usize,
    /// Ticks with faults on before the recovery checks.
    pub fault_ticks: u64,
    /// The fault mix.
    pub faults: FaultMix,
    /// Protocol bug to inject (tests only).
    pub mutation: Mutation,
    /// Pre-vote on the nodes.
    pub pre_vote: bool,
    /// Check-quorum on the nodes.
    pub check_quorum: bool,
    /// Client proposals per tick are drawn from `0..=proposals_per_tick_max`.
    pub proposals_per_tick_max: u32,
    /// Proposal payload sizes are drawn from `8..=payload_bytes_max`.
    pub payload_bytes_max: u64,
    /// The nodes' AppendEntries byte limit (small values force multi-message catch-up).
    pub msg_bytes_max: u64,
    /// The nodes' in-memory cache of durable entries (small values make catch-up, conflict
    /// hints and the apply path read the simulated disk through `Storage`).
    pub log_cache_bytes_max: u64,
    /// Per tick and node: chance the node snapshots its state machine and compacts its log
    /// (when it applied something since its last snapshot). Lagging and restarted nodes then
    /// catch up by InstallSnapshot.
    pub snapshot_per_mille: u32,
    /// Snapshots are padded with up to this many bytes, so they travel in several chunks.
    pub snapshot_padding_bytes_max: usize,
    /// Lease reads on the nodes (needs check-quorum).
    pub lease_read: bool,
    /// The clock-drift bound the nodes assume, per mille. With lease reads on, each node's clock
    /// runs at its own rate, drawn within a third of this from the nominal rate (so any two
    /// clocks differ by less than the bound).
    pub clock_drift_per_mille: u32,
    /// Liveness bound: after healing (and after killing the leader), a leader must commit
    /// within this many ticks.
    pub recovery_ticks_max: u64,
    /// The nodes coalesce AppendEntries per `ready()` (`Config::batch_appends`, as the node
    /// driver runs them).
    pub batch_appends: bool,
}

impl SimConfig {
    /// Standard faults on a cluster of `nodes`.
    pub fn standard(seed: u64, nodes: usize) -> Self {
        SimConfig {
            seed,
            nodes,
            spare_nodes: 2,
            fault_ticks: 1000,
            faults: FaultMix::standard(),
            mutation: Mutation::None,
            pre_vote: true,
            check_quorum: true,
            proposals_per_tick_max: 2,
            payload_bytes_max: 64,
            msg_bytes_max: 256,
            log_cache_bytes_max: 512,
            snapshot_per_mille: 30,
            snapshot_padding_bytes_max: 600,
            lease_read: false,
            clock_drift_per_mille: 100,
            recovery_ticks_max: 500,
            batch_appends: false,
        }
    }

    /// A configuration drawn from `seed` alone: cluster size, fault mix, pre-vote, check-quorum
    /// and message sizes all vary (swarm testing: each run stresses a different corner).
    pub fn swarm(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5157_4152_4d00_0000);
        let nodes = [3, 3, 5, 5, 7][rng.gen_range(0..5)];
        let mut cfg = SimConfig {
            nodes,
            faults: FaultMix::random(&mut rng),
            pre_vote: rng.gen_bool(0.7),
            check_quorum: rng.gen_bool(0.7),
            proposals_per_tick_max: rng.gen_range(1..=4),
            msg_bytes_max: [64, 256, 4096][rng.gen_range(0..3)],
            log_cache_bytes_max: [0, 512, 1 << 20][rng.gen_range(0..3)],
            snapshot_per_mille: [0, 10, 50, 200][rng.gen_range(0..4)],
            spare_nodes: rng.gen_range(0..=2),
            // From the seed, not the stream: the draws above stay those of earlier versions.
            batch_appends: seed % 2 == 1,
            ..SimConfig::standard(seed, nodes)
        };
        cfg.lease_read = cfg.check_quorum && rng.gen_bool(0.4);
        cfg
    }

    /// Lease reads under drifting clocks: standard faults plus many slow (reordered) messages
    /// and partitions that isolate the leader — the ground where a lease measured wrongly lets
    /// a deposed leader serve a stale read.
    pub fn lease(seed: u64) -> Self {
        let faults = FaultMix {
            slow_per_mille: 150,
            slow_units_max: 900,
            partition_per_mille: 30,
            ..FaultMix::standard()
        };
        SimConfig {
            faults,
            lease_read: true,
            ..SimConfig::standard(seed, 3)
        }
    }

    /// Leader churn on 3 nodes: new leaders often crash within two ticks, messages carry one
    /// entry each, fsyncs are slow and often cut short by a crash. Built to produce uncommitted
    /// entries of several terms and elections racing crashes — where commit-rule and
    /// vote-durability bugs show.
    pub fn churn(seed: u64) -> Self {
        let faults = FaultMix {
            membership_per_mille: 0,
            crash_new_leader_per_mille: 500,
            crash_syncing_per_mille: 100,
            fsync_units_max: 80,
            restart_units_max: 300,
            ..FaultMix::standard()
        };
        SimConfig {
            faults,
            msg_bytes_max: 64,
            spare_nodes: 0,
            ..SimConfig::standard(seed, 3)
        }
    }

    /// Forged and corrupted peer messages (issue 13) on top of a swarm mix: for `fault_ticks`
    /// (600) every live node gets one with 15 % per tick — terms near u64::MAX, acks beyond
    /// what was sent, AppendEntries/Heartbeat/TimeoutNow from a node that is not the leader,
    /// wild commit indexes and reject hints, malformed entries, plus sane-term noise (pre-votes
    /// and vote requests, responses of a higher term) that legitimately causes elections. Then
    /// they stop; the run must stay safe throughout, never refuse a real message, and recover
    /// (a leader commits, and so does a client's new proposal) within `recovery_ticks_max`.
    pub fn forgery(seed: u64) -> Self {
        let mut cfg = SimConfig::swarm(seed);
        cfg.faults.forge_per_mille = 150;
        cfg.fault_ticks = 600;
        cfg
    }

    /// Bit rot (issue 14) on top of a swarm mix: crashes (at least 2 % per tick, plus those
    /// cut short in an fsync and of new leaders) damage the crashed node's log tail half the
    /// time, losing up to 8 durable entries, which it may have acknowledged. The damaged node
    /// must stay mute until repaired from a leader and be repaired within
    /// `recovery_ticks_max` of the faults stopping; no acknowledged or committed entry may be
    /// lost. Without membership changes: a mute node while a change is in flight can leave no
    /// electable leader (the old and the new configuration's quorums both need it; the
    /// swarm found it in 3 of 2300 seeds), which is a loss of availability, not of safety.
    pub fn bit_rot(seed: u64) -> Self {
        let mut cfg = SimConfig::swarm(seed);
        cfg.faults.membership_per_mille = 0;
        cfg.faults.crash_per_mille = cfg.faults.crash_per_mille.max(20);
        cfg.faults.damage_per_mille = 500;
        cfg.faults.damage_entries_max = 8;
        cfg.faults.damage_anywhere_per_mille = 300;
        cfg.faults.hard_state_loss_per_mille = 100;
        cfg.faults.silent_loss_per_mille = 1000;
        cfg
    }

    fn node_config(&self, index: usize) -> Config {
        let voters = if index < self.nodes {
            (1..=self.nodes as u64).collect()
        } else {
            Vec::new()
        };
        let mut cfg = Config::new(index as u64 + 1, voters);
        cfg.pre_vote = self.pre_vote;
        cfg.check_quorum = self.check_quorum;
        cfg.msg_bytes_max = self.msg_bytes_max;
        cfg.inflight_msgs_max = 8;
        cfg.inflight_bytes_max = 16 * self.msg_bytes_max;
        cfg.uncommitted_entries_max = 256;
        cfg.log_cache_bytes_max = self.log_cache_bytes_max;
        cfg.lease_read = self.lease_read;
        cfg.clock_drift_per_mille = self.clock_drift_per_mille;
        cfg.committed_bytes_max = 4 * self.msg_bytes_max;
        cfg.batch_appends = self.batch_appends;
        cfg.mutation = self.mutation;
        cfg
    }
}

/// What a run did, when it passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Events processed (each followed by the safety checks).
    pub steps: u64,
    /// Ticks simulated in total.
    pub ticks: u64,
    /// Proposals the leaders accepted.
    pub proposals: u64,
    /// Proposals acknowledged to the client (committed and applied by the node they went to).
    pub acked: usize,
    /// Highest committed index.
    pub committed_max: Index,
    /// ReadIndex reads confirmed (each checked against earlier acknowledgements).
    pub reads_confirmed: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Snapshots nodes took of their own state (each followed by log compaction).
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader (each checked by content).
    pub snapshots_installed: u64,
    /// Membership changes the leaders accepted.
    pub membership_changes: u64,
    /// Reads served from a leader lease (a subset of `reads_confirmed`).
    pub lease_reads: u64,
    /// Ticks from healing every fault to a leader committing in its term.
    pub heal_recovery_ticks: u64,
    /// Ticks from killing a stable leader to a new leader committing in its term.
    pub leader_loss_recovery_ticks: u64,
    /// Forged or corrupted messages stepped into nodes.
    pub forged: u64,
    /// Messages the nodes refused (all of them forged: a refused real message fails the run).
    pub refused: u64,
    /// With forgeries: ticks from healing to a client's proposal made after it being
    /// acknowledged (0 without).
    pub heal_ack_ticks: u64,
    /// Crashes that damaged the node's log tail (see [`FaultMix::damage_per_mille`]).
    pub tails_damaged: u64,
    /// Crashes that lost the node's hard state (see [`FaultMix::hard_state_loss_per_mille`]).
    pub hard_states_lost: u64,
    /// Crashes that lost the last synced group unnoticed (see
    /// [`FaultMix::silent_loss_per_mille`]).
    pub silent_losses: u64,
    /// Damaged nodes the core reported repaired.
    pub repairs: u64,
}

/// A run that broke a property: replay it with the same config to see the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Tick at which the violation was seen.
    pub tick: u64,
    /// Event count at which it was seen.
    pub step: u64,
    /// What broke.
    pub violation: Violation,
}

#[derive(Clone, Debug)]
enum Event {
    Tick,
    Deliver(Message),
    FsyncDone { node: usize, epoch: u64 },
    Crash { node: usize, epoch: u64 },
    Restart { node: usize },
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    /// The running core, which owns the node's disk (its storage) while up.
    raft: Option<Raft<SimDisk>>,
    /// The disk while the node is down.
    down_disk: Option<SimDisk>,
    /// The configuration the node last had in force (kept while it is down).
    membership: Membership,
    /// What the node applied (volatile: rebuilt from the snapshot at restart).
    state: SimStateMachine,
    /// Chunks of a snapshot being received (volatile).
    incoming: Vec<u8>,
    /// Clock units this node's clock advances per simulated tick (100 = nominal).
    clock_rate: u64,
    /// Clock units not yet turned into a tick.
    clock: u64,
    /// Bumped at every crash so events of an earlier life are ignored.
    epoch: u64,
    last_role: Option<(Role, Term)>,
    /// First index of the node's last synced group commit (the entries its latest fsync made
    /// durable), kept across crashes like the disk: what the residual window can lose.
    last_group: Option<Index>,
}

impl SimNode {
    /// The node's disk, whether it is up (owned by its core) or down.
    fn disk(&self) -> &SimDisk {
        match &self.raft {
            Some(raft) => raft.storage(),
            None => self.down_disk.as_ref().expect("a down node has its disk"),
        }
    }
}

/// A running simulation.
pub struct Simulator<'t> {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    steps: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    links: Links,
    checker: Checker,
    faults_on: bool,
    /// `(node, index, term)` → proposal id, for proposals awaiting their acknowledgement.
    proposals: HashMap<(usize, Index, Term), (u64, u64)>,
    /// Highest acceptance number (1-based, in order of acceptance) of an acknowledged proposal.
    acked_seq_max: u64,
    proposals_accepted: u64,
    /// Read id → highest acknowledged index when the read was issued (linearizability bound).
    reads: HashMap<u64, Index>,
    reads_confirmed: u64,
    crashes: u64,
    snapshots_taken: u64,
    snapshots_installed: u64,
    membership_changes: u64,
    lease_reads: u64,
    client_target: usize,
    /// The node the reading client asks.
    reader_target: usize,
    /// The clients' own random stream (their retries do not disturb the main stream's draws).
    client_rng: ChaCha8Rng,
    /// The forger's own stream.
    forge_rng: ChaCha8Rng,
    /// The disk damage's own stream.
    damage_rng: ChaCha8Rng,
    /// The silent loss's own stream.
    silent_rng: ChaCha8Rng,
    tails_damaged: u64,
    hard_states_lost: u64,
    silent_losses: u64,
    repairs: u64,
    /// A forged message is being stepped: its refusal is expected.
    forging: bool,
    forged: u64,
    refused: u64,
    trace: Option<&'t mut dyn FnMut(&str)>,
}

/// Runs one simulation without a trace.
pub fn run(cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    Simulator::new(cfg.clone(), None).run()
}

/// Runs one simulation, passing each line of a readable trace to `trace`.
pub fn run_traced(cfg: &SimConfig, trace: &mut dyn FnMut(&str)) -> Result<SimReport, SimFailure> {
    Simulator::new(cfg.clone(), Some(trace)).run()
}

impl<'t> Simulator<'t> {
    fn new(cfg: SimConfig, trace: Option<&'t mut dyn FnMut(&str)>) -> Self {
        assert!(
            cfg.nodes >= 1 && cfg.nodes <= 9,
            "cluster size {} out of range",
            cfg.nodes
        );
        let total = cfg.nodes + cfg.spare_nodes;
        // Clock rates come from their own stream, so runs without drift are unchanged.
        let mut clock_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xc10c_0000_0000_0000);
        let spread = if cfg.lease_read {
            u64::from(cfg.clock_drift_per_mille) / 30
        } else {
            0
        };
        let nodes = (0..total)
            .map(|i| {
                let raft = Raft::new(
                    cfg.node_config(i),
                    Default::default(),
                    0,
                    SimDisk::default(),
                )
                .expect("valid config");
                (raft.membership().clone(), raft)
            })
            .map(|(membership, raft)| SimNode {
                raft: Some(raft),
                down_disk: None,
                membership,
                state: SimStateMachine::default(),
                incoming: Vec::new(),
                clock_rate: TICK_UNITS - spread + clock_rng.gen_range(0..=2 * spread),
                clock: 0,
                epoch: 0,
                last_role: None,
                last_group: None,
            })
            .collect();
        Simulator {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            now: 0,
            seq: 0,
            steps: 0,
            queue: BinaryHeap::new(),
            nodes,
            links: Links::new(total),
            checker: Checker::default(),
            faults_on: true,
            proposals: HashMap::new(),
            acked_seq_max: 0,
            proposals_accepted: 0,
            reads: HashMap::new(),
            reads_confirmed: 0,
            crashes: 0,
            snapshots_taken: 0,
            snapshots_installed: 0,
            membership_changes: 0,
            lease_reads: 0,
            client_target: 0,
            reader_target: 0,
            client_rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xc1e7_0000_0000_0000),
            forge_rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xf0e6_0000_0000_0000),
            damage_rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xda3a_0000_0000_0000),
            silent_rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5113_0000_0000_0000),
            tails_damaged: 0,
            hard_states_lost: 0,
            silent_losses: 0,
            repairs: 0,
            forging: false,
            forged: 0,
            refused: 0,
            trace,
            cfg,
        }
    }

    fn run(mut self) -> Result<SimReport, SimFailure> {
        // A panic anywhere (a node's invariant, or the simulator's own) is a failure of this
        // seed like any other: reported with its seed, not unwinding through the caller.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_checked()));
        let result = outcome.unwrap_or_else(|payload| {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-text panic".into());
            Err(Violation {
                property: Property::Panic,
                detail: text,
            })
        });
        result.map_err(|violation| SimFailure {
            seed: self.cfg.seed,
            tick: self.now / TICK_UNITS,
            step: self.steps,
            violation,
        })
    }

    fn run_checked(&mut self) -> Result<SimReport, Violation> {
        self.schedule(0, Event::Tick);
        let fault_end = self.cfg.fault_ticks * TICK_UNITS;
        while self.queue.peek().is_some_and(|Reverse(s)| s.at < fault_end) {
            self.step()?;
        }
        // Faults stop: heal the network, restart every crashed node.
        self.faults_on = false;
        self.links.heal();
        self.log(|| "faults stop: network healed, crashed nodes restart".into());
        for node in 0..self.nodes.len() {
            if self.nodes[node].raft.is_none() {
                self.restart(node)?;
            }
        }
        let heal_recovery_ticks = self.await_leader_commit(0)?;
        self.await_repairs()?;
        self.await_caught_up()?;
        let heal_ack_ticks = if self.cfg.faults.forge_per_mille > 0 {
            self.await_new_ack()?
        } else {
            0
        };
        // Leader loss: kill the stable leader, measure the time to a new one committing.
        let (old, old_term) = self.stable_leader().expect("awaited above");
        self.crash(old);
        let leader_loss_recovery_ticks = self.await_leader_commit(old_term + 1)?;
        self.restart(old)?;
        let (leader, _) = self.stable_leader().expect("awaited above");
        self.checker
            .holds_all_acked(self.nodes[leader].raft.as_ref().expect("leader is up"))?;
        Ok(SimReport {
            seed: self.cfg.seed,
            steps: self.steps,
            ticks: self.now / TICK_UNITS,
            proposals: self.proposals_accepted,
            acked: self.checker.acked_count(),
            committed_max: self.checker.committed_max(),
            reads_confirmed: self.reads_confirmed,
            crashes: self.crashes,
            snapshots_taken: self.snapshots_taken,
            snapshots_installed: self.snapshots_installed,
            membership_changes: self.membership_changes,
            lease_reads: self.lease_reads,
            heal_recovery_ticks,
            leader_loss_recovery_ticks,
            forged: self.forged,
            refused: self.refused,
            heal_ack_ticks,
            tails_damaged: self.tails_damaged,
            hard_states_lost: self.hard_states_lost,
            silent_losses: self.silent_losses,
            repairs: self.repairs,
        })
    }

    /// Steps until no member of the stable leader's configuration has a repair pending (each
    /// damaged node re-fetched what it lost from a leader), or a liveness violation past
    /// `recovery_ticks_max`. The leader-loss check that follows needs every voter able to vote.
    /// A damaged node outside the configuration hears from no leader; it is repaired once
    /// added again.
    fn await_repairs(&mut self) -> Result<(), Violation> {
        self.await_nodes("await the repair of their damaged logs", |sim| {
            let members = sim
                .stable_leader()
                .and_then(|(l, _)| sim.nodes[l].raft.as_ref())
                .map(|r| r.membership().clone());
            (0..sim.nodes.len())
                .filter(|&n| sim.nodes[n].disk().repair_through().is_some())
                .filter(|&n| members.as_ref().is_none_or(|m| m.contains(n as NodeId + 1)))
                .collect()
        })
    }

    /// Steps until every member of the stable leader's configuration durably holds the commit
    /// index of when a stable leader is first seen, or a liveness violation past
    /// `recovery_ticks_max`: a follower its leader never brings up to date (the message storm
    /// of a match the follower lost unnoticed, replicator/DRIVER.md) fails here.
    fn await_caught_up(&mut self) -> Result<(), Violation> {
        let mut target = None;
        self.await_nodes("durably hold less than the commit index", move |sim| {
            let Some(raft) = sim
                .stable_leader()
                .and_then(|(l, _)| sim.nodes[l].raft.as_ref())
            else {
                return (0..sim.nodes.len()).collect();
            };
            let target = *target.get_or_insert(raft.commit_index());
            let members = raft.membership();
            (0..sim.nodes.len())
                .filter(|&n| members.contains(n as NodeId + 1))
                .filter(|&n| sim.nodes[n].disk().last().0 < target)
                .collect()
        })
    }

    /// Steps until `waiting` names no node, or a liveness violation (the nodes it names still
    /// `what`) past `recovery_ticks_max`.
    fn await_nodes(
        &mut self,
        what: &str,
        mut waiting: impl FnMut(&Self) -> Vec<usize>,
    ) -> Result<(), Violation> {
        let deadline = self.now + self.cfg.recovery_ticks_max * TICK_UNITS;
        loop {
            let nodes = waiting(self);
            if nodes.is_empty() {
                return Ok(());
            }
            if self.now > deadline {
                return Err(Violation {
                    property: Property::Liveness,
                    detail: format!(
                        "nodes {:?} still {what} {} ticks on",
                        nodes.iter().map(|n| n + 1).collect::<Vec<_>>(),
                        self.cfg.recovery_ticks_max
                    ),
                });
            }
            self.step()?;
        }
    }

    /// Steps until a proposal accepted from now on is acknowledged to its client; returns the
    /// ticks it took, or a liveness violation past `recovery_ticks_max`.
    fn await_new_ack(&mut self) -> Result<u64, Violation> {
        let start = self.now;
        let deadline = start + self.cfg.recovery_ticks_max * TICK_UNITS;
        let proposed_before = self.proposals_accepted;
        loop {
            if self.acked_seq_max > proposed_before {
                return Ok((self.now - start).div_ceil(TICK_UNITS));
            }
            if self.now > deadline {
                return Err(Violation {
                    property: Property::Liveness,
                    detail: format!(
                        "no new proposal acknowledged within {} ticks of the faults stopping",
                        self.cfg.recovery_ticks_max
                    ),
                });
            }
            self.step()?;
        }
    }

    /// Steps until some leader of a term >= `term_min` has committed an entry of its own term;
    /// returns the ticks it took, or a liveness violation past the bound.
    fn await_leader_commit(&mut self, term_min: Term) -> Result<u64, Violation> {
        let start = self.now;
        let deadline = start + self.cfg.recovery_ticks_max * TICK_UNITS;
        loop {
            if let Some((_, term)) = self.stable_leader() {
                if term >= term_min {
                    return Ok((self.now - start).div_ceil(TICK_UNITS));
                }
            }
            if self.now > deadline {
                return Err(Violation {
                    property: Property::Liveness,
                    detail: format!(
                        "no leader of term >= {term_min} committed within {} ticks of the faults stopping",
                        self.cfg.recovery_ticks_max
                    ),
                });
            }
            self.step()?;
        }
    }

    /// The highest-term leader that has committed an entry of its own term.
    fn stable_leader(&self) -> Option<(usize, Term)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.raft.as_ref().map(|r| (i, r)))
            .filter(|(_, r)| {
                r.role() == Role::Leader && r.term_at(r.commit_index()) == Some(r.term())
            })
            .map(|(i, r)| (i, r.term()))
            .max_by_key(|&(_, t)| t)
    }

    fn step(&mut self) -> Result<(), Violation> {
        if self.queue.len() > EVENTS_PENDING_MAX {
            return Err(Violation {
                property: Property::MessageStorm,
                detail: format!("{} events pending", self.queue.len()),
            });
        }
        let Reverse(next) = self
            .queue
            .pop()
            .expect("the tick event is always scheduled");
        assert!(next.at >= self.now, "time went back");
        self.now = next.at;
        self.steps += 1;
        match next.event {
            Event::Tick => self.tick()?,
            Event::Deliver(msg) => {
                let (from, to) = (msg.from as usize - 1, msg.to as usize - 1);
                if !self.links.connected(from, to) {
                    self.log(|| format!("cut  {msg}"));
                } else if self.nodes[to].raft.is_some() {
                    self.log(|| format!("recv {msg}"));
                    self.nodes[to]
                        .raft
                        .as_mut()
                        .expect("checked above")
                        .step(msg);
                    self.drain(to)?;
                }
            }
            Event::FsyncDone { node, epoch } => {
                if self.nodes[node].epoch == epoch {
                    self.fsync_done(node)?;
                }
            }
            Event::Crash { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.faults_on {
                    self.crash(node);
                }
            }
            Event::Restart { node } => {
                if self.nodes[node].raft.is_none() {
                    self.restart(node)?;
                }
            }
        }
        Ok(())
    }

    /// Completes `node`'s fsync, checks the disk lost no committed entry, and reports what
    /// became durable to the core.
    fn fsync_done(&mut self, node: usize) -> Result<(), Violation> {
        let id = node as u64 + 1;
        let raft = self.nodes[node].raft.as_mut().expect("same epoch means up");
        let watched = raft.storage().last().0.min(self.checker.committed_max());
        let held_before = self
            .checker
            .committed_term(watched)
            .is_some_and(|t| raft.storage().holds(watched, t));
        let synced = raft.storage_mut().complete_fsync();
        self.checker
            .durable_change(id, watched, held_before, raft.storage())?;
        self.log(|| format!("n{id} fsync done {synced:?}"));
        let sn = &mut self.nodes[node];
        if synced.log.is_some() || synced.installed.is_some() {
            sn.last_group = synced.group_from;
        }
        let raft = sn.raft.as_mut().expect("same epoch means up");
        if let Some(hs) = synced.hard_state {
            raft.hard_state_durable(hs);
        }
        if let Some((index, term)) = synced.log {
            raft.log_durable(index, term);
        }
        if let Some(meta) = synced.installed {
            let snapshot = raft.storage().snapshot().expect("just installed");
            let (state, _) = SimStateMachine::from_snapshot(&snapshot.data);
            self.checker.snapshot(id, &meta, &state)?;
            sn.state = state;
            raft.snapshot_installed(&meta);
            self.snapshots_installed += 1;
            self.log(|| format!("n{id} installed snapshot ({},t{})", meta.index, meta.term));
        }
        self.drain(node)
    }

    /// Maybe snapshots `node`'s state machine and compacts its log, keeping a few entries.
    fn maybe_snapshot(&mut self, node: usize) -> Result<(), Violation> {
        if !self.per_mille(self.cfg.snapshot_per_mille) {
            return Ok(());
        }
        let sn = &self.nodes[node];
        let Some(raft) = sn.raft.as_ref() else {
            return Ok(());
        };
        let state = sn.state;
        assert_eq!(state.applied, raft.applied_index(), "drained before");
        let latest = raft.storage().snapshot().map_or(0, |s| s.meta.index);
        if state.applied <= latest {
            return Ok(());
        }
        let term = raft
            .term_at(state.applied)
            .expect("applied entries are readable");
        let meta = SnapshotMeta {
            index: state.applied,
            term,
            membership: raft.applied_membership().clone(),
        };
        let id = node as u64 + 1;
        self.checker.snapshot(id, &meta, &state)?;
        let padding = self.rng.gen_range(0..=self.cfg.snapshot_padding_bytes_max);
        let kept = self.rng.gen_range(0..=8);
        let compact_to = (state.applied + 1).saturating_sub(kept).max(1);
        let data = Arc::from(state.snapshot_bytes(term, padding));
        self.log(|| {
            format!(
                "n{id} snapshots ({},t{term}), compacts below {compact_to}",
                meta.index
            )
        });
        let raft = self.nodes[node].raft.as_mut().expect("checked above");
        raft.storage_mut()
            .write_snapshot(SimSnapshot { meta, data }, compact_to);
        self.snapshots_taken += 1;
        self.drain(node)
    }

    fn tick(&mut self) -> Result<(), Violation> {
        self.schedule(TICK_UNITS, Event::Tick);
        if self.faults_on {
            self.inject_faults()?;
            if self.cfg.faults.forge_per_mille > 0 {
                for node in 0..self.nodes.len() {
                    let rate = self.cfg.faults.forge_per_mille;
                    if self.forge_rng.gen_range(0..1000) < rate {
                        self.forge(node)?;
                    }
                }
            }
        }
        for _ in 0..self.rng.gen_range(0..=self.cfg.proposals_per_tick_max) {
            self.propose()?;
        }
        if self.client_rng.gen_ratio(1, 20) {
            // The writer times out (its leader may be cut off) and retries elsewhere.
            self.client_target = self.client_rng.gen_range(0..self.nodes.len());
        }
        self.read()?;
        for node in 0..self.nodes.len() {
            let sn = &mut self.nodes[node];
            sn.clock += sn.clock_rate;
            let ticks = sn.clock / TICK_UNITS;
            sn.clock %= TICK_UNITS;
            if self.nodes[node].raft.is_none() {
                continue;
            }
            for _ in 0..ticks {
                let raft = self.nodes[node].raft.as_mut().expect("checked above");
                raft.tick(&mut self.rng);
                self.drain(node)?;
            }
            self.maybe_snapshot(node)?;
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Result<(), Violation> {
        let f = self.cfg.faults.clone();
        let mut pending_drain = None;
        let n = self.nodes.len();
        if self.links.is_healed() {
            if self.per_mille(f.partition_per_mille) {
                match self.rng.gen_range(0..4) {
                    0 => self.links.split(&mut self.rng),
                    1 => {
                        let node = self.rng.gen_range(0..n);
                        self.links.isolate(node)
                    }
                    2 => {
                        if let Some(leader) = self.leader() {
                            self.links.isolate(leader)
                        }
                    }
                    _ => self.links.cut_one_way(&mut self.rng),
                }
                let shape = self.links.describe();
                self.log(|| format!("partition: {shape}"));
            }
        } else if self.per_mille(f.heal_per_mille) {
            self.links.heal();
            self.log(|| "partition healed".into());
        }
        if self.per_mille(f.transfer_per_mille) {
            if let Some(leader) = self.leader() {
                let raft = self.nodes[leader].raft.as_ref().expect("leader is up");
                let others: Vec<NodeId> = raft
                    .membership()
                    .voters
                    .iter()
                    .copied()
                    .filter(|&v| v != raft.id())
                    .collect();
                if !others.is_empty() {
                    let to = others[self.rng.gen_range(0..others.len())];
                    let raft = self.nodes[leader].raft.as_mut().expect("leader is up");
                    let outcome = raft.transfer_leadership(to);
                    self.log(|| {
                        format!(
                            "n{} asked to hand leadership to n{to}: {outcome:?}",
                            leader + 1
                        )
                    });
                    pending_drain = Some(leader);
                }
            }
        }
        if self.per_mille(f.membership_per_mille) {
            if let Some(leader) = self.leader() {
                self.change_membership(leader);
                pending_drain = Some(leader);
            }
        }
        if self.per_mille(f.crash_per_mille) {
            let node = self.rng.gen_range(0..n);
            if self.nodes[node].raft.is_some() {
                self.crash(node);
            }
        }
        if self.per_mille(f.crash_leader_per_mille) {
            if let Some(leader) = self.leader() {
                self.crash(leader);
            }
        }
        match pending_drain {
            Some(node) => self.drain(node),
            None => Ok(()),
        }
    }

    /// Steps a forged or corrupted message into `node` (if up), built from what the node knows
    /// right now so that each one contradicts it detectably, or is sane noise Raft tolerates.
    ///
    /// Not forged, because no check without authentication can tell them from the real thing
    /// and Raft is not Byzantine-tolerant: messages from the leader a node follows that are
    /// plausible (entries, a heartbeat's commit, a snapshot), vote grants, and
    /// acknowledgements of entries the leader did send. Everything else is fair game.
    fn forge(&mut self, node: usize) -> Result<(), Violation> {
        use crate::message::{AppendReject, Entry, EntryKind, MessageBody};
        use crate::progress::ProgressState;
        use crate::refusal::{TERM_JUMP_MAX, TERM_MAX};
        let Some(raft) = self.nodes[node].raft.as_ref() else {
            return Ok(());
        };
        let total = self.nodes.len() as NodeId;
        let to = node as NodeId + 1;
        let r = &mut self.forge_rng;
        let (term, last, leader, role) =
            (raft.term(), raft.last_index(), raft.leader(), raft.role());
        let last_term = raft.term_at(last).unwrap_or(0);
        // Some other node (there are at least three).
        let other = |r: &mut ChaCha8Rng, not: &[NodeId]| loop {
            let id = r.gen_range(1..=total);
            if id != to && !not.contains(&id) {
                break id;
            }
        };
        let wild_term = |r: &mut ChaCha8Rng| match r.gen_range(0..4) {
            0 => u64::MAX - r.gen_range(0..3),
            1 => r.gen_range(TERM_MAX + 1..=u64::MAX),
            2 => term.saturating_add(TERM_JUMP_MAX + 1 + r.gen_range(0..1 << 20)),
            _ => TERM_MAX + 1,
        };
        let wild = |r: &mut ChaCha8Rng| match r.gen_range(0..3) {
            0 => u64::MAX - r.gen_range(0..3),
            1 => r.gen::<u64>(),
            _ => r.gen_range(0..1 << 20),
        };
        let msg = |from: NodeId, term: Term, body: MessageBody| Message {
            from,
            to,
            term,
            body,
        };
        let entries = |r: &mut ChaCha8Rng, from: Index, term: Term| -> Vec<Entry> {
            (from..from + r.gen_range(0..3))
                .map(|index| Entry {
                    term,
                    index,
                    kind: EntryKind::Command,
                    payload: Arc::from(&b"forged!!"[..]),
                })
                .collect()
        };
        let forged = match r.gen_range(0..12) {
            // Any message with a term no real cluster reaches.
            0 => {
                let from = other(r, &[]);
                let t = wild_term(r);
                let body = match r.gen_range(0..5) {
                    0 => MessageBody::AppendEntriesResponse {
                        result: Ok(wild(r)),
                    },
                    1 => MessageBody::RequestVote {
                        last_index: wild(r),
                        last_term: t,
                        transfer: r.gen(),
                    },
                    2 => MessageBody::PreVote {
                        last_index: wild(r),
                        last_term: t,
                    },
                    3 => MessageBody::Heartbeat {
                        commit: wild(r),
                        read_seq: wild(r),
                    },
                    _ => MessageBody::TimeoutNow,
                };
                msg(from, t, body)
            }
            // A leader hears acks beyond its log, or beyond what it sent that follower.
            1 | 2 if role == Role::Leader => {
                let peers: Vec<(NodeId, Index, Index)> = (1..=total)
                    .filter_map(|p| raft.progress(p).map(|pr| (p, pr.sent_max, pr.match_index)))
                    .collect();
                if peers.is_empty() {
                    return Ok(());
                }
                let (from, sent, _) = peers[r.gen_range(0..peers.len())];
                let index = if sent < last && r.gen_bool(0.5) {
                    r.gen_range(sent + 1..=last)
                } else {
                    last.saturating_add(1 + wild(r) % (1 << 40))
                };
                msg(
                    from,
                    term,
                    MessageBody::AppendEntriesResponse { result: Ok(index) },
                )
            }
            // A leader hears a rejection no follower computes, an echo of a heartbeat round
            // it never sent, or a snapshot acknowledgement beyond the snapshot's end.
            3 if role == Role::Leader => {
                let from = other(r, &[]);
                let body = match r.gen_range(0..5) {
                    0 => MessageBody::AppendEntriesResponse {
                        result: Err(AppendReject {
                            rejected_prev_index: last + 1 + r.gen_range(0..1 << 30),
                            hint_term: None,
                            hint_index: r.gen_range(0..=last),
                            log_lost: false,
                        }),
                    },
                    1 => {
                        let prev = r.gen_range(0..=last);
                        MessageBody::AppendEntriesResponse {
                            result: Err(AppendReject {
                                rejected_prev_index: prev,
                                hint_term: None,
                                hint_index: prev + 1 + r.gen_range(0..1 << 30),
                                log_lost: false,
                            }),
                        }
                    }
                    2 => {
                        let prev = r.gen_range(0..=last);
                        MessageBody::AppendEntriesResponse {
                            result: Err(AppendReject {
                                rejected_prev_index: prev,
                                hint_term: Some(term + 1 + r.gen_range(0..1 << 30)),
                                hint_index: r.gen_range(0..=prev),
                                log_lost: false,
                            }),
                        }
                    }
                    3 => MessageBody::HeartbeatResponse {
                        read_seq: u64::MAX - r.gen_range(0..1 << 20),
                    },
                    _ => match raft.progress(from).and_then(|p| {
                        (p.state == ProgressState::Snapshot)
                            .then_some(p.snapshot.as_ref())
                            .flatten()
                            .and_then(|t| t.size.map(|size| (t.meta.index, size)))
                    }) {
                        Some((index, size)) => MessageBody::InstallSnapshotResponse {
                            index,
                            received: size + 1 + r.gen_range(0..1 << 20),
                        },
                        None => return Ok(()),
                    },
                };
                msg(from, term, body)
            }
            // A follower that knows its leader hears from another node claiming leadership
            // of the same term, with a wild commit index, or asking it to campaign.
            4..=6 if leader.is_some_and(|l| l != to) => {
                let l = leader.expect("checked");
                let from = other(r, &[l]);
                let body = match r.gen_range(0..4) {
                    0 => MessageBody::AppendEntries {
                        prev_index: last,
                        prev_term: last_term,
                        entries: entries(r, last + 1, term),
                        commit: wild(r),
                    },
                    1 => MessageBody::Heartbeat {
                        commit: r.gen_range(0..=last),
                        read_seq: wild(r),
                    },
                    2 => MessageBody::InstallSnapshot {
                        meta: SnapshotMeta {
                            index: last + r.gen_range(1..100),
                            term,
                            membership: raft.membership().clone(),
                        },
                        offset: 0,
                        data: Arc::from(&b"forged snapshot"[..]),
                        done: true,
                    },
                    _ => MessageBody::TimeoutNow,
                };
                msg(from, term, body)
            }
            // The leader it follows (or anyone) seems to send nonsense: entries that are not
            // consecutive, of a future term, or at an index that overflows. (A heartbeat
            // commit beyond its log is not nonsense: the node lost entries it acknowledged,
            // and tells the leader.)
            7 if leader.is_some_and(|l| l != to) => {
                let l = leader.expect("checked");
                let body = match r.gen_range(0..3) {
                    0 => {
                        let mut es = entries(r, last + 1, term);
                        es.push(Entry {
                            // Beyond what the (at most two) entries before it reach.
                            index: last + 10 + r.gen_range(0..100),
                            ..es.first().cloned().unwrap_or(Entry {
                                term,
                                index: 0,
                                kind: EntryKind::Noop,
                                payload: Arc::from(&[][..]),
                            })
                        });
                        MessageBody::AppendEntries {
                            prev_index: last,
                            prev_term: last_term,
                            entries: es,
                            commit: wild(r),
                        }
                    }
                    1 => MessageBody::AppendEntries {
                        prev_index: last,
                        prev_term: last_term,
                        entries: vec![Entry {
                            term: term + 1 + r.gen_range(0..100),
                            index: last + 1,
                            kind: EntryKind::Command,
                            payload: Arc::from(&b"forged!!"[..]),
                        }],
                        commit: wild(r),
                    },
                    // An entry whose index wrapped around after prev_index = u64::MAX.
                    _ => MessageBody::AppendEntries {
                        prev_index: u64::MAX,
                        prev_term: last_term,
                        entries: vec![Entry {
                            term,
                            index: 0,
                            kind: EntryKind::Command,
                            payload: Arc::from(&b"forged!!"[..]),
                        }],
                        commit: wild(r),
                    },
                };
                msg(l, term, body)
            }
            // A leader hears from another node claiming to lead its term.
            8 if role == Role::Leader => {
                let from = other(r, &[]);
                let body = match r.gen_range(0..3) {
                    0 => MessageBody::AppendEntries {
                        prev_index: last,
                        prev_term: last_term,
                        entries: entries(r, last + 1, term),
                        commit: wild(r),
                    },
                    1 => MessageBody::Heartbeat {
                        commit: wild(r),
                        read_seq: 0,
                    },
                    _ => MessageBody::TimeoutNow,
                };
                msg(from, term, body)
            }
            // A TimeoutNow of a newer term, which no leader sends; or of ours, from someone
            // (obeyed only from the leader this node follows, and it is not that one).
            9 => {
                let from = other(r, &leader.into_iter().collect::<Vec<_>>());
                let t = if r.gen_bool(0.5) {
                    term
                } else {
                    term + r.gen_range(1..4)
                };
                msg(from, t, MessageBody::TimeoutNow)
            }
            // Bad addressing.
            10 => {
                let from = if r.gen_bool(0.5) { 0 } else { to };
                let mut m = msg(from, term, MessageBody::TimeoutNow);
                if r.gen_bool(0.3) {
                    m.from = other(r, &[]);
                    m.to = other(r, &[]);
                }
                m
            }
            // Sane noise: a pre-vote, a vote request of a log no node is behind, or a higher
            // term in a response (Raft tolerates all of these; they cause elections).
            11 => {
                let from = other(r, &[]);
                let t = term + r.gen_range(1..=2);
                let body = match r.gen_range(0..3) {
                    0 => MessageBody::PreVote {
                        last_index: r.gen_range(0..=last + 5),
                        last_term: r.gen_range(0..=t),
                    },
                    1 => MessageBody::RequestVote {
                        last_index: 0,
                        last_term: 0,
                        transfer: false,
                    },
                    _ => MessageBody::AppendEntriesResponse {
                        result: Ok(r.gen_range(0..=last)),
                    },
                };
                msg(from, t, body)
            }
            _ => return Ok(()),
        };
        self.forged += 1;
        self.log(|| format!("forge {forged}"));
        self.forging = true;
        let raft = self.nodes[node].raft.as_mut().expect("checked above");
        raft.step(forged);
        let drained = self.drain(node);
        self.forging = false;
        drained
    }

    /// Asks the leader for a random membership change; refusals are part of the test.
    fn change_membership(&mut self, leader: usize) {
        let raft = self.nodes[leader].raft.as_ref().expect("leader is up");
        let m = raft.membership().clone();
        let all: Vec<NodeId> = (1..=self.nodes.len() as NodeId).collect();
        let pool: Vec<NodeId> = match self.rng.gen_range(0..3) {
            0 => all.iter().copied().filter(|&id| !m.contains(id)).collect(),
            1 => m.learners.clone(),
            _ if m.voters.len() > 3 => m.members().collect(),
            _ => m.learners.clone(),
        };
        if pool.is_empty() {
            return;
        }
        let id = pool[self.rng.gen_range(0..pool.len())];
        let change = if !m.contains(id) {
            MembershipChange::AddLearner(id, Default::default())
        } else if m.learners.contains(&id) && self.rng.gen_bool(0.7) {
            MembershipChange::PromoteLearner(id)
        } else {
            MembershipChange::Remove(id)
        };
        let raft = self.nodes[leader].raft.as_mut().expect("leader is up");
        let outcome = raft.propose_membership(change.clone());
        if outcome.is_ok() {
            self.membership_changes += 1;
        }
        self.log(|| format!("n{} asked to {change:?}: {outcome:?}", leader + 1));
    }

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .max_by_key(|(_, n)| n.raft.as_ref().map(|r| r.term()))
            .map(|(i, _)| i)
    }

    fn propose(&mut self) -> Result<(), Violation> {
        let target = self.client_target;
        let Some(raft) = self.nodes[target].raft.as_mut() else {
            self.client_target = self.rng.gen_range(0..self.nodes.len());
            return Ok(());
        };
        let id = self.rng.gen::<u64>() | 1;
        let len = self.rng.gen_range(8..=self.cfg.payload_bytes_max.max(8)) as usize;
        let mut payload = vec![0u8; len];
        payload[..8].copy_from_slice(&id.to_le_bytes());
        match raft.propose(Arc::from(payload)) {
            Ok((term, index)) => {
                self.proposals_accepted += 1;
                self.proposals
                    .insert((target, index, term), (id, self.proposals_accepted));
                self.log(|| {
                    format!(
                        "n{} accepts proposal {id:#x} at ({index},t{term})",
                        target + 1
                    )
                });
                self.drain(target)?;
            }
            Err(ProposeError::NotLeader { leader: Some(l) }) => self.client_target = l as usize - 1,
            Err(_) => self.client_target = self.rng.gen_range(0..self.nodes.len()),
        }
        Ok(())
    }

    /// A reading client, independent of the writing one, asks the node it believes leads for a
    /// linearizable read (so a deposed leader that does not know it yet gets asked too).
    fn read(&mut self) -> Result<(), Violation> {
        let target = self.reader_target;
        let Some(raft) = self.nodes[target].raft.as_mut() else {
            self.reader_target = self.client_rng.gen_range(0..self.nodes.len());
            return Ok(());
        };
        let ctx = self.rng.gen::<u64>();
        let from_lease = raft.lease_holds();
        match raft.read_index(ctx) {
            Ok(()) => {
                self.lease_reads += u64::from(from_lease);
                self.reads.insert(ctx, self.checker.acked_max());
                self.drain(target)?;
            }
            Err(ReadError::NotLeader { leader: Some(l) }) => self.reader_target = l as usize - 1,
            Err(ReadError::NotLeader { leader: None }) => {
                self.reader_target = self.client_rng.gen_range(0..self.nodes.len());
            }
            Err(_) => {}
        }
        Ok(())
    }

    /// Carries out everything the node's core asks for, then checks the properties.
    fn drain(&mut self, node: usize) -> Result<(), Violation> {
        loop {
            let Some(raft) = self.nodes[node].raft.as_mut() else {
                return Ok(());
            };
            let rd = raft.ready();
            if rd.is_empty() {
                break;
            }
            if let Some(failure) = raft.storage_failure() {
                panic!("n{}: simulated storage failed: {failure}", node + 1);
            }
            if let Some(hs) = rd.hard_state {
                raft.storage_mut().write_hard_state(hs);
            }

            if !rd.entries.is_empty() {
                self.checker.entries_written(raft, &rd.entries)?;
                raft.storage_mut().write_entries(rd.entries);
            }
            for msg in rd.messages {
                self.send(msg);
            }
            for rs in rd.read_states {
                let acked_before = self
                    .reads
                    .remove(&rs.ctx)
                    .expect("a read this simulator issued");
                self.reads_confirmed += 1;
                if rs.index < acked_before {
                    return Err(Violation {
                        property: Property::StaleRead,
                        detail: format!(
                            "n{} confirmed a read at index {} but index {acked_before} was acknowledged before it",
                            node + 1,
                            rs.index
                        ),
                    });
                }
            }
            for chunk in rd.snapshot_chunks {
                self.receive_snapshot_chunk(node, chunk);
            }
            for refusal in &rd.refused {
                self.refused += 1;
                self.log(|| format!("n{} {refusal}", node + 1));
                if !self.forging && self.cfg.mutation == Mutation::None {
                    return Err(Violation {
                        property: Property::RefusedLegitimate,
                        detail: format!("n{}: {refusal}", node + 1),
                    });
                }
            }
            if rd.repaired {
                // Persisted at once, as the node's hard-state save does.
                let raft = self.nodes[node]
                    .raft
                    .as_mut()
                    .expect("draining a node that is up");
                let through = raft.storage_mut().take_repair_through();
                self.repairs += 1;
                self.log(|| format!("n{} repaired (was suspect through {through:?})", node + 1));
            }
            if !rd.committed.is_empty() {
                self.checker.applied(node as u64 + 1, &rd.committed)?;
                for e in &rd.committed {
                    self.nodes[node].state.apply(e);
                    if let Some((id, seq)) = self.proposals.remove(&(node, e.index, e.term)) {
                        self.acked_seq_max = self.acked_seq_max.max(seq);
                        assert_eq!(
                            checker::digest(e).1,
                            id,
                            "the core applied a different entry"
                        );
                        self.checker.acknowledged(e);
                        self.log(|| {
                            format!(
                                "n{} acks proposal {id:#x} at ({},t{})",
                                node + 1,
                                e.index,
                                e.term
                            )
                        });
                    }
                }
            }
        }
        let raft = self.nodes[node].raft.as_mut().expect("drained above");
        if raft.storage_mut().start_fsync() {
            let duration = self.rng.gen_range(1..=self.cfg.faults.fsync_units_max);
            let epoch = self.nodes[node].epoch;
            self.schedule(duration, Event::FsyncDone { node, epoch });
            if self.faults_on && self.per_mille(self.cfg.faults.crash_syncing_per_mille) {
                let at = self.rng.gen_range(0..duration);
                self.schedule(at, Event::Crash { node, epoch });
            }
        }
        let raft = self.nodes[node].raft.as_ref().expect("drained above");
        if self.nodes[node].membership != *raft.membership() {
            self.nodes[node].membership = raft.membership().clone();
        }
        let raft = self.nodes[node].raft.as_ref().expect("drained above");
        let role = (raft.role(), raft.term());
        if self.nodes[node].last_role != Some(role) {
            self.nodes[node].last_role = Some(role);
            self.log(|| format!("n{} is {:?} in t{}", node + 1, role.0, role.1));
            if role.0 == Role::Leader
                && self.faults_on
                && self.per_mille(self.cfg.faults.crash_new_leader_per_mille)
            {
                let at = self.rng.gen_range(1..=2 * TICK_UNITS);
                let epoch = self.nodes[node].epoch;
                self.schedule(at, Event::Crash { node, epoch });
            }
        }
        let rafts: Vec<Option<&Raft<SimDisk>>> =
            self.nodes.iter().map(|n| n.raft.as_ref()).collect();
        let disks: Vec<&SimDisk> = self.nodes.iter().map(SimNode::disk).collect();
        let memberships: Vec<&Membership> = self.nodes.iter().map(|n| &n.membership).collect();
        self.checker.observe(node, &rafts, &disks, &memberships)
    }

    /// Collects a snapshot chunk; the last one queues the install on the disk.
    fn receive_snapshot_chunk(&mut self, node: usize, chunk: crate::raft::SnapshotChunk) {
        let sn = &mut self.nodes[node];
        if chunk.offset == 0 {
            sn.incoming.clear();
        }
        assert_eq!(
            sn.incoming.len() as u64,
            chunk.offset,
            "chunks arrive in order"
        );
        sn.incoming.extend_from_slice(&chunk.data);
        if chunk.done {
            let snapshot = SimSnapshot {
                meta: chunk.meta,
                data: Arc::from(std::mem::take(&mut sn.incoming)),
            };
            let raft = sn.raft.as_mut().expect("draining a node that is up");
            raft.storage_mut().write_install(snapshot);
        }
    }

    fn send(&mut self, msg: Message) {
        let f = &self.cfg.faults;
        let (drop, dup, slow) = (f.drop_per_mille, f.duplicate_per_mille, f.slow_per_mille);
        if self.faults_on && self.per_mille(drop) {
            self.log(|| format!("drop {msg}"));
            return;
        }
        let copies = if self.faults_on && self.per_mille(dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let latency = if self.faults_on && self.per_mille(slow) {
                self.rng.gen_range(1..=self.cfg.faults.slow_units_max)
            } else {
                self.rng.gen_range(1..=self.cfg.faults.latency_units_max)
            };
            self.schedule(latency, Event::Deliver(msg.clone()));
        }
    }

    fn crash(&mut self, node: usize) {
        assert!(
            self.nodes[node].raft.is_some(),
            "crashing a node that is down"
        );
        let mut disk = self.nodes[node]
            .raft
            .take()
            .expect("checked above")
            .into_storage();
        disk.crash();
        self.maybe_damage(node, &mut disk);
        self.nodes[node].down_disk = Some(disk);
        self.nodes[node].incoming.clear();
        self.nodes[node].epoch += 1;
        self.nodes[node].last_role = None;
        self.crashes += 1;
        self.log(|| format!("n{} crashes, unsynced writes lost", node + 1));
        if self.faults_on {
            let after = self.rng.gen_range(1..=self.cfg.faults.restart_units_max);
            self.schedule(after, Event::Restart { node });
        }
    }

    /// Maybe damages crashed `node`'s durable log: as its recovery finds (see
    /// [`FaultMix::damage_per_mille`]), or else as it cannot (see
    /// [`FaultMix::silent_loss_per_mille`]). A node lacking entries unnoticed takes no other
    /// damage, and while it lacks them no other node takes any.
    fn maybe_damage(&mut self, node: usize, disk: &mut SimDisk) {
        if !self.faults_on || disk.silently_lost().is_some() {
            return;
        }
        let damaged_elsewhere = (0..self.nodes.len()).filter(|&n| n != node).any(|n| {
            let other = self.nodes[n].disk();
            other.repair_through().is_some() || other.silently_lost().is_some()
        });
        if !self.maybe_damage_found(node, disk, damaged_elsewhere)
            && !damaged_elsewhere
            && disk.repair_through().is_none()
        {
            self.maybe_lose_silently(node, disk);
        }
    }

    /// Maybe damages the tail of crashed `node`'s durable log (see
    /// [`FaultMix::damage_per_mille`]), unless `damaged_elsewhere`; the recovery that finds it
    /// persists the index the log was durable through (the real log's markers) as the node's
    /// repair marker. True if it did.
    fn maybe_damage_found(
        &mut self,
        node: usize,
        disk: &mut SimDisk,
        damaged_elsewhere: bool,
    ) -> bool {
        let f = &self.cfg.faults;
        if f.damage_per_mille == 0 {
            return false;
        }
        let (rate, entries_max) = (f.damage_per_mille, f.damage_entries_max);
        let (anywhere_rate, hard_state_rate) =
            (f.damage_anywhere_per_mille, f.hard_state_loss_per_mille);
        let hit = self.damage_rng.gen_range(0..1000) < rate;
        let entries = self.damage_rng.gen_range(1..=entries_max.max(1));
        if !hit || damaged_elsewhere {
            return false;
        }
        let anywhere = self.damage_rng.gen_range(0..1000) < anywhere_rate;
        let hard_state_lost = self.damage_rng.gen_range(0..1000) < hard_state_rate;
        let entries = match anywhere {
            true => {
                let held = (disk.last().0 + 1).saturating_sub(crate::Storage::first_index(disk));
                self.damage_rng.gen_range(1..=held.max(1))
            }
            false => entries,
        };
        if let Some((first_lost, durable_through)) = disk.lose_tail(entries) {
            disk.set_repair_through(durable_through);
            self.tails_damaged += 1;
            self.log(|| {
                format!(
                    "n{}'s log damaged: entries {first_lost}..={durable_through} lost",
                    node + 1
                )
            });
            true
        } else if hard_state_lost {
            let last = disk.last().0;
            disk.lose_hard_state();
            disk.set_repair_through(last.max(1));
            self.hard_states_lost += 1;
            self.log(|| format!("n{}'s hard state lost (both slots)", node + 1));
            true
        } else {
            false
        }
    }

    /// Maybe makes crashed `node` lose its last synced group unnoticed (see
    /// [`FaultMix::silent_loss_per_mille`]), where every entry of it is durable on a quorum of
    /// the other voters of every configuration a node holds.
    fn maybe_lose_silently(&mut self, node: usize, disk: &mut SimDisk) {
        let rate = self.cfg.faults.silent_loss_per_mille;
        if rate == 0 || self.silent_rng.gen_range(0..1000) >= rate {
            return;
        }
        let Some(first) = self.nodes[node].last_group else {
            return;
        };
        let held_without = |e: &Entry, m: &Membership| {
            let others = m
                .voters
                .iter()
                .map(|&v| v as usize - 1)
                .filter(|&k| k != node);
            others
                .filter(|&k| self.nodes[k].disk().holds(e.index, e.term))
                .count()
                >= m.quorum()
        };
        let configs: Vec<&Membership> = self
            .nodes
            .iter()
            .map(|n| &n.membership)
            .filter(|m| !m.voters.is_empty())
            .collect();
        let harmless = disk
            .log()
            .iter()
            .filter(|e| e.index >= first)
            .all(|e| configs.iter().all(|m| held_without(e, m)));
        if !harmless {
            return;
        }
        if let Some((first_lost, last)) = disk.lose_tail_silently(first) {
            self.silent_losses += 1;
            self.log(|| {
                format!(
                    "n{}'s last synced group {first_lost}..={last} lost with its marker: recovery takes it for a torn write",
                    node + 1
                )
            });
        }
    }

    fn restart(&mut self, node: usize) -> Result<(), Violation> {
        let mut disk = self.nodes[node]
            .down_disk
            .take()
            .expect("a down node has its disk");
        let repair_through = if self.cfg.mutation == Mutation::CutAndCarryOn {
            // The old recovery: the cut looks like a torn write, nobody is told.
            disk.take_repair_through();
            None
        } else {
            disk.repair_through()
        };
        let cfg = self.cfg.node_config(node);
        let (hs, last) = (disk.hard_state(), disk.last().0);
        let state = match disk.snapshot() {
            Some(s) => SimStateMachine::from_snapshot(&s.data).0,
            None => SimStateMachine::default(),
        };
        self.nodes[node].state = state;
        let mut raft =
            Raft::new(cfg, hs, state.applied, disk).expect("valid config and readable disk");
        if let Some(index) = repair_through {
            raft.set_repair_through(index);
        }
        self.log(|| {
            format!(
                "n{} restarts with {hs:?}, log through {last}, state through {}, repair through {repair_through:?}",
                node + 1,
                state.applied
            )
        });
        self.nodes[node].raft = Some(raft);
        self.checker.node_restarted(node as u64 + 1);
        self.drain(node)
    }

    fn per_mille(&mut self, rate: u32) -> bool {
        rate > 0 && self.rng.gen_range(0..1000) < rate
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after,
            seq: self.seq,
            event,
        }));
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = self.trace.as_mut() {
            let text = format!(
                "{:>7}.{:02} {}",
                self.now / TICK_UNITS,
                self.now % TICK_UNITS,
                line()
            );
            trace(&text);
        }
    }
}
