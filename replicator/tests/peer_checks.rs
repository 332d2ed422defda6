//! The core never trusts a peer's arithmetic. One test per attack measured against real
//! servers (and a few more the audit of the step paths found); each fails on the
//! core before the checks — by a panic, a wrapped term, a campaign or a wrong commit (checked
//! by removing the assertions on `Ready::refused`, the report the driver gets, which the old
//! core did not have).

mod support;

use std::sync::Arc;

use raftline_replicator::sim::disk::SimDisk;
use raftline_replicator::{
    AppendReject, Config, HardState, Message, MessageBody, ProgressState, Raft, RefusalReason, Role,
};
use support::{entry, persist_all, Node};

fn config(id: u64) -> Config {
    let mut cfg = Config::new(id, vec![1, 2, 3]);
    cfg.pre_vote = true;
    cfg
}

fn node(id: u64) -> Node {
    Raft::new(config(id), HardState::default(), 0, SimDisk::default()).expect("valid config")
}

/// Delivers messages between the nodes (instant durability) until quiet.
fn settle(nodes: &mut [Node]) {
    let mut inflight: Vec<Message> = Vec::new();
    for n in nodes.iter_mut() {
        let rd = n.ready();
        inflight.extend(persist_all(n, rd));
    }
    while !inflight.is_empty() {
        for msg in std::mem::take(&mut inflight) {
            let to = msg.to as usize - 1;
            nodes[to].step(msg);
            let rd = nodes[to].ready();
            inflight.extend(persist_all(&mut nodes[to], rd));
        }
    }
}

/// Three nodes, node 1 leading term 2 (pre-vote) with everything committed everywhere.
fn cluster() -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3).map(node).collect();
    nodes[0].campaign();
    settle(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader);
    nodes[0].propose(Arc::from(&b"a"[..])).expect("leader");
    settle(&mut nodes);
    assert_eq!(nodes[1].leader(), Some(1));
    nodes
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// The refusals the node reports in its next `Ready` (persisting what else it holds).
fn refusals(raft: &mut Node) -> Vec<RefusalReason> {
    let rd = raft.ready();
    let reasons = rd.refused.iter().map(|r| r.reason).collect();
    persist_all(raft, rd);
    reasons
}

#[test]
fn a_response_with_term_u64_max_is_refused_and_the_term_stays_ours() {
    let mut nodes = cluster();
    let term = nodes[0].term();
    nodes[0].step(msg(
        2,
        1,
        u64::MAX,
        MessageBody::AppendEntriesResponse { result: Ok(1) },
    ));
    assert_eq!(nodes[0].term(), term, "the forged term was adopted");
    assert_eq!(nodes[0].role(), Role::Leader);
    assert!(matches!(
        refusals(&mut nodes[0])[..],
        [RefusalReason::TermOutOfRange { term: u64::MAX, .. }]
    ));
    // Just beyond the jump bound is refused too; within it is a (sane) newer term.
    nodes[1].step(msg(3, 2, term + (1 << 32) + 1, MessageBody::TimeoutNow));
    assert_eq!(nodes[1].term(), term);
    nodes[1].step(msg(
        3,
        2,
        term + 5,
        MessageBody::AppendEntriesResponse { result: Ok(0) },
    ));
    assert_eq!(
        nodes[1].term(),
        term + 5,
        "a sane newer term is still heard"
    );
    // And the node can campaign from there without the term wrapping.
    let mut rng = rand::rngs::mock::StepRng::new(0, 1);
    for _ in 0..40 {
        nodes[1].tick(&mut rng);
    }
    assert_eq!(nodes[1].role(), Role::PreCandidate);
}

#[test]
fn a_forged_ack_beyond_the_leaders_log_is_refused_not_a_panic() {
    let mut nodes = cluster();
    let (term, last) = (nodes[0].term(), nodes[0].last_index());
    let match_before = nodes[0].progress(2).expect("peer").match_index;
    // Before: "follower acknowledged entries the leader never had" (raft.rs ~1088).
    nodes[0].step(msg(
        2,
        1,
        term,
        MessageBody::AppendEntriesResponse {
            result: Ok(last + 5),
        },
    ));
    assert_eq!(
        nodes[0].progress(2).expect("peer").match_index,
        match_before
    );
    assert!(matches!(
        refusals(&mut nodes[0])[..],
        [RefusalReason::AckBeyondLog { .. }]
    ));
    assert_eq!(nodes[0].role(), Role::Leader);
}

#[test]
fn a_forged_ack_of_entries_never_sent_to_that_follower_does_not_commit_them() {
    // Node 1 leads with node 2's vote; node 3 is silent (its probe is outstanding, so the
    // leader sends it nothing more). A forged ack from node 3 for an entry never sent to it
    // would make a quorum with the leader's own durable copy.
    let mut leader = node(1);
    leader.campaign();
    let rd = leader.ready();
    persist_all(&mut leader, rd);
    let term = leader.term();
    leader.step(msg(
        2,
        1,
        term + 1,
        MessageBody::PreVoteResponse { granted: true },
    ));
    let rd = leader.ready();
    persist_all(&mut leader, rd);
    let term = leader.term();
    leader.step(msg(
        2,
        1,
        term,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    assert_eq!(leader.role(), Role::Leader);
    let rd = leader.ready();
    persist_all(&mut leader, rd);
    let (_, index) = leader.propose(Arc::from(&b"x"[..])).expect("leader");
    let rd = leader.ready();
    persist_all(&mut leader, rd);
    assert_eq!(leader.durable_index(), index);
    let commit = leader.commit_index();
    leader.step(msg(
        3,
        1,
        term,
        MessageBody::AppendEntriesResponse { result: Ok(index) },
    ));
    let _ = leader.ready();
    assert_eq!(
        leader.commit_index(),
        commit,
        "committed on the leader's disk and a forged ack"
    );
    assert!(matches!(refusals(&mut leader)[..], []));
    assert_eq!(leader.refused_total(), 1);
}

#[test]
fn a_timeout_now_is_obeyed_only_from_the_leader_we_follow() {
    let mut nodes = cluster();
    let term = nodes[1].term();
    // From a node that is not our leader, in our term.
    nodes[1].step(msg(3, 2, term, MessageBody::TimeoutNow));
    assert_eq!(
        nodes[1].role(),
        Role::Follower,
        "campaigned on a forged TimeoutNow"
    );
    assert_eq!(nodes[1].term(), term);
    // Of a newer term: no leader of it could have asked us.
    nodes[1].step(msg(3, 2, term + 1, MessageBody::TimeoutNow));
    assert_eq!(nodes[1].role(), Role::Follower);
    assert_eq!(nodes[1].term(), term, "a forged TimeoutNow moved the term");
    assert_eq!(
        refusals(&mut nodes[1]),
        vec![
            RefusalReason::NotTheLeader { leader: Some(1) },
            RefusalReason::NotTheLeader { leader: None },
        ]
    );
    // From the leader itself: campaign at once.
    nodes[1].step(msg(1, 2, term, MessageBody::TimeoutNow));
    assert_eq!(nodes[1].role(), Role::Candidate);
    assert_eq!(nodes[1].term(), term + 1);
}

#[test]
fn a_forged_append_from_a_non_leader_with_a_wild_commit_commits_nothing() {
    let mut nodes = cluster();
    let term = nodes[0].term();
    // The leader appends an entry; node 2 gets it, nobody has acknowledged it: uncommitted.
    nodes[0].propose(Arc::from(&b"b"[..])).expect("leader");
    let rd = nodes[0].ready();
    let to_2: Vec<Message> = persist_all(&mut nodes[0], rd)
        .into_iter()
        .filter(|m| m.to == 2)
        .collect();
    for m in to_2 {
        nodes[1].step(m);
    }
    let rd = nodes[1].ready();
    persist_all(&mut nodes[1], rd);
    let (last, commit) = (nodes[1].last_index(), nodes[1].commit_index());
    assert!(commit < last, "the new entry is not committed");
    nodes[1].step(msg(
        3,
        2,
        term,
        MessageBody::AppendEntries {
            prev_index: last,
            prev_term: term,
            entries: vec![],
            commit: u64::MAX,
        },
    ));
    assert_eq!(
        nodes[1].commit_index(),
        commit,
        "a forged commit index was taken"
    );
    assert_eq!(nodes[1].leader(), Some(1));
    assert_eq!(
        refusals(&mut nodes[1]),
        vec![RefusalReason::NotTheLeader { leader: Some(1) }]
    );
}

#[test]
fn entries_that_are_not_consecutive_after_prev_index_are_refused_not_a_panic() {
    let mut nodes = cluster();
    let term = nodes[1].term();
    let (last, commit) = (nodes[1].last_index(), nodes[1].commit_index());
    assert_eq!(commit, last);
    // A gap after prev_index (before: the log's truncation assertion).
    nodes[1].step(msg(
        1,
        2,
        term,
        MessageBody::AppendEntries {
            prev_index: last,
            prev_term: term,
            entries: vec![entry(last + 3, term)],
            commit: 0,
        },
    ));
    // An index that wrapped around after prev_index = u64::MAX.
    nodes[1].step(msg(
        1,
        2,
        term,
        MessageBody::AppendEntries {
            prev_index: u64::MAX,
            prev_term: term,
            entries: vec![entry(0, term)],
            commit: 0,
        },
    ));
    assert_eq!(nodes[1].last_index(), last);
    assert_eq!(nodes[1].term_at(last), nodes[0].term_at(last));
    assert_eq!(
        refusals(&mut nodes[1]),
        vec![
            RefusalReason::Malformed("entries not consecutive after prev_index"),
            RefusalReason::Malformed("entries not consecutive after prev_index"),
        ]
    );
}

#[test]
fn a_heartbeat_commit_beyond_the_followers_log_is_answered_with_where_it_ends() {
    let mut nodes = cluster();
    let term = nodes[1].term();
    let (commit, last) = (nodes[1].commit_index(), nodes[1].last_index());
    // Before: a debug assertion (a panic in debug builds), silently clamped in release.
    let refused = nodes[1].step(msg(
        1,
        2,
        term,
        MessageBody::Heartbeat {
            commit: u64::MAX,
            read_seq: 0,
        },
    ));
    assert_eq!(
        refused, None,
        "what a follower whose data directory was wiped receives"
    );
    assert_eq!(nodes[1].commit_index(), commit, "never taken");
    let rd = nodes[1].ready();
    assert!(rd.refused.is_empty());
    // Answered with the end of its log, as lost: a real leader that believes it holds more
    // (its data directory was wiped) lowers its match and resends from there or sends its
    // snapshot, instead of counting it caught up forever. A forger learns nothing.
    let reject = AppendReject {
        rejected_prev_index: u64::MAX,
        hint_term: None,
        hint_index: last + 1,
        log_lost: true,
    };
    assert!(
        rd.messages.iter().any(|m| m.to == 1
            && m.body
                == MessageBody::AppendEntriesResponse {
                    result: Err(reject)
                }),
        "{:?}",
        rd.messages
    );
    persist_all(&mut nodes[1], rd);
    assert_eq!(nodes[1].commit_index(), commit);
}

#[test]
fn a_reject_hint_no_follower_computes_leaves_its_progress_alone() {
    let mut nodes = cluster();
    let term = nodes[0].term();
    assert_eq!(
        nodes[0].progress(2).expect("peer").state,
        ProgressState::Replicate
    );
    nodes[0].step(msg(
        2,
        1,
        term,
        MessageBody::AppendEntriesResponse {
            result: Err(AppendReject {
                rejected_prev_index: u64::MAX,
                hint_term: None,
                hint_index: 1,
                log_lost: false,
            }),
        },
    ));
    assert_eq!(
        nodes[0].progress(2).expect("peer").state,
        ProgressState::Replicate,
        "a forged rejection sent the follower back to probing"
    );
    assert!(matches!(
        refusals(&mut nodes[0])[..],
        [RefusalReason::BadRejectHint]
    ));
}

#[test]
fn a_heartbeat_response_echoing_a_round_never_sent_confirms_no_read() {
    let mut nodes = cluster();
    let term = nodes[0].term();
    nodes[0]
        .read_index(7)
        .expect("leader committed in its term");
    let rd = nodes[0].ready();
    assert!(rd.read_states.is_empty());
    nodes[0].step(msg(
        2,
        1,
        term,
        MessageBody::HeartbeatResponse { read_seq: u64::MAX },
    ));
    let rd = nodes[0].ready();
    assert!(
        rd.read_states.is_empty(),
        "a forged echo confirmed a read: {:?}",
        rd.read_states
    );
    assert!(matches!(
        rd.refused.iter().map(|r| r.reason).collect::<Vec<_>>()[..],
        [RefusalReason::ReadSeqFromFuture { .. }]
    ));
}

#[test]
fn a_message_for_another_node_or_from_ourselves_is_refused() {
    let mut nodes = cluster();
    let term = nodes[1].term();
    // Before: "message delivered to the wrong node".
    nodes[1].step(msg(1, 3, term, MessageBody::TimeoutNow));
    nodes[1].step(msg(2, 2, term, MessageBody::TimeoutNow));
    nodes[1].step(msg(0, 2, term, MessageBody::TimeoutNow));
    assert_eq!(nodes[1].role(), Role::Follower);
    assert_eq!(
        refusals(&mut nodes[1]),
        vec![
            RefusalReason::WrongRecipient { to: 3 },
            RefusalReason::InvalidSender,
            RefusalReason::InvalidSender,
        ]
    );
}
