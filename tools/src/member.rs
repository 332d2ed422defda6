//! `raftline member list|add|promote|remove|update` and `raftline leader transfer`: the cluster's
//! configuration, changed one server at a time through the leader.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use raftline_netio::client::admin::{self, MembershipChanged};
use raftline_netio::client::{ClientConfig, Error};
use raftline_netio::client_proto::ClientError;

use crate::cluster_args::ClusterArgs;

/// The long `--help` of `raftline member`.
pub const LONG_ABOUT: &str = "The cluster's members, changed one at a time (Raft single-server \
changes). Each change is a configuration entry in the log, answered once it commits; the \
configuration, with every member's peer and client address, travels in the log and in \
snapshots, so restarted and new nodes learn it from there. A new node catches up as a learner \
(it receives the log but does not vote) and becomes a voter once it matches the log. A change \
that would leave fewer reachable voters than a quorum of the new configuration is refused \
unless --force. See tools/node/README.md \"Membership\" and tools/deploy/README.md \"Replacing \
a dead node\".";

/// `raftline member …`.
#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Every member: id, peer and client address, voter or learner, match index, lag, last
    /// contact (as the leader sees them).
    List(ListArgs),
    /// Add a node: as a learner, then (without --learner) promote it once it has caught up.
    Add(AddArgs),
    /// Make a learner a voter (refused, with the reason, until it has caught up).
    Promote(PromoteArgs),
    /// Remove a voter or a learner (refused if the remaining reachable voters are no quorum).
    Remove(RemoveArgs),
    /// A member's new peer and client addresses: its machine moved and kept its data
    /// directory (a wiped one is removed and joins instead). Voters and learners stay as they
    /// are; members dial it at the new address once the change is in their log.
    Update(UpdateArgs),
}

/// Flags of `raftline member update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The member and where it is now.
    #[command(flatten)]
    pub member: MemberAddressArgs,
}

/// A member's id and addresses (`member add`, `member update`).
#[derive(Args, Debug)]
pub struct MemberAddressArgs {
    /// The node's id.
    #[arg(long)]
    pub id: u64,
    /// Where peers reach it (its `--listen`): ip:port, or a name (host:port) that every member
    /// resolves by itself (off its raft thread) and again when it moves.
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_addr: String,
    /// Where clients reach it (its `--client-listen`).
    #[arg(long, value_name = "HOST:PORT")]
    pub client_addr: String,
}

/// Flags of `raftline member list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Flags of `raftline member add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The new node: its id (unused in the cluster) and addresses.
    #[command(flatten)]
    pub member: MemberAddressArgs,
    /// Leave it a learner (promote it later with `member promote`).
    #[arg(long)]
    pub learner: bool,
    /// Without --learner: how long to wait for the learner to catch up before promoting it, in
    /// seconds.
    #[arg(long, default_value_t = 300)]
    pub catch_up_s: u64,
}

/// Flags of `raftline member promote`.
#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The learner's id.
    pub id: u64,
}

/// Flags of `raftline member remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The member's id.
    pub id: u64,
    /// Remove it even if the voters reachable now would not be a quorum of the new
    /// configuration (the cluster then cannot commit until enough of them return).
    #[arg(long)]
    pub force: bool,
}

/// `raftline leader …`.
#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Hand leadership to another voter (the most caught-up one, or --to N).
    Transfer(TransferArgs),
}

/// Flags of `raftline leader transfer`.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The voter to lead next [default: the most caught-up reachable one].
    #[arg(long, value_name = "N")]
    pub to: Option<u64>,
}

/// Runs `raftline member …`.
pub fn run(command: MemberCommand) -> anyhow::Result<ExitCode> {
    match command {
        MemberCommand::List(args) => list(&args.cluster.client_config()?),
        MemberCommand::Add(args) => add(args),
        MemberCommand::Promote(args) => {
            let config = args.cluster.client_config()?;
            print_change("promoted", args.id, &admin::promote(&config, args.id)?);
            Ok(ExitCode::SUCCESS)
        }
        MemberCommand::Remove(args) => {
            let config = args.cluster.client_config()?;
            let changed = admin::remove(&config, args.id, args.force)?;
            print_change("removed", args.id, &changed);
            println!(
                "stop node {} now (its data directory can be deleted)",
                args.id
            );
            Ok(ExitCode::SUCCESS)
        }
        MemberCommand::Update(args) => {
            let config = args.cluster.client_config()?;
            let m = &args.member;
            let changed = admin::update_address(&config, m.id, &m.peer_addr, &m.client_addr)?;
            print_change("updated", m.id, &changed);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `raftline leader …`.
pub fn run_leader(command: LeaderCommand) -> anyhow::Result<ExitCode> {
    let LeaderCommand::Transfer(args) = command;
    let (leader, address) = admin::transfer_leadership(&args.cluster.client_config()?, args.to)?;
    println!(
        "node {leader} leads now{}",
        address.map(|a| format!(" ({a})")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(config: &ClientConfig) -> anyhow::Result<ExitCode> {
    let list = admin::members(config)?;
    println!(
        "leader {}, commit index {}{}",
        list.leader_id,
        list.commit_index,
        list.change_pending
            .map(|i| format!(", change at index {i} not committed yet"))
            .unwrap_or_default()
    );
    println!(
        "{:>4}  {:<7}  {:<21}  {:<21}  {:>10}  {:>8}  {:>12}  {:<16}",
        "id", "role", "peer", "client", "match", "lag", "last contact", "incarnation"
    );
    for m in &list.members {
        let role = match (m.member.voter, m.member.id == list.leader_id) {
            (true, true) => "leader",
            (true, false) => "voter",
            (false, _) => "learner",
        };
        let contact = match (
            m.member.id == list.leader_id,
            m.last_contact_ms,
            m.connected,
        ) {
            (true, _, _) => "-".to_string(),
            (false, Some(ms), true) => format!("{ms} ms"),
            (false, Some(ms), false) => format!("{ms} ms, down"),
            (false, None, _) => "never".to_string(),
        };
        println!(
            "{:>4}  {:<7}  {:<21}  {:<21}  {:>10}  {:>8}  {:>12}  {:<16}",
            m.member.id,
            role,
            or_unknown(&m.member.peer_address),
            or_unknown(&m.member.client_address),
            m.match_index,
            m.lag_entries,
            contact,
            match m.member.incarnation {
                0 => "-".to_string(),
                n => format!("{n:016x}"),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let config = args.cluster.client_config()?;
    let m = &args.member;
    let changed = admin::add_learner(&config, m.id, &m.peer_addr, &m.client_addr, 0)?;
    print_change("added as a learner", m.id, &changed);
    if args.learner {
        return Ok(ExitCode::SUCCESS);
    }
    let changed = promote_once_caught_up(&config, m.id, Duration::from_secs(args.catch_up_s))?;
    print_change("promoted", m.id, &changed);
    Ok(ExitCode::SUCCESS)
}

/// Promotes learner `id`, asking again while it is behind (it is catching up) or another
/// change is pending, until `wait` passes.
fn promote_once_caught_up(
    config: &ClientConfig,
    id: u64,
    wait: Duration,
) -> anyhow::Result<MembershipChanged> {
    let deadline = Instant::now() + wait;
    let mut reported = 0;
    loop {
        match admin::promote(config, id) {
            Ok(changed) => return Ok(changed),
            Err(Error::Refused {
                error:
                    ClientError::LearnerBehind {
                        match_index,
                        commit_index,
                        ..
                    },
                ..
            }) if Instant::now() < deadline => {
                if match_index >= reported + 10_000 || reported == 0 {
                    println!("node {id} catching up: index {match_index} of {commit_index}");
                    reported = match_index.max(1);
                }
            }
            Err(Error::Refused {
                error: ClientError::ChangeNotNow { .. },
                ..
            }) if Instant::now() < deadline => {}
            Err(Error::Refused { error, .. }) if Instant::now() >= deadline => bail!(
                "node {id} did not catch up within {wait:?} ({error}); it stays a learner: \
                 promote it later with `raftline member promote {id}`"
            ),
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_change(what: &str, id: u64, changed: &MembershipChanged) {
    let voters: Vec<u64> = changed
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    let learners: Vec<u64> = changed
        .members
        .iter()
        .filter(|m| !m.voter)
        .map(|m| m.id)
        .collect();
    println!(
        "node {id} {what} (configuration entry {}): voters {voters:?}, learners {learners:?}",
        changed.index
    );
}

fn or_unknown(text: &str) -> &str {
    if text.is_empty() {
        "?"
    } else {
        text
    }
}
