//! Membership an operator drives: the `MemberList`, `MemberAdd`, `MemberPromote`,
//! `MemberRemove` and `LeaderTransfer` requests, answered once their configuration entry commits
//! (or the new leader is seen), and the peer links, which follow the replicated configuration.
//!
//! The address book is the configuration's (`Membership::addresses`, carried by configuration
//! entries and snapshots): a node connects to every member it lists and to a member being
//! removed until its removal is applied (the removed node must receive the entry that removes
//! it). `fallback` holds the addresses known before the log had any: `--peers` (bootstrap) or the
//! configuration a joining node was admitted with. A peer address is `ip:port` or a name
//! (`host:port`, stored as given): names are looked up by the resolver thread (`peer_names.rs`)
//! and dialled once resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raftline_netio::client_proto::{ClientError, Member, MemberStatus, Response};
use raftline_netio::net::{ClientId, Net};
use raftline_replicator::membership::ADDRESS_BYTES_MAX;
use raftline_replicator::{
    Index, MemberAddress, Membership, MembershipChange, MembershipError, NodeId, Role, Term,
    TransferError,
};

use crate::peer_names::PeerNames;
use crate::replica::Replica;
use crate::replies::Replier;

/// A change proposed for a client, answered once its entry commits.
struct PendingChange {
    client: ClientId,
    request_id: u64,
    term: Term,
    index: Index,
    deadline: Instant,
}

/// A leadership transfer under way for a client.
struct PendingTransfer {
    client: ClientId,
    request_id: u64,
    to: NodeId,
    deadline: Instant,
}

/// What an operator asked of the configuration.
pub enum MemberRequest {
    /// `member list`.
    List,
    /// `member add --learner`.
    Add {
        /// The new node.
        id: NodeId,
        /// Where peers reach it.
        peer_address: String,
        /// Where clients reach it.
        client_address: String,
        /// Its data directory's incarnation (0: recorded when it connects).
        incarnation: u64,
    },
    /// `member update`: a member's new addresses.
    Update {
        /// The member.
        id: NodeId,
        /// Where peers reach it now.
        peer_address: String,
        /// Where clients reach it now.
        client_address: String,
    },
    /// `member promote`.
    Promote(NodeId),
    /// `member remove` (`force`: skip the reachable-quorum check).
    Remove(NodeId, bool),
    /// `leader transfer` (`None`: the most caught-up reachable voter).
    Transfer(Option<NodeId>),
}

/// The raft thread's membership state.
pub struct Members {
    node_id: NodeId,
    /// How long an answer may take (a change's commit, a transfer's election).
    answer_timeout: Duration,
    /// A voter not heard from for this long counts as down (the election timeout's upper end).
    down_after: Duration,
    /// Addresses known before the log held any (flags, or the configuration a joiner got).
    fallback: BTreeMap<NodeId, MemberAddress>,
    /// The configurations (current, applied) the peer links were last set for.
    linked_for: Option<(Membership, Membership)>,
    /// The peers the Net was told to connect to (those known by name once resolved).
    linked: BTreeSet<NodeId>,
    /// The resolver of the members known by name.
    names: PeerNames,
    /// Client address of every member: leader hints and `Status`.
    client_addresses: BTreeMap<NodeId, String>,
    /// When each peer's last message arrived.
    last_heard: BTreeMap<NodeId, Instant>,
    /// The incarnation each peer's latest hello announced (non-zero ones only).
    hello_incarnations: BTreeMap<NodeId, u64>,
    change: Option<PendingChange>,
    transfer: Option<PendingTransfer>,
}

impl Members {
    /// Membership state of node `node_id`; `fallback` as the module says; `names` resolves
    /// the peers known by name.
    pub fn new(
        node_id: NodeId,
        answer_timeout: Duration,
        down_after: Duration,
        fallback: BTreeMap<NodeId, MemberAddress>,
        names: PeerNames,
    ) -> Members {
        let client_addresses = fallback
            .iter()
            .filter(|(_, a)| !a.client.is_empty())
            .map(|(&id, a)| (id, a.client.clone()))
            .collect();
        Members {
            node_id,
            answer_timeout,
            down_after,
            linked: fallback
                .keys()
                .copied()
                .filter(|&id| id != node_id)
                .collect(),
            fallback,
            names,
            linked_for: None,
            client_addresses,
            last_heard: BTreeMap::new(),
            hello_incarnations: BTreeMap::new(),
            change: None,
            transfer: None,
        }
    }

    /// Client address of every member known (leader hints, `Status`).
    pub fn client_addresses(&self) -> &BTreeMap<NodeId, String> {
        &self.client_addresses
    }

    /// Dials the members known by name at the addresses the resolver found (new, or moved).
    pub fn dial_resolved(&mut self, net: &mut Net) {
        for (id, addr) in self.names.resolved() {
            // A peer removed since it was looked up stays removed.
            if self.linked.contains(&id) {
                net.add_peer(id, addr);
            }
        }
    }

    /// The connection to `peer` went down: if it is known by name, look the name up again now
    /// (a replaced pod keeps its name, not its address).
    pub fn peer_down(&self, peer: NodeId) {
        if self.names.follows(peer) {
            self.names.refresh();
        }
    }

    /// A message from `peer` arrived.
    pub fn heard(&mut self, peer: NodeId, now: Instant) {
        self.last_heard.insert(peer, now);
    }

    /// `peer` said hello from the data directory of `incarnation` (0: an older node).
    pub fn hello(&mut self, peer: NodeId, incarnation: u64) {
        if incarnation != 0 {
            self.hello_incarnations.insert(peer, incarnation);
        }
    }

    /// A leader records the incarnation of a member that has none recorded yet (itself, `own`,
    /// or a peer whose hello announced one): one `UpdateAddress` change at a time, after any
    /// change an operator asked for; a refusal (a change pending, no entry of this term
    /// committed yet) is tried again next round.
    pub fn record_incarnations(&mut self, replica: &mut Replica, own: u64) {
        let raft = replica.raft();
        if raft.role() != Role::Leader || self.change.is_some() || own == 0 {
            return;
        }
        let membership = raft.membership();
        let unrecorded = membership.members().find_map(|id| {
            let address = membership.addresses.get(&id)?;
            let seen = if id == self.node_id {
                own
            } else {
                *self.hello_incarnations.get(&id)?
            };
            (address.incarnation == 0).then(|| {
                let recorded = MemberAddress {
                    incarnation: seen,
                    ..address.clone()
                };
                (id, recorded)
            })
        });
        let Some((id, address)) = unrecorded else {
            return;
        };
        let incarnation = address.incarnation;
        match replica.propose_membership(MembershipChange::UpdateAddress(id, address)) {
            Ok((_, index)) => tracing::info!(
                node = id,
                incarnation = format_args!("{incarnation:016x}"),
                index,
                "recording a member's data directory incarnation"
            ),
            Err(e) => tracing::debug!(node = id, error = %e, "recording an incarnation: later"),
        }
    }

    /// Handles one operator request (only a leader acts; others answer `NotLeader`).
    pub fn request(
        &mut self,
        net: &mut Net,
        replier: &Replier,
        replica: &mut Replica,
        client: ClientId,
        request_id: u64,
        request: MemberRequest,
    ) {
        let raft = replica.raft();
        if raft.role() != Role::Leader {
            let error = self.not_leader(raft.leader());
            return replier.error(net, client, request_id, error);
        }
        let now = Instant::now();
        let change = match request {
            MemberRequest::List => {
                let reply = self.list(replica, net, request_id, now);
                return replier.respond(net, client, &reply);
            }
            MemberRequest::Transfer(to) => {
                return match self.start_transfer(net, replica, to, now) {
                    Ok(to) => {
                        self.transfer = Some(PendingTransfer {
                            client,
                            request_id,
                            to,
                            deadline: now + self.answer_timeout,
                        })
                    }
                    Err(error) => replier.error(net, client, request_id, error),
                };
            }
            MemberRequest::Add {
                id,
                peer_address,
                client_address,
                incarnation,
            } => match member_address(peer_address, client_address, incarnation) {
                Ok(address) => MembershipChange::AddLearner(id, address),
                Err(error) => return replier.error(net, client, request_id, error),
            },
            MemberRequest::Update {
                id,
                peer_address,
                client_address,
            } => {
                // The recorded incarnation stays: the member moved with its data directory.
                let membership = raft.membership();
                let incarnation = membership.addresses.get(&id).map_or(0, |a| a.incarnation);
                match member_address(peer_address, client_address, incarnation) {
                    Ok(address) => MembershipChange::UpdateAddress(id, address),
                    Err(error) => return replier.error(net, client, request_id, error),
                }
            }
            MemberRequest::Promote(id) => MembershipChange::PromoteLearner(id),
            MemberRequest::Remove(id, force) => {
                if !force {
                    if let Err(error) =
                        self.check_quorum_after(net, replica, &MembershipChange::Remove(id), now)
                    {
                        return replier.error(net, client, request_id, error);
                    }
                }
                MembershipChange::Remove(id)
            }
        };
        if let MembershipChange::PromoteLearner(_) = change {
            if let Err(error) = self.check_quorum_after(net, replica, &change, now) {
                return replier.error(net, client, request_id, error);
            }
        }
        tracing::info!(?change, "configuration change requested");
        match replica.propose_membership(change) {
            Ok((term, index)) => {
                self.change = Some(PendingChange {
                    client,
                    request_id,
                    term,
                    index,
                    deadline: now + self.answer_timeout,
                })
            }
            Err(e) => {
                let error = self.refusal(e);
                replier.error(net, client, request_id, error);
            }
        }
    }

    /// After a round: the peer links follow the configuration; changes and transfers that
    /// completed (or failed) are answered. True when the members' client addresses changed.
    pub fn settle(&mut self, net: &mut Net, replier: &Replier, replica: &Replica) -> bool {
        let relinked = self.link_peers(net, replica);
        self.answer_change(net, replier, replica);
        self.answer_transfer(net, replier, replica);
        relinked
    }

    fn link_peers(&mut self, net: &mut Net, replica: &Replica) -> bool {
        let raft = replica.raft();
        let (current, applied) = (raft.membership(), raft.applied_membership());
        if self
            .linked_for
            .as_ref()
            .is_some_and(|(c, a)| c == current && a == applied)
        {
            return false;
        }
        self.linked_for = Some((current.clone(), applied.clone()));
        if current.voters.is_empty() && current.learners.is_empty() {
            // A joining node that has not received the configuration yet: keep the links it
            // was given.
            return false;
        }
        let mut wanted: BTreeMap<NodeId, &MemberAddress> = BTreeMap::new();
        for id in current.members().chain(applied.members()) {
            let address = current
                .addresses
                .get(&id)
                .or_else(|| applied.addresses.get(&id))
                .or_else(|| self.fallback.get(&id));
            if let Some(address) = address {
                wanted.insert(id, address);
            }
        }
        let mut names = BTreeMap::new();
        for (&id, address) in &wanted {
            if id == self.node_id {
                continue;
            }
            net.set_peer_incarnation(id, address.incarnation);
            match address.peer.parse::<SocketAddr>() {
                Ok(addr) => net.add_peer(id, addr),
                // Dialled once resolved (`dial_resolved`).
                Err(_) => {
                    names.insert(id, address.peer.clone());
                }
            }
        }
        self.names.follow(names);
        for &id in &self.linked {
            if !wanted.contains_key(&id) {
                net.remove_peer(id);
                net.set_peer_incarnation(id, 0);
                self.hello_incarnations.remove(&id);
            }
        }
        self.linked = wanted
            .keys()
            .copied()
            .filter(|&id| id != self.node_id)
            .collect();
        self.client_addresses = wanted
            .iter()
            .filter(|(_, a)| !a.client.is_empty())
            .map(|(&id, a)| (id, a.client.clone()))
            .collect();
        self.last_heard.retain(|id, _| wanted.contains_key(id));
        tracing::info!(
            voters = ?current.voters,
            learners = ?current.learners,
            "peer links follow the configuration"
        );
        true
    }

    fn answer_change(&mut self, net: &mut Net, replier: &Replier, replica: &Replica) {
        let Some(p) = &self.change else {
            return;
        };
        let raft = replica.raft();
        let answer = if raft.commit_index() >= p.index {
            let why = match raft.term_at(p.index) {
                Some(term) if term == p.term => None,
                Some(_) => {
                    Some("a new leader replaced the change before it committed: it did not happen")
                }
                // Compacted into a snapshot in the round it committed (it did, if the snapshot
                // holds it): say so rather than guess.
                None => Some("the change's entry was compacted away: check `raftline member list`"),
            };
            match why {
                None => Response::MembershipChanged {
                    request_id: p.request_id,
                    index: p.index,
                    members: members_of(raft.membership()),
                },
                Some(why) => Response::Error {
                    request_id: p.request_id,
                    error: ClientError::Unavailable { why: why.into() },
                },
            }
        } else if raft.role() != Role::Leader {
            Response::Error {
                request_id: p.request_id,
                error: ClientError::Unavailable {
                    why: "leadership was lost before the change committed; it may or may not \
                          take effect: check `raftline member list`"
                        .into(),
                },
            }
        } else if Instant::now() >= p.deadline {
            Response::Error {
                request_id: p.request_id,
                error: ClientError::Timeout,
            }
        } else {
            return;
        };
        replier.respond(net, p.client, &answer);
        self.change = None;
    }

    fn answer_transfer(&mut self, net: &mut Net, replier: &Replier, replica: &Replica) {
        let Some(p) = &self.transfer else {
            return;
        };
        let raft = replica.raft();
        let error = match raft.leader() {
            Some(leader) if leader != self.node_id => {
                let answer = Response::LeaderTransferred {
                    request_id: p.request_id,
                    leader_id: leader,
                    leader_address: self.client_addresses.get(&leader).cloned(),
                };
                replier.respond(net, p.client, &answer);
                self.transfer = None;
                return;
            }
            _ if raft.role() == Role::Leader && raft.transfer_target().is_none() => {
                ClientError::Unavailable {
                    why: format!(
                        "node {} did not take over within an election timeout; this node still \
                         leads",
                        p.to
                    ),
                }
            }
            _ if Instant::now() >= p.deadline => ClientError::Timeout,
            _ => return,
        };
        replier.error(net, p.client, p.request_id, error);
        self.transfer = None;
    }

    fn list(&self, replica: &Replica, net: &Net, request_id: u64, now: Instant) -> Response {
        let raft = replica.raft();
        let m = raft.membership();
        let last = raft.last_index();
        let members = members_of(m)
            .into_iter()
            .map(|member| {
                if member.id == self.node_id {
                    let durable = raft.durable_index();
                    return MemberStatus {
                        member,
                        match_index: durable,
                        lag_entries: last - durable.min(last),
                        last_contact_ms: None,
                        connected: true,
                    };
                }
                let match_index = raft.progress(member.id).map_or(0, |p| p.match_index);
                MemberStatus {
                    match_index,
                    lag_entries: last.saturating_sub(match_index),
                    last_contact_ms: self
                        .last_heard
                        .get(&member.id)
                        .map(|&at| now.duration_since(at).as_millis() as u64),
                    connected: net.peer_is_up(member.id),
                    member,
                }
            })
            .collect();
        Response::MemberListReply {
            request_id,
            leader_id: self.node_id,
            commit_index: raft.commit_index(),
            change_pending: raft.pending_config_index(),
            members,
        }
    }

    fn start_transfer(
        &self,
        net: &Net,
        replica: &mut Replica,
        to: Option<NodeId>,
        now: Instant,
    ) -> Result<NodeId, ClientError> {
        let raft = replica.raft();
        let to = match to {
            Some(to) => to,
            None => raft
                .membership()
                .voters
                .iter()
                .copied()
                .filter(|&v| v != self.node_id && self.is_up(net, v, now))
                .max_by_key(|&v| raft.progress(v).map_or(0, |p| p.match_index))
                .ok_or_else(|| ClientError::MembershipRefused {
                    why: "no other voter is reachable to take over".into(),
                })?,
        };
        match replica.transfer_leadership(to) {
            Ok(()) => {
                tracing::info!(to, "leadership transfer requested");
                Ok(to)
            }
            Err(TransferError::NotLeader { leader }) => Err(self.not_leader(leader)),
            Err(e) => Err(ClientError::MembershipRefused { why: e.to_string() }),
        }
    }

    /// Refuses a change after which the voters reachable now would not be a quorum.
    fn check_quorum_after(
        &self,
        net: &Net,
        replica: &Replica,
        change: &MembershipChange,
        now: Instant,
    ) -> Result<(), ClientError> {
        let current = replica.raft().membership();
        let Ok(next) = current.apply(change) else {
            // Not applicable: the core says why.
            return Ok(());
        };
        let (up, down): (Vec<NodeId>, Vec<NodeId>) =
            next.voters.iter().partition(|&&v| self.is_up(net, v, now));
        if up.len() >= next.quorum() {
            return Ok(());
        }
        let action = match change {
            MembershipChange::Remove(id) => format!("removing node {id}"),
            MembershipChange::PromoteLearner(id) => format!("promoting node {id}"),
            MembershipChange::AddLearner(id, _) => format!("adding node {id}"),
            MembershipChange::UpdateAddress(id, _) => format!("updating node {id}'s address"),
        };
        let heard = |v: &NodeId| match self.last_heard.get(v) {
            Some(&at) => format!(
                "node {v} last heard {} ms ago",
                now.duration_since(at).as_millis()
            ),
            None => format!("node {v} never heard from"),
        };
        Err(ClientError::WouldLoseQuorum {
            why: format!(
                "{action} leaves voters {:?}, of which only {up:?} are reachable ({}); a quorum \
                 needs {}. Bring the others back first, or pass --force to accept a cluster \
                 that cannot commit until they return",
                next.voters,
                down.iter().map(heard).collect::<Vec<_>>().join(", "),
                next.quorum()
            ),
        })
    }

    /// This node, or a peer whose link is up and that was heard from within `down_after`.
    fn is_up(&self, net: &Net, id: NodeId, now: Instant) -> bool {
        id == self.node_id
            || (net.peer_is_up(id)
                && self
                    .last_heard
                    .get(&id)
                    .is_some_and(|&at| now.duration_since(at) < self.down_after))
    }

    fn not_leader(&self, leader: Option<NodeId>) -> ClientError {
        ClientError::NotLeader {
            leader_id: leader,
            leader_address: leader.and_then(|id| self.client_addresses.get(&id).cloned()),
        }
    }

    fn refusal(&self, e: MembershipError) -> ClientError {
        match e {
            MembershipError::NotLeader { leader } => self.not_leader(leader),
            MembershipError::Transferring { .. }
            | MembershipError::ChangePending { .. }
            | MembershipError::NotYetCommittedInTerm => {
                ClientError::ChangeNotNow { why: e.to_string() }
            }
            MembershipError::LearnerBehind {
                id,
                match_index,
                commit,
            } => ClientError::LearnerBehind {
                id,
                match_index,
                commit_index: commit,
            },
            MembershipError::AlreadyMember(_)
            | MembershipError::NotAMember(_)
            | MembershipError::NotALearner(_)
            | MembershipError::LastVoter(_)
            | MembershipError::ZeroId
            | MembershipError::IncarnationRecorded { .. } => {
                ClientError::MembershipRefused { why: e.to_string() }
            }
        }
    }
}

/// A member's addresses: where peers dial it and where clients reach it.
fn check_addresses(peer: &str, client: &str) -> Result<(), String> {
    check_address("peer address", peer)?;
    check_address("client address", client)
}

/// A member's address book entry, its addresses checked.
fn member_address(
    peer: String,
    client: String,
    incarnation: u64,
) -> Result<MemberAddress, ClientError> {
    check_addresses(&peer, &client).map_err(|why| ClientError::BadRequest { why })?;
    Ok(MemberAddress {
        peer,
        client,
        incarnation,
    })
}

/// An address other nodes and clients can dial: `ip:port` or `host:port` (a name, resolved
/// where it is dialled, off the raft thread), not a wildcard or port 0, within
/// [`ADDRESS_BYTES_MAX`]. `what` names it in the refusal.
pub fn check_address(what: &str, address: &str) -> Result<(), String> {
    if address.len() > ADDRESS_BYTES_MAX {
        return Err(format!(
            "{what} {address:?}: addresses are limited to {ADDRESS_BYTES_MAX} bytes"
        ));
    }
    let port = match address.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            return Err(format!(
                "{what} {address} is a wildcard: other nodes need an address they can dial"
            ))
        }
        Ok(addr) => addr.port(),
        Err(_) => {
            let name_port = address
                .rsplit_once(':')
                .filter(|(host, _)| is_host_name(host));
            let Some((_, port)) = name_port else {
                return Err(format!("{what} {address:?} is not ip:port or host:port"));
            };
            port.parse::<u16>()
                .map_err(|_| format!("{what} {address:?}: the port is not a number"))?
        }
    };
    if port == 0 {
        return Err(format!(
            "{what} {address} has port 0: other nodes need a port they can dial"
        ));
    }
    Ok(())
}

/// A DNS name: dot-separated labels of letters, digits and hyphens.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The members of `m` with their addresses, voters first.
pub fn members_of(m: &Membership) -> Vec<Member> {
    m.members()
        .map(|id| {
            let address = m.addresses.get(&id);
            Member {
                id,
                peer_address: address.map(|a| a.peer.clone()).unwrap_or_default(),
                client_address: address.map(|a| a.client.clone()).unwrap_or_default(),
                voter: m.is_voter(id),
                incarnation: address.map_or(0, |a| a.incarnation),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_member_needs_addresses_other_nodes_can_use() {
        for (peer, client) in [
            ("10.0.0.4:7301", "10.0.0.4:7300"),
            ("[fd00::4]:7301", "[fd00::4]:7300"),
            // Names are stored as given and resolved where they are dialled.
            (
                "raftline-3.raftline-peers.prod.svc:7301",
                "raftline-3.raftline-peers:7401",
            ),
            ("localhost:7301", "localhost:7300"),
        ] {
            assert_eq!(check_addresses(peer, client), Ok(()), "{peer} {client}");
        }
        for peer in [
            "0.0.0.0:7301",
            "[::]:7301",
            "10.0.0.4:0",
            "raftline-4.peers:0",
            "raftline-4.peers",
            "raftline-4.peers:http",
            "bad_name:7301",
            "a..b:7301",
            ":7301",
            "",
        ] {
            let refused = check_addresses(peer, "10.0.0.4:7300").unwrap_err();
            assert!(
                refused.contains("peer address") && refused.contains(peer),
                "{refused}"
            );
        }
        let refused = check_addresses("10.0.0.4:7301", "").unwrap_err();
        assert!(refused.contains("client address"), "{refused}");
        let long = format!("{}.example:7301", "a".repeat(ADDRESS_BYTES_MAX));
        assert!(check_addresses(&long, "10.0.0.4:7300")
            .unwrap_err()
            .contains("limited"));
    }

    #[test]
    fn members_are_listed_voters_first_with_their_addresses() {
        let m = Membership {
            voters: vec![1, 2],
            learners: vec![7],
            addresses: [(
                7,
                MemberAddress {
                    peer: "10.0.0.7:7301".into(),
                    client: "10.0.0.7:7300".into(),
                    incarnation: 0x77,
                },
            )]
            .into(),
        };
        let listed = members_of(&m);
        let ids: Vec<(u64, bool)> = listed.iter().map(|m| (m.id, m.voter)).collect();
        assert_eq!(ids, [(1, true), (2, true), (7, false)]);
        assert_eq!(listed[2].client_address, "10.0.0.7:7300");
        assert_eq!(listed[0].peer_address, "", "no address known for node 1");
    }
}
