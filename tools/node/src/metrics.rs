//! What the node exports on `--metrics-listen`: gauges the raft thread publishes every tick, the
//! histograms it and the log writer record, rendered as Prometheus text by a tiny HTTP responder
//! on a control-plane thread (never on the data path). The same listener answers the probes
//! orchestrators use: `GET /livez` (the raft thread publishes its status, i.e. its loop turns)
//! and `GET /readyz` (live, and the node knows a leader: it can take or redirect writes and serve
//! reads).
//!
//! Where etcd exports the same quantity, the metric has etcd's name with `etcd_` replaced by
//! `raftline_` (and etcd's buckets and labels), so etcd's alert rules and dashboards carry over
//! by that one substitution: `raftline_server_has_leader`,
//! `raftline_server_leader_changes_seen_total`, `raftline_server_proposals_committed_total`,
//! `raftline_server_proposals_pending`, `raftline_server_proposals_failed_total`,
//! `raftline_disk_wal_fsync_duration_seconds`, `raftline_network_peer_round_trip_time_seconds`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use raftline_log::{BackendKind, Log, Pow2Histogram};
use raftline_netio::client_proto::{NodeRole, NodeStatus};
use raftline_netio::net::NetStats;
use raftline_replicator::NodeId;

use crate::storage_repair::Repair;

/// How long the raft thread may go without publishing its status (once per tick) before
/// `/livez` fails: far beyond any healthy stall (a snapshot install, a slow fdatasync).
pub const LIVENESS_STALE: Duration = Duration::from_secs(10);

/// Microseconds of one peer round trip in the buckets of etcd's
/// `etcd_network_peer_round_trip_time_seconds`: 0.1 ms, 0.2 ms, … 3.2768 s (16 bounds), +Inf.
pub type PeerRttHistogram = Pow2Histogram<100, 17>;

/// The status as last published, and when.
struct Published {
    status: NodeStatus,
    at: Instant,
}

/// Metrics shared by the raft thread (writer) and the metrics endpoint (reader).
pub struct Metrics {
    status: Mutex<Option<Published>>,
    /// Times the known leader changed (to another node or to none), seen at ticks.
    leader_changes: AtomicU64,
    /// Which I/O path each layer runs (`net`, `log`), so a fallback from io_uring shows.
    io_backends: Vec<(&'static str, String)>,
    /// The log whose writer statistics are exported (`None` while the node reopens it).
    log: RwLock<Option<Arc<Log>>>,
    /// Times damage met while running made the node reopen its storage in place.
    pub storage_reopens: AtomicU64,
    /// Microseconds from a proposal to its commit being known on the leader.
    pub append_commit_us: Pow2Histogram,
    /// Bytes of each batch appended by a producer.
    pub batch_bytes: Pow2Histogram,
    /// Producers' batches in each entry the leader proposes (more than one: a run).
    pub entry_batches: Pow2Histogram,
    /// Index of the newest durable snapshot (0: none).
    pub snapshot_index: AtomicU64,
    /// Appends refused because they would add keys to a full state.
    pub appends_refused_state_full: AtomicU64,
    /// Durable index this node's log lost entries through and is not voting until a leader
    /// repaired it (0: no repair pending; a loss always vouches for index 1 or more).
    pub repair_through: AtomicU64,
    /// `--emulate-disk` profile, exported so no figure from an emulated node passes for real.
    emulated_disk: Option<&'static str>,
    /// Bytes of peer frames handed to the network (on a leader: what it ships to followers).
    pub peer_bytes_sent: AtomicU64,
    /// Appends accepted for a proposal that then failed (a leader change, a timeout, a stop, or
    /// the core refusing the proposal): etcd's `proposals_failed_total`.
    pub proposals_failed: AtomicU64,
    /// Appends waiting for their commit (the raft thread, once per tick).
    pub proposals_pending: AtomicU64,
    /// The lower end of the election timeout range, exported so an alert can hold the measured
    /// peer round trip against it.
    election_timeout: Option<Duration>,
    /// Round trips to each peer, measured by the leader (see `peer_rtt.rs`).
    peer_rtt: Mutex<BTreeMap<NodeId, Arc<PeerRttHistogram>>>,
    /// Resends of idempotent producers' stored batches, answered with the original offsets.
    pub producer_duplicates: AtomicU64,
    /// Idempotent producers' batches refused (sequence gap, stale epoch, unknown producer, a
    /// new leader not ready yet).
    pub producer_refusals: AtomicU64,
    /// Peer messages dropped because no correct peer could have sent them, by reason.
    peer_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Client requests refused by the access check, by reason.
    client_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Damaged storage repaired when the node started or reopened its storage, by kind.
    repairs: Mutex<Vec<(Repair, u64)>>,
    /// The network's buffers and closes, as last published.
    net: Mutex<NetStats>,
}

impl Metrics {
    /// Metrics of a node writing `log`.
    pub fn new(log: Arc<Log>) -> Metrics {
        Metrics {
            status: Mutex::new(None),
            leader_changes: AtomicU64::new(0),
            io_backends: vec![("log", log_backend_label(log.backend()).to_string())],
            log: RwLock::new(Some(log)),
            storage_reopens: AtomicU64::new(0),
            append_commit_us: Pow2Histogram::default(),
            batch_bytes: Pow2Histogram::default(),
            entry_batches: Pow2Histogram::default(),
            snapshot_index: AtomicU64::new(0),
            appends_refused_state_full: AtomicU64::new(0),
            repair_through: AtomicU64::new(0),
            emulated_disk: None,
            peer_bytes_sent: AtomicU64::new(0),
            proposals_failed: AtomicU64::new(0),
            proposals_pending: AtomicU64::new(0),
            election_timeout: None,
            peer_rtt: Mutex::new(BTreeMap::new()),
            producer_duplicates: AtomicU64::new(0),
            producer_refusals: AtomicU64::new(0),
            peer_refused: Mutex::new(BTreeMap::new()),
            client_refused: Mutex::new(BTreeMap::new()),
            repairs: Mutex::new(Repair::ALL.iter().map(|&r| (r, 0)).collect()),
            net: Mutex::new(NetStats::default()),
        }
    }

    /// Counts what the replica repaired when it opened (`raftline_log_repairs_total`).
    pub fn with_repairs(self, repairs: &[Repair]) -> Metrics {
        self.count_repairs(repairs);
        self
    }

    /// Counts what a replica repaired when it opened (`raftline_log_repairs_total`).
    pub fn count_repairs(&self, repairs: &[Repair]) {
        for (kind, n) in self.repairs.lock().expect("metrics lock").iter_mut() {
            *n += repairs.iter().filter(|&r| r == kind).count() as u64;
        }
    }

    /// Gives back the log's handle, so that the replica can close it for a reopen.
    pub fn release_log(&self) {
        *self.log.write().expect("metrics lock") = None;
    }

    /// Exports the writer statistics of the reopened `log` (they start again from zero, as
    /// after a restart).
    pub fn set_log(&self, log: Arc<Log>) {
        *self.log.write().expect("metrics lock") = Some(log);
    }

    /// Exports the lower end of the election timeout range (`raftline_election_timeout_seconds`).
    pub fn with_election_timeout(mut self, election_timeout: Duration) -> Metrics {
        self.election_timeout = Some(election_timeout);
        self
    }

    /// The round-trip histogram of `peer` (created on its first sample; the raft thread keeps
    /// the handle, so this lock is taken once per peer).
    pub fn peer_rtt_histogram(&self, peer: NodeId) -> Arc<PeerRttHistogram> {
        let mut histograms = self.peer_rtt.lock().expect("metrics lock");
        histograms.entry(peer).or_default().clone()
    }

    /// Marks every rendering as coming from a node whose log emulates `profile`'s disk.
    pub fn with_emulated_disk(mut self, profile: &'static str) -> Metrics {
        self.emulated_disk = Some(profile);
        self
    }

    /// Marks the network layer's I/O backend (`io_uring` or `poll`) in the exported metrics.
    pub fn with_net_backend(mut self, backend: impl std::fmt::Display) -> Metrics {
        self.io_backends.push(("net", backend.to_string()));
        self
    }

    /// Publishes the node's current status (the raft thread, once per tick).
    pub fn publish(&self, status: NodeStatus) {
        let mut published = self.status.lock().expect("metrics lock");
        if published
            .as_ref()
            .is_some_and(|p| p.status.leader_id != status.leader_id)
        {
            self.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        *published = Some(Published {
            status,
            at: Instant::now(),
        });
    }

    /// Publishes the network's buffer bytes and close counts (the raft thread, once per tick).
    pub fn publish_net(&self, stats: &NetStats) {
        self.net.lock().expect("metrics lock").clone_from(stats);
    }

    /// Counts one peer message refused for `reason` (a metrics label).
    pub fn count_peer_refusal(&self, reason: &'static str) {
        *self
            .peer_refused
            .lock()
            .expect("metrics lock")
            .entry(reason)
            .or_default() += 1;
    }

    /// Counts one client request the access check refused for `reason` (a metrics label).
    pub fn count_client_refusal(&self, reason: &'static str) {
        *self
            .client_refused
            .lock()
            .expect("metrics lock")
            .entry(reason)
            .or_default() += 1;
    }

    /// Live: the raft thread published its status within [`LIVENESS_STALE`] (its loop turns;
    /// a wedged thread or a disk that blocks it for longer fails this).
    pub fn liveness(&self) -> Result<(), String> {
        let published = self.status.lock().expect("metrics lock");
        match published.as_ref() {
            None => Err("starting: the raft thread has not published its status yet".into()),
            Some(p) if p.at.elapsed() > LIVENESS_STALE => Err(format!(
                "the raft thread last published its status {:.1} s ago",
                p.at.elapsed().as_secs_f64()
            )),
            Some(_) => Ok(()),
        }
    }

    /// Ready: live, and a leader is known (appends are taken or redirected, reads are served).
    pub fn readiness(&self) -> Result<(), String> {
        self.liveness()?;
        match self.status() {
            Some(s) if s.leader_id.is_some() => Ok(()),
            _ => Err("no leader known (election in progress or no quorum reachable)".into()),
        }
    }

    /// The status the raft thread published last (`None` before its first tick).
    pub fn status(&self) -> Option<NodeStatus> {
        let published = self.status.lock().expect("metrics lock");
        published.as_ref().map(|p| p.status.clone())
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(s) = self.status() {
            gauge(&mut out, "raftline_node_id", "This node's id.", s.node_id);
            gauge(
                &mut out,
                "raftline_server_has_leader",
                "Whether this node knows a leader (1) or not (0).",
                u64::from(s.leader_id.is_some()),
            );
            out.push_str("# HELP raftline_role Raft role (1 for the current one).\n");
            out.push_str("# TYPE raftline_role gauge\n");
            for (role, name) in [
                (NodeRole::Follower, "follower"),
                (NodeRole::PreCandidate, "precandidate"),
                (NodeRole::Candidate, "candidate"),
                (NodeRole::Leader, "leader"),
            ] {
                let v = u8::from(s.role == role);
                out.push_str(&format!("raftline_role{{role=\"{name}\"}} {v}\n"));
            }
            gauge(&mut out, "raftline_term", "Current Raft term.", s.term);
            gauge(
                &mut out,
                "raftline_disk_bytes",
                "Bytes of the data directory on disk (log segments, snapshots, hard state).",
                s.disk_bytes,
            );
            gauge(
                &mut out,
                "raftline_state_keys",
                "Keys in the materialised state (tombstones included).",
                s.state_keys,
            );
            gauge(
                &mut out,
                "raftline_state_bytes",
                "Bytes the materialised state accounts for.",
                s.state_bytes,
            );
            gauge(
                &mut out,
                "raftline_state_bytes_max",
                "The state's bound (--state-mib-max): at it, appends adding keys are refused.",
                s.state_bytes_max,
            );
            gauge(
                &mut out,
                "raftline_state_full",
                "1 while the state holds its bound and appends adding keys are refused.",
                u64::from(s.state_bytes >= s.state_bytes_max),
            );
            gauge(
                &mut out,
                "raftline_disk_full",
                "1 while the log's disk is full: appends are refused (reads and voting go on) \
                 until there is room.",
                u64::from(s.disk_full.is_some()),
            );
            gauge(
                &mut out,
                "raftline_disk_stalled",
                "1 while a log write is outstanding past --disk-stall-ms: the node does not \
                 campaign and hands leadership over.",
                u64::from(s.disk_stalled),
            );
            out.push_str(&format!(
                "# HELP raftline_log_write_age_seconds Seconds the log write in progress has \
                 been outstanding (0: none).\n# TYPE raftline_log_write_age_seconds gauge\n\
                 raftline_log_write_age_seconds {}\n",
                s.log_write_age_ms as f64 / 1000.0
            ));
            if let Some(snap) = s.snapshot {
                gauge(
                    &mut out,
                    "raftline_snapshot_cut_offset",
                    "Offset the log continues at after the served snapshot.",
                    snap.cut_offset,
                );
                gauge(
                    &mut out,
                    "raftline_snapshot_bytes",
                    "Size of the served snapshot's file.",
                    snap.bytes,
                );
                if let Some(age_ms) = snap.age_ms {
                    out.push_str(&format!(
                        "# HELP raftline_snapshot_age_seconds Seconds since the served snapshot \
                         was written.\n# TYPE raftline_snapshot_age_seconds gauge\n\
                         raftline_snapshot_age_seconds {}\n",
                        age_ms as f64 / 1000.0
                    ));
                }
            }
            gauge(
                &mut out,
                "raftline_snapshot_index",
                "Index of the newest durable snapshot; the log below it may be dropped (0: none).",
                self.snapshot_index.load(Ordering::Relaxed),
            );
            let repair_through = self.repair_through.load(Ordering::Relaxed);
            gauge(
                &mut out,
                "raftline_repair_pending",
                "1 while this node's log lost durable entries and it does not vote until a \
                 leader repaired it.",
                u64::from(repair_through > 0),
            );
            gauge(
                &mut out,
                "raftline_repair_through",
                "Index the lost entries were durable through, while a repair is pending (0: none).",
                repair_through,
            );
            gauge(
                &mut out,
                "raftline_leader_id",
                "Known leader (0: none).",
                s.leader_id.unwrap_or(0),
            );
            gauge(
                &mut out,
                "raftline_commit_index",
                "Highest committed index.",
                s.commit_index,
            );
            gauge(
                &mut out,
                "raftline_server_proposals_committed_total",
                "The commit index under etcd's name (etcd_server_proposals_committed_total).",
                s.commit_index,
            );
            gauge(
                &mut out,
                "raftline_log_start_offset",
                "Earliest retained offset.",
                s.log_start_offset,
            );
            gauge(
                &mut out,
                "raftline_log_end_offset",
                "One past the last offset.",
                s.log_end_offset,
            );
            gauge(
                &mut out,
                "raftline_log_first_index",
                "First retained index.",
                s.log_first_index,
            );
            gauge(
                &mut out,
                "raftline_log_last_index",
                "Last index in the log.",
                s.log_last_index,
            );
            for (name, help) in [
                (
                    "raftline_peer_match_index",
                    "Highest index the peer holds durably (leader only).",
                ),
                (
                    "raftline_peer_lag_entries",
                    "Entries the peer is behind (leader only).",
                ),
                (
                    "raftline_peer_connected",
                    "Outbound connection to the peer is up (leader only).",
                ),
            ] {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
                for p in &s.peers {
                    let v = match name {
                        "raftline_peer_match_index" => p.match_index,
                        "raftline_peer_lag_entries" => p.lag_entries,
                        _ => u64::from(p.connected),
                    };
                    out.push_str(&format!("{name}{{peer=\"{}\"}} {v}\n", p.node_id));
                }
            }
            out.push_str(
                "# HELP raftline_peer_ack_age_seconds Seconds the peer has had entries to \
                 acknowledge without acknowledging any (leader only; 0: caught up).\n\
                 # TYPE raftline_peer_ack_age_seconds gauge\n",
            );
            for p in &s.peers {
                out.push_str(&format!(
                    "raftline_peer_ack_age_seconds{{peer=\"{}\"}} {}\n",
                    p.node_id,
                    p.ack_age_ms as f64 / 1000.0
                ));
            }
        }
        if let Some(profile) = self.emulated_disk {
            out.push_str(
                "# HELP raftline_emulated_disk EMULATION: the log holds each fdatasync to this \
                 disk profile's latency (1); absent on a real disk.\n\
                 # TYPE raftline_emulated_disk gauge\n",
            );
            out.push_str(&format!(
                "raftline_emulated_disk{{profile=\"{profile}\"}} 1\n"
            ));
        }
        let log = self.log.read().expect("metrics lock").clone();
        if let Some(log) = &log {
            let stats = log.stats();
            counter(
                &mut out,
                "raftline_fdatasyncs_total",
                "Group commits (write + fdatasync).",
                stats.fdatasyncs.load(Ordering::Relaxed),
            );
            counter(
                &mut out,
                "raftline_log_bytes_written_total",
                "Bytes written to the log, padding included.",
                stats.bytes_written.load(Ordering::Relaxed),
            );
        }
        counter(
            &mut out,
            "raftline_appends_refused_state_full_total",
            "Appends refused (StateFull) because they would add keys to a state at its bound.",
            self.appends_refused_state_full.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "raftline_peer_bytes_sent_total",
            "Bytes of peer frames queued for sending (a leader's AppendEntries to its followers).",
            self.peer_bytes_sent.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "raftline_producer_duplicates_total",
            "Resends of idempotent producers' stored batches, answered with the original offsets and not stored again.",
            self.producer_duplicates.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "raftline_producer_refusals_total",
            "Idempotent producers' batches refused: sequence gap, stale epoch, unknown producer, or a new leader not ready.",
            self.producer_refusals.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "raftline_server_leader_changes_seen_total",
            "Times the leader this node knows changed (to another node or to none), seen at ticks.",
            self.leader_changes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "raftline_server_proposals_failed_total",
            "Appends accepted for a proposal that failed (leader change, timeout, stop, refused).",
            self.proposals_failed.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "raftline_server_proposals_pending",
            "Appends waiting for their commit.",
            self.proposals_pending.load(Ordering::Relaxed),
        );
        if let Some(timeout) = self.election_timeout {
            out.push_str(&format!(
                "# HELP raftline_election_timeout_seconds Lower end of the randomised election \
                 timeout; the peer round-trip p99 should stay under a fifth of it.\n\
                 # TYPE raftline_election_timeout_seconds gauge\n\
                 raftline_election_timeout_seconds {}\n",
                timeout.as_secs_f64()
            ));
        }
        out.push_str(
            "# HELP raftline_io_backend The I/O path each layer runs (1): io_uring, or the \
             portable fallback when the kernel or a seccomp profile refuses it.\n\
             # TYPE raftline_io_backend gauge\n",
        );
        for (layer, backend) in &self.io_backends {
            out.push_str(&format!(
                "raftline_io_backend{{layer=\"{layer}\",backend=\"{backend}\"}} 1\n"
            ));
        }
        out.push_str(
            "# HELP raftline_log_repairs_total Damaged storage this node found and repaired at \
             start (or at a reopen in place) instead of refusing to run, by kind: log_tail and log_range (entries cut and \
             re-fetched from the leader), snapshot (a corrupt snapshot file dropped), \
             hard_state_slot and hard_state (one or both hard-state slots damaged).\n\
             # TYPE raftline_log_repairs_total counter\n",
        );
        counter(
            &mut out,
            "raftline_storage_reopens_total",
            "Times damage met while running (a log batch or the served snapshot failing its checksum) made this node reopen its storage in place, cutting the damage for a leader to resend.",
            self.storage_reopens.load(Ordering::Relaxed),
        );
        for (kind, n) in self.repairs.lock().expect("metrics lock").iter() {
            out.push_str(&format!(
                "raftline_log_repairs_total{{kind=\"{}\"}} {n}\n",
                kind.label()
            ));
        }
        let refused = self.peer_refused.lock().expect("metrics lock").clone();
        out.push_str(
            "# HELP raftline_peer_messages_refused_total Peer messages dropped because no \
             correct peer could have sent them (undecodable, misaddressed, or contradicting what \
             this node knows), by reason.\n# TYPE raftline_peer_messages_refused_total counter\n",
        );
        for (reason, n) in refused {
            out.push_str(&format!(
                "raftline_peer_messages_refused_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        let refused = self.client_refused.lock().expect("metrics lock").clone();
        out.push_str(
            "# HELP raftline_client_requests_refused_total Client requests refused by the auth \
             file's roles, by reason (unauthenticated, forbidden, bad_credentials).\n\
             # TYPE raftline_client_requests_refused_total counter\n",
        );
        for (reason, n) in refused {
            out.push_str(&format!(
                "raftline_client_requests_refused_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        let net = self.net.lock().expect("metrics lock").clone();
        gauge(
            &mut out,
            "raftline_connection_buffer_bytes",
            "Bytes all connections hold in send queues and decoder buffers (bounded by the buffer budget).",
            net.buffered_bytes as u64,
        );
        out.push_str(
            "# HELP raftline_connections_closed_total Connections the node closed or refused, \
             by reason (evicted, over_budget, too_slow, too_many_from_source, peer_refused, ...).\n\
             # TYPE raftline_connections_closed_total counter\n",
        );
        for (reason, n) in net.closed {
            out.push_str(&format!(
                "raftline_connections_closed_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        if let Some(log) = &log {
            histogram(
                &mut out,
                "raftline_disk_wal_fsync_duration_seconds",
                "Latency of one group commit: the write and its linked fdatasync (etcd's buckets).",
                "",
                &log.stats().group_commit_us,
                1e6,
            );
        }
        let rtt = self.peer_rtt.lock().expect("metrics lock").clone();
        let name = "raftline_network_peer_round_trip_time_seconds";
        out.push_str(&format!(
            "# HELP {name} Round trip of a heartbeat to the peer and its answer, measured by the \
             leader (etcd's buckets).\n# TYPE {name} histogram\n"
        ));
        for (peer, h) in rtt {
            series(&mut out, name, &format!("To=\"{peer}\","), &h, 1e6);
        }
        if let Some(log) = &log {
            histogram(
                &mut out,
                "raftline_group_commit_batches",
                "Batches made durable per fdatasync.",
                "",
                &log.stats().group_batches,
                1.0,
            );
        }
        histogram(
            &mut out,
            "raftline_batch_bytes",
            "Size of each batch appended by a producer.",
            "",
            &self.batch_bytes,
            1.0,
        );
        histogram(
            &mut out,
            "raftline_entry_batches",
            "Producers' batches per Raft entry proposed (leader; more than one: a run).",
            "",
            &self.entry_batches,
            1.0,
        );
        histogram(
            &mut out,
            "raftline_append_commit_seconds",
            "From accepting an append to its commit (leader).",
            "",
            &self.append_commit_us,
            1e6,
        );
        out
    }
}

/// The log's write path as the `raftline_io_backend` label names it.
fn log_backend_label(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::UringDirect => "io_uring_direct",
        BackendKind::PwriteDirect => "pwrite_direct",
        BackendKind::Buffered => "buffered",
    }
}

/// A probe's HTTP status and body.
fn probe_answer(result: Result<(), String>) -> (&'static str, String) {
    match result {
        Ok(()) => ("200 OK", "ok\n".to_string()),
        Err(why) => ("503 Service Unavailable", format!("{why}\n")),
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    out.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
    ));
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    out.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
    ));
}

fn histogram<const U: u64, const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &str,
    h: &Pow2Histogram<U, N>,
    per_unit: f64,
) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
    series(out, name, labels, h, per_unit);
}

/// One histogram's series; `labels` is empty or `key="value",` (a trailing comma). Values are
/// divided by `per_unit` (1e6: microseconds to seconds; a division, so 2048000 prints 2.048).
fn series<const U: u64, const N: usize>(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &Pow2Histogram<U, N>,
    per_unit: f64,
) {
    let (buckets, count, sum) = h.cumulative();
    for (bound, cumulative) in buckets {
        if bound == u64::MAX {
            continue;
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels}le=\"{}\"}} {cumulative}\n",
            bound as f64 / per_unit
        ));
    }
    out.push_str(&format!("{name}_bucket{{{labels}le=\"+Inf\"}} {count}\n"));
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() {
        String::new()
    } else {
        format!("{{{plain}}}")
    };
    out.push_str(&format!(
        "{name}_sum{braces} {}\n{name}_count{braces} {count}\n",
        sum as f64 / per_unit
    ));
}

/// Serves `GET /metrics` on `listener` for the life of the process (a control-plane thread the
/// process exit ends). One connection at a time, each bounded in time and size.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, &metrics) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics endpoint accept failed"),
        }
    }
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    const REQUEST_BYTES_MAX: usize = 8 << 10;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_BYTES_MAX {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET / ")
    {
        ("200 OK", metrics.render())
    } else if request.starts_with(b"GET /livez ") {
        probe_answer(metrics.liveness())
    } else if request.starts_with(b"GET /readyz ") {
        probe_answer(metrics.readiness())
    } else {
        (
            "404 Not Found",
            "try GET /metrics, /livez or /readyz\n".to_string(),
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
