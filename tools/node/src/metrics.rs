//! What the node exports on `--metrics-listen`: gauges the raft thread publishes every tick, the
//! histograms it and the log writer record, rendered as Prometheus text by a tiny HTTP responder
//! on a control-plane thread (never on the data path).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftline_log::{Log, Pow2Histogram};
use raftline_netio::client_proto::{NodeRole, NodeStatus};

/// Metrics shared by the raft thread (writer) and the metrics endpoint (reader).
pub struct Metrics {
    status: Mutex<Option<NodeStatus>>,
    log: Arc<Log>,
    /// Microseconds from a proposal to its commit being known on the leader.
    pub append_commit_us: Pow2Histogram,
    /// Bytes of each batch appended by a producer.
    pub batch_bytes: Pow2Histogram,
    /// Producers' batches in each entry the leader proposes (more than one: a run).
    pub entry_batches: Pow2Histogram,
    /// Index of the newest durable snapshot (0: none).
    pub snapshot_index: AtomicU64,
    /// `--emulate-disk` profile, exported so no figure from an emulated node passes for real.
    emulated_disk: Option<&'static str>,
    /// Bytes of peer frames handed to the network (on a leader: what it ships to followers).
    pub peer_bytes_sent: AtomicU64,
    /// Peer messages dropped because no correct peer could have sent them, by reason.
    peer_refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Metrics of a node writing `log`.
    pub fn new(log: Arc<Log>) -> Metrics {
        Metrics {
            status: Mutex::new(None),
            log,
            append_commit_us: Pow2Histogram::default(),
            batch_bytes: Pow2Histogram::default(),
            entry_batches: Pow2Histogram::default(),
            snapshot_index: AtomicU64::new(0),
            emulated_disk: None,
            peer_bytes_sent: AtomicU64::new(0),
            peer_refused: Mutex::new(BTreeMap::new()),
        }
    }

    /// Marks every rendering as coming from a node whose log emulates `profile`'s disk.
    pub fn with_emulated_disk(mut self, profile: &'static str) -> Metrics {
        self.emulated_disk = Some(profile);
        self
    }

    /// Publishes the node's current status (the raft thread, once per tick).
    pub fn publish(&self, status: NodeStatus) {
        *self.status.lock().expect("metrics lock") = Some(status);
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

    /// The status the raft thread published last (`None` before its first tick).
    pub fn status(&self) -> Option<NodeStatus> {
        self.status.lock().expect("metrics lock").clone()
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(s) = self.status.lock().expect("metrics lock").clone() {
            gauge(&mut out, "raftline_node_id", "This node's id.", s.node_id);
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
                "raftline_snapshot_index",
                "Index of the newest durable snapshot; the log below it may be dropped (0: none).",
                self.snapshot_index.load(Ordering::Relaxed),
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
        let stats = self.log.stats();
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
        counter(
            &mut out,
            "raftline_peer_bytes_sent_total",
            "Bytes of peer frames queued for sending (a leader's AppendEntries to its followers).",
            self.peer_bytes_sent.load(Ordering::Relaxed),
        );
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
        histogram(
            &mut out,
            "raftline_fsync_seconds",
            "Latency of one group commit (write + fdatasync).",
            &stats.group_commit_us,
            1e-6,
        );
        histogram(
            &mut out,
            "raftline_group_commit_batches",
            "Batches made durable per fdatasync.",
            &stats.group_batches,
            1.0,
        );
        histogram(
            &mut out,
            "raftline_batch_bytes",
            "Size of each batch appended by a producer.",
            &self.batch_bytes,
            1.0,
        );
        histogram(
            &mut out,
            "raftline_entry_batches",
            "Producers' batches per Raft entry proposed (leader; more than one: a run).",
            &self.entry_batches,
            1.0,
        );
        histogram(
            &mut out,
            "raftline_append_commit_seconds",
            "From accepting an append to its commit (leader).",
            &self.append_commit_us,
            1e-6,
        );
        out
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

fn histogram(out: &mut String, name: &str, help: &str, h: &Pow2Histogram, scale: f64) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
    let (buckets, count, sum) = h.cumulative();
    for (bound, cumulative) in buckets {
        if bound == u64::MAX {
            continue;
        }
        out.push_str(&format!(
            "{name}_bucket{{le=\"{}\"}} {cumulative}\n",
            bound as f64 * scale
        ));
    }
    out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
    out.push_str(&format!(
        "{name}_sum {}\n{name}_count {count}\n",
        sum as f64 * scale
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
    } else {
        ("404 Not Found", "try GET /metrics\n".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
