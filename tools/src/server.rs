//! `raftline server`: one node of a cluster. Sets up the data directory, the network, the log and
//! the Raft core, prints the thread layout, runs the raft thread until SIGTERM/SIGINT, then
//! drains (appends already accepted get their answer, the log writer finishes what it was given)
//! and exits 0.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::Context;
use raftline_node::{Node, NodeConfig, PeerSecurity, Started};

use crate::server_config::ServerArgs;
use crate::systemd::Notifier;

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

/// How often the node's status is looked at until it has joined (for systemd's `READY=1`).
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Exit status on a second signal (128 + SIGINT, the shell convention).
const EXIT_INTERRUPTED: i32 = 130;

/// Runs a node until it is told to stop.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        print_plan(&args.resolve_offline()?);
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = args.resolve()?;
    raftline_log::fault::check_crash_at().map_err(anyhow::Error::msg)?;
    let node = Node::start(cfg.clone())?;
    print_start(&cfg, node.started());
    let signals = Arc::new(AtomicU32::new(0));
    let stopper = node.stopper();
    let notifier = Notifier::from_env().map(Arc::new);
    let on_signal = notifier.clone();
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) > 0 {
            std::process::exit(EXIT_INTERRUPTED);
        }
        if let Some(n) = &on_signal {
            n.notify("STOPPING=1");
        }
        stopper.stop();
    })
    .context("installing the SIGTERM/SIGINT handler")?;
    if let Some(notifier) = notifier {
        // Ready = joined: the node knows a leader (it can take or redirect writes).
        while !node.is_finished() {
            if let Some(leader) = node.status().and_then(|s| s.leader_id) {
                notifier.notify(&format!(
                    "READY=1\nSTATUS=member of {:?}, leader is node {leader}",
                    cfg.cluster_name
                ));
                break;
            }
            std::thread::sleep(READY_POLL);
        }
    }
    node.join()?;
    Ok(ExitCode::SUCCESS)
}

fn print_start(cfg: &NodeConfig, started: &Started) {
    println!(
        "raftline node {} of cluster {:?} ({} voters)",
        cfg.id,
        cfg.cluster_name,
        cfg.peers.len()
    );
    match &started.layout {
        Some(layout) => print!("{layout}"),
        None => println!(
            "thread layout: unpinned (give --cores to pin): raft thread (network, Raft, \
             clients), log writer (group commit), control (metrics, signals)"
        ),
    }
    println!(
        "network: {} backend; peers on {}, clients on {}{}",
        started.net_backend,
        started.addrs.peer,
        started.addrs.client,
        cfg.metrics_listen
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    match &cfg.peer_security {
        PeerSecurity::Tls(files) => println!(
            "peer port: mutual TLS as raftline-node-{} ({}, trusting {}; reloaded when changed)",
            cfg.id,
            files.cert.display(),
            files.trusted_ca.display()
        ),
        PeerSecurity::Insecure => {
            println!("peer port: INSECURE plaintext (--peer-insecure): anyone reaching it can speak as any node")
        }
    }
    println!(
        "log: {:?} in {}; entries {}..={}, offsets {}..{}; heartbeat {} ms, election timeout {}-{} ms",
        started.log_backend,
        cfg.data_dir.display(),
        started.first_index,
        started.last_index,
        started.start_offset,
        started.next_offset,
        cfg.heartbeat.as_millis(),
        cfg.election_timeout_min.as_millis(),
        cfg.election_timeout_max.as_millis()
    );
    if let Some(emulation) = &cfg.emulated_disk {
        println!("{}", emulation.banner());
    }
}

/// `--dry-run`: what the node would do with these settings.
fn print_plan(cfg: &NodeConfig) {
    match &cfg.join {
        Some(via) => {
            let (peer, client) = cfg.announced();
            println!(
                "node {} would join cluster {:?} through {via} as a learner, announcing peer \
                 address {peer} and client address {client}",
                cfg.id, cfg.cluster_name
            );
        }
        None => println!(
            "node {} would bootstrap cluster {:?} with voters {:?} (or restart from its data \
             directory){}",
            cfg.id,
            cfg.cluster_name,
            cfg.peers.keys().collect::<Vec<_>>(),
            cfg.rejoin
                .as_ref()
                .map(|via| format!(
                    "; on a new data directory it first asks {via} whether it is still a member \
                     (removed: it joins as a learner)"
                ))
                .unwrap_or_default()
        ),
    }
    println!(
        "listening for peers on {}, for clients on {}; data in {}",
        cfg.listen,
        cfg.client_listen,
        cfg.data_dir.display()
    );
    for warning in &cfg.warnings {
        println!("warning: {warning}");
    }
}
