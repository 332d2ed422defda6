//! `raftline dev`: a local 3-node cluster on loopback for trying raftline out. Each node is a
//! child `raftline server` process (this same executable) with data under `./data/node-N` and
//! its log in `./data/node-N.log`; the command stays in the foreground and Ctrl-C stops all
//! three cleanly (SIGTERM, then their drain).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use raftline_log::Record;
use raftline_netio::client::{ClientConfig, Producer, Subscription};
use raftline_netio::client_proto::StartFrom;

use raftline_bench::emulated_disk::{self, DiskProfile};
use raftline_bench::local_cluster::{self, LocalCluster, DEV_CLUSTER, NODES};
/// The long `--help` of `raftline dev`.
pub const LONG_ABOUT: &str = "Start a local 3-node raftline cluster on loopback and keep it \
running in the foreground; Ctrl-C stops all three nodes cleanly.\n\n\
Node N listens for peers on 127.0.0.1:730N, for clients on 127.0.0.1:740N (what `raftline \
produce/tail/status` use by default) and serves metrics on http://127.0.0.1:750N/metrics. Data \
lives in DATA/node-N (kept between runs: a restarted dev cluster resumes its log), each node's \
log output in DATA/node-N.log. The peer ports run mutual TLS with a CA and certificates made \
for the run in DATA/tls. Node N also listens for Kafka clients on 127.0.0.1:909(N+1) \
(9092-9094; BASE+250+N with another --base-port): the log is the topic raftline-dev, partition 0.";

/// Flags of `raftline dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Directory for the nodes' data directories and log files.
    #[arg(long, default_value = "./data")]
    pub data: PathBuf,
    /// Also produce a stream of sample records and tail them, printing records/s.
    #[arg(long)]
    pub demo: bool,
    /// Bytes of each sample record's value (with --demo).
    #[arg(long, default_value_t = 100)]
    pub demo_record_bytes: usize,
    /// Node N listens on BASE+N for peers, BASE+100+N for clients, BASE+200+N for metrics (the
    /// client commands' --bootstrap default assumes 7300).
    #[arg(long, default_value_t = DEV_BASE_PORT)]
    pub base_port: u16,
    /// EMULATION: every node's log holds each fdatasync to this reference device's latency
    /// (see `raftline server --help`).
    #[arg(long, value_enum, value_name = "hdd|sata|nvme")]
    pub emulate_disk: Option<DiskProfile>,
}

/// Default `--base-port`: node N listens on 7300+N (peers), 7400+N (clients), 7500+N (metrics).
pub const DEV_BASE_PORT: u16 = 7300;
/// Node N listens for Kafka clients on 9091+N: 9092 (Kafka's own default port) to 9094.
pub const DEV_KAFKA_BASE_PORT: u16 = 9091;

/// The Kafka base port for `--base-port base`: 9091 for the default one, else inside the
/// block of ports `base` names (BASE+251..253), so two dev clusters never share one.
fn kafka_base(base: u16) -> u16 {
    if base == DEV_BASE_PORT {
        DEV_KAFKA_BASE_PORT
    } else {
        base + local_cluster::KAFKA_PORT_OFFSET
    }
}

/// Peer, client and metrics address of dev node `id` for `--base-port base`.
pub fn dev_addrs(base: u16, id: u64) -> (SocketAddr, SocketAddr, SocketAddr) {
    local_cluster::node_addrs(base, id)
}

fn stop_all(cluster: &mut LocalCluster) {
    for outcome in cluster.stop() {
        match outcome.status {
            Some(status) => println!("node {} stopped ({status})", outcome.id),
            None => eprintln!("node {} did not stop in time; it was killed", outcome.id),
        }
    }
}

/// Runs the dev cluster until Ctrl-C.
pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut nodes = LocalCluster::start_with_kafka(
        &args.data,
        args.base_port,
        DEV_CLUSTER,
        &emulated_disk::server_args(args.emulate_disk),
        Some(kafka_base(args.base_port)),
    )?;
    let leader = match nodes.wait_for_leader() {
        Ok(leader) => leader,
        Err(e) => {
            stop_all(&mut nodes);
            return Err(e);
        }
    };
    print_banner(&args.data, leader, args.base_port);
    if let Some(profile) = args.emulate_disk {
        println!("{}", profile.banner());
    }
    let demo = args
        .demo
        .then(|| Demo::start(args.demo_record_bytes, args.base_port, Arc::clone(&stop)));
    let mut exit = ExitCode::SUCCESS;
    let mut last_report = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Some(id) = nodes.exited() {
            eprintln!(
                "node {id} exited unexpectedly; see {}; stopping the others",
                args.data.join(format!("node-{id}.log")).display()
            );
            exit = ExitCode::FAILURE;
            break;
        }
        if let Some(demo) = &demo {
            if last_report.elapsed() >= Duration::from_secs(1) {
                demo.report_second();
                last_report = Instant::now();
            }
        }
        // The foreground loop only watches the children; 100 ms is its reaction time to Ctrl-C.
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(demo) = demo {
        demo.finish();
    }
    println!("stopping the cluster...");
    stop_all(&mut nodes);
    Ok(exit)
}

fn print_banner(data: &Path, leader: u64, base: u16) {
    println!("raftline dev cluster {DEV_CLUSTER:?} is up: 3 nodes, node {leader} leads");
    for id in 1..=NODES {
        let (peer, client, metrics) = dev_addrs(base, id);
        let kafka = local_cluster::kafka_addr(kafka_base(base), id);
        println!(
            "  node {id}: clients {client}  peers {peer}  kafka {kafka}  metrics http://{metrics}/metrics  data {}",
            data.join(format!("node-{id}")).display()
        );
    }
    println!(
        "  peers talk mutual TLS with throwaway certificates in {} (made anew at each start)",
        data.join("tls").display()
    );
    let bootstrap = if base == DEV_BASE_PORT {
        String::new()
    } else {
        let clients: Vec<String> = (1..=NODES)
            .map(|id| dev_addrs(base, id).1.to_string())
            .collect();
        format!(" --bootstrap {}", clients.join(","))
    };
    println!("try, in another terminal:");
    println!("  raftline status{bootstrap}");
    println!("  seq 1 10 | raftline produce{bootstrap}");
    println!("  raftline tail --from earliest --follow{bootstrap}");
    println!(
        "  kcat -b {} -L    (Kafka clients: topic {DEV_CLUSTER:?}, partition 0)",
        local_cluster::kafka_addr(kafka_base(base), 1)
    );
    println!(
        "Ctrl-C stops the cluster (data is kept in {}).",
        data.display()
    );
}

/// The `--demo` load: one producer and one tailer thread, counting records.
struct Demo {
    started: Instant,
    acked: Arc<AtomicU64>,
    seen: Arc<AtomicU64>,
    last: std::cell::Cell<(u64, u64)>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

fn demo_client_config(base: u16) -> ClientConfig {
    local_cluster::client_config(base, DEV_CLUSTER)
}

impl Demo {
    fn start(record_bytes: usize, base: u16, stop: Arc<AtomicBool>) -> Demo {
        let acked = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let tailer = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<(), String> {
                let mut sub = Subscription::open(demo_client_config(base), StartFrom::Latest)
                    .map_err(|e| format!("tailer: {e}"))?;
                while !stop.load(Ordering::Relaxed) {
                    if sub
                        .next_record(Some(Duration::from_millis(200)))
                        .map_err(|e| format!("tailer: {e}"))?
                        .is_some()
                    {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        };
        let producer = {
            let acked = Arc::clone(&acked);
            std::thread::spawn(move || -> Result<(), String> {
                let mut producer = Producer::new(demo_client_config(base));
                let mut n = 0u64;
                let mut refused = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut value = format!("demo record {n} ").into_bytes();
                    value.resize(record_bytes.max(value.len()), b'.');
                    let record = Record {
                        key: Some(format!("key-{}", n % 100).into_bytes()),
                        value,
                        timestamp_ms: unix_ms(),
                        headers: Vec::new(),
                    };
                    producer
                        .send(record)
                        .map_err(|e| format!("producer: {e}"))?;
                    n += 1;
                    for ack in producer.take_acks() {
                        match ack.result {
                            Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                            Err(_) => {
                                refused += 1;
                                0
                            }
                        };
                    }
                }
                producer.flush().map_err(|e| format!("producer: {e}"))?;
                let done = producer.take_acks();
                acked.fetch_add(
                    done.iter().filter(|a| a.result.is_ok()).count() as u64,
                    Ordering::Relaxed,
                );
                if refused > 0 {
                    eprintln!("demo producer: {refused} records refused by the cluster");
                }
                Ok(())
            })
        };
        println!("demo: producing sample records and tailing them (Ctrl-C stops)");
        Demo {
            started: Instant::now(),
            acked,
            seen,
            last: std::cell::Cell::new((0, 0)),
            threads: vec![tailer, producer],
        }
    }

    fn report_second(&self) {
        let (acked, seen) = (
            self.acked.load(Ordering::Relaxed),
            self.seen.load(Ordering::Relaxed),
        );
        let (last_acked, last_seen) = self.last.replace((acked, seen));
        println!(
            "demo: {:>8} records/s acknowledged, {:>8} records/s seen by the tailer ({seen} in total)",
            acked - last_acked,
            seen - last_seen
        );
    }

    fn finish(self) {
        for thread in self.threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("demo {e}"),
                Err(_) => eprintln!("a demo thread panicked"),
            }
        }
        let secs = self.started.elapsed().as_secs_f64();
        let (acked, seen) = (
            self.acked.load(Ordering::Relaxed),
            self.seen.load(Ordering::Relaxed),
        );
        println!(
            "demo summary: {seen} records seen by the tailer in {secs:.1} s = {:.0} records/s; \
             {acked} acknowledged to the producer = {:.0} records/s",
            seen as f64 / secs,
            acked as f64 / secs
        );
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_ports_follow_the_base_port() {
        assert_eq!(
            dev_addrs(DEV_BASE_PORT, 2).1,
            "127.0.0.1:7402".parse::<SocketAddr>().unwrap()
        );
    }
}
