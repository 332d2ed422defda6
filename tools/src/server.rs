//! `raftline server`: one node of a cluster. Sets up the data directory, the network, the log and
//! the Raft core, prints the thread layout, runs the raft thread until SIGTERM/SIGINT, then
//! drains (appends already accepted get their answer, the log writer finishes what it was given)
//! and exits 0.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use raftline_log::{BackendChoice, WriterHook};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{Net, NetConfig};
use raftline_pinning::{Layout, Role};
use raftline_replicator::Config;

use crate::node::identity::Identity;
use crate::node::metrics::{self, Metrics};
use crate::node::raft_thread::{self, LoopConfig};
use crate::node::replica::{Replica, ReplicaConfig};
use crate::node::sessions::{SessionConfig, Sessions};
use crate::server_config::{ServerArgs, ServerConfig};

/// The long `--help` of `raftline server`.
pub const LONG_ABOUT: &str = "Run one node of a raftline cluster.\n\n\
Every node gets the same --peers list (all voters, itself included) and its own --id. Node 1 of \
3 on one machine (the ports `raftline dev` uses):\n\n  \
raftline server --id 1 --cluster-id demo --data-dir ./data/node-1 \\\n    \
--peers 1=127.0.0.1:7301,2=127.0.0.1:7302,3=127.0.0.1:7303 \\\n    \
--peer-clients 1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403 \\\n    \
--client-listen 127.0.0.1:7401 --metrics-listen 127.0.0.1:7501\n\n\
The same as a file (`raftline server --config node-1.toml`; flags override it):\n\n  \
id = 1\n  cluster_id = \"demo\"\n  data_dir = \"./data/node-1\"\n  \
client_listen = \"127.0.0.1:7401\"\n  metrics_listen = \"127.0.0.1:7501\"\n  \
[peers]\n  1 = \"127.0.0.1:7301\"\n  2 = \"127.0.0.1:7302\"\n  3 = \"127.0.0.1:7303\"\n  \
[peer_clients]\n  1 = \"127.0.0.1:7401\"\n  2 = \"127.0.0.1:7402\"\n  3 = \"127.0.0.1:7403\"\n\n\
A restarted node resumes from its data directory; a data directory belongs to one cluster and \
node id for good. SIGTERM or Ctrl-C drains (a leader first hands leadership to a follower) and \
stops; a second signal exits at once. Nothing acknowledged is lost either way, nor by kill -9: \
acknowledged means durable on a majority.\n\n\
Set RAFTLINE_NET_BACKEND=poll (or --net-backend poll) to run without io_uring networking; \
RUST_LOG=debug for more log output.";

/// Exit status on a second signal (128 + SIGINT, the shell convention).
const EXIT_INTERRUPTED: i32 = 130;

/// Runs a node until it is told to stop.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.resolve()?;
    for warning in &cfg.warnings {
        tracing::warn!("{warning}");
    }
    Identity {
        cluster_name: cfg.cluster_name.clone(),
        node_id: cfg.id,
    }
    .claim(&cfg.data_dir)?;
    let cluster_id = ClusterId::from_name(&cfg.cluster_name);

    let layout = if cfg.cores.is_empty() {
        None
    } else {
        Some(Layout::new(&cfg.cores).context("--cores")?)
    };
    let mut net_cfg = NetConfig::new(
        cfg.id,
        cluster_id,
        cfg.listen,
        cfg.client_listen,
        cfg.peers
            .iter()
            .filter(|(&id, _)| id != cfg.id)
            .map(|(&id, &addr)| (id, addr))
            .collect(),
    );
    net_cfg.backend = cfg.net_backend;
    let net = Net::bind(net_cfg)?;
    let addrs = net.local_addrs();
    let waker = net.waker();

    let (heartbeat_ticks, election_min, election_max) = cfg.ticks();
    let mut raft = Config::new(cfg.id, cfg.peers.keys().copied().collect());
    raft.heartbeat_ticks = heartbeat_ticks;
    raft.election_ticks_min = election_min;
    raft.election_ticks_max = election_max;
    raft.entry_bytes_max = cfg.batch_bytes_max as u64;
    let durable_waker = waker.clone();
    let writer_core = layout.as_ref().and_then(|l| l.core_of(Role::LogWriter));
    let replica = Replica::open(ReplicaConfig {
        raft,
        data_dir: cfg.data_dir.clone(),
        log_backend: BackendChoice::Auto,
        segment_bytes: cfg.segment_bytes,
        batch_bytes_max: cfg.batch_bytes_max,
        rng_seed: rng_seed(cfg.id),
        durable_hook: Some(WriterHook(Arc::new(move || durable_waker.wake()))),
        writer_start_hook: writer_core.map(|core| {
            WriterHook(Arc::new(move || {
                if let Err(e) = raftline_pinning::pin_current_thread(core) {
                    tracing::warn!(core, error = %e, "log writer runs unpinned");
                }
            }))
        }),
        snapshots: cfg.snapshots,
        emulated_fsync_delay: cfg
            .emulate_disk
            .map_or(Duration::ZERO, |p| p.fsync_latency()),
    })?;
    let mut metrics = Metrics::new(replica.log_handle());
    if let Some(profile) = cfg.emulate_disk {
        tracing::warn!("{}", profile.banner());
        metrics = metrics.with_emulated_disk(profile.name());
    }
    let metrics = Arc::new(metrics);
    print_start(&cfg, &layout, &net, addrs, &replica);

    if let Some(addr) = cfg.metrics_listen {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name(Role::Control.thread_name().into())
            .spawn(move || metrics::serve(listener, metrics))
            .context("spawning the metrics thread")?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let signals = Arc::new(AtomicU32::new(0));
    {
        let (stop, waker) = (Arc::clone(&stop), waker.clone());
        ctrlc::set_handler(move || {
            if signals.fetch_add(1, Ordering::SeqCst) > 0 {
                std::process::exit(EXIT_INTERRUPTED);
            }
            stop.store(true, Ordering::SeqCst);
            waker.wake();
        })
        .context("installing the SIGTERM/SIGINT handler")?;
    }

    let loop_cfg = LoopConfig {
        cluster_id,
        node_id: cfg.id,
        tick: cfg.tick,
        drain_timeout: Duration::from_secs(3),
        client_addresses: cfg.peer_clients.clone(),
    };
    let sessions = Sessions::new(
        SessionConfig {
            cluster_id,
            node_id: cfg.id,
            client_addresses: cfg.peer_clients.clone(),
            batch_bytes_max: cfg.batch_bytes_max,
            append_timeout: cfg.append_timeout,
            subscriptions_per_client_max: 64,
        },
        Arc::clone(&metrics),
    );
    let body = move || raft_thread::run(loop_cfg, net, replica, sessions, metrics, stop);
    let handle = match &layout {
        Some(layout) => layout.spawn(Role::Raft, body),
        None => std::thread::Builder::new()
            .name(Role::Raft.thread_name().into())
            .spawn(body),
    }
    .context("spawning the raft thread")?;
    match handle.join() {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the node stopped on an error")),
        Err(_) => anyhow::bail!("the raft thread panicked"),
    }
}

/// A seed for the election-timeout RNG that differs between nodes and runs.
fn rng_seed(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ id.rotate_left(32) ^ u64::from(std::process::id())
}

fn print_start(
    cfg: &ServerConfig,
    layout: &Option<Layout>,
    net: &Net,
    addrs: raftline_netio::net::NetAddrs,
    replica: &Replica,
) {
    let log = replica.log();
    println!(
        "raftline node {} of cluster {:?} ({} voters)",
        cfg.id,
        cfg.cluster_name,
        cfg.peers.len()
    );
    match layout {
        Some(layout) => print!("{layout}"),
        None => println!(
            "thread layout: unpinned (give --cores to pin): raft thread (network, Raft, \
             clients), log writer (group commit), control (metrics, signals)"
        ),
    }
    println!(
        "network: {} backend; peers on {}, clients on {}{}",
        net.backend(),
        addrs.peer,
        addrs.client,
        cfg.metrics_listen
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    println!(
        "log: {:?} in {}; entries {}..={}, offsets {}..{}; heartbeat {} ms, election timeout {}-{} ms",
        log.backend(),
        cfg.data_dir.display(),
        log.first_index(),
        log.last_index(),
        log.start_offset(),
        log.next_offset(),
        cfg.heartbeat.as_millis(),
        cfg.election_timeout_min.as_millis(),
        cfg.election_timeout_max.as_millis()
    );
    if let Some(profile) = cfg.emulate_disk {
        println!("{}", profile.banner());
    }
}
