//! Membership an operator drives, with real `raftline server` processes and the `raftline`
//! CLI: a dead node (disk gone) replaced by a fresh one that joins as a learner, catches up by
//! InstallSnapshot while producers continue and is promoted; a cluster grown from 3 to 5 voters
//! and shrunk back under load, leadership moving on the way. Every acknowledged record must be
//! on every remaining node, and the producer (the Rust client's idempotent one) must see no
//! failed append: what the nodes refuse while leadership moves it resends by itself, stored once.

mod cluster_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_support::acks::{check, settled_end, Ledger};
use cluster_support::{append_window, read_all, status, Cluster, Outcome, CLUSTER, DEADLINE};
use raftline_log::Record;
use raftline_netio::client::{ClientConfig, Producer, RecordAck};
use raftline_netio::client_proto::NodeRole;
use raftline_netio::cluster_id::ClusterId;

/// Records per appended batch.
const RECORDS: u64 = 100;

/// The Rust client's idempotent producer, producing tagged batches (one tag per batch of
/// [`RECORDS`] records) until stopped, with the client's own retries only: it keeps every
/// acknowledgement and every failure the client reported to its caller (none may happen while
/// membership and leadership change: a retriable refusal is the client's to resend).
struct Producers {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Produced>,
}

/// What the producer thread saw.
struct Produced {
    ledger: Ledger,
    /// Errors the client returned to its caller (from `send`/`flush`, or a record refused).
    failures: Vec<String>,
    /// Batches the client sent again by itself (after `NotLeader`, `Busy`, a lost connection).
    resends: u64,
}

impl Producers {
    fn start(cluster: &Cluster) -> Producers {
        let stop = Arc::new(AtomicBool::new(false));
        let bootstrap = cluster.nodes.iter().map(|n| n.client.to_string()).collect();
        let mut config = ClientConfig::new(bootstrap, ClusterId::from_name(CLUSTER));
        config.batch_records_max = RECORDS as usize;
        // A batch leaves when full, never by lingering: every batch is one tag.
        config.linger = Duration::from_secs(3600);
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut producer = Producer::new(config);
                let mut seen = Produced {
                    ledger: Ledger::new(),
                    failures: Vec::new(),
                    resends: 0,
                };
                let mut tag: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..RECORDS {
                        let record = Record {
                            key: Some(tag.to_le_bytes().to_vec()),
                            value: format!("tag-{tag}-record-{i}").into_bytes(),
                            timestamp_ms: tag,
                            headers: vec![],
                        };
                        if let Err(e) = producer.send(record) {
                            seen.failures.push(format!("send (tag {tag}): {e}"));
                        }
                    }
                    tag += 1;
                    seen.record(producer.take_acks());
                }
                if let Err(e) = producer.flush() {
                    seen.failures.push(format!("flush: {e}"));
                }
                seen.record(producer.take_acks());
                seen.resends = producer.resends();
                seen
            })
        };
        Producers { stop, thread }
    }

    fn finish(self) -> Produced {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

impl Produced {
    /// Enters each record's acknowledgement under its batch's tag (the ledger holds a tag's
    /// first and last offset).
    fn record(&mut self, acks: Vec<RecordAck>) {
        for ack in acks {
            let tag = ack.seq / RECORDS;
            match ack.result {
                Ok(offset) => {
                    let entry = self.ledger.entry(tag).or_insert((offset, offset));
                    entry.0 = entry.0.min(offset);
                    entry.1 = entry.1.max(offset);
                }
                // One failure per batch (its records share the answer).
                Err(e) if ack.seq % RECORDS == 0 => self.failures.push(format!("tag {tag}: {e}")),
                Err(_) => {}
            }
        }
    }
}

/// Polls `cond` until it holds (deadline: [`DEADLINE`]).
fn wait_for(what: &str, cluster: &Cluster, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a CLI command that must succeed; returns its output.
/// `raftline member add --learner` for node `id` at these addresses; asserts it was added.
fn add_learner(cluster: &Cluster, id: u64, peer_addr: &str, client_addr: &str) {
    let id_text = id.to_string();
    let out = cli_ok(
        cluster,
        &[
            "member",
            "add",
            "--learner",
            "--id",
            &id_text,
            "--peer-addr",
            peer_addr,
            "--client-addr",
            client_addr,
        ],
    );
    assert!(
        out.contains(&format!("node {id} added as a learner")),
        "{out}"
    );
}

fn cli_ok(cluster: &Cluster, args: &[&str]) -> String {
    let (ok, out, err) = cluster.cli(args);
    assert!(ok, "raftline {args:?} failed: {err}\n{out}");
    out
}

/// Promotes learner `id` with `raftline member promote`, asking again while it is refused
/// because the learner is still catching up; returns how many refusals that took.
fn promote(cluster: &Cluster, id: u64) -> u32 {
    let id_text = id.to_string();
    let mut refusals = 0;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (ok, out, err) = cluster.cli(&["member", "promote", &id_text]);
        if ok {
            assert!(out.contains(&format!("node {id} promoted")), "{out}");
            return refusals;
        }
        assert!(
            err.contains("catching up") || err.contains("caught up") || err.contains("retry"),
            "promotion refused for another reason: {err}"
        );
        refusals += 1;
        assert!(
            Instant::now() < deadline,
            "node {id} never promoted: {err}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `member list` output lines of voters and learners, by id.
fn listed(cluster: &Cluster) -> (Vec<u64>, Vec<u64>) {
    let out = cli_ok(cluster, &["member", "list"]);
    let (mut voters, mut learners) = (Vec::new(), Vec::new());
    for line in out.lines().skip(2) {
        let mut words = line.split_whitespace();
        let (Some(id), Some(role)) = (words.next(), words.next()) else {
            continue;
        };
        let id: u64 = id.parse().unwrap();
        match role {
            "leader" | "voter" => voters.push(id),
            "learner" => learners.push(id),
            other => panic!("role {other} in {out}"),
        }
    }
    (voters, learners)
}

#[test]
fn a_dead_node_is_replaced_by_a_fresh_one_that_catches_up_by_snapshot_under_load() {
    let mut cluster = Cluster::start_with(
        3,
        "auto",
        &["--snapshot-every-mib", "1", "--retain-mib", "0"],
    );
    let leader = cluster.wait_leader();
    let producers = Producers::start(&cluster);
    // Node 3 (or another follower) dies and its disk is gone.
    let dead = if leader == 3 { 2 } else { 3 };
    let survivor = (1..=3).find(|&i| i != leader && i != dead).unwrap();
    cluster.kill(dead);
    cluster.wipe(dead);
    wait_for("the leader seeing the dead node down", &cluster, || {
        let out = cli_ok(&cluster, &["member", "list"]);
        out.lines()
            .any(|l| l.split_whitespace().next() == Some(&dead.to_string()) && l.contains("down"))
    });
    // Removing the survivor now would leave {leader, dead}: refused, with the reason.
    let (ok, _, err) = cluster.cli(&["member", "remove", &survivor.to_string()]);
    assert!(
        !ok,
        "removing a live voter while another is down must be refused"
    );
    assert!(
        err.contains("quorum") && err.contains("--force") && err.contains(&dead.to_string()),
        "the refusal explains itself: {err}"
    );
    // 1. Remove the dead voter: the two survivors are a quorum of the new configuration.
    let out = cli_ok(&cluster, &["member", "remove", &dead.to_string()]);
    assert!(out.contains(&format!("node {dead} removed")), "{out}");
    // Let the log outgrow a snapshot so the new node cannot get it from index 1.
    wait_for("the leader compacting its log", &cluster, || {
        status(cluster.node(leader).client).is_ok_and(|s| s.log_start_offset > 0)
    });
    // 2. A fresh node, empty data directory, joins as a learner through any member.
    let joined_at = Instant::now();
    let fresh = cluster.join(survivor);
    wait_for("the fresh node catching up", &cluster, || {
        let (Ok(me), Ok(lead)) = (
            status(cluster.node(fresh).client),
            status(cluster.node(leader).client),
        ) else {
            return false;
        };
        me.role == NodeRole::Learner && me.commit_index > 0 && me.log_start_offset > 0 && {
            lead.commit_index > 0
        }
    });
    assert!(
        cluster
            .log_of(fresh)
            .contains("snapshot from the leader installed"),
        "the fresh node caught up by InstallSnapshot\n{}",
        cluster.log_of(fresh)
    );
    let (voters, learners) = listed(&cluster);
    assert_eq!(learners, [fresh], "listed as a learner: {voters:?}");
    // 3. Promote it once it has caught up.
    let refusals = promote(&cluster, fresh);
    let copied = status(cluster.node(fresh).client).unwrap();
    eprintln!(
        "replacement: joined to promoted in {} ms ({refusals} promotions refused while it caught \
         up); it holds snapshot {:?} and log offsets {}..{}, {} bytes on disk",
        joined_at.elapsed().as_millis(),
        copied.snapshot,
        copied.log_start_offset,
        copied.log_end_offset,
        copied.disk_bytes
    );
    let (mut voters, learners) = listed(&cluster);
    voters.sort_unstable();
    let mut expected = vec![leader, survivor, fresh];
    expected.sort_unstable();
    assert_eq!(voters, expected);
    assert!(learners.is_empty());
    let Produced {
        ledger, failures, ..
    } = producers.finish();
    assert!(
        failures.is_empty(),
        "every append was acknowledged (quorum never lacked): {failures:?}"
    );
    assert!(ledger.len() > 100, "producers kept going: {}", ledger.len());
    let violations = check(&cluster, &ledger, RECORDS);
    assert!(violations.is_empty(), "{violations:?}\n{}", cluster.logs());
    // The new voter loses its disk too and comes back under its id: it is refused (a voter
    // that forgot its vote and log must not vote), until the operator removes it.
    cluster.kill(fresh);
    cluster.wipe(fresh);
    cluster.spawn(fresh);
    let exit = cluster.await_exit(fresh, DEADLINE);
    assert!(exit.is_some_and(|e| !e.success()), "refused: {exit:?}");
    let log = cluster.log_of(fresh);
    assert!(
        log.contains("is a voter of this cluster")
            && log.contains(&format!("raftline member remove {fresh}")),
        "{log}"
    );
}

/// Appends `tags` to node `at` (16 in flight); every one must be acknowledged.
fn append_all(cluster: &Cluster, at: u64, tags: &[u64]) {
    let acked = append_window(cluster.node(at).client, tags, RECORDS, 16);
    assert!(
        acked.values().all(|o| matches!(o, Outcome::Acked { .. })),
        "{acked:?}\n{}",
        cluster.logs()
    );
}

/// Appends `tag` alone at whichever node leads; it must be acknowledged.
fn append_at_leader(cluster: &Cluster, tag: u64) {
    let leader = cluster.wait_leader();
    let outcome = append_window(cluster.node(leader).client, &[tag], RECORDS, 1);
    assert!(
        matches!(outcome.get(&tag), Some(Outcome::Acked { .. })),
        "append {tag} at node {leader}: {outcome:?}\n{}",
        cluster.logs()
    );
}

/// Waits until every one of `n` members has its incarnation recorded.
fn wait_incarnations_recorded(cluster: &Cluster, n: usize) {
    wait_for("every member's incarnation recorded", cluster, || {
        let recorded = incarnations(cluster);
        recorded.len() == n && recorded.values().all(Option::is_some)
    });
}

/// The incarnation `member list` shows for each member (`None`: not recorded yet).
fn incarnations(cluster: &Cluster) -> BTreeMap<u64, Option<String>> {
    let out = cli_ok(cluster, &["member", "list"]);
    out.lines()
        .skip(2)
        .filter_map(|line| {
            let id = line.split_whitespace().next()?.parse().ok()?;
            let last = line.split_whitespace().last()?;
            Some((id, (last != "-").then(|| last.to_string())))
        })
        .collect()
}

/// A bootstrap voter whose disk is wiped, restarted with the same `--peers` (what a StatefulSet
/// pod on a lost volume does), must not take part: it forgot its vote and the entries it
/// acknowledged. Its peers know its data directory's incarnation, so it stops at once with the
/// runbook in its error (also when `--join` beside `--peers` lets it ask the cluster first);
/// removed, the same command line brings the same id back as a new member (it joins) holding
/// every acknowledged record. With the check mutated away (`Vouching::hear`
/// ignoring what a peer records for it) it starts as an empty voter and this test fails at the
/// expected exit.
#[test]
fn a_wiped_bootstrap_voter_restarted_with_its_peers_is_refused_until_removed_and_joined() {
    let mut cluster = Cluster::start(3, "auto");
    let leader = cluster.wait_leader();
    let tags: Vec<u64> = (0..200).collect();
    append_all(&cluster, leader, &tags);
    let end = tags.len() as u64 * RECORDS;
    wait_incarnations_recorded(&cluster, 3);
    let wiped = if leader == 3 { 2 } else { 3 };
    let recorded = incarnations(&cluster)[&wiped].clone().unwrap();
    cluster.kill(wiped);
    cluster.wipe(wiped);
    cluster.spawn(wiped);
    let exit = cluster.await_exit(wiped, DEADLINE);
    let log = cluster.log_of(wiped);
    assert!(
        exit.is_some_and(|e| !e.success()),
        "a wiped voter restarted with --peers must stop: {exit:?}\n{log}"
    );
    assert!(
        log.contains(&format!("records data directory incarnation {recorded}"))
            && log.contains(&format!("raftline member remove {wiped}"))
            && log.contains("--join"),
        "the refusal names the incarnation and the runbook:\n{log}"
    );
    // The two others carry on meanwhile.
    let more: Vec<u64> = (200..220).collect();
    append_all(&cluster, leader, &more);
    // With `--join` beside its `--peers` (one command line for every node, as the StatefulSet
    // has) it asks the cluster first, and is refused before it even listens to hellos.
    let refusals = |log: &str| {
        log.matches(&format!("records data directory incarnation {recorded}"))
            .count()
    };
    let refused_before = refusals(&log);
    cluster.wipe(wiped);
    let via = cluster.node(leader).client.to_string();
    cluster.nodes[wiped as usize - 1].args = vec!["--join".into(), via];
    cluster.spawn(wiped);
    let exit = cluster.await_exit(wiped, DEADLINE);
    let log = cluster.log_of(wiped);
    assert!(exit.is_some_and(|e| !e.success()), "{exit:?}\n{log}");
    assert!(
        refusals(&log) > refused_before && log.contains("--join"),
        "refused again, by the member list:\n{log}"
    );
    // The runbook: remove it; the same command line on a new directory then joins as a learner.
    let out = cli_ok(&cluster, &["member", "remove", &wiped.to_string()]);
    assert!(out.contains(&format!("node {wiped} removed")), "{out}");
    cluster.wipe(wiped);
    cluster.spawn(wiped);
    promote(&cluster, wiped);
    assert!(
        cluster
            .log_of(wiped)
            .contains("not a member of the running cluster"),
        "{}",
        cluster.log_of(wiped)
    );
    let end = end + more.len() as u64 * RECORDS;
    wait_for("the rejoined node holding every record", &cluster, || {
        status(cluster.node(wiped).client)
            .is_ok_and(|s| s.commit_index > 0 && s.log_end_offset >= end)
    });
    let records = read_all(cluster.node(wiped).client, end);
    assert_eq!(
        records.len() as u64,
        end,
        "every acknowledged record is on it"
    );
    let now = incarnations(&cluster);
    wait_for("the new directory's incarnation recorded", &cluster, || {
        incarnations(&cluster)[&wiped]
            .as_ref()
            .is_some_and(|i| *i != recorded)
    });
    assert_eq!(now.len(), 3, "{now:?}");
}

/// A first start does not need every node: two of three pristine nodes vouch for each other
/// and elect a leader; the third, started later on its own new directory, is vouched for by
/// the two (which hold a log and record nothing for it), catches up and has its incarnation
/// recorded. With the pristine rule mutated away (`Vouching::verdict` requiring a quorum of
/// the others) the first two wait for the third and `wait_leader` fails.
#[test]
fn a_first_start_with_a_node_missing_elects_and_the_late_node_takes_part_when_it_comes() {
    let mut cluster = Cluster::start_but(3, &[3]);
    let leader = cluster.wait_leader();
    let tags: Vec<u64> = (0..50).collect();
    append_all(&cluster, leader, &tags);
    let end = tags.len() as u64 * RECORDS;
    cluster.spawn(3);
    wait_for("the late node catching up", &cluster, || {
        status(cluster.node(3).client).is_ok_and(|s| s.log_end_offset >= end && s.commit_index > 0)
    });
    assert_eq!(read_all(cluster.node(3).client, end).len() as u64, end);
    for id in 1..=3 {
        assert!(
            cluster.log_of(id).contains("vouched for"),
            "node {id}\n{}",
            cluster.log_of(id)
        );
    }
    wait_incarnations_recorded(&cluster, 3);
}

#[test]
fn the_cluster_grows_from_three_to_five_voters_and_back_under_load() {
    let mut cluster = Cluster::start(3, "auto");
    cluster.wait_leader();
    let producers = Producers::start(&cluster);
    // Grow: node 4 joins as a learner by itself and is promoted; node 5 is added by the
    // operator first (`member add --learner`), then started with `--join`, which finds itself
    // already a member at its addresses.
    let four = cluster.join(1);
    promote(&cluster, four);
    let five = cluster.add_joiner(2);
    let (peer, client) = (cluster.node(five).peer, cluster.node(five).client);
    add_learner(&cluster, five, &peer.to_string(), &client.to_string());
    cluster.spawn(five);
    promote(&cluster, five);
    assert!(
        cluster
            .log_of(five)
            .contains("already a member at these addresses"),
        "{}",
        cluster.log_of(five)
    );
    let (mut voters, _) = listed(&cluster);
    voters.sort_unstable();
    assert_eq!(voters, [1, 2, 3, 4, 5]);
    // Leadership moves to a new node on request.
    let out = cli_ok(&cluster, &["leader", "transfer", "--to", "5"]);
    assert!(out.contains("node 5 leads now"), "{out}");
    assert_eq!(cluster.wait_leader(), 5);
    // A restarted original node learns the five voters from its log, not its three --peers.
    assert!(cluster.terminate(1));
    cluster.spawn(1);
    assert_eq!(cluster.wait_leader(), 5);
    wait_for("the restart warning", &cluster, || {
        cluster
            .log_of(1)
            .contains("--peers does not match the configuration in the log")
    });
    // Shrink: remove the two new nodes again, the leader among them (it steps down once its
    // removal commits).
    for id in [4, 5] {
        let out = cli_ok(&cluster, &["member", "remove", &id.to_string()]);
        assert!(out.contains(&format!("node {id} removed")), "{out}");
        // The removed node received its removal: it is no voter of its own configuration.
        wait_for("the removed node knowing it", &cluster, || {
            status(cluster.node(id).client).is_ok_and(|s| s.role == NodeRole::Learner)
        });
        assert!(cluster.terminate(id));
    }
    let (mut voters, learners) = listed(&cluster);
    voters.sort_unstable();
    assert_eq!(voters, [1, 2, 3]);
    assert!(learners.is_empty());
    let leader = cluster.wait_leader();
    assert!(leader <= 3);
    // Leadership moved three times (transfer to 5, restart of 1, removal of the leader 5)
    // while the producer ran: the nodes answered what was in flight with NotLeader (or Busy),
    // and the client resent it by itself, the same bytes with the same sequence.
    let Produced {
        ledger,
        failures,
        resends,
    } = producers.finish();
    eprintln!("the producer resent {resends} batches across the leader changes");
    assert!(
        failures.is_empty(),
        "the producer saw no failed append across the membership and leader changes: {} \
         failures, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        resends > 0,
        "the leader changes happened while appends were in flight"
    );
    assert!(ledger.len() > 100, "producers kept going: {}", ledger.len());
    let violations = check(&cluster, &ledger, RECORDS);
    assert!(violations.is_empty(), "{violations:?}\n{}", cluster.logs());
    // Exactly once: a resent batch was stored once (the log holds each tag's records once).
    let end = settled_end(&cluster).unwrap();
    let mut copies: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, tag) in read_all(cluster.node(leader).client, end) {
        *copies.entry(tag).or_default() += 1;
    }
    let stored_twice: Vec<_> = copies.iter().filter(|(_, &n)| n > RECORDS).collect();
    assert!(
        stored_twice.is_empty(),
        "tags stored twice: {stored_twice:?}"
    );
}

/// `localhost:PORT` for `addr`'s port: a name that resolves on every machine.
fn by_name(addr: std::net::SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

#[test]
fn members_known_by_name_are_dialled_by_every_node_also_after_a_restart() {
    let mut cluster = Cluster::start(3, "auto");
    cluster.wait_leader();
    // Node 4 is added by the operator under names, then started: it announces the same names.
    let four = cluster.add_joiner(1);
    let (peer, client) = (cluster.node(four).peer, cluster.node(four).client);
    add_learner(&cluster, four, &by_name(peer), &by_name(client));
    let advertise = |peer, client| {
        [
            "--advertise-peer-addr",
            &by_name(peer),
            "--advertise-client-addr",
            &by_name(client),
        ]
        .map(String::from)
        .to_vec()
    };
    cluster.nodes[3].args = advertise(peer, client);
    cluster.spawn(four);
    // Node 5 joins by itself, through a member given by name, and announces names too.
    let five = cluster.add_joiner(2);
    let via = by_name(cluster.node(2).client);
    let node = &mut cluster.nodes[4];
    node.join = Some(via);
    node.args = advertise(node.peer, node.client);
    cluster.spawn(five);
    promote(&cluster, four);
    promote(&cluster, five);
    assert!(
        cluster
            .log_of(four)
            .contains("already a member at these addresses"),
        "{}",
        cluster.log_of(four)
    );
    let list = cli_ok(&cluster, &["member", "list"]);
    for id in [four, five] {
        let name = by_name(cluster.node(id).peer);
        assert!(list.contains(&name), "stored as given: {name} in\n{list}");
    }
    // Node 5 leads; with nodes 1 and 2 down the only quorum is {3, 4, 5}: node 5 reaches node
    // 4 by its name.
    let out = cli_ok(&cluster, &["leader", "transfer", "--to", "5"]);
    assert!(out.contains("node 5 leads now"), "{out}");
    cluster.kill(1);
    cluster.kill(2);
    append_at_leader(&cluster, 1);
    // Node 3 restarts: it learns 4 and 5 (names) from its log and resolves them itself; without
    // its link to them the quorum {3, 4, 5} cannot commit.
    assert!(cluster.terminate(3));
    cluster.spawn(3);
    append_at_leader(&cluster, 2);
}

/// A name of this test's in `/etc/hosts`, pointing at one loopback address at a time (the test
/// runs as root, as CI does); the line goes when the guard drops, also on a failure.
struct HostsName {
    name: String,
}

impl HostsName {
    const HOSTS: &'static str = "/etc/hosts";

    fn new(ip: &str) -> HostsName {
        let hosts = HostsName {
            name: format!("raftline-moved-{}.test", std::process::id()),
        };
        hosts.point_at(ip);
        hosts
    }

    /// Rewrites the name's line to `ip` (glibc reads the file at every lookup).
    fn point_at(&self, ip: &str) {
        let mut text = self.others();
        text.push_str(&format!("{ip} {}\n", self.name));
        std::fs::write(Self::HOSTS, text).unwrap_or_else(|e| {
            panic!("this test moves a name in /etc/hosts and needs to write it (root): {e}")
        });
    }

    /// The file without this name's line.
    fn others(&self) -> String {
        let text = std::fs::read_to_string(Self::HOSTS).unwrap_or_default();
        text.lines()
            .filter(|l| l.split_whitespace().nth(1) != Some(self.name.as_str()))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Drop for HostsName {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::HOSTS, self.others());
    }
}

/// A member known by name moves to a new IP address with its data directory (a rescheduled
/// pod keeps its name and volume, not its address): the others look the name up again and
/// dial it there. Node 4 is a voter that the quorum needs once node 2 or 3 is down, so the
/// append after the move commits only if the leader reaches it at its new address. With the
/// new address ignored (`Net::add_peer` keeping a known peer's old one) no leader can form a
/// quorum and the test fails.
#[test]
fn a_member_known_by_name_that_moves_to_a_new_address_is_dialled_there() {
    let hosts = HostsName::new("127.0.0.2");
    let mut cluster = Cluster::start(3, "auto");
    let leader = cluster.wait_leader();
    let four = cluster.add_joiner(leader);
    let at = |ip: &str, port: u16| std::net::SocketAddr::new(ip.parse().unwrap(), port);
    let (peer_port, client_port) = (
        cluster.node(four).peer.port(),
        cluster.node(four).client.port(),
    );
    let node = &mut cluster.nodes[four as usize - 1];
    node.peer = at("127.0.0.2", peer_port);
    node.client = at("127.0.0.2", client_port);
    node.args = [
        "--advertise-peer-addr".to_string(),
        format!("{}:{peer_port}", hosts.name),
        "--advertise-client-addr".to_string(),
        format!("{}:{client_port}", hosts.name),
    ]
    .to_vec();
    cluster.spawn(four);
    promote(&cluster, four);
    append_at_leader(&cluster, 1);
    // Node 4's machine is replaced: same name and volume, a new address.
    cluster.kill(four);
    hosts.point_at("127.0.0.3");
    let node = &mut cluster.nodes[four as usize - 1];
    node.peer = at("127.0.0.3", peer_port);
    node.client = at("127.0.0.3", client_port);
    cluster.spawn(four);
    // Without one of the bootstrap followers, {leader, the other, 4} is the only quorum.
    let down = (1..=3).find(|&id| id != leader).unwrap();
    cluster.kill(down);
    append_at_leader(&cluster, 2);
    assert!(
        cluster.log_of(leader).contains("peer address changed"),
        "{}",
        cluster.log_of(leader)
    );
    let end = 2 * RECORDS;
    wait_for("node 4 holding both appends", &cluster, || {
        status(cluster.node(four).client).is_ok_and(|s| s.log_end_offset >= end)
    });
    let tags: Vec<u64> = read_all(cluster.node(four).client, end)
        .into_iter()
        .map(|(_, tag)| tag)
        .collect();
    assert_eq!(tags.first(), Some(&1));
    assert_eq!(tags.last(), Some(&2));
}

/// A member known by its IP address moves to a new machine with its data directory: `raftline
/// member update` gives the cluster its new addresses in place (no remove and join: it keeps
/// its log, its vote and its recorded incarnation). Once the other follower is down the quorum
/// needs it, so the append commits only if the leader dials it at the new address. With the
/// update ignored by the leader (the old address kept) no quorum forms and the append fails.
#[test]
fn a_member_that_moved_to_a_new_ip_address_is_updated_in_place() {
    let mut cluster = Cluster::start(3, "auto");
    let leader = cluster.wait_leader();
    append_at_leader(&cluster, 1);
    wait_incarnations_recorded(&cluster, 3);
    let moved = if leader == 3 { 2 } else { 3 };
    let other = (1..=3).find(|&id| id != leader && id != moved).unwrap();
    let recorded = incarnations(&cluster)[&moved].clone();
    cluster.kill(moved);
    let node = &mut cluster.nodes[moved as usize - 1];
    let at = |port| std::net::SocketAddr::new("127.0.0.2".parse().unwrap(), port);
    node.peer = at(node.peer.port());
    node.client = at(node.client.port());
    let (peer, client) = (node.peer.to_string(), node.client.to_string());
    cluster.spawn(moved);
    let id = moved.to_string();
    let args = [
        "member",
        "update",
        "--id",
        &id,
        "--peer-addr",
        &peer,
        "--client-addr",
        &client,
    ];
    let out = cli_ok(&cluster, &args);
    assert!(out.contains(&format!("node {moved} updated")), "{out}");
    cluster.kill(other);
    append_at_leader(&cluster, 2);
    let list = cli_ok(&cluster, &["member", "list"]);
    assert!(list.contains(&peer), "the new address is listed:\n{list}");
    assert_eq!(
        incarnations(&cluster)[&moved],
        recorded,
        "the same data directory"
    );
}
