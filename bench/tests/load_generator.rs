//! The load generator ([`MultiProducer`]) against the fake cluster of netio's client tests: a
//! leader that moves, crashes mid-append and answers `Busy`.

// The same fake cluster netio's client tests use (one fixture, not a copy).
#[path = "../../netio/tests/support/mod.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use raftline_bench::cluster::load_generator::{AppendDone, MultiProducer};
use raftline_log::Batch;

use support::{record, values, FakeCluster, Faults};

/// Submits one single-record append per value, spread round-robin over the producer's
/// connections, and waits for all; returns each value's outcome by index.
fn multi_produce_all(producer: &mut MultiProducer, values: &[String]) -> Vec<AppendDone> {
    for (i, v) in values.iter().enumerate() {
        let batch: Arc<[u8]> = Arc::from(Batch::encode(&[record(v)]).unwrap().into_bytes());
        producer
            .submit(i % producer.connections(), batch, i as u64)
            .unwrap();
    }
    let mut done = Vec::new();
    assert!(producer.flush(Duration::from_secs(20), &mut done).unwrap());
    assert_eq!(producer.unfinished(), 0);
    done.sort_by_key(|d| d.tag);
    assert_eq!(
        done.iter().map(|d| d.tag).collect::<Vec<_>>(),
        (0..values.len() as u64).collect::<Vec<_>>(),
        "one outcome per append"
    );
    done
}

#[test]
fn multi_producer_commits_every_append_once_over_many_connections_and_times_each() {
    let cluster = FakeCluster::start(3, 1);
    let mut config = cluster.config();
    config.window_appends = 2;
    let mut producer = MultiProducer::connect(config, 8).unwrap();
    let sent = values(60, "m");
    let done = multi_produce_all(&mut producer, &sent);
    let contents = cluster.contents();
    assert_eq!(contents.len(), 60, "nothing duplicated without a failure");
    for d in &done {
        let offset = *d.result.as_ref().unwrap();
        assert_eq!(contents[offset as usize].1, sent[d.tag as usize]);
        assert_eq!(d.connection, d.tag as usize % 8);
        assert_eq!(d.attempts, 1);
        assert!(d.sent_at <= d.answered_at);
    }
}

#[test]
fn multi_producer_follows_a_moved_leader_and_resends_after_a_crash_losing_nothing() {
    let cluster = FakeCluster::start(3, 0);
    cluster.set_faults(
        0,
        Faults {
            crash_after_appends: Some(5),
            ..Faults::default()
        },
    );
    let mut config = cluster.config();
    config.window_appends = 3;
    let mut producer = MultiProducer::connect(config, 4).unwrap();
    let sent = values(40, "f");
    let done = multi_produce_all(&mut producer, &sent);
    let contents = cluster.contents();
    for d in &done {
        let offset = *d.result.as_ref().unwrap();
        assert_eq!(contents[offset as usize].1, sent[d.tag as usize], "{d:?}");
    }
    for v in &sent {
        let copies = contents.iter().filter(|(_, c)| c == v).count();
        assert!((1..=2).contains(&copies), "{v} present {copies} times");
    }
    assert!(
        done.iter().any(|d| d.attempts > 1),
        "the crash forced resends"
    );
    assert!(cluster.appends_seen[1].load(Ordering::SeqCst) > 0);

    // The leader moves: the old one answers NotLeader with a hint, appends follow it.
    cluster.leader.store(2, Ordering::SeqCst);
    let more = values(10, "g");
    let done = multi_produce_all(&mut producer, &more);
    assert!(done.iter().all(|d| d.result.is_ok()));
    assert!(cluster.appends_seen[2].load(Ordering::SeqCst) >= 10);
}

#[test]
fn multi_producer_resends_only_busy_appends_and_duplicates_nothing() {
    let cluster = FakeCluster::start(1, 0);
    cluster.busy_appends.store(3, Ordering::SeqCst);
    let mut config = cluster.config();
    config.window_appends = 3;
    let mut producer = MultiProducer::connect(config, 2).unwrap();
    let sent = values(30, "b");
    let done = multi_produce_all(&mut producer, &sent);
    let contents = cluster.contents();
    assert_eq!(contents.len(), 30, "a Busy append was appended twice");
    for d in &done {
        let offset = *d.result.as_ref().unwrap();
        assert_eq!(contents[offset as usize].1, sent[d.tag as usize]);
    }
    assert_eq!(cluster.busy_appends.load(Ordering::SeqCst), 0);
}
