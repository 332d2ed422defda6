//! What a test producer was told, and the checker of every promise behind it: each
//! acknowledged record at its offset on every node, no offset handed out twice, the nodes equal
//! byte for byte.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{read_batches, status, tags_in, Cluster, DEADLINE};

/// Every acknowledgement the producer received: tag → (first offset, last offset).
pub type Ledger = BTreeMap<u64, (u64, u64)>;

/// Polls until every running node reports the same log end, all of it committed; returns that
/// end.
pub fn settled_end(cluster: &Cluster) -> Result<u64, String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let statuses: Vec<_> = running(cluster).map(|n| status(n.client)).collect();
        let ends: Vec<_> = statuses
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .filter(|s| s.commit_index == s.log_last_index)
            .map(|s| (s.log_end_offset, s.log_last_index))
            .collect();
        if ends.len() == statuses.len() && ends.windows(2).all(|w| w[0] == w[1]) {
            return Ok(ends[0].0);
        }
        if Instant::now() > deadline {
            return Err(format!("the nodes never settled on one log: {statuses:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The nodes whose process runs (stopped and removed ones are not checked).
fn running(cluster: &Cluster) -> impl Iterator<Item = &super::Node> {
    cluster.nodes.iter().filter(|n| n.child.is_some())
}

/// Every way `ledger` and the running nodes' logs break the promises: an acknowledged record
/// missing or moved, nodes disagreeing, an offset acknowledged twice.
pub fn check(cluster: &Cluster, ledger: &Ledger, records: u64) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_offset: BTreeMap<u64, u64> = BTreeMap::new();
    let mut reused = 0;
    for (&tag, &(base, last)) in ledger {
        if last - base + 1 != records {
            violations.push(format!("tag {tag} acknowledged at {base}..={last}"));
        }
        for offset in base..=last {
            // The first acknowledgement of an offset stays the one the log must hold.
            let first = *by_offset.entry(offset).or_insert(tag);
            if first != tag {
                if reused == 0 {
                    violations.push(format!(
                        "offset {offset} acknowledged for tag {first} and for tag {tag}"
                    ));
                }
                reused += 1;
            }
        }
    }
    if reused > 0 {
        violations.push(format!("{reused} offsets acknowledged twice"));
    }
    let end = match settled_end(cluster) {
        Ok(end) => end,
        Err(e) => {
            violations.push(e);
            return violations;
        }
    };
    let mut logs = Vec::new();
    for node in running(cluster) {
        let start = status(node.client).map_or(0, |s| s.log_start_offset);
        let batches = read_batches(node.client, start, end);
        let held: BTreeMap<u64, u64> = tags_in(&batches, start, end).into_iter().collect();
        let mut lost = 0;
        for (&offset, &tag) in by_offset.range(start..) {
            if held.get(&offset) != Some(&tag) {
                if lost < 5 {
                    violations.push(format!(
                        "node {}: acknowledged tag {tag} at offset {offset}, found {:?}",
                        node.id,
                        held.get(&offset)
                    ));
                }
                lost += 1;
            }
        }
        if lost > 0 {
            violations.push(format!(
                "node {}: {lost} acknowledged records lost (log {start}..{end})",
                node.id
            ));
        }
        logs.push((node.id, batches));
    }
    // Compacted nodes start at different offsets; batches are the same entries everywhere, so
    // from the latest start on the lists must be equal byte for byte.
    let common = logs
        .iter()
        .filter_map(|(_, b)| b.first().map(|b| b.header().base_offset))
        .max()
        .unwrap_or(0);
    let from_common = |batches: &[raftline_log::Batch]| -> Vec<Vec<u8>> {
        batches
            .iter()
            .filter(|b| b.header().base_offset >= common)
            .map(|b| b.as_bytes().to_vec())
            .collect()
    };
    let (first, reference) = (logs[0].0, from_common(&logs[0].1));
    for (id, batches) in &logs[1..] {
        let bytes = from_common(batches);
        if bytes != reference {
            violations.push(format!(
                "node {id} and node {first} diverge from offset {common} ({} and {} batches)",
                bytes.len(),
                reference.len()
            ));
        }
    }
    violations
}
