//! Scenario tests of the Raft core, driven by hand: each proves one rule of the protocol.

mod support;

use std::sync::Arc;

use raftline_replicator::sim::disk::{SimDisk, SimSnapshot};
use raftline_replicator::{
    AppendReject, InitError, Membership, MembershipChange, MembershipError, ProgressState,
    ReadError, ReadState, SnapshotMeta, TransferError,
};

use support::{entry, persist_all, Node};

use raftline_replicator::{
    Config, ConfigError, Entry, HardState, Message, MessageBody, Mutation, ProposeError, Raft, Role,
};

fn config(id: u64, n: u64) -> Config {
    let mut cfg = Config::new(id, (1..=n).collect());
    cfg.pre_vote = false;
    cfg
}

fn node(cfg: Config, term: u64, entries: Vec<Entry>) -> Node {
    let hs = HardState { term, vote: None };
    Raft::new(cfg, hs, 0, SimDisk::with_durable(hs, entries)).expect("valid config")
}

/// More messages than any scenario here needs to settle: past it, the nodes are taken to
/// exchange messages without end (a message storm).
const SETTLE_MSGS_MAX: usize = 10_000;

/// Delivers messages with instant durability until the cluster is quiet (messages to nodes
/// not in `nodes` are lost) and returns how many were delivered; panics past
/// `SETTLE_MSGS_MAX`.
fn settle(nodes: &mut [Node]) -> usize {
    let mut inflight: Vec<Message> = Vec::new();
    for n in nodes.iter_mut() {
        let rd = n.ready();
        inflight.extend(persist_all(n, rd));
    }
    let mut delivered = 0;
    while !inflight.is_empty() {
        for msg in std::mem::take(&mut inflight) {
            let to = msg.to as usize - 1;
            if to >= nodes.len() {
                continue;
            }
            delivered += 1;
            assert!(
                delivered <= SETTLE_MSGS_MAX,
                "no quiet after {SETTLE_MSGS_MAX} messages, the last {msg:?}"
            );
            nodes[to].step(msg);
            let rd = nodes[to].ready();
            inflight.extend(persist_all(&mut nodes[to], rd));
        }
    }
    delivered
}

/// Node 1 of 3 campaigns, persists its self-vote and wins with node 2's grant.
fn elect_with_the_vote_of_node_2(raft: &mut Node) {
    raft.campaign();
    let rd = raft.ready();
    raft.hard_state_durable(rd.hard_state.expect("self-vote"));
    let term = raft.term();
    raft.step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::RequestVoteResponse { granted: true },
    });
    assert_eq!(raft.role(), Role::Leader);
}

fn cluster(n: u64) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=n).map(|id| node(config(id, n), 0, vec![])).collect();
    nodes[0].campaign();
    settle(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader);
    nodes
}

fn vote_request(from: u64, to: u64, term: u64, last_index: u64, last_term: u64) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::RequestVote {
            last_index,
            last_term,
            transfer: false,
        },
    }
}

#[test]
fn vote_grant_is_held_until_the_vote_is_durable() {
    let mut f = node(config(2, 3), 0, vec![]);
    f.step(vote_request(1, 2, 1, 0, 0));
    let rd = f.ready();
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1)
        })
    );
    assert!(
        rd.messages.is_empty(),
        "a grant left before the vote was durable: {:?}",
        rd.messages
    );
    f.hard_state_durable(HardState {
        term: 1,
        vote: Some(1),
    });
    let msgs = f.ready().messages;
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].body,
        MessageBody::RequestVoteResponse { granted: true }
    );
}

#[test]
fn vote_before_persist_mutation_sends_the_grant_early() {
    let mut cfg = config(2, 3);
    cfg.mutation = Mutation::VoteBeforePersist;
    let mut f = node(cfg, 0, vec![]);
    f.step(vote_request(1, 2, 1, 0, 0));
    assert_eq!(
        f.ready().messages.len(),
        1,
        "the mutation must skip the durability gate"
    );
}

#[test]
fn candidate_requests_votes_only_after_its_self_vote_is_durable() {
    let mut c = node(config(1, 3), 0, vec![]);
    c.campaign();
    assert_eq!(c.role(), Role::Candidate);
    let rd = c.ready();
    assert!(rd.messages.is_empty());
    c.hard_state_durable(rd.hard_state.expect("the self-vote must be persisted"));
    let msgs = c.ready().messages;
    assert_eq!(msgs.len(), 2);
    assert!(msgs
        .iter()
        .all(|m| matches!(m.body, MessageBody::RequestVote { .. }) && m.term == 1));
}

#[test]
fn vote_is_refused_to_a_candidate_with_a_less_up_to_date_log() {
    let mut f = node(config(2, 3), 1, vec![entry(1, 1), entry(2, 1)]);
    f.step(vote_request(1, 2, 2, 1, 1));
    let rd = f.ready();
    let msgs = persist_all(&mut f, rd);
    assert_eq!(
        msgs[0].body,
        MessageBody::RequestVoteResponse { granted: false }
    );
    assert_eq!(f.hard_state().vote, None);
}

#[test]
fn only_one_vote_is_granted_per_term() {
    let mut f = node(config(2, 3), 0, vec![]);
    f.step(vote_request(1, 2, 1, 0, 0));
    f.step(vote_request(3, 2, 1, 0, 0));
    let rd = f.ready();
    let msgs = persist_all(&mut f, rd);
    let grants: Vec<_> = msgs.iter().map(|m| (m.to, m.body.clone())).collect();
    assert_eq!(
        grants,
        vec![
            (1, MessageBody::RequestVoteResponse { granted: true }),
            (3, MessageBody::RequestVoteResponse { granted: false })
        ]
    );
}

#[test]
fn pre_candidate_keeps_its_term_and_asks_for_the_next() {
    let mut cfg = config(1, 3);
    cfg.pre_vote = true;
    let mut c = node(cfg, 4, vec![]);
    c.campaign();
    assert_eq!((c.role(), c.term()), (Role::PreCandidate, 4));
    let rd = c.ready();
    assert_eq!(rd.hard_state, None, "a pre-vote changes no durable state");
    assert!(rd
        .messages
        .iter()
        .all(|m| m.term == 5 && matches!(m.body, MessageBody::PreVote { .. })));
}

#[test]
fn follower_with_a_live_leader_ignores_a_disruptive_pre_vote() {
    let mut nodes = cluster(3);
    let mut f = nodes.remove(1);
    let pre_vote = Message {
        from: 3,
        to: 2,
        term: 5,
        body: MessageBody::PreVote {
            last_index: 9,
            last_term: 4,
        },
    };
    f.step(pre_vote);
    assert_eq!(f.term(), 1);
    assert!(f.ready().messages.is_empty());
}

/// Delivers messages among the live nodes (index = id - 1) until quiet; messages to or from a
/// node not in `live` are lost (a crashed node).
fn settle_live(nodes: &mut [Node], live: &[u64], mut inflight: Vec<Message>) {
    while !inflight.is_empty() {
        for msg in std::mem::take(&mut inflight) {
            if !live.contains(&msg.to) || !live.contains(&msg.from) {
                continue;
            }
            let to = msg.to as usize - 1;
            nodes[to].step(msg);
            let rd = nodes[to].ready();
            inflight.extend(persist_all(&mut nodes[to], rd));
        }
    }
}

/// Ticks node `id` once and delivers what that produces among the live nodes.
fn tick_live(nodes: &mut [Node], live: &[u64], id: u64, rng: &mut dyn rand::RngCore) {
    let n = &mut nodes[id as usize - 1];
    n.tick(rng);
    let rd = n.ready();
    let msgs = persist_all(n, rd);
    settle_live(nodes, live, msgs);
}

#[test]
fn pre_vote_ignored_inside_a_peers_lease_is_asked_again_before_either_timeout_runs_out() {
    // Pre-vote and check-quorum on (the defaults): leader 1 over followers 2 and 3.
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| node(Config::new(id, vec![1, 2, 3]), 0, vec![]))
        .collect();
    nodes[0].campaign();
    settle(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader);
    let cfg = nodes[1].config().clone();
    let (min, hb) = (cfg.election_ticks_min, cfg.heartbeat_ticks);
    // Node 2 draws the shortest timeout, node 3 the longest; node 1 crashes.
    let mut shortest = rand::rngs::mock::StepRng::new(0, 0);
    let span = cfg.election_ticks_max - min;
    let mut longest = rand::rngs::mock::StepRng::new(u64::from(span - 1), 0);
    let live = [2, 3];
    // Node 3 heard the leader's last message one tick after node 2 did.
    tick_live(&mut nodes, &live, 2, &mut shortest);
    for _ in 1..min {
        tick_live(&mut nodes, &live, 2, &mut shortest);
        tick_live(&mut nodes, &live, 3, &mut longest);
    }
    assert_eq!(nodes[1].role(), Role::PreCandidate, "node 2 timed out");
    assert_eq!(
        nodes[2].role(),
        Role::Follower,
        "node 3, still inside its lease, ignored the pre-vote"
    );
    // Within a heartbeat interval of node 3's lease ending node 2 asks again and wins —
    // long before its own next timeout (min ticks) or node 3's (about max ticks).
    for _ in 0..=hb {
        tick_live(&mut nodes, &live, 3, &mut longest);
        tick_live(&mut nodes, &live, 2, &mut shortest);
    }
    assert_eq!(nodes[1].role(), Role::Leader);
    assert_eq!(nodes[2].leader(), Some(2));
}

#[test]
fn follower_acknowledges_entries_only_once_durable() {
    let mut f = node(config(2, 3), 1, vec![]);
    let append = MessageBody::AppendEntries {
        prev_index: 0,
        prev_term: 0,
        entries: vec![entry(1, 1)],
        commit: 0,
    };
    f.step(Message {
        from: 1,
        to: 2,
        term: 1,
        body: append,
    });
    let rd = f.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(
        rd.messages.is_empty(),
        "acked before durable: {:?}",
        rd.messages
    );
    f.log_durable(1, 1);
    let msgs = f.ready().messages;
    assert_eq!(
        msgs[0].body,
        MessageBody::AppendEntriesResponse { result: Ok(1) }
    );
}

#[test]
fn leader_replicates_before_its_own_fsync_and_counts_itself_only_once_durable() {
    let mut nodes = cluster(3);
    let leader = &mut nodes[0];
    let (term, index) = leader
        .propose(Arc::from(&b"cmd"[..]))
        .expect("leader accepts");
    let rd = leader.ready();
    assert_eq!(rd.entries.last().map(|e| e.index), Some(index));
    assert_eq!(
        rd.messages.len(),
        2,
        "entries go out before the local write is durable"
    );
    // One follower's durable ack plus the leader's non-durable copy is not a quorum.
    leader.step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendEntriesResponse { result: Ok(index) },
    });
    assert!(leader.commit_index() < index);
    leader.log_durable(index, term);
    assert_eq!(leader.commit_index(), index);
}

/// Raft §5.4.2 (Figure 8): a new leader must not commit an entry of an earlier term by counting
/// replicas, only together with an entry of its own term.
fn figure_8_commit(mutation: Mutation) -> u64 {
    let mut cfg = config(1, 3);
    cfg.msg_bytes_max = 1;
    cfg.mutation = mutation;
    let mut l = node(cfg, 2, vec![entry(1, 1), entry(2, 1)]);
    elect_with_the_vote_of_node_2(&mut l);
    assert_eq!(l.term(), 3);
    let _ = l.ready(); // the no-op (3, t3) is handed out but not yet durable
    l.step(Message {
        from: 2,
        to: 1,
        term: 3,
        body: MessageBody::AppendEntriesResponse { result: Ok(2) },
    });
    l.commit_index()
}

#[test]
fn leader_does_not_commit_an_earlier_term_entry_by_counting_replicas() {
    assert_eq!(figure_8_commit(Mutation::None), 0);
    assert_eq!(
        figure_8_commit(Mutation::CommitPreviousTerm),
        2,
        "the mutation commits it"
    );
}

#[test]
fn rejection_hint_skips_back_a_whole_term() {
    let log = vec![
        entry(1, 1),
        entry(2, 1),
        entry(3, 2),
        entry(4, 2),
        entry(5, 2),
    ];
    let mut f = node(config(2, 3), 4, log);
    let probe = |prev_index, prev_term| Message {
        from: 1,
        to: 2,
        term: 4,
        body: MessageBody::AppendEntries {
            prev_index,
            prev_term,
            entries: vec![],
            commit: 0,
        },
    };
    f.step(probe(7, 3));
    f.step(probe(5, 3));
    let rejects: Vec<_> = f
        .ready()
        .messages
        .into_iter()
        .map(|m| match m.body {
            MessageBody::AppendEntriesResponse { result: Err(r) } => (r.hint_term, r.hint_index),
            other => panic!("expected a rejection, got {other:?}"),
        })
        .collect();
    assert_eq!(rejects, vec![(None, 6), (Some(2), 3)]);
}

#[test]
fn conflicting_suffix_is_replaced_and_its_durability_forgotten() {
    let mut f = node(config(2, 3), 2, vec![entry(1, 1), entry(2, 2), entry(3, 2)]);
    let append = MessageBody::AppendEntries {
        prev_index: 1,
        prev_term: 1,
        entries: vec![entry(2, 3)],
        commit: 0,
    };
    f.step(Message {
        from: 1,
        to: 2,
        term: 3,
        body: append,
    });
    assert_eq!(
        (f.last_index(), f.term_at(2), f.durable_index()),
        (2, Some(3), 1)
    );
    let rd = f.ready();
    assert_eq!(rd.entries, vec![entry(2, 3)]);
    f.log_durable(3, 2); // a stale acknowledgement of the overwritten write is ignored
    assert_eq!(f.durable_index(), 1);
}

#[test]
fn isolated_leader_steps_down_after_an_election_timeout() {
    let mut nodes = cluster(3);
    let leader = &mut nodes[0];
    let _ = leader.ready();
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for _ in 0..2 * leader.config().election_ticks_min {
        leader.tick(&mut rng);
    }
    assert_eq!(leader.role(), Role::Follower);
}

#[test]
fn in_flight_window_and_message_size_are_bounded_per_follower() {
    let mut cfg = config(1, 3);
    cfg.inflight_msgs_max = 4;
    cfg.msg_bytes_max = 100;
    let mut nodes = vec![
        node(cfg, 0, vec![]),
        node(config(2, 3), 0, vec![]),
        node(config(3, 3), 0, vec![]),
    ];
    nodes[0].campaign();
    settle(&mut nodes);
    let leader = &mut nodes[0];
    for _ in 0..50 {
        leader.propose(Arc::from(vec![7u8; 40])).expect("accepted");
    }
    let rd = leader.ready();
    for to in [2, 3] {
        let appends: Vec<_> = rd
            .messages
            .iter()
            .filter(|m| m.to == to)
            .filter_map(|m| match &m.body {
                MessageBody::AppendEntries { entries, .. } if !entries.is_empty() => Some(entries),
                _ => None,
            })
            .collect();
        assert_eq!(appends.len(), 4, "window of 4 messages to n{to}");
        for entries in appends {
            assert!(
                entries.iter().map(Entry::size_bytes).sum::<u64>() <= 100 || entries.len() == 1
            );
        }
    }
}

#[test]
fn proposals_are_refused_by_followers_and_when_too_large() {
    let mut nodes = cluster(3);
    assert_eq!(
        nodes[1].propose(Arc::from(&b"x"[..])),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
    let limit = nodes[0].config().entry_bytes_max;
    let big: Arc<[u8]> = Arc::from(vec![0u8; limit as usize + 1]);
    assert_eq!(
        nodes[0].propose(big),
        Err(ProposeError::TooLarge {
            bytes: limit + 1,
            limit
        })
    );
}

#[test]
fn a_proposal_gets_the_position_announced_before_it() {
    let mut nodes = cluster(3);
    let leader = &mut nodes[0];
    let announced = leader.check_proposal(1).expect("leader accepts");
    assert_eq!(announced, (leader.term(), leader.next_index()));
    assert_eq!(leader.propose(Arc::from(&b"x"[..])), Ok(announced));
    assert_eq!(leader.next_index(), announced.1 + 1);
}

#[test]
fn leader_refuses_proposals_while_too_many_bytes_await_its_disk() {
    let mut cfg = config(1, 3);
    cfg.unstable_bytes_max = 100;
    let mut leader = node(cfg, 0, vec![]);
    elect_with_the_vote_of_node_2(&mut leader);
    let payload: Arc<[u8]> = Arc::from(vec![7u8; 60]);
    leader
        .propose(payload.clone())
        .expect("below the backlog limit");
    assert!(matches!(
        leader.propose(payload),
        Err(ProposeError::DiskBacklog { limit: 100, .. })
    ));
    let rd = leader.ready();
    let last = rd.entries.last().expect("entries to write").clone();
    persist_all(&mut leader, rd);
    assert_eq!(leader.durable_index(), last.index);
    assert_eq!(
        leader.unstable_bytes(),
        0,
        "durable entries leave the backlog"
    );
    assert!(leader.check_proposal(60).is_ok());
}

#[test]
fn restarted_node_hands_out_only_entries_after_its_applied_index() {
    let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
    let hs = HardState {
        term: 1,
        vote: None,
    };
    let disk = SimDisk::with_durable(hs, entries.clone());
    assert!(matches!(
        Raft::new(config(1, 3), hs, 6, disk.clone()),
        Err(InitError::Applied { applied: 6, .. })
    ));
    let mut follower = Raft::new(config(1, 3), hs, 3, disk).expect("valid start");
    assert_eq!(follower.commit_index(), 3, "what was applied was committed");
    follower.step(Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::Heartbeat {
            commit: 5,
            read_seq: 0,
        },
    });
    let rd = follower.ready();
    assert_eq!(rd.committed, entries[3..].to_vec());
}

#[test]
fn invalid_configurations_are_rejected_with_a_reason() {
    let mut cfg = Config::new(4, vec![1, 2, 3]);
    assert!(matches!(cfg.validate(), Err(ConfigError::Voters { .. })));
    cfg = Config::new(1, vec![1, 2, 3]);
    cfg.election_ticks_max = cfg.election_ticks_min;
    assert!(matches!(cfg.validate(), Err(ConfigError::Timeouts { .. })));
    cfg = Config::new(1, vec![1, 2, 3]);
    cfg.inflight_msgs_max = 0;
    assert_eq!(
        cfg.validate(),
        Err(ConfigError::ZeroLimit("inflight_msgs_max"))
    );
    assert!(Raft::new(cfg, HardState::default(), 0, SimDisk::default()).is_err());
}

#[test]
fn leadership_transfer_makes_the_caught_up_target_leader() {
    let cfg = |id| {
        let mut c = config(id, 3);
        c.pre_vote = true;
        c
    };
    let mut nodes: Vec<Node> = (1..=3).map(|id| node(cfg(id), 0, vec![])).collect();
    nodes[0].campaign();
    settle(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader);
    nodes[0]
        .propose(Arc::from(&b"before"[..]))
        .expect("leader accepts");
    nodes[0].transfer_leadership(3).expect("transfer starts");
    assert_eq!(
        nodes[0].propose(Arc::from(&b"x"[..])),
        Err(ProposeError::Transferring { to: 3 })
    );
    settle(&mut nodes);
    assert_eq!(
        nodes[2].role(),
        Role::Leader,
        "the target campaigns at once and wins despite the lease"
    );
    assert_eq!(nodes[0].role(), Role::Follower);
    assert_eq!(nodes[2].term(), 2);
    assert_eq!(
        nodes[1].transfer_leadership(1),
        Err(TransferError::NotLeader { leader: Some(3) })
    );
}

#[test]
fn read_index_is_confirmed_only_by_heartbeats_sent_after_the_request() {
    let mut nodes = cluster(3);
    let leader = &mut nodes[0];
    let commit = leader.commit_index();
    assert!(commit >= 1, "the leader committed its no-op");
    leader.read_index(7).expect("leader serves reads");
    let rd = leader.ready();
    assert!(rd.read_states.is_empty(), "no confirmation yet");
    let seqs: Vec<u64> = rd
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::Heartbeat { read_seq, .. } => Some(read_seq),
            _ => None,
        })
        .collect();
    // Every heartbeat round is numbered after the read it confirms.
    assert_eq!(seqs, vec![2, 2]);
    let response = |read_seq| Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::HeartbeatResponse { read_seq },
    };
    leader.step(response(0)); // answers a heartbeat older than the read
    assert!(leader.ready().read_states.is_empty());
    leader.step(response(2));
    assert_eq!(
        leader.ready().read_states,
        vec![ReadState {
            ctx: 7,
            index: commit
        }]
    );
}

#[test]
fn read_index_is_refused_by_followers_and_before_the_leader_commits_in_its_term() {
    let mut nodes = cluster(3);
    assert_eq!(
        nodes[1].read_index(1),
        Err(ReadError::NotLeader { leader: Some(1) })
    );
    let mut c = node(config(1, 3), 0, vec![]);
    elect_with_the_vote_of_node_2(&mut c);
    assert_eq!(c.term(), 1);
    assert_eq!(c.read_index(1), Err(ReadError::NotYetCommittedInTerm));
}

#[test]
fn pending_reads_are_dropped_when_leadership_is_lost() {
    let mut nodes = cluster(3);
    nodes[0].read_index(9).expect("accepted");
    let newer = Message {
        from: 2,
        to: 1,
        term: 5,
        body: MessageBody::HeartbeatResponse { read_seq: 1 },
    };
    nodes[0].step(newer);
    assert_eq!(nodes[0].role(), Role::Follower);
    assert!(
        nodes[0].ready().read_states.is_empty(),
        "a deposed leader confirms no read"
    );
}

/// Node 1 of 3 with entries 1..=12 of term 1, a snapshot at 10 (`snapshot_bytes` long) and
/// its log compacted below 11; sends at most `chunk_bytes` of snapshot per message and keeps
/// `window_bytes` in flight.
fn compacted_leader(
    snapshot_bytes: usize,
    chunk_bytes: u64,
    window_bytes: u64,
) -> (Node, SnapshotMeta) {
    let mut cfg = config(1, 3);
    cfg.msg_bytes_max = chunk_bytes;
    cfg.inflight_bytes_max = window_bytes;
    let hs = HardState {
        term: 1,
        vote: None,
    };
    let mut disk = SimDisk::with_durable(hs, (1..=12).map(|i| entry(i, 1)).collect());
    let meta = SnapshotMeta {
        index: 10,
        term: 1,
        membership: Membership {
            voters: vec![1, 2, 3],
            learners: vec![],
            ..Default::default()
        },
    };
    let data = Arc::from(vec![9u8; snapshot_bytes]);
    disk.write_snapshot(
        SimSnapshot {
            meta: meta.clone(),
            data,
        },
        11,
    );
    assert!(disk.start_fsync());
    disk.complete_fsync();
    let mut leader = Raft::new(cfg, hs, 10, disk).expect("valid start");
    elect_with_the_vote_of_node_2(&mut leader);
    (leader, meta)
}

/// Messages `raft` sends to `to` after persisting its ready state.
fn outgoing(raft: &mut Node, to: u64) -> Vec<Message> {
    let rd = raft.ready();
    persist_all(raft, rd)
        .into_iter()
        .filter(|m| m.to == to)
        .collect()
}

fn chunk_offsets(msgs: &[Message]) -> Vec<(u64, bool)> {
    msgs.iter()
        .filter_map(|m| match &m.body {
            MessageBody::InstallSnapshot { offset, done, .. } => Some((*offset, *done)),
            _ => None,
        })
        .collect()
}

/// A [`compacted_leader`] and an empty follower 3 it has switched to snapshot state: the
/// follower rejected the leader's probe, and the leader backed up below its log start.
fn leader_to_snapshot(
    snapshot_bytes: usize,
    chunk_bytes: u64,
    window_bytes: u64,
) -> (Node, Node, SnapshotMeta) {
    let (mut leader, meta) = compacted_leader(snapshot_bytes, chunk_bytes, window_bytes);
    let mut follower = node(config(3, 3), 0, vec![]);
    for msg in outgoing(&mut leader, 3) {
        follower.step(msg);
    }
    for msg in outgoing(&mut follower, 1) {
        leader.step(msg);
    }
    assert_eq!(leader.progress(3).unwrap().state, ProgressState::Snapshot);
    (leader, follower, meta)
}

#[test]
fn leader_streams_a_snapshot_in_chunks_and_resends_what_was_lost() {
    let (mut leader, mut follower, meta) = leader_to_snapshot(100, 40, 80);
    let first = outgoing(&mut leader, 3);
    assert_eq!(
        chunk_offsets(&first),
        [(0, false), (40, false)],
        "window of 80 bytes"
    );
    // Chunk 0 arrives, chunk 40 is lost.
    follower.step(first[0].clone());
    let rd = follower.ready();
    assert_eq!(rd.snapshot_chunks.len(), 1);
    assert_eq!(rd.snapshot_chunks[0].data.len(), 40);
    for msg in persist_all(&mut follower, rd) {
        leader.step(msg);
    }
    let last = outgoing(&mut leader, 3);
    assert_eq!(chunk_offsets(&last), [(80, true)]);
    follower.step(last[0].clone());
    let rd = follower.ready();
    assert!(
        rd.snapshot_chunks.is_empty(),
        "a chunk after a gap is not taken"
    );
    assert!(rd.messages.iter().any(|m| m.body
        == MessageBody::InstallSnapshotResponse {
            index: 10,
            received: 40
        }));
    // A heartbeat response resends nothing while chunks are being acknowledged (40 bytes since
    // the transfer began); the next one, after a round that acknowledged nothing, makes the
    // leader resend from the last acknowledged byte.
    let heartbeat_response = Message {
        from: 3,
        to: 1,
        term: leader.term(),
        body: MessageBody::HeartbeatResponse { read_seq: 0 },
    };
    leader.step(heartbeat_response.clone());
    assert_eq!(chunk_offsets(&outgoing(&mut leader, 3)), []);
    leader.step(heartbeat_response);
    let resent = outgoing(&mut leader, 3);
    assert_eq!(chunk_offsets(&resent), [(40, false), (80, true)]);
    for msg in resent {
        follower.step(msg);
    }
    let rd = follower.ready();
    assert_eq!(
        rd.snapshot_chunks
            .iter()
            .map(|c| c.offset)
            .collect::<Vec<_>>(),
        [40, 80]
    );
    assert!(rd.snapshot_chunks[1].done);
    assert!(
        !rd.messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::AppendEntriesResponse { .. })),
        "no acknowledgement before the snapshot is installed"
    );
    assert!(follower.installing_snapshot());
    // Installing: entries from the leader are dropped, not appended to the doomed log.
    follower.step(Message {
        from: 1,
        to: 3,
        term: leader.term(),
        body: MessageBody::AppendEntries {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry(1, 1)],
            commit: 0,
        },
    });
    assert!(follower.ready().is_empty());
    // The driver installs it durably, then reports it.
    let data: Vec<u8> = vec![9u8; 100];
    follower.storage_mut().write_install(SimSnapshot {
        meta: meta.clone(),
        data: Arc::from(data),
    });
    assert!(follower.storage_mut().start_fsync());
    follower.storage_mut().complete_fsync();
    follower.snapshot_installed(&meta);
    assert_eq!(
        (
            follower.last_index(),
            follower.commit_index(),
            follower.applied_index()
        ),
        (10, 10, 10)
    );
    for msg in outgoing(&mut follower, 1) {
        assert_eq!(
            msg.body,
            MessageBody::AppendEntriesResponse { result: Ok(10) }
        );
        leader.step(msg);
    }
    let pr = leader.progress(3).unwrap();
    assert_eq!((pr.state, pr.match_index), (ProgressState::Replicate, 10));
    let appends = outgoing(&mut leader, 3);
    assert!(appends.iter().any(|m| matches!(&m.body,
        MessageBody::AppendEntries { prev_index: 10, entries, .. } if entries[0].index == 11)));
}

#[test]
fn a_snapshot_transfer_that_is_acknowledged_sends_each_chunk_once_across_heartbeats() {
    // 10 chunks of 40 bytes, 4 in flight at a time.
    let (mut leader, mut follower, _) = leader_to_snapshot(400, 40, 160);
    let mut in_flight: std::collections::VecDeque<Message> = outgoing(&mut leader, 3).into();
    let mut sent = chunk_offsets(in_flight.make_contiguous()).len();
    // One chunk arrives and is acknowledged, then a heartbeat response comes back while the
    // rest of the window is still on its way: again and again until the last chunk.
    while !follower.installing_snapshot() {
        let msg = in_flight.pop_front().expect("the transfer goes on");
        follower.step(msg);
        for ack in outgoing(&mut follower, 1) {
            leader.step(ack);
        }
        leader.step(Message {
            from: 3,
            to: 1,
            term: leader.term(),
            body: MessageBody::HeartbeatResponse { read_seq: 0 },
        });
        let more = outgoing(&mut leader, 3);
        sent += chunk_offsets(&more).len();
        in_flight.extend(more);
    }
    assert_eq!(sent, 10, "no chunk sent twice while acknowledgements flow");
}

/// Delivers messages between `leader` (node 1) and `follower` (node 3) until both are quiet,
/// installing a completely received snapshot as the driver does; no tick. Returns how many
/// InstallSnapshot chunks the follower took.
fn exchange(leader: &mut Node, follower: &mut Node, meta: &SnapshotMeta) -> usize {
    let mut chunks = 0;
    let mut to_follower = outgoing(leader, 3);
    while !to_follower.is_empty() {
        for msg in std::mem::take(&mut to_follower) {
            follower.step(msg);
        }
        let rd = follower.ready();
        chunks += rd.snapshot_chunks.len();
        let mut to_leader = persist_all(follower, rd);
        if follower.installing_snapshot() {
            follower.storage_mut().write_install(SimSnapshot {
                meta: meta.clone(),
                data: Arc::from(vec![9u8; 100]),
            });
            assert!(follower.storage_mut().start_fsync());
            follower.storage_mut().complete_fsync();
            follower.snapshot_installed(meta);
            to_leader.extend(outgoing(follower, 1));
        }
        for msg in to_leader {
            leader.step(msg);
        }
        to_follower = outgoing(leader, 3);
    }
    chunks
}

#[test]
fn a_follower_back_empty_under_its_old_id_is_sent_the_snapshot_at_the_next_heartbeat() {
    let (mut leader, meta) = compacted_leader(100, 40, 80);
    let mut follower = node(config(3, 3), 1, (1..=12).map(|i| entry(i, 1)).collect());
    exchange(&mut leader, &mut follower, &meta);
    let caught_up = leader.last_index();
    let pr = leader.progress(3).unwrap();
    assert_eq!(
        (pr.state, pr.match_index),
        (ProgressState::Replicate, caught_up)
    );
    // Its data directory is wiped; it comes back empty, at term 0, and nothing new is proposed:
    // the leader's heartbeat (commit up to the match it recorded) is all that reaches it.
    let mut follower = node(config(3, 3), 0, vec![]);
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    let mut to_follower = Vec::new();
    while to_follower.is_empty() {
        leader.tick(&mut rng);
        to_follower = outgoing(&mut leader, 3);
    }
    assert!(matches!(
        to_follower[..],
        [Message { body: MessageBody::Heartbeat { commit, .. }, .. }] if commit == caught_up
    ));
    follower.step(to_follower.pop().unwrap());
    assert_eq!(
        follower.commit_index(),
        0,
        "a commit beyond the log is never taken"
    );
    let answer = outgoing(&mut follower, 1);
    assert!(
        matches!(
            answer[..],
            [Message {
                body: MessageBody::AppendEntriesResponse { result: Err(r) },
                ..
            }] if r.log_lost && r.hint_index == 1
        ),
        "{answer:?}"
    );
    for msg in answer {
        leader.step(msg);
    }
    // From here on messages alone (no timer, no retry) carry the snapshot and the log after it.
    let chunks = exchange(&mut leader, &mut follower, &meta);
    assert_eq!(chunks, 3, "each chunk of the 100-byte snapshot taken once");
    assert_eq!(
        (follower.last_index(), follower.commit_index()),
        (caught_up, caught_up)
    );
    let pr = leader.progress(3).unwrap();
    assert_eq!(
        (pr.state, pr.match_index),
        (ProgressState::Replicate, caught_up)
    );
}

#[test]
fn follower_holding_the_snapshots_last_entry_keeps_its_log() {
    let (mut leader, meta) = compacted_leader(10, 1 << 20, 1 << 20);
    let mut follower = node(config(3, 3), 1, (1..=12).map(|i| entry(i, 1)).collect());
    follower.step(Message {
        from: 1,
        to: 3,
        term: leader.term(),
        body: MessageBody::InstallSnapshot {
            meta,
            offset: 0,
            data: Arc::from(vec![9u8; 10]),
            done: true,
        },
    });
    let rd = follower.ready();
    assert!(rd.snapshot_chunks.is_empty(), "nothing to install");
    assert_eq!(
        follower.last_index(),
        12,
        "entries after the snapshot are kept"
    );
    assert_eq!(
        follower.commit_index(),
        10,
        "the snapshot proves its end committed"
    );
    let acks: Vec<_> = persist_all(&mut follower, rd)
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(
        acks,
        [MessageBody::AppendEntriesResponse { result: Ok(10) }]
    );
    leader.step(Message {
        from: 3,
        to: 1,
        term: leader.term(),
        body: acks[0].clone(),
    });
    assert_eq!(leader.progress(3).unwrap().match_index, 10);
}

/// A cluster of 3 voters led by node 1, plus node 4 started to join (no configuration).
fn cluster_with_joining_node_4() -> Vec<Node> {
    let mut nodes = cluster(3);
    let mut cfg = Config::new(4, vec![]);
    cfg.pre_vote = false;
    nodes.push(node(cfg, 0, vec![]));
    nodes
}

/// `cluster_with_joining_node_4` after the leader proposed adding node 4 as a learner; returns
/// the configuration entry's index too.
fn cluster_adding_learner_4() -> (Vec<Node>, u64) {
    let mut nodes = cluster_with_joining_node_4();
    let (_, index) = nodes[0]
        .propose_membership(MembershipChange::AddLearner(4, Default::default()))
        .expect("leader accepts");
    (nodes, index)
}

fn members(voters: &[u64], learners: &[u64]) -> Membership {
    Membership {
        voters: voters.to_vec(),
        learners: learners.to_vec(),
        ..Default::default()
    }
}

/// `m` without its address book (tests that add members at empty addresses).
fn ids_only(m: &Membership) -> Membership {
    members(&m.voters, &m.learners)
}

/// Ticks every node `ticks` times (no election timeout draws matter: settles in between).
fn tick_all(nodes: &mut [Node], ticks: u32) {
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for _ in 0..ticks {
        for n in nodes.iter_mut() {
            n.tick(&mut rng);
        }
        settle(nodes);
    }
}

#[test]
fn learner_gets_the_log_never_votes_and_is_promoted_once_caught_up() {
    let (mut nodes, index) = cluster_adding_learner_4();
    assert_eq!(
        ids_only(nodes[0].membership()),
        members(&[1, 2, 3], &[4]),
        "in force once appended, before it commits"
    );
    assert_eq!(
        nodes[0].propose_membership(MembershipChange::PromoteLearner(4)),
        Err(MembershipError::ChangePending { index }),
        "one change at a time"
    );
    settle(&mut nodes);
    assert_eq!(
        nodes[3].last_index(),
        nodes[0].last_index(),
        "the learner has the log"
    );
    assert!(nodes
        .iter()
        .all(|n| ids_only(n.membership()) == members(&[1, 2, 3], &[4])));
    assert!(!nodes[3].is_voter());
    // With the leader silent, the learner never campaigns; the voters do.
    nodes[3].campaign();
    assert!(
        nodes[3].ready().messages.is_empty(),
        "a learner never asks for votes"
    );
    nodes[0]
        .propose_membership(MembershipChange::PromoteLearner(4))
        .expect("caught up");
    settle(&mut nodes);
    assert!(nodes
        .iter()
        .all(|n| ids_only(n.membership()) == members(&[1, 2, 3, 4], &[])));
    assert!(nodes[3].is_voter());
    // Four voters: committing now needs three of them.
    nodes[0].propose(Arc::from(&b"x"[..])).unwrap();
    let index = nodes[0].last_index();
    let rd = nodes[0].ready();
    let msgs = persist_all(&mut nodes[0], rd);
    for m in msgs.into_iter().filter(|m| m.to == 2) {
        nodes[1].step(m);
    }
    let rd = nodes[1].ready();
    for m in persist_all(&mut nodes[1], rd) {
        nodes[0].step(m);
    }
    assert!(
        nodes[0].commit_index() < index,
        "leader + one follower are 2 of 4"
    );
}

#[test]
fn a_learner_behind_the_commit_index_is_not_promoted() {
    let (mut nodes, _) = cluster_adding_learner_4();
    // Everyone but the learner hears the leader.
    let mut learner = nodes.pop().expect("node 4");
    settle(&mut nodes);
    learner.ready();
    assert!(matches!(
        nodes[0].propose_membership(MembershipChange::PromoteLearner(4)),
        Err(MembershipError::LearnerBehind {
            id: 4,
            match_index: 0,
            ..
        })
    ));
}

#[test]
fn removed_leader_steps_down_once_its_removal_commits_and_never_campaigns() {
    let mut nodes = cluster(3);
    nodes[0]
        .propose_membership(MembershipChange::Remove(1))
        .unwrap();
    assert_eq!(
        nodes[0].role(),
        Role::Leader,
        "leads until the removal commits"
    );
    settle(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Follower);
    assert!(nodes
        .iter()
        .all(|n| n.membership() == &members(&[2, 3], &[])));
    nodes[0].campaign();
    assert_eq!(
        nodes[0].role(),
        Role::Follower,
        "a removed node does not campaign"
    );
    tick_all(&mut nodes, 40);
    let leaders: Vec<u64> = nodes
        .iter()
        .filter(|n| n.role() == Role::Leader)
        .map(|n| n.id())
        .collect();
    assert!(
        leaders.len() == 1 && leaders[0] != 1,
        "the remaining voters elect a leader among themselves: {leaders:?}"
    );
}

#[test]
fn a_removed_follower_receives_its_removal_and_stops_campaigning() {
    let mut nodes = cluster(3);
    let (_, index) = nodes[0]
        .propose_membership(MembershipChange::Remove(3))
        .unwrap();
    settle(&mut nodes);
    assert!(nodes[0].commit_index() >= index);
    assert_eq!(
        nodes[2].membership(),
        &members(&[1, 2], &[]),
        "the removed node got the entry that removes it"
    );
    assert!(
        nodes[0].progress(3).is_none(),
        "the leader stops replicating to it once the removal is applied"
    );
    nodes[2].campaign();
    assert!(
        nodes[2].ready().messages.is_empty(),
        "a node outside its configuration asks nobody for votes"
    );
}

#[test]
fn configuration_survives_a_restart_from_the_disk() {
    let (mut nodes, _) = cluster_adding_learner_4();
    settle(&mut nodes);
    let disk = nodes[3].storage().clone();
    let hs = disk.hard_state();
    let mut cfg = Config::new(4, vec![]);
    cfg.pre_vote = false;
    let restarted = Raft::new(cfg, hs, 0, disk).expect("valid start");
    assert_eq!(ids_only(restarted.membership()), members(&[1, 2, 3], &[4]));
}

#[test]
fn the_address_book_travels_in_configuration_entries() {
    let mut nodes = cluster_with_joining_node_4();
    let address = raftline_replicator::MemberAddress {
        peer: "10.0.0.4:7301".into(),
        client: "10.0.0.4:7300".into(),
        incarnation: 0x44,
    };
    nodes[0]
        .propose_membership(MembershipChange::AddLearner(4, address.clone()))
        .unwrap();
    settle(&mut nodes);
    for n in &nodes {
        assert_eq!(
            n.membership().addresses.get(&4),
            Some(&address),
            "node {} knows where the learner is",
            n.id()
        );
    }
    nodes[0]
        .propose_membership(MembershipChange::Remove(4))
        .unwrap();
    settle(&mut nodes);
    assert!(!nodes[1].membership().addresses.contains_key(&4));
}

#[test]
fn a_new_leader_changes_the_configuration_only_after_committing_in_its_term() {
    let mut leader = node(config(1, 3), 0, vec![]);
    elect_with_the_vote_of_node_2(&mut leader);
    assert_eq!(
        leader.propose_membership(MembershipChange::Remove(3)),
        Err(MembershipError::NotYetCommittedInTerm)
    );
}

/// Three nodes with lease reads, node 1 elected and everything settled.
fn lease_cluster() -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let mut cfg = config(id, 3);
            cfg.lease_read = true;
            node(cfg, 0, vec![])
        })
        .collect();
    // Fresh nodes refuse votes for an election timeout (they might have acknowledged a leader
    // just before a crash); the longest timeout keeps them from campaigning meanwhile.
    let mut rng = rand::rngs::mock::StepRng::new(9, 0);
    for _ in 0..nodes[0].config().election_ticks_min {
        nodes.iter_mut().for_each(|n| n.tick(&mut rng));
    }
    nodes[0].campaign();
    settle(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader);
    nodes
}

/// The leader's next heartbeat round reaches node 2, whose answer gives the leader a quorum:
/// a lease starts.
fn acknowledge_a_heartbeat_round(nodes: &mut [Node]) {
    let round = tick_leader(nodes, 2);
    for m in round.into_iter().filter(|m| m.to == 2) {
        nodes[1].step(m);
        let rd = nodes[1].ready();
        for reply in persist_all(&mut nodes[1], rd) {
            nodes[0].step(reply);
        }
    }
    assert!(nodes[0].lease_holds());
}

/// Ticks the leader alone `ticks` times and returns what it sent.
fn tick_leader(nodes: &mut [Node], ticks: u64) -> Vec<Message> {
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    let mut sent = Vec::new();
    for _ in 0..ticks {
        nodes[0].tick(&mut rng);
        let rd = nodes[0].ready();
        sent.extend(persist_all(&mut nodes[0], rd));
    }
    sent
}

#[test]
fn lease_read_is_served_at_once_within_the_lease_and_by_a_heartbeat_round_after_it() {
    let mut nodes = lease_cluster();
    let lease = nodes[0].config().lease_ticks();
    assert!(lease >= 1);
    acknowledge_a_heartbeat_round(&mut nodes);
    nodes[0].read_index(7).unwrap();
    let rd = nodes[0].ready();
    let commit = nodes[0].commit_index();
    assert_eq!(
        rd.read_states,
        [ReadState {
            ctx: 7,
            index: commit
        }]
    );
    assert!(
        rd.messages.is_empty(),
        "no heartbeat round for a lease read"
    );
    // Without acknowledgements the lease runs out: reads need a round again.
    tick_leader(&mut nodes, lease);
    assert!(!nodes[0].lease_holds());
    nodes[0].read_index(8).unwrap();
    let rd = nodes[0].ready();
    assert!(rd.read_states.is_empty());
    assert!(rd
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })));
}

#[test]
fn a_leader_that_sent_timeout_now_serves_no_lease_reads_this_term() {
    let mut nodes = lease_cluster();
    acknowledge_a_heartbeat_round(&mut nodes);
    nodes[0].transfer_leadership(2).unwrap();
    assert!(
        !nodes[0].lease_holds(),
        "the target campaigns through the followers' stickiness"
    );
}

#[test]
fn lease_read_requires_check_quorum() {
    let mut cfg = Config::new(1, vec![1, 2, 3]);
    cfg.lease_read = true;
    cfg.check_quorum = false;
    assert!(matches!(cfg.validate(), Err(ConfigError::Lease { .. })));
    cfg.check_quorum = true;
    assert_eq!(cfg.validate(), Ok(()));
}

/// AppendEntries (with entries, or carrying only the commit index) in `msgs`, per follower.
fn appends_to(msgs: &[Message], to: u64) -> Vec<(usize, u64)> {
    msgs.iter()
        .filter(|m| m.to == to)
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries {
                entries, commit, ..
            } => Some((entries.len(), *commit)),
            _ => None,
        })
        .collect()
}

#[test]
fn batch_appends_sends_one_message_per_follower_per_ready_with_every_proposal() {
    let mut cfg = config(1, 3);
    cfg.batch_appends = true;
    let mut nodes = vec![
        node(cfg, 0, vec![]),
        node(config(2, 3), 0, vec![]),
        node(config(3, 3), 0, vec![]),
    ];
    nodes[0].campaign();
    settle(&mut nodes);
    let leader = &mut nodes[0];
    let first = leader.next_index();
    for _ in 0..5 {
        leader.propose(Arc::from(&b"x"[..])).expect("accepted");
    }
    let rd = leader.ready();
    assert_eq!(rd.entries.len(), 5, "every proposal is handed to the disk");
    for to in [2, 3] {
        assert_eq!(
            appends_to(&rd.messages, to)
                .iter()
                .map(|a| a.0)
                .collect::<Vec<_>>(),
            vec![5],
            "one AppendEntries with the five entries to n{to}"
        );
    }
    assert!(leader.ready().messages.is_empty(), "nothing is sent twice");
    // The leader's own write and both followers' acknowledgements arrive in one driver round:
    // the commit index reaches each follower once, after the round.
    leader.log_durable(first + 4, leader.term());
    let term = leader.term();
    for from in [2, 3] {
        leader.step(Message {
            from,
            to: 1,
            term,
            body: MessageBody::AppendEntriesResponse {
                result: Ok(first + 4),
            },
        });
    }
    assert_eq!(leader.commit_index(), first + 4, "committed at once");
    let rd = leader.ready();
    for to in [2, 3] {
        assert_eq!(
            appends_to(&rd.messages, to),
            vec![(0, first + 4)],
            "one commit announcement to n{to}"
        );
    }
    assert_eq!(rd.committed.len(), 5);
}

#[test]
fn batch_appends_replicates_and_commits_like_immediate_sends() {
    for batch_appends in [false, true] {
        let mut nodes: Vec<Node> = (1..=3)
            .map(|id| {
                let mut cfg = config(id, 3);
                cfg.batch_appends = batch_appends;
                node(cfg, 0, vec![])
            })
            .collect();
        nodes[0].campaign();
        settle(&mut nodes);
        for _ in 0..3 {
            nodes[0].propose(Arc::from(&b"y"[..])).expect("accepted");
        }
        settle(&mut nodes);
        let last = nodes[0].last_index();
        for n in &nodes {
            assert_eq!(
                (n.last_index(), n.commit_index()),
                (last, last),
                "n{} with batch_appends={batch_appends}",
                n.id()
            );
        }
    }
}

/// Node 2 of a 3-node cluster whose leader (node 1) committed entries 1..=4 with its help
/// loses its last `lost` durable entries at a crash (a damaged tail cut by recovery) and
/// restarts suspect through the index it was durable through.
fn cluster_with_damaged_node_2(lost: u64) -> (Vec<Node>, u64) {
    let mut nodes = cluster(3);
    for _ in 0..3 {
        nodes[0].propose(Arc::from(&b"cmd"[..])).expect("leader");
    }
    settle(&mut nodes);
    let committed = nodes[0].commit_index();
    assert_eq!(committed, 4, "the no-op and three commands");
    let cfg = nodes[1].config().clone();
    let mut disk = nodes.remove(1).into_storage();
    disk.crash();
    let (first_lost, durable_through) = disk.lose_tail(lost).expect("entries to lose");
    assert_eq!(
        (first_lost, durable_through),
        (committed - lost + 1, committed)
    );
    let hs = disk.hard_state();
    let mut restarted = Raft::new(cfg, hs, 0, disk).expect("readable disk");
    restarted.set_repair_through(durable_through);
    nodes.insert(1, restarted);
    (nodes, durable_through)
}

/// Ticks `node` through many election timeouts (asking it to campaign each time) and asserts it
/// never asks for a vote or pre-vote, then that it ignores a TimeoutNow from node 1.
fn assert_never_takes_leadership(node: &mut Node, rng: &mut dyn rand::RngCore, who: &str) {
    for _ in 0..200 {
        node.tick(rng);
        node.campaign();
        let rd = node.ready();
        assert!(
            !rd.messages.iter().any(|m| matches!(
                m.body,
                MessageBody::RequestVote { .. } | MessageBody::PreVote { .. }
            )),
            "{who} campaigned: {:?}",
            rd.messages
        );
        node.hard_state_durable(node.hard_state());
    }
    assert_eq!(node.role(), Role::Follower);
    let term = node.term();
    node.step(Message {
        from: 1,
        to: node.id(),
        term,
        body: MessageBody::TimeoutNow,
    });
    assert_eq!(node.role(), Role::Follower, "{who} took a TimeoutNow");
}

#[test]
fn suspect_node_grants_no_vote_or_pre_vote_and_never_campaigns() {
    let (mut nodes, _) = cluster_with_damaged_node_2(2);
    let n2 = &mut nodes[1];
    let term = n2.term();
    // Node 3's log is at least as up to date as node 2's damaged one: a healthy node would
    // grant both.
    n2.step(vote_request(3, 2, term + 1, 10, term));
    n2.step(Message {
        from: 3,
        to: 2,
        term: term + 2,
        body: MessageBody::PreVote {
            last_index: 10,
            last_term: term,
        },
    });
    // A grant would wait for the vote to be durable: make the hard state durable first.
    let mut msgs = n2.ready().messages;
    n2.hard_state_durable(n2.hard_state());
    msgs.extend(n2.ready().messages);
    assert_eq!(msgs.len(), 2, "both requests answered: {msgs:?}");
    let grants: Vec<_> = msgs
        .iter()
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::RequestVoteResponse { granted: true }
                    | MessageBody::PreVoteResponse { granted: true }
            )
        })
        .collect();
    assert!(grants.is_empty(), "suspect node granted {grants:?}");
    // Many election timeouts pass without a leader: it stays a silent follower.
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    assert_never_takes_leadership(n2, &mut rng, "suspect node");
    assert_eq!(n2.repair_through(), Some(4));
}

#[test]
fn suspect_node_makes_the_leader_resend_what_it_lost_and_is_repaired() {
    let (mut nodes, durable_through) = cluster_with_damaged_node_2(3);
    assert_eq!(nodes[1].last_index(), 1);
    // The leader still counts node 2 at match 4. Its heartbeat (commit 4, beyond node 2's log)
    // is answered with a log_lost rejection instead of being refused as impossible.
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for _ in 0..nodes[0].config().heartbeat_ticks {
        nodes[0].tick(&mut rng);
    }
    let rd = nodes[0].ready();
    let heartbeat = persist_all(&mut nodes[0], rd)
        .into_iter()
        .find(|m| m.to == 2 && matches!(m.body, MessageBody::Heartbeat { .. }))
        .expect("heartbeat to node 2");
    nodes[1].step(heartbeat);
    let rd = nodes[1].ready();
    assert!(rd.refused.is_empty(), "{:?}", rd.refused);
    let reply = rd.messages.first().cloned().expect("a rejection");
    match &reply.body {
        MessageBody::AppendEntriesResponse { result: Err(r) } => {
            assert!(r.log_lost, "{r:?}");
            assert_eq!(r.hint_index, 2);
        }
        other => panic!("expected a log_lost rejection, got {other:?}"),
    }
    nodes[0].step(reply);
    assert_eq!(nodes[0].progress(2).expect("peer").match_index, 1);
    settle(&mut nodes);
    assert_eq!(nodes[1].repair_through(), None, "repaired once re-fetched");
    assert!(nodes[1].durable_index() >= durable_through);
    for i in 1..=durable_through {
        assert_eq!(nodes[1].term_at(i), nodes[0].term_at(i), "entry {i}");
    }
}

#[test]
fn suspect_node_is_not_repaired_by_a_commit_index_below_what_it_lost_in_the_same_term() {
    let (mut nodes, durable_through) = cluster_with_damaged_node_2(3);
    // The leader resends only entry 2 with commit index 2, an entry of its own term: in a
    // later term matching through it would do, but node 2 may have acknowledged 3 and 4 in
    // this very term (and they may be committed above the commit index it was told).
    let term = nodes[0].term();
    let (prev_term, second) = (nodes[0].term_at(1), nodes[0].entry(2));
    nodes[1].step(Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::AppendEntries {
            prev_index: 1,
            prev_term: prev_term.expect("held"),
            entries: vec![second.expect("held")],
            commit: 2,
        },
    });
    let rd = nodes[1].ready();
    persist_all(&mut nodes[1], rd);
    assert_eq!(nodes[1].commit_index(), 2);
    assert_eq!(nodes[1].term_at(2), Some(term));
    assert_eq!(
        nodes[1].repair_through(),
        Some(durable_through),
        "still suspect: 3 and 4 may have been committed with its lost acknowledgement"
    );
}

/// Node 2 of a 3-node cluster whose leader counts it at match 4 loses entries 3 and 4 at a
/// crash without knowing it (the residual window: its last synced group torn and the marker
/// that would have said so lost with it) and restarts healthy, not suspect.
fn cluster_with_node_2_silently_short() -> Vec<Node> {
    let mut nodes = cluster(3);
    for _ in 0..3 {
        nodes[0].propose(Arc::from(&b"cmd"[..])).expect("leader");
    }
    settle(&mut nodes);
    assert_eq!(nodes[0].progress(2).expect("peer").match_index, 4);
    let cfg = nodes[1].config().clone();
    let mut disk = nodes.remove(1).into_storage();
    disk.crash();
    assert_eq!(disk.lose_tail(2), Some((3, 4)));
    let hs = disk.hard_state();
    nodes.insert(1, Raft::new(cfg, hs, 0, disk).expect("readable disk"));
    nodes
}

#[test]
fn a_follower_that_silently_lost_acknowledged_entries_gets_them_again_without_a_message_storm() {
    let mut nodes = cluster_with_node_2_silently_short();
    // Two appends: the first (prev 4, at the match) is rejected and taken for a stale
    // rejection; the second (prev 5) is not, and its probe at the match is rejected with a
    // hint below it. Before, the leader clamped the next probe at match + 1 and sent the same
    // probe again for every rejection.
    for _ in 0..2 {
        nodes[0].propose(Arc::from(&b"more"[..])).expect("leader");
    }
    let delivered = settle(&mut nodes);
    assert!(delivered <= 20, "{delivered} messages to settle");
    let last = nodes[0].last_index();
    assert_eq!(last, 6);
    assert_eq!(nodes[0].progress(2).expect("peer").match_index, last);
    assert_eq!(nodes[1].durable_index(), last);
    for i in 1..=last {
        assert_eq!(nodes[1].term_at(i), nodes[0].term_at(i), "entry {i}");
    }
    assert_eq!(nodes[0].commit_index(), last);
}

#[test]
fn an_idle_leaders_heartbeat_tells_a_follower_that_silently_lost_acknowledged_entries_to_report_it()
{
    let mut nodes = cluster_with_node_2_silently_short();
    // Nothing more to append: the leader's match for node 2 is its last index, so only a
    // heartbeat goes out, with commit 4, beyond node 2's log. Before, node 2 refused it as
    // impossible (the node closed the leader's connection) and the leader never resent.
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for _ in 0..nodes[0].config().heartbeat_ticks {
        nodes[0].tick(&mut rng);
    }
    let delivered = settle(&mut nodes);
    assert!(delivered <= 10, "{delivered} messages to settle");
    assert_eq!(nodes[1].durable_index(), 4);
    for i in 1..=4 {
        assert_eq!(nodes[1].term_at(i), nodes[0].term_at(i), "entry {i}");
    }
    assert_eq!(nodes[0].progress(2).expect("peer").match_index, 4);
}

#[test]
fn a_reordered_rejection_taken_for_a_lost_log_costs_one_probe_round() {
    let mut nodes = cluster(3);
    nodes[0].propose(Arc::from(&b"cmd"[..])).expect("leader");
    settle(&mut nodes);
    let last = nodes[0].last_index();
    let term = nodes[0].term();
    assert_eq!(nodes[0].progress(2).expect("peer").match_index, last);
    // The append of the new entry is lost, and a rejection of it hinting index 1 arrives, as
    // a reordered one from when node 2 held nothing would: the leader cannot tell it from a
    // loss, so it lowers the match and probes; node 2, holding everything, acknowledges again.
    nodes[0].propose(Arc::from(&b"cmd"[..])).expect("leader");
    let rd = nodes[0].ready();
    persist_all(&mut nodes[0], rd);
    nodes[0].step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendEntriesResponse {
            result: Err(AppendReject {
                rejected_prev_index: last + 1,
                hint_term: None,
                hint_index: 1,
                log_lost: false,
            }),
        },
    });
    let pr = nodes[0].progress(2).expect("peer");
    assert_eq!((pr.match_index, pr.state), (0, ProgressState::Probe));
    assert_eq!(nodes[0].commit_index(), last, "commit never goes back");
    let delivered = settle(&mut nodes);
    assert!(delivered <= 10, "{delivered} messages to settle");
    let pr = nodes[0].progress(2).expect("peer");
    assert_eq!(
        (pr.match_index, pr.state),
        (last + 1, ProgressState::Replicate),
        "node 2 acknowledges its whole log again"
    );
}

#[test]
fn a_node_with_a_stalled_disk_votes_but_never_campaigns_or_takes_a_transfer() {
    let mut nodes = cluster(3);
    let n2 = &mut nodes[1];
    n2.set_write_stalled(true);
    // The leader falls silent; many election timeouts pass: n2 never asks for votes.
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    assert_never_takes_leadership(n2, &mut rng, "a stalled node");
    assert_eq!(n2.leader(), None, "a silent leader is forgotten");
    let term = n2.term();
    // It still votes: a candidate with an up-to-date log gets its grant (once durable).
    let last = n2.last_index();
    let last_term = n2.term_at(last).unwrap();
    n2.step(vote_request(3, 2, term + 1, last, last_term));
    let mut msgs = n2.ready().messages;
    n2.hard_state_durable(n2.hard_state());
    msgs.extend(n2.ready().messages);
    assert!(
        msgs.iter()
            .any(|m| matches!(m.body, MessageBody::RequestVoteResponse { granted: true })),
        "a stalled node still grants its vote: {msgs:?}"
    );
    // Once its disk moves again, its election timeout makes it campaign as usual.
    n2.set_write_stalled(false);
    let campaigned = (0..200).any(|_| {
        n2.tick(&mut rng);
        let rd = n2.ready();
        let asked = rd
            .messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::RequestVote { .. }));
        n2.hard_state_durable(n2.hard_state());
        asked
    });
    assert!(campaigned, "a node whose disk recovered campaigns again");
}

#[test]
fn a_leader_stepping_down_leaves_its_term_to_another_leader() {
    let mut nodes = cluster(3);
    let term = nodes[0].term();
    nodes[0].step_down();
    assert_eq!(nodes[0].role(), Role::Follower);
    assert_eq!(nodes[0].leader(), None);
    assert_eq!(nodes[0].term(), term, "stepping down starts no term");
    assert!(matches!(
        nodes[0].propose(Arc::from(&b"x"[..])),
        Err(ProposeError::NotLeader { leader: None })
    ));
    nodes[0].set_write_stalled(true);
    nodes[1].campaign();
    settle(&mut nodes);
    assert_eq!(nodes[1].role(), Role::Leader, "another node takes over");
    assert_eq!(nodes[0].leader(), Some(2));
    nodes[1].step_down();
    assert_eq!(nodes[1].role(), Role::Follower);
    nodes[1].step_down();
    assert_eq!(nodes[1].role(), Role::Follower, "a no-op unless leading");
}

/// Node 2 of a 3-node cluster that committed 1..=4 with its help restarts with its whole log
/// but without its hard state (both slots lost: the driver starts it at term 0, no vote) and
/// suspect through its last index, as the node does for a damaged hard state.
fn cluster_with_node_2_lacking_its_hard_state() -> Vec<Node> {
    let mut nodes = cluster(3);
    for _ in 0..3 {
        nodes[0].propose(Arc::from(&b"cmd"[..])).expect("leader");
    }
    settle(&mut nodes);
    assert_eq!(nodes[0].commit_index(), 4);
    let cfg = nodes[1].config().clone();
    let mut disk = nodes.remove(1).into_storage();
    disk.crash();
    let mut restarted = Raft::new(cfg, HardState::default(), 0, disk).expect("readable disk");
    assert_eq!(
        restarted.term(),
        nodes[0].term(),
        "starts at its log's term, not 0"
    );
    restarted.set_repair_through(4);
    nodes.insert(1, restarted);
    nodes
}

#[test]
fn a_suspect_takes_no_commit_index_beyond_what_it_matched_with_the_leader() {
    let mut nodes = cluster_with_node_2_lacking_its_hard_state();
    // Its log holds 1..=4, but it has matched nothing with this leader since the restart (a
    // lost truncation could have brought back voided entries): a heartbeat's commit 4 must
    // not commit them; it asks the leader to resend from what it can vouch for.
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for _ in 0..nodes[0].config().heartbeat_ticks {
        nodes[0].tick(&mut rng);
    }
    let rd = nodes[0].ready();
    let heartbeat = persist_all(&mut nodes[0], rd)
        .into_iter()
        .find(|m| m.to == 2 && matches!(m.body, MessageBody::Heartbeat { commit: 4, .. }))
        .expect("heartbeat with commit 4 to node 2");
    nodes[1].step(heartbeat);
    assert_eq!(nodes[1].commit_index(), 0, "nothing committed unmatched");
    let rd = nodes[1].ready();
    let msgs = persist_all(&mut nodes[1], rd);
    match msgs.first().map(|m| &m.body) {
        Some(MessageBody::AppendEntriesResponse { result: Err(r) }) => {
            assert!(r.log_lost, "{r:?}");
            assert_eq!((r.hint_term, r.hint_index), (None, 1));
        }
        other => panic!("expected a log_lost rejection, got {other:?}"),
    }
    nodes[0].step(msgs[0].clone());
    settle(&mut nodes);
    assert_eq!(nodes[1].commit_index(), nodes[0].commit_index());
    assert_eq!(nodes[1].repair_through(), None, "repaired once matched");
}

#[test]
fn a_repaired_node_backs_the_leader_of_its_term_with_its_vote() {
    let mut nodes = cluster_with_node_2_lacking_its_hard_state();
    assert_eq!(nodes[1].hard_state().vote, None, "its vote was lost");
    // Heartbeats until the leader has re-sent what node 2 cannot vouch for.
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for _ in 0..4 {
        for _ in 0..nodes[0].config().heartbeat_ticks {
            nodes[0].tick(&mut rng);
        }
        settle(&mut nodes);
    }
    assert_eq!(nodes[1].repair_through(), None);
    // Whatever it voted before in this term, it votes for no other candidate of this term.
    assert_eq!(nodes[1].hard_state().vote, Some(1));
    assert_eq!(nodes[1].hard_state().term, nodes[0].term());
}
