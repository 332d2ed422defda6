//! `raftline status`: every node's view of the cluster, as a table.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use raftline_netio::client::{status_of_all, NodeStatusResult};
use raftline_netio::client_proto::{NodeRole, NodeStatus};

use crate::cluster_args::ClusterArgs;

/// The long `--help` of `raftline status`.
pub const LONG_ABOUT: &str = "Ask every node given by --bootstrap for its status and print one \
row per node: id, address, role, term, the leader it knows, commit index, the offsets its log \
holds [start, end), from the leader's view how many entries the node lags behind (and, past a \
second, for how long it has not acknowledged any: \"(no ack 4s)\", a stalled or full disk \
there), the snapshot it serves (the index it covers, the offset the log continues at, its size \
and age), the bytes its data directory takes on disk, followed by FULL (the free bytes) when \
its disk is full and it refuses appends, or STALLED (for how long) when a log write is \
outstanding past its --disk-stall-ms, and its materialised state's size against \
--state-mib-max (FULL once appends adding keys are refused).\n\n\
Exit status: 0 when a leader answered (unreachable nodes are listed but tolerated: the cluster \
still works); 2 when nodes answered but none leads (an election is under way, or no majority is \
up); 1 when no node answered.";

/// Flags of `raftline status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `raftline status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = args.cluster.client_config()?;
    let results = status_of_all(&config);
    let table = render(&results);
    std::io::stdout().write_all(table.as_bytes())?;
    let answered = results.iter().filter(|r| r.result.is_ok()).count();
    let leader_known = results
        .iter()
        .any(|r| matches!(&r.result, Ok(s) if s.role == NodeRole::Leader));
    if results
        .iter()
        .any(|r| r.result.as_ref().is_err_and(|e| e.is_access_refused()))
    {
        anyhow::bail!("a node refused this client's credentials: give a token with --token (or RAFTLINE_TOKEN) that the nodes' auth file grants the read role");
    }
    if answered == 0 {
        anyhow::bail!(
            "no node answered at {}: is the cluster running (`raftline dev` starts one)? \
             are --bootstrap and --cluster-id right?",
            config.bootstrap.join(",")
        );
    }
    Ok(if leader_known {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The status table: one row per node, unreachable nodes with their error.
pub fn render(results: &[NodeStatusResult]) -> String {
    let leader: Option<&NodeStatus> = results
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .find(|s| s.role == NodeRole::Leader);
    let mut rows = vec![[
        "NODE",
        "ADDRESS",
        "ROLE",
        "TERM",
        "LEADER",
        "COMMIT",
        "LOG START",
        "LOG END",
        "LAG",
        "SNAPSHOT",
        "SNAP CUT",
        "SNAP SIZE",
        "SNAP AGE",
        "DISK",
        "STATE",
    ]
    .map(String::from)
    .to_vec()];
    let mut failures = Vec::new();
    for r in results {
        match &r.result {
            Ok(s) => rows.push(vec![
                s.node_id.to_string(),
                r.address.clone(),
                role_name(s.role).to_string(),
                s.term.to_string(),
                s.leader_id.map_or("-".into(), |l| l.to_string()),
                s.commit_index.to_string(),
                s.log_start_offset.to_string(),
                s.log_end_offset.to_string(),
                lag(leader, s),
                s.snapshot.map_or("-".into(), |n| n.index.to_string()),
                s.snapshot.map_or("-".into(), |n| n.cut_offset.to_string()),
                s.snapshot.map_or("-".into(), |n| size(n.bytes)),
                s.snapshot
                    .and_then(|n| n.age_ms)
                    .map_or("-".into(), |ms| format!("{}s", ms / 1000)),
                disk(s),
                state(s),
            ]),
            Err(e) => {
                // A node that refused our credentials is reachable: say which it is.
                let what = if e.is_access_refused() {
                    "refused"
                } else {
                    "unreachable"
                };
                let mut row = vec!["?".to_string(), r.address.clone(), what.into()];
                row.resize(COLUMNS, "-".into());
                rows.push(row);
                failures.push(format!("{what}: {e}"));
            }
        }
    }
    let widths: Vec<usize> = (0..COLUMNS)
        .map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for f in failures {
        out.push_str(&format!("{f}\n"));
    }
    out
}

/// The DISK cell: the data directory's size, and the disk's mode if it is not taking writes.
fn disk(s: &NodeStatus) -> String {
    let used = size(s.disk_bytes);
    match (&s.disk_full, s.disk_stalled) {
        (Some(full), _) => format!("{used} FULL ({} free)", size(full.free_bytes)),
        (None, true) => format!("{used} STALLED ({}s)", s.log_write_age_ms / 1000),
        (None, false) => used,
    }
}

/// Columns of the status table.
const COLUMNS: usize = 15;

/// A byte count for people: B, KiB, MiB or GiB with one decimal.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Entries `node` lags behind the leader, from the leader's progress table.
/// The materialised state's size against its bound, `FULL` once appends adding keys are refused.
fn state(node: &NodeStatus) -> String {
    let full = if node.state_bytes >= node.state_bytes_max {
        " FULL"
    } else {
        ""
    };
    format!(
        "{}/{}{full}",
        size(node.state_bytes),
        size(node.state_bytes_max)
    )
}

fn lag(leader: Option<&NodeStatus>, node: &NodeStatus) -> String {
    match leader {
        Some(l) if l.node_id == node.node_id => "0".into(),
        Some(l) => {
            l.peers
                .iter()
                .find(|p| p.node_id == node.node_id)
                .map_or("-".into(), |p| match p.ack_age_ms {
                    // Entries outstanding for a second or more without an acknowledgement: say
                    // for how long (a stalled or full disk on that node).
                    age if age >= 1000 => format!("{} (no ack {}s)", p.lag_entries, age / 1000),
                    _ => p.lag_entries.to_string(),
                })
        }
        None => "-".into(),
    }
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Follower => "follower",
        NodeRole::PreCandidate => "pre-candidate",
        NodeRole::Candidate => "candidate",
        NodeRole::Leader => "leader",
        NodeRole::Learner => "learner",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_netio::client::Error;
    use raftline_netio::client_proto::{PeerStatus, SnapshotStatus};

    fn status(node_id: u64, role: NodeRole, peers: Vec<PeerStatus>) -> NodeStatus {
        let snapshot = (role == NodeRole::Leader).then_some(SnapshotStatus {
            index: 9,
            term: 3,
            cut_offset: 60,
            bytes: 3 << 20,
            age_ms: Some(42_500),
        });
        NodeStatus {
            node_id,
            role,
            term: 4,
            leader_id: Some(2),
            leader_client_address: None,
            commit_index: 17,
            log_start_offset: 0,
            log_end_offset: 120,
            log_first_index: 1,
            log_last_index: 18,
            peers,
            snapshot,
            disk_bytes: 70 << 20,
            state_keys: 1000,
            state_bytes: 3 << 20,
            state_bytes_max: 4 << 20,
            log_write_age_ms: 0,
            disk_full: None,
            disk_stalled: false,
        }
    }

    #[test]
    fn table_shows_each_node_with_the_leaders_view_of_its_lag() {
        let peer = PeerStatus {
            node_id: 1,
            match_index: 15,
            lag_entries: 3,
            connected: true,
            ack_age_ms: 0,
        };
        let results = vec![
            NodeStatusResult {
                address: "127.0.0.1:7401".into(),
                result: Ok(status(1, NodeRole::Follower, vec![])),
            },
            NodeStatusResult {
                address: "127.0.0.1:7402".into(),
                result: Ok(status(2, NodeRole::Leader, vec![peer])),
            },
            NodeStatusResult {
                address: "127.0.0.1:7403".into(),
                result: Err(Error::Disconnected {
                    address: "127.0.0.1:7403".into(),
                }),
            },
        ];
        let table = render(&results);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "NODE  ADDRESS         ROLE         TERM  LEADER  COMMIT  LOG START  LOG END  LAG  \
             SNAPSHOT  SNAP CUT  SNAP SIZE  SNAP AGE  DISK      STATE"
        );
        assert_eq!(
            lines[1],
            "1     127.0.0.1:7401  follower     4     2       17      0          120      3    \
             -         -         -          -         70.0 MiB  3.0 MiB/4.0 MiB"
        );
        assert_eq!(
            lines[2],
            "2     127.0.0.1:7402  leader       4     2       17      0          120      0    \
             9         60        3.0 MiB    42s       70.0 MiB  3.0 MiB/4.0 MiB"
        );
        assert!(lines[3].starts_with("?     127.0.0.1:7403  unreachable"));
        assert_eq!(
            lines[4],
            "unreachable: 127.0.0.1:7403 closed the connection"
        );
    }

    #[test]
    fn a_full_or_stalled_disk_and_a_follower_without_acks_are_shown() {
        let peer = PeerStatus {
            node_id: 1,
            match_index: 15,
            lag_entries: 3,
            connected: true,
            ack_age_ms: 4_200,
        };
        let mut follower = status(1, NodeRole::Follower, vec![]);
        follower.disk_full = Some(raftline_netio::client_proto::DiskFullStatus {
            path: "/data/log".into(),
            free_bytes: 1 << 20,
        });
        let mut leader = status(2, NodeRole::Leader, vec![peer]);
        leader.disk_stalled = true;
        leader.log_write_age_ms = 2_500;
        let results = vec![
            NodeStatusResult {
                address: "127.0.0.1:7401".into(),
                result: Ok(follower),
            },
            NodeStatusResult {
                address: "127.0.0.1:7402".into(),
                result: Ok(leader),
            },
        ];
        let table = render(&results);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].contains(" 3 (no ack 4s) ")
                && lines[1].contains(" 70.0 MiB FULL (1.0 MiB free) "),
            "{table}"
        );
        assert!(lines[2].contains(" 70.0 MiB STALLED (2s) "), "{table}");
    }
}
