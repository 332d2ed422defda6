//! Peer round-trip times as this node observes them, and the check of the election timeout
//! against them.
//!
//! A leader numbers every heartbeat round (`read_seq`) and each follower echoes the number in
//! its `HeartbeatResponse`, so a response is matched to the exact heartbeat it answers: the
//! round trip is the time from queueing that heartbeat to taking its answer off the network,
//! both on the raft thread (so it includes the follower's turn of its loop and ours, as etcd's
//! prober does). Only a leader sends heartbeats, so only a leader measures; the network is the
//! same in both directions.
//!
//! The samples go to `raftline_network_peer_round_trip_time_seconds{To=…}` (etcd's buckets),
//! and the node WARNs (rate-limited) when the p99 of a peer's last [`RECENT`] samples exceeds a
//! fifth of the election timeout's lower end — etcd's rule of thumb: below it, a few late
//! heartbeats cannot add up to an election timeout on a healthy network.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_replicator::{Message, MessageBody, NodeId};

use crate::metrics::{Metrics, PeerRttHistogram};
use raftline_netio::warn_limit::WarnLimit;

/// Samples per peer the p99 is taken over (100 heartbeats: 5 s at the default 50 ms).
pub const RECENT: usize = 100;
/// Heartbeats kept waiting for their answer per peer; older ones are forgotten (a peer that is
/// down answers none, and a lost one is simply never matched).
const IN_FLIGHT_MAX: usize = 64;
/// The election timeout is checked against this multiple of the round trip (etcd's rule).
pub const ELECTION_RTT_FACTOR: u32 = 5;

/// One peer's measurements.
#[derive(Default)]
struct Peer {
    /// Heartbeats sent and not yet answered, oldest first: (read_seq, queued at).
    in_flight: VecDeque<(u64, Instant)>,
    /// The latest samples, oldest first, at most [`RECENT`].
    recent: VecDeque<Duration>,
    /// This peer's exported histogram.
    histogram: Option<Arc<PeerRttHistogram>>,
}

/// Round-trip times to every peer (owned by the raft thread).
pub struct PeerRtt {
    peers: BTreeMap<NodeId, Peer>,
    /// The lower end of the election timeout range.
    election_timeout: Duration,
    warnings: WarnLimit,
    metrics: Arc<Metrics>,
}

impl PeerRtt {
    /// Measurements exported through `metrics`, checked against `election_timeout` (the lower
    /// end of its range).
    pub fn new(election_timeout: Duration, metrics: Arc<Metrics>) -> PeerRtt {
        PeerRtt {
            peers: BTreeMap::new(),
            election_timeout,
            warnings: WarnLimit::default(),
            metrics,
        }
    }

    /// The round trip above which the election timeout is too short for the network.
    pub fn warn_above(&self) -> Duration {
        self.election_timeout / ELECTION_RTT_FACTOR
    }

    /// Notes a message queued for sending at `now` (heartbeats start a measurement).
    pub fn sent(&mut self, msg: &Message, now: Instant) {
        if let MessageBody::Heartbeat { read_seq, .. } = msg.body {
            let in_flight = &mut self.peers.entry(msg.to).or_default().in_flight;
            if in_flight.len() == IN_FLIGHT_MAX {
                in_flight.pop_front();
            }
            in_flight.push_back((read_seq, now));
        }
    }

    /// Notes a message received at `now`; a heartbeat's answer gives a sample, returned.
    pub fn received(&mut self, msg: &Message, now: Instant) -> Option<Duration> {
        let MessageBody::HeartbeatResponse { read_seq } = msg.body else {
            return None;
        };
        let peer = self.peers.get_mut(&msg.from)?;
        // Rounds before this one that were never answered (lost with a connection) go.
        while peer
            .in_flight
            .front()
            .is_some_and(|&(seq, _)| seq < read_seq)
        {
            peer.in_flight.pop_front();
        }
        let &(seq, sent_at) = peer.in_flight.front()?;
        if seq != read_seq {
            // An answer to no heartbeat we hold (a stale one, or an earlier leadership's).
            return None;
        }
        peer.in_flight.pop_front();
        let rtt = now.saturating_duration_since(sent_at);
        let histogram = peer
            .histogram
            .get_or_insert_with(|| self.metrics.peer_rtt_histogram(msg.from));
        histogram.record(rtt.as_micros() as u64);
        if peer.recent.len() == RECENT {
            peer.recent.pop_front();
        }
        peer.recent.push_back(rtt);
        // The p99 can only have crossed the line with a sample above it.
        if rtt > self.warn_above() {
            if let Some(p99) = self.slow_p99(msg.from) {
                if let Some(suppressed) = self.warnings.admit(now) {
                    tracing::warn!(
                        peer = msg.from,
                        p99_ms = p99.as_secs_f64() * 1e3,
                        election_timeout_ms = self.election_timeout.as_millis() as u64,
                        suppressed,
                        "peer round-trip p99 exceeds a fifth of the election timeout: \
                         followers may call elections while the leader is healthy; raise \
                         --election-timeout-min-ms to at least {ELECTION_RTT_FACTOR} x the \
                         round trip (and --heartbeat-ms near it; see tools/node/README.md, \
                         WAN settings)"
                    );
                }
            }
        }
        Some(rtt)
    }
}

impl PeerRtt {
    /// The p99 of `peer`'s last [`RECENT`] round trips, if it exceeds [`PeerRtt::warn_above`].
    pub fn slow_p99(&self, peer: NodeId) -> Option<Duration> {
        p99(&self.peers.get(&peer)?.recent).filter(|&p99| p99 > self.warn_above())
    }
}

/// The 99th percentile (nearest rank) of a full window of samples; `None` until the window is
/// full (a few samples at start-up say nothing about the network's tail).
fn p99(samples: &VecDeque<Duration>) -> Option<Duration> {
    if samples.len() < RECENT {
        return None;
    }
    let mut sorted: Vec<Duration> = samples.iter().copied().collect();
    sorted.sort_unstable();
    let rank = (sorted.len() * 99).div_ceil(100);
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(to: NodeId, read_seq: u64) -> Message {
        Message {
            from: 1,
            to,
            term: 1,
            body: MessageBody::Heartbeat {
                commit: 0,
                read_seq,
            },
        }
    }

    fn response(from: NodeId, read_seq: u64) -> Message {
        Message {
            from,
            to: 1,
            term: 1,
            body: MessageBody::HeartbeatResponse { read_seq },
        }
    }

    /// A tracker whose metrics render from a scratch log (dropped with the directory).
    fn rtt() -> (PeerRtt, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let log = raftline_log::Log::open(raftline_log::LogConfig::new(dir.path())).unwrap();
        let metrics = Arc::new(Metrics::new(Arc::new(log)));
        (PeerRtt::new(Duration::from_millis(250), metrics), dir)
    }

    #[test]
    fn an_answer_is_matched_to_the_heartbeat_it_echoes() {
        let (mut rtt, _dir) = rtt();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Three rounds in flight to peer 2 (round trip longer than the heartbeat interval);
        // the answer to round 2 is 30 ms after round 2 was sent, not after round 1 or 3.
        rtt.sent(&heartbeat(2, 1), t0);
        rtt.sent(&heartbeat(3, 1), t0);
        rtt.sent(&heartbeat(2, 2), t0 + ms(10));
        rtt.sent(&heartbeat(2, 3), t0 + ms(20));
        assert_eq!(rtt.received(&response(2, 2), t0 + ms(40)), Some(ms(30)));
        // Round 1 was lost meanwhile: its late answer matches nothing.
        assert_eq!(rtt.received(&response(2, 1), t0 + ms(45)), None);
        assert_eq!(rtt.received(&response(2, 3), t0 + ms(50)), Some(ms(30)));
        assert_eq!(rtt.received(&response(3, 1), t0 + ms(5)), Some(ms(5)));
        // An answer twice, or from a peer we sent nothing: no sample.
        assert_eq!(rtt.received(&response(2, 3), t0 + ms(60)), None);
        assert_eq!(rtt.received(&response(4, 1), t0 + ms(60)), None);
        let rendered = rtt.metrics.render();
        assert!(
            rendered.contains(
                "raftline_network_peer_round_trip_time_seconds_bucket{To=\"2\",le=\"0.0512\"} 2"
            ),
            "{rendered}"
        );
    }

    #[test]
    fn p99_is_the_nearest_rank_of_a_full_window() {
        let mut window: VecDeque<Duration> = (1..=99).map(Duration::from_millis).collect();
        assert_eq!(p99(&window), None);
        window.push_back(Duration::from_secs(9));
        // Of 1..=99 ms and one 9 s outlier, the 99th of 100 is 99 ms: one outlier is not a tail.
        assert_eq!(p99(&window), Some(Duration::from_millis(99)));
    }

    #[test]
    fn a_p99_above_a_fifth_of_the_election_timeout_is_flagged() {
        let (mut rtt, _dir) = rtt();
        assert_eq!(rtt.warn_above(), Duration::from_millis(50));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let answer = |rtt: &mut PeerRtt, seq: u64, took: Duration| {
            rtt.sent(&heartbeat(2, seq), t0);
            rtt.received(&response(2, seq), t0 + took);
        };
        // 98 fast round trips and one slow one: the p99 (99th of 100) is still fast...
        for seq in 1..=98 {
            answer(&mut rtt, seq, ms(1));
        }
        answer(&mut rtt, 99, ms(60));
        assert_eq!(rtt.slow_p99(2), None, "fewer samples than the window");
        answer(&mut rtt, 100, ms(1));
        assert_eq!(rtt.slow_p99(2), None, "one outlier in 100");
        // ...two slow ones of the last 100 make it 60 ms, above 250 / 5 = 50 ms.
        answer(&mut rtt, 101, ms(60));
        assert_eq!(rtt.slow_p99(2), Some(ms(60)));
        assert_eq!(rtt.slow_p99(3), None);
    }
}
