//! Nodes in network namespaces with delayed links: what `--netns lan|wan|far-replica` of
//! `raftline bench cluster` and `bench failover` run on, and what the namespace tests use.
//!
//! The layout of one run (`TAG` = `rlnet-<pid>-<n>`, unique per run):
//!
//! ```text
//!  TAG-n1 (10.99.0.11)   TAG-n2 (10.99.0.12)   TAG-n3 (10.99.0.13)   TAG-c (10.99.0.2)
//!     eth0                  eth0                  eth0                  eth0
//!      |  veth               |                     |                     |
//!  ----v1-------------------v2--------------------v3--------------------vc----  br0 in TAG-hub
//!                                                                                (10.99.0.1)
//!  relays in TAG-hub: 10.99.0.1:(9000 + 10 i + j) --one-way delay--> 10.99.0.(10 + j):7000
//! ```
//!
//! - Every address is private to namespaces this module creates; nothing is added to the
//!   namespace it is called from. The hub holds the bridge and the relays; the client namespace
//!   (`TAG-c`) is where the harness's own client traffic runs (a thread enters it with
//!   [`Topology::enter_client`]) and reaches every node's client and metrics ports directly
//!   over the bridge, undelayed: the client stands next to every node, so a measured append
//!   latency is the cluster's commit latency, not a client's distance to the leader.
//! - Node `i` dials peer `j` at the hub's relay for the ordered pair (i, j) (its `--peers`
//!   entry for j), which forwards to j's peer port after the link's one-way delay. Both
//!   directions of a connection are delayed, so a round trip i → j → i costs twice the one-way
//!   delay plus the forwarding. The kernel has no `tc netem`, hence relays in user space.
//! - A partition ([`Topology::partition`]) is iptables DROP inside the node's namespace: its
//!   peer port and everything it sends to the hub (all of it peer traffic); its client port
//!   stays reachable, so a client can watch it refuse writes.
//! - Teardown: [`Topology`]'s drop stops the relays and deletes the namespaces (the veths and
//!   the bridge go with them, and so do the processes' sockets). A previous run that crashed
//!   left namespaces named after its pid: [`Topology::create`] deletes those whose process is
//!   gone before it creates its own.
//!
//! What the relays do not model: packet-level effects below TCP (each relay terminates TCP, so
//! every link is two TCP connections with their own windows and the delay applies per chunk
//! read, not per packet), bandwidth limits, reordering, and jitter beyond the relay's own
//! scheduling. Loss is modelled the way an application sees it on TCP: a lost chunk arrives one
//! retransmission timeout late ([`relay::RETRANSMIT_DELAY`]) and holds up everything behind it.
//! A connection to a node that is down is accepted by the relay and closed at once (a refused
//! connection, one hop later).

pub mod relay;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::latency::{LatencyRecorder, LatencySummary};
use relay::{Link, Relays};

/// Prefix of every namespace this module creates.
const PREFIX: &str = "rlnet-";
/// The hub's address on the bridge (the relays listen on it).
pub const HUB: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The client namespace's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// Every node's peer, client and metrics ports (each node has its own namespace, so they repeat).
pub const PEER_PORT: u16 = 7000;
/// See [`PEER_PORT`].
pub const CLIENT_PORT: u16 = 7100;
/// See [`PEER_PORT`].
pub const METRICS_PORT: u16 = 7200;
/// The relay for the ordered pair (i, j) listens on the hub at this + 10 i + j.
const RELAY_PORT_BASE: u16 = 9000;
/// Most nodes a topology holds (relay ports and addresses are laid out for single digits).
pub const NODES_MAX: u64 = 9;

/// The one-way delay of every ordered pair of nodes, and the loss of every link.
#[derive(Clone, Debug, Serialize)]
pub struct LinkDelays {
    /// One-way delay from node i to node j, in µs, for every i ≠ j.
    pub one_way_us: BTreeMap<String, u64>,
    /// Probability that a chunk is "lost" (delivered one retransmission timeout late).
    pub loss: f64,
}

impl LinkDelays {
    /// Every link of `nodes` nodes delayed by `one_way_of(i, j)`, `loss` on every link.
    pub fn new(nodes: u64, loss: f64, one_way_of: impl Fn(u64, u64) -> Duration) -> LinkDelays {
        let mut one_way_us = BTreeMap::new();
        for i in 1..=nodes {
            for j in (1..=nodes).filter(|&j| j != i) {
                one_way_us.insert(pair(i, j), one_way_of(i, j).as_micros() as u64);
            }
        }
        LinkDelays { one_way_us, loss }
    }

    /// The one-way delay from `i` to `j`.
    pub fn one_way(&self, i: u64, j: u64) -> Duration {
        Duration::from_micros(self.one_way_us.get(&pair(i, j)).copied().unwrap_or(0))
    }
}

fn pair(i: u64, j: u64) -> String {
    format!("{i}->{j}")
}

/// The networks the benchmarks and tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 0.2 ms round trip between every pair (one rack).
    Lan,
    /// 70 ms round trip between every pair (three regions).
    Wan,
    /// Nodes 1 and 2 on a LAN (0.2 ms), node 3 70 ms away from both (a far replica).
    FarReplica,
}

/// One-way delay of a LAN link (0.2 ms round trip).
pub const LAN_ONE_WAY: Duration = Duration::from_micros(100);
/// One-way delay of a WAN link (70 ms round trip).
pub const WAN_ONE_WAY: Duration = Duration::from_millis(35);

impl Scenario {
    /// The link delays of this scenario for `nodes` nodes.
    pub fn delays(self, nodes: u64, loss: f64) -> LinkDelays {
        LinkDelays::new(nodes, loss, |i, j| match self {
            Scenario::Lan => LAN_ONE_WAY,
            Scenario::Wan => WAN_ONE_WAY,
            Scenario::FarReplica if i == nodes || j == nodes => WAN_ONE_WAY,
            Scenario::FarReplica => LAN_ONE_WAY,
        })
    }

    /// Raft timing tuned for the scenario's worst round trip, as `raftline server` flags
    /// (tools/node/README.md, "WAN settings"): the defaults on a LAN; across regions a
    /// heartbeat near the round trip and an election timeout well above 5 x its p99.
    pub fn server_args(self) -> Vec<String> {
        let (heartbeat, min, max) = self.timing_ms();
        [
            "--heartbeat-ms",
            &heartbeat.to_string(),
            "--election-timeout-min-ms",
            &min.to_string(),
            "--election-timeout-max-ms",
            &max.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Lan => "lan",
            Scenario::Wan => "wan",
            Scenario::FarReplica => "far-replica",
        }
    }

    /// (heartbeat, election timeout min, max) in ms.
    pub fn timing_ms(self) -> (u64, u64, u64) {
        use raftline_node::config::{
            ELECTION_TIMEOUT_MAX_MS_DEFAULT, ELECTION_TIMEOUT_MIN_MS_DEFAULT, HEARTBEAT_MS_DEFAULT,
        };
        match self {
            Scenario::Lan => (
                HEARTBEAT_MS_DEFAULT,
                ELECTION_TIMEOUT_MIN_MS_DEFAULT,
                ELECTION_TIMEOUT_MAX_MS_DEFAULT,
            ),
            Scenario::Wan | Scenario::FarReplica => (100, 1000, 2000),
        }
    }
}

/// A thread's network namespace switched to another one until this is dropped.
pub struct EnteredNs {
    original: File,
}

impl Drop for EnteredNs {
    fn drop(&mut self) {
        // Back to where the thread was; failing that, the thread stays in a namespace that is
        // about to be deleted, which only its own later connections would notice.
        if let Err(e) = set_netns(self.original.as_raw_fd()) {
            tracing::warn!(error = %e, "returning a thread to its network namespace failed");
        }
    }
}

/// Moves the calling thread into the network namespace `fd` (threads it spawns later follow).
fn set_netns(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns only reads the descriptor; a bad one is an error, not UB.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Enters the network namespace `ns` on the calling thread until the guard is dropped.
pub fn enter(ns: &File) -> anyhow::Result<EnteredNs> {
    let original = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    set_netns(ns.as_raw_fd()).context("entering a network namespace (setns; needs root)")?;
    Ok(EnteredNs { original })
}

/// Runs `ip` with `args`; its stderr is the error.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (iproute2 / iptables must be installed)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes the namespaces of earlier runs whose process is gone (a crash or a kill -9 skipped
/// their teardown).
fn remove_stale() -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns list (iproute2 must be installed)")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            ip(&["netns", "del", name])?;
        }
    }
    Ok(())
}

/// The namespaces of one run, deleted on drop.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: String) -> anyhow::Result<File> {
        ip(&["netns", "add", &name])?;
        self.names.push(name.clone());
        File::open(format!("/run/netns/{name}")).with_context(|| format!("opening netns {name}"))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("removing network namespace {name}: {e:#}");
            }
        }
    }
}

/// Nodes in their own network namespaces, linked through delaying relays (see the module
/// documentation). Dropping it stops the relays and deletes every namespace.
pub struct Topology {
    nodes: u64,
    delays: LinkDelays,
    tag: String,
    // Fields drop in order: the relays stop before the namespaces go.
    _relays: Relays,
    client: File,
    /// Node `id`'s namespace at `[id - 1]`.
    node_ns: Vec<File>,
    _namespaces: Namespaces,
}

/// The address of node `id` on the bridge.
pub fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 10 + id as u8)
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

impl Topology {
    /// Creates the namespaces, the bridge and the links of `nodes` nodes and starts the relays
    /// (`seed` draws their losses). Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
    pub fn create(nodes: u64, delays: LinkDelays, seed: u64) -> anyhow::Result<Topology> {
        anyhow::ensure!(
            (1..=NODES_MAX).contains(&nodes),
            "a topology holds 1 to {NODES_MAX} nodes"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&delays.loss),
            "the loss probability must be in [0, 1)"
        );
        remove_stale()?;
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let mut namespaces = Namespaces { names: Vec::new() };
        let hub_name = format!("{tag}-hub");
        let hub = namespaces.add(hub_name.clone())?;
        ip(&["-n", &hub_name, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &hub_name,
            "addr",
            "add",
            &format!("{HUB}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &hub_name, "link", "set", "br0", "up"])?;
        ip(&["-n", &hub_name, "link", "set", "lo", "up"])?;
        let mut attach = |suffix: &str, port: &str, addr: Ipv4Addr| -> anyhow::Result<File> {
            let name = format!("{tag}-{suffix}");
            let file = namespaces.add(name.clone())?;
            ip(&[
                "-n", &hub_name, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", &name,
            ])?;
            ip(&["-n", &hub_name, "link", "set", port, "master", "br0"])?;
            ip(&["-n", &hub_name, "link", "set", port, "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            Ok(file)
        };
        let client = attach("c", "vc", CLIENT)?;
        let node_ns = (1..=nodes)
            .map(|id| attach(&format!("n{id}"), &format!("v{id}"), node_ip(id)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut links = Vec::new();
        for i in 1..=nodes {
            for j in (1..=nodes).filter(|&j| j != i) {
                links.push(Link {
                    listen: relay_addr(i, j),
                    target: at(node_ip(j), PEER_PORT),
                    one_way: delays.one_way(i, j),
                    loss: delays.loss,
                });
            }
        }
        let relays = Relays::start(&hub, links, seed)?;
        Ok(Topology {
            nodes,
            delays,
            tag,
            _relays: relays,
            client,
            node_ns,
            _namespaces: namespaces,
        })
    }

    /// Nodes in the topology.
    pub fn nodes(&self) -> u64 {
        self.nodes
    }

    /// The link delays it was built with.
    pub fn delays(&self) -> &LinkDelays {
        &self.delays
    }

    /// The run's unique name prefix (`rlnet-<pid>-<n>`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The namespace name of node `id` (for `ip netns exec`).
    pub fn node_ns_name(&self, id: u64) -> String {
        format!("{}-n{id}", self.tag)
    }

    /// Where node `id` listens for peers.
    pub fn peer_listen(&self, id: u64) -> SocketAddr {
        at(node_ip(id), PEER_PORT)
    }

    /// Where node `from` dials node `to`: the hub's relay for that pair.
    pub fn peer_dial(&self, from: u64, to: u64) -> SocketAddr {
        relay_addr(from, to)
    }

    /// Node `id`'s client address (reachable from the client namespace).
    pub fn client_addr(&self, id: u64) -> SocketAddr {
        at(node_ip(id), CLIENT_PORT)
    }

    /// Node `id`'s metrics address (reachable from the client namespace).
    pub fn metrics_addr(&self, id: u64) -> SocketAddr {
        at(node_ip(id), METRICS_PORT)
    }

    /// Moves the calling thread into the client namespace until the guard drops: its
    /// connections (and those of threads it spawns meanwhile) reach the nodes.
    pub fn enter_client(&self) -> anyhow::Result<EnteredNs> {
        enter(&self.client)
    }

    /// Makes `cmd` start inside node `id`'s namespace. Spawn it while this topology lives
    /// (the child enters the namespace through a descriptor the topology holds open).
    pub fn command_in_node(&self, id: u64, cmd: &mut Command) {
        let fd = self.node_ns[id as usize - 1].as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and makes one syscall.
        unsafe {
            cmd.pre_exec(move || set_netns(fd));
        }
    }

    /// Cuts node `id` off from its peers: DROP its peer port and all it sends to the hub
    /// (iptables in its namespace). Its client port stays reachable.
    pub fn partition(&self, id: u64) -> anyhow::Result<()> {
        let ns = self.node_ns_name(id);
        let port = PEER_PORT.to_string();
        let hub = HUB.to_string();
        let rules: [&[&str]; 2] = [
            &["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"],
            &["-A", "OUTPUT", "-d", &hub, "-j", "DROP"],
        ];
        for rule in rules {
            let mut args = vec!["netns", "exec", &ns, "iptables", "-w"];
            args.extend_from_slice(rule);
            ip(&args)?;
        }
        Ok(())
    }

    /// Undoes [`Topology::partition`] (flushes node `id`'s filter table).
    pub fn heal(&self, id: u64) -> anyhow::Result<()> {
        ip(&[
            "netns",
            "exec",
            &self.node_ns_name(id),
            "iptables",
            "-w",
            "-F",
        ])
    }

    /// Round trips from node `from` to node `to` over the path their peer traffic takes (node
    /// `from`'s namespace → the relay → node `to`'s peer port and back), `samples` one-byte
    /// pings one at a time. Only while node `to` is not running (the probe borrows its port).
    pub fn measure_rtt(
        &self,
        from: u64,
        to: u64,
        samples: usize,
    ) -> anyhow::Result<LatencySummary> {
        let echo = {
            let _in_to = enter(&self.node_ns[to as usize - 1])?;
            TcpListener::bind(self.peer_listen(to))
                .with_context(|| format!("binding the round-trip probe in node {to}'s netns"))?
        };
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut conn, _) = echo.accept()?;
            conn.set_nodelay(true)?;
            std::io::copy(&mut conn.try_clone()?, &mut conn)?;
            Ok(())
        });
        let mut recorder = LatencyRecorder::new();
        {
            let _in_from = enter(&self.node_ns[from as usize - 1])?;
            let mut conn = TcpStream::connect(self.peer_dial(from, to))
                .with_context(|| format!("connecting node {from} to node {to}'s relay"))?;
            conn.set_nodelay(true)?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            use std::io::{Read, Write};
            let mut byte = [0u8; 1];
            for _ in 0..samples {
                let sent = Instant::now();
                conn.write_all(&[1])?;
                conn.read_exact(&mut byte)
                    .with_context(|| format!("no echo from node {to} through the relay"))?;
                recorder.record(sent.elapsed());
            }
        }
        // The client's close ends the echo.
        server
            .join()
            .map_err(|_| anyhow::anyhow!("the echo thread panicked"))?
            .context("echoing round-trip probes")?;
        Ok(recorder.summary())
    }
}

/// The hub's relay for the ordered pair (from, to).
fn relay_addr(from: u64, to: u64) -> SocketAddr {
    at(HUB, RELAY_PORT_BASE + 10 * from as u16 + to as u16)
}

/// The `--netns` flags of `raftline bench cluster` and `bench failover`.
#[derive(clap::Args, Debug, Clone)]
pub struct NetnsArgs {
    /// Run the three nodes each in its own network namespace, peers linked through relays with
    /// this scenario's delays (root only): lan = 0.2 ms round trips, wan = 70 ms between every
    /// pair, far-replica = nodes 1-2 at 0.2 ms and node 3 at 70 ms from both. Raft timing is
    /// tuned for it (wan, far-replica: --heartbeat-ms 100, election timeout 1000-2000 ms).
    #[arg(long, value_enum, value_name = "lan|wan|far-replica")]
    pub netns: Option<Scenario>,
    /// With --netns: probability that a relayed chunk is delivered one retransmission timeout
    /// (200 ms) late, holding up what follows it (TCP's view of a lost segment).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub netns_loss: f64,
    /// With --netns: seed of the loss draws (default: random, printed in the report).
    #[arg(long, value_name = "SEED")]
    pub netns_seed: Option<u64>,
    /// With --netns: pings per ordered pair of nodes measuring the round trip through the
    /// relays before the nodes start (the network part of the commit-latency floor).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub netns_rtt_samples: usize,
}

impl NetnsArgs {
    /// Checks the flags against each other (before anything starts).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.netns.is_some() || (self.netns_loss == 0.0 && self.netns_seed.is_none()),
            "--netns-loss and --netns-seed go with --netns"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.netns_loss),
            "--netns-loss must be in [0, 1)"
        );
        anyhow::ensure!(
            self.netns_rtt_samples > 0,
            "--netns-rtt-samples must be at least 1"
        );
        Ok(())
    }
}

/// The round trip measured over one ordered pair's path.
#[derive(Clone, Debug, Serialize)]
pub struct LinkFigures {
    /// Dialling node.
    pub from: u64,
    /// Dialled node.
    pub to: u64,
    /// Configured one-way delay (each direction), µs.
    pub one_way_us: u64,
    /// Measured round trips (one-byte pings through the relay), µs.
    pub rtt_us: LatencySummary,
}

/// What a `--netns` run ran on.
#[derive(Clone, Debug, Serialize)]
pub struct NetnsFigures {
    /// The scenario.
    pub scenario: Scenario,
    /// Loss probability per relayed chunk.
    pub loss: f64,
    /// Seed of the loss draws.
    pub seed: u64,
    /// (heartbeat, election timeout min, max) in ms the nodes ran with.
    pub timing_ms: (u64, u64, u64),
    /// Every ordered pair's measured round trip.
    pub links: Vec<LinkFigures>,
}

/// The physical floor of one quorum commit on a 3-node cluster led by `leader`: its round trip
/// to the nearest follower plus one fdatasync (the follower's; the leader's own runs meanwhile).
#[derive(Clone, Debug, Serialize)]
pub struct CommitFloor {
    /// The leader the floor is for.
    pub leader: u64,
    /// Its nearest follower (by round-trip p50).
    pub nearest_follower: u64,
    /// Round trip p50 to it + fdatasync p50, µs.
    pub us_p50: f64,
    /// Round trip p99 + fdatasync p99 (a sum of tails: above the true p99 of the sum), µs.
    pub us_p99_sum: f64,
}

impl NetnsFigures {
    /// The floor for `leader` with the disk's 4 KiB write + fdatasync latency `fsync`.
    pub fn floor(&self, leader: u64, fsync: &LatencySummary) -> Option<CommitFloor> {
        let nearest = self
            .links
            .iter()
            .filter(|l| l.from == leader)
            .min_by(|a, b| a.rtt_us.us_p50.total_cmp(&b.rtt_us.us_p50))?;
        Some(CommitFloor {
            leader,
            nearest_follower: nearest.to,
            us_p50: nearest.rtt_us.us_p50 + fsync.us_p50,
            us_p99_sum: nearest.rtt_us.us_p99 + fsync.us_p99,
        })
    }

    /// Text lines for a report.
    pub fn render(&self) -> String {
        let (heartbeat, min, max) = self.timing_ms;
        let mut out = format!(
            "netns       {}: nodes in network namespaces, peers through delaying relays \
             (loss {}, seed {}); heartbeat {heartbeat} ms, election timeout {min}-{max} ms\n",
            self.scenario.name(),
            self.loss,
            self.seed
        );
        for l in &self.links {
            out += &format!(
                "link {}->{}   one-way {:.1} ms; measured round trip p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} pings)\n",
                l.from,
                l.to,
                l.one_way_us as f64 / 1e3,
                l.rtt_us.us_p50 / 1e3,
                l.rtt_us.us_p99 / 1e3,
                l.rtt_us.us_max / 1e3,
                l.rtt_us.count
            );
        }
        out
    }
}

/// A `--netns` run: the topology, its measured links, and the calling thread in the client
/// namespace (so the benchmark's own connections, and its threads', reach the nodes) until
/// this is dropped.
pub struct NetnsRun {
    /// What it runs on.
    pub figures: NetnsFigures,
    // Fields drop in order: the thread leaves the client namespace before it is deleted.
    _client: EnteredNs,
    /// The namespaces and relays (shared with the cluster placed on them).
    pub topology: std::sync::Arc<Topology>,
}

impl NetnsRun {
    /// Builds `scenario`'s topology for `nodes` nodes, measures every pair's round trip and
    /// enters the client namespace.
    pub fn start(args: &NetnsArgs, scenario: Scenario, nodes: u64) -> anyhow::Result<NetnsRun> {
        let seed = args.netns_seed.unwrap_or_else(rand::random);
        let topology = Topology::create(nodes, scenario.delays(nodes, args.netns_loss), seed)?;
        let mut links = Vec::new();
        for from in 1..=nodes {
            for to in (1..=nodes).filter(|&to| to != from) {
                links.push(LinkFigures {
                    from,
                    to,
                    one_way_us: topology.delays().one_way(from, to).as_micros() as u64,
                    rtt_us: topology.measure_rtt(from, to, args.netns_rtt_samples)?,
                });
            }
        }
        let client = topology.enter_client()?;
        Ok(NetnsRun {
            figures: NetnsFigures {
                scenario,
                loss: args.netns_loss,
                seed,
                timing_ms: scenario.timing_ms(),
                links,
            },
            _client: client,
            topology: std::sync::Arc::new(topology),
        })
    }
}
