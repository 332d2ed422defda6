//! Membership administration: requests only the leader answers (`MemberList`, `MemberAdd`,
//! `MemberPromote`, `MemberRemove`, `LeaderTransfer`), sent to it the way producers find it.
//!
//! A `NotLeader` answer means the node did not act on the request, so it is sent again to the
//! leader it names (within the fail-over timeout). Any other failure after the request left
//! (the connection died, `Timeout`, `Unavailable`) leaves the outcome unknown and is returned:
//! `member list` tells whether the change happened.

use std::time::{Duration, Instant};

use crate::client::leader::LeaderLink;
use crate::client::{ClientConfig, Error};
use crate::client_proto::{ClientError, Member, MemberStatus, Request, Response};

/// The configuration as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberList {
    /// The leader that answered.
    pub leader_id: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Index of a configuration change not committed yet, if any.
    pub change_pending: Option<u64>,
    /// Every member, voters first.
    pub members: Vec<MemberStatus>,
}

/// A committed configuration change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChanged {
    /// Index of its configuration entry.
    pub index: u64,
    /// The members after it.
    pub members: Vec<Member>,
}

/// The members, their addresses and replication progress.
pub fn members(config: &ClientConfig) -> Result<MemberList, Error> {
    match ask_leader(config, |request_id| Request::MemberList { request_id })? {
        Response::MemberListReply {
            leader_id,
            commit_index,
            change_pending,
            members,
            ..
        } => Ok(MemberList {
            leader_id,
            commit_index,
            change_pending,
            members,
        }),
        other => Err(unexpected("a member list", other)),
    }
}

/// Adds node `id` as a learner reached at these addresses, on the data directory of
/// `incarnation` (0: recorded when it first connects); returns once the change committed.
pub fn add_learner(
    config: &ClientConfig,
    id: u64,
    peer_address: &str,
    client_address: &str,
    incarnation: u64,
) -> Result<MembershipChanged, Error> {
    change(config, |request_id| Request::MemberAdd {
        request_id,
        id,
        peer_address: peer_address.to_string(),
        client_address: client_address.to_string(),
        incarnation,
    })
}

/// Member `id` is reached at these addresses now (it moved with its data directory); returns
/// once the change committed.
pub fn update_address(
    config: &ClientConfig,
    id: u64,
    peer_address: &str,
    client_address: &str,
) -> Result<MembershipChanged, Error> {
    change(config, |request_id| Request::MemberUpdate {
        request_id,
        id,
        peer_address: peer_address.to_string(),
        client_address: client_address.to_string(),
    })
}

/// Makes learner `id` a voter (refused with `LearnerBehind` until it has caught up).
pub fn promote(config: &ClientConfig, id: u64) -> Result<MembershipChanged, Error> {
    change(config, |request_id| Request::MemberPromote {
        request_id,
        id,
    })
}

/// Removes member `id` (`force`: even if the remaining reachable voters are not a quorum).
pub fn remove(config: &ClientConfig, id: u64, force: bool) -> Result<MembershipChanged, Error> {
    change(config, |request_id| Request::MemberRemove {
        request_id,
        id,
        force,
    })
}

/// Hands leadership to voter `to` (`None`: the leader picks the most caught-up one); returns the
/// new leader's id and client address once the old leader saw it take over.
pub fn transfer_leadership(
    config: &ClientConfig,
    to: Option<u64>,
) -> Result<(u64, Option<String>), Error> {
    match ask_leader(config, |request_id| Request::LeaderTransfer {
        request_id,
        to,
    })? {
        Response::LeaderTransferred {
            leader_id,
            leader_address,
            ..
        } => Ok((leader_id, leader_address)),
        other => Err(unexpected("a leadership transfer answer", other)),
    }
}

fn change(
    config: &ClientConfig,
    request: impl Fn(u64) -> Request,
) -> Result<MembershipChanged, Error> {
    match ask_leader(config, request)? {
        Response::MembershipChanged { index, members, .. } => {
            Ok(MembershipChanged { index, members })
        }
        other => Err(unexpected("a membership change answer", other)),
    }
}

/// Pause before asking again for a change refused with `ChangeNotNow`.
const CHANGE_RETRY: Duration = Duration::from_millis(50);

/// Sends `request` to the leader and returns its answer; follows `NotLeader` hints and retries
/// `ChangeNotNow` until the fail-over timeout.
fn ask_leader(config: &ClientConfig, request: impl Fn(u64) -> Request) -> Result<Response, Error> {
    let deadline = Instant::now() + config.failover_timeout;
    let mut link = LeaderLink::new(config.clone());
    loop {
        let request_id = link.next_id();
        let conn = link.connection()?;
        let address = conn.address().to_string();
        conn.send(&request(request_id))?;
        let answer = loop {
            match conn.recv(config.request_timeout)? {
                Some(r) if response_id(&r) == Some(request_id) => break r,
                // An answer to an earlier request of this link (status probes): skip it.
                Some(_) => continue,
                None => {
                    return Err(Error::Timeout {
                        address,
                        timeout: config.request_timeout,
                    })
                }
            }
        };
        match answer {
            Response::Error {
                error: ClientError::NotLeader { leader_address, .. },
                ..
            } if Instant::now() < deadline => link.reset(leader_address),
            // One change at a time (another, perhaps the leader's own recording of a member's
            // incarnation, is committing) or a new leader not ready for changes: it says to
            // retry shortly.
            Response::Error {
                error: ClientError::ChangeNotNow { .. },
                ..
            } if Instant::now() < deadline => std::thread::sleep(CHANGE_RETRY),
            Response::Error { error, .. } => return Err(Error::Refused { address, error }),
            answer => return Ok(answer),
        }
    }
}

/// The request id an answer names (`None` for answers that name none of ours).
fn response_id(response: &Response) -> Option<u64> {
    match response {
        Response::Error { request_id, .. }
        | Response::MemberListReply { request_id, .. }
        | Response::MembershipChanged { request_id, .. }
        | Response::LeaderTransferred { request_id, .. } => Some(*request_id),
        _ => None,
    }
}

fn unexpected(wanted: &str, got: Response) -> Error {
    Error::Protocol {
        address: String::new(),
        why: format!("expected {wanted}, got {got:?}"),
    }
}
