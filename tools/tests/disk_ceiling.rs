//! Sustained production for many snapshot intervals keeps every node's disk use under a ceiling,
//! against real `raftline server` processes: `raftline status`'s disk bytes (the data
//! directory's file lengths) never exceed what the retained log, the snapshots and the log's
//! fixed segment overhead add up to (tools/node/README.md "Disk ceiling").

mod cluster_support;

use std::time::Duration;

use cluster_support::{status, Cluster, CLUSTER};
use raftline_log::Record;
use raftline_netio::client::{Client, ClientConfig};
use raftline_netio::cluster_id::ClusterId;

const MIB: u64 = 1 << 20;
const SEGMENT_MIB: u64 = 1;
const SNAPSHOT_EVERY_MIB: u64 = 1;
const RETAIN_MIB: u64 = 2;
/// Segments a log holds beyond those its retained bytes fill: the partly filled one at each end
/// of the retained range, the prepared spare, and the pool of up to 4 dropped segments kept for
/// recycling (log/FORMAT.md "Segment recycling").
const SLACK_SEGMENTS: u64 = 2 + 1 + 4;
/// Snapshot files at once: the two kept, and one being written.
const SNAPSHOT_FILES_MAX: u64 = 3;
/// Hard state, identity and directory entries.
const SMALL_FILES_BYTES: u64 = 64 << 10;
/// Produced in all: many times the ceiling, so a node that stopped compacting would exceed it.
const PRODUCED_BYTES: u64 = 48 * MIB;
const KEYS: u64 = 4000;

/// The disk a node may use with snapshots of at most `snapshot_bytes`: the retained log plus
/// what the log takes between two snapshots, the snapshot files, and the segment slack.
fn ceiling(snapshot_bytes: u64) -> u64 {
    (RETAIN_MIB + SNAPSHOT_EVERY_MIB + SLACK_SEGMENTS * SEGMENT_MIB) * MIB
        + SNAPSHOT_FILES_MAX * snapshot_bytes
        + SMALL_FILES_BYTES
}

#[test]
fn sustained_production_keeps_every_nodes_disk_under_the_ceiling() {
    let every = SNAPSHOT_EVERY_MIB.to_string();
    let retain = RETAIN_MIB.to_string();
    let cluster = Cluster::start_with_segments(
        3,
        "auto",
        &[
            "--snapshot-every-mib",
            &every,
            "--retain-mib",
            &retain,
            // A quarter segment at most.
            "--batch-kib-max",
            "256",
        ],
        SEGMENT_MIB,
    );
    cluster.wait_leader();
    let bootstrap = cluster.nodes.iter().map(|n| n.client.to_string()).collect();
    let mut config = ClientConfig::new(bootstrap, ClusterId::from_name(CLUSTER));
    config.failover_timeout = Duration::from_secs(20);
    let mut client = Client::connect(config).unwrap();
    let (mut produced, mut n) = (0u64, 0u64);
    let mut snapshot_max = 0u64;
    let mut disk_max = vec![0u64; cluster.nodes.len()];
    let mut samples = 0;
    while produced < PRODUCED_BYTES {
        let records: Vec<Record> = (0..1000)
            .map(|_| {
                n += 1;
                Record {
                    key: Some(format!("key-{:05}", n.wrapping_mul(7919) % KEYS).into_bytes()),
                    value: format!("{n:>10} {}", "d".repeat(100)).into_bytes(),
                    timestamp_ms: n,
                    headers: vec![],
                }
            })
            .collect();
        produced += records
            .iter()
            .map(|r| 10 + r.value.len() as u64)
            .sum::<u64>();
        client.append(&records).unwrap();
        for node in &cluster.nodes {
            let s = status(node.client).unwrap();
            // Before a node's first snapshot its log has not been compacted yet.
            let Some(snapshot) = s.snapshot else { continue };
            snapshot_max = snapshot_max.max(snapshot.bytes);
            let i = node.id as usize - 1;
            disk_max[i] = disk_max[i].max(s.disk_bytes);
            samples += 1;
            assert!(
                s.disk_bytes <= ceiling(snapshot_max),
                "node {}: {} bytes on disk, ceiling {} (snapshots up to {snapshot_max} bytes) \
                 after {produced} bytes produced: {s:?}",
                node.id,
                s.disk_bytes,
                ceiling(snapshot_max)
            );
        }
    }
    eprintln!(
        "produced {produced} bytes; largest disk use per node {disk_max:?}, ceiling {} \
         (snapshots up to {snapshot_max} bytes); {samples} samples",
        ceiling(snapshot_max)
    );
    assert!(samples > 100, "the disk was sampled throughout: {samples}");
    assert!(
        PRODUCED_BYTES > 3 * ceiling(snapshot_max),
        "the workload outgrows the ceiling several times over"
    );
    for node in &cluster.nodes {
        let s = status(node.client).unwrap();
        assert!(
            s.log_start_offset > n / 2,
            "node {} compacted throughout: {s:?}",
            node.id
        );
    }
}
