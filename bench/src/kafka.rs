//! `raftline bench kafka`: the Kafka path beside the native one on the same local 3-node
//! cluster in the same run. Produce with acks=all (quorum) and idempotence through a real Kafka
//! client (confluent-kafka, librdkafka, from Python; then kcat, librdkafka from C) and through
//! the native `Producer`, all batching with the same linger; consume the Kafka-produced and the
//! native-produced records through kcat and through the native `Subscription` (a Kafka consumer
//! reading native batches pays their conversion into RecordBatch v2: the four reads show what
//! it costs). Every path's CPU seconds, client and nodes, come from the kernel's accounting of
//! the same window, so the report shows which side a path is bound by.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use raftline_log::Record;
use raftline_netio::client::{leader_address, status_of, ClientConfig, Producer, Subscription};
use raftline_netio::client_proto::{AckMode, StartFrom};
use serde::Serialize;

use crate::cluster::cpu;
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::local_cluster::{self, LocalCluster, RunDir, KAFKA_PORT_OFFSET, NODES};
use crate::node_metrics::NodeMetrics;

/// The long `--help` of `raftline bench kafka`.
pub const LONG_ABOUT: &str = "Measure the Kafka path beside the native one.\n\n\
Starts a local 3-node cluster with Kafka listeners (data in a temporary directory under --dir), \
then, in the same run: (1) the native Producer appends N records of --value-bytes with \
acks=quorum, idempotent, batching with --linger-ms; (2) a confluent-kafka (librdkafka) producer \
in Python sends N records of the same size with acks=all, idempotence and the same linger; \
(3) kcat -P (librdkafka from C) does the same; (4) kcat and the native Subscription each read \
the native-produced and the confluent-kafka-produced records. Prints records/s, MB/s, \
per-record produce latency (send to acknowledgement) p50/p99, the batches the leader took, and \
the CPU seconds of the client and of each node for each path, and the Kafka/native ratios. \
Needs python3 with confluent-kafka and kcat on the PATH.\n\n\
Exit status: 0 when the Kafka produce and consume throughput are within 20% of the native \
path's (the goal), 2 when not, 1 on error.";

/// Flags of `raftline bench kafka`.
#[derive(Args, Debug)]
pub struct KafkaBenchArgs {
    /// Records each producer sends.
    #[arg(short = 'N', long, default_value_t = 200_000)]
    pub records: usize,
    /// Bytes of each record's value.
    #[arg(short = 'V', long, default_value_t = 100)]
    pub value_bytes: usize,
    /// How long both producers let a batch fill before sending it.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Directory for the local cluster's data (a temporary directory inside it is removed at
    /// the end).
    #[arg(long, default_value = "./data/bench-kafka")]
    pub dir: PathBuf,
    /// An extra flag for every node's `raftline server` (repeatable).
    #[arg(long = "server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One produce path's figures.
#[derive(Debug, Serialize)]
pub struct ProduceFigures {
    /// Records acknowledged.
    pub records: u64,
    /// The offset of its first measured record (after its warm-up record).
    pub first_offset: u64,
    /// From the first send to the last acknowledgement.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Megabytes (10^6) of values per second.
    pub mb_per_s: f64,
    /// Send-to-acknowledgement latency of each record (`None`: the client reports none, kcat).
    pub latency: Option<LatencySummary>,
    /// The producer's batches as the leader took them.
    pub batches: BatchFigures,
    /// CPU used over the same window.
    pub cpu: PathCpu,
}

/// The batches of one produce path, counted by the leader (`raftline_batch_bytes`): a Kafka
/// Produce request to the one partition carries one batch.
#[derive(Debug, Serialize)]
pub struct BatchFigures {
    /// Batches appended.
    pub count: u64,
    /// Mean records per batch.
    pub records_per_batch: f64,
    /// Mean bytes per batch (raftline's envelope included).
    pub bytes_per_batch: f64,
}

/// CPU seconds (user + system, every thread) a path used over its measured window, from the
/// kernel's accounting.
#[derive(Debug, Serialize)]
pub struct PathCpu {
    /// The client: this benchmark's own process for the native client (it runs in it), the
    /// Python process over its measured loop for confluent-kafka (`time.process_time`,
    /// librdkafka's threads included), kcat's process less its start-up read's.
    pub client_seconds: f64,
    /// Each node's process, node 1 first.
    pub node_seconds: Vec<f64>,
}

impl PathCpu {
    /// The three nodes together.
    pub fn nodes_seconds(&self) -> f64 {
        self.node_seconds.iter().sum()
    }
}

/// One consume path's figures.
#[derive(Debug, Serialize)]
pub struct ConsumeFigures {
    /// Which reader, of which records.
    pub what: String,
    /// Records read.
    pub records: u64,
    /// From the start of the read to its last record, less the reader's start-up.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// The reader's start-up, measured in the same run and subtracted (kcat's process start,
    /// connection and metadata: a read of one record; 0 for the native subscription, which
    /// counts its connection).
    pub startup_seconds: f64,
    /// CPU used over the same window (kcat's less its start-up read's).
    pub cpu: PathCpu,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct KafkaReport {
    /// Records per producer and value size.
    pub records: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Linger of every producer.
    pub linger_ms: u64,
    /// The node that led when the run started.
    pub leader: u64,
    /// Whether another node or term led by the end (an election, on a busy machine: this
    /// run's figures are not comparable).
    pub leader_changed: bool,
    /// The native producer.
    pub native_produce: ProduceFigures,
    /// The confluent-kafka producer (the goal's Kafka client).
    pub kafka_produce: ProduceFigures,
    /// kcat -P: librdkafka without Python.
    pub kcat_produce: ProduceFigures,
    /// kcat and the native subscription over native and Kafka records.
    pub consume: Vec<ConsumeFigures>,
    /// confluent-kafka produce records/s over native's.
    pub produce_ratio: f64,
    /// kcat -P records/s over native's.
    pub kcat_produce_ratio: f64,
    /// kcat over Kafka records, records/s, over the native subscription over native records.
    pub consume_ratio: f64,
    /// Both ratios at least 0.8.
    pub goal_holds: bool,
}

const CLUSTER: &str = "bench-kafka";

/// Runs the benchmark.
pub fn run(args: KafkaBenchArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.records > 0, "--records must be at least 1");
    ensure!(args.value_bytes > 0, "--value-bytes must be at least 1");
    let run_dir = RunDir::create(&args.dir)?;
    let base = local_cluster::free_base_port()?;
    let kafka_base = base + KAFKA_PORT_OFFSET;
    // Every path's records must stay in the log until it is read back: compaction would move the
    // log start past the first producers' records (kcat then resets to the end and reads nothing).
    let mut server_args = args.server_args.clone();
    if !server_args.iter().any(|a| a.starts_with("--retain-mib")) {
        let log_bytes = 3 * (args.records as u64 + 1) * (args.value_bytes as u64 + 64);
        let retain_mib = ((2 * log_bytes) >> 20).max(256);
        server_args.push(format!("--retain-mib={retain_mib}"));
    }
    let mut cluster = LocalCluster::start_with_kafka(
        run_dir.path(),
        base,
        CLUSTER,
        &server_args,
        Some(kafka_base),
    )?;
    let result = measure(&args, &mut cluster, run_dir.path(), base, kafka_base);
    cluster.stop();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(if report.goal_holds {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn measure(
    args: &KafkaBenchArgs,
    cluster: &mut LocalCluster,
    dir: &Path,
    base: u16,
    kafka_base: u16,
) -> anyhow::Result<KafkaReport> {
    cluster.wait_for_leader()?;
    let mut config = local_cluster::client_config(base, CLUSTER);
    config.ack = AckMode::Quorum;
    config.linger = Duration::from_millis(args.linger_ms);
    // Idempotent, as the Kafka producers are (`kafka_producer_settings`).
    config.idempotent = true;
    let brokers = (1..=NODES)
        .map(|id| local_cluster::kafka_addr(kafka_base, id).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let watch = Watch {
        nodes: cluster
            .node_pids()
            .into_iter()
            .map(|(_, pid)| pid)
            .collect(),
        metrics: (1..=NODES).map(|id| cluster.metrics_addr(id)).collect(),
        config: config.clone(),
    };
    let (leader, term) = watch.leader_term()?;
    let n = args.records as u64;
    // One after the other, each after a warm-up record outside its window.
    let native_produce = produce_native(&config, args, &watch)?;
    let kafka_produce = produce_confluent(&brokers, args, &watch)?;
    let kcat_produce = produce_kcat(&brokers, args, dir, &watch)?;
    let (native, kafka) = (native_produce.first_offset, kafka_produce.first_offset);
    let kcat_startup = run_kcat(&brokers, kafka, 1)?;
    let consume = vec![
        consume_native(
            &config,
            "native subscription, native records",
            native,
            n,
            &watch,
        )?,
        consume_native(
            &config,
            "native subscription, Kafka records",
            kafka,
            n,
            &watch,
        )?,
        consume_kcat(
            &brokers,
            "kcat, Kafka records",
            kafka,
            n,
            &kcat_startup,
            &watch,
        )?,
        consume_kcat(
            &brokers,
            "kcat, native records (converted)",
            native,
            n,
            &kcat_startup,
            &watch,
        )?,
    ];
    let produce_ratio = kafka_produce.records_per_s / native_produce.records_per_s;
    let kcat_produce_ratio = kcat_produce.records_per_s / native_produce.records_per_s;
    let consume_ratio = consume[2].records_per_s / consume[0].records_per_s;
    let leader_changed = watch.leader_term()? != (leader, term);
    Ok(KafkaReport {
        records: args.records,
        value_bytes: args.value_bytes,
        linger_ms: args.linger_ms,
        leader,
        leader_changed,
        native_produce,
        kafka_produce,
        kcat_produce,
        consume,
        produce_ratio,
        kcat_produce_ratio,
        consume_ratio,
        goal_holds: produce_ratio >= 0.8 && consume_ratio >= 0.8,
    })
}

/// What every path's window is measured against: the nodes' processes, the leader's counters,
/// and the log's end.
struct Watch {
    /// Node 1, 2 and 3's pids.
    nodes: Vec<u32>,
    /// Node 1, 2 and 3's metrics addresses.
    metrics: Vec<std::net::SocketAddr>,
    config: ClientConfig,
}

/// The counters at the start of one path's window.
struct Window {
    /// Where the log ends.
    log_end: u64,
    node_seconds: Vec<f64>,
    own_seconds: f64,
    /// The leader's `raftline_batch_bytes` count and sum.
    batches: (f64, f64),
}

impl Watch {
    fn start(&self) -> anyhow::Result<Window> {
        Ok(Window {
            log_end: self.log_end()?,
            node_seconds: self.node_seconds()?,
            own_seconds: cpu::rusage_seconds(libc::RUSAGE_SELF),
            batches: self.batch_counters()?,
        })
    }

    fn log_end(&self) -> anyhow::Result<u64> {
        let leader = leader_address(&self.config)?;
        Ok(status_of(&leader, &self.config)?.log_end_offset)
    }

    fn node_seconds(&self) -> anyhow::Result<Vec<f64>> {
        self.nodes
            .iter()
            .map(|&pid| cpu::process_seconds(pid).with_context(|| format!("CPU of node pid {pid}")))
            .collect()
    }

    /// Batches every node took as leader (only a leader counts them): their number and bytes.
    fn batch_counters(&self) -> anyhow::Result<(f64, f64)> {
        let (mut count, mut bytes) = (0.0, 0.0);
        for &addr in &self.metrics {
            let metrics = NodeMetrics::scrape(addr)?;
            count += metrics.value("raftline_batch_bytes_count")?;
            bytes += metrics.value("raftline_batch_bytes_sum")?;
        }
        Ok((count, bytes))
    }

    /// The leader's id and term now.
    fn leader_term(&self) -> anyhow::Result<(u64, u64)> {
        let status = status_of(&leader_address(&self.config)?, &self.config)?;
        Ok((status.node_id, status.term))
    }

    /// The nodes' CPU since `window` started, beside the client's.
    fn cpu(&self, window: &Window, client_seconds: f64) -> anyhow::Result<PathCpu> {
        let now = self.node_seconds()?;
        Ok(PathCpu {
            client_seconds,
            node_seconds: now
                .iter()
                .zip(&window.node_seconds)
                .map(|(after, before)| after - before)
                .collect(),
        })
    }

    /// A produce path's figures once its window is over: every record acknowledged (when the
    /// client reports latencies) and the log ending where this path's records should (nothing
    /// lost, nothing stored twice).
    fn produce_figures(
        &self,
        args: &KafkaBenchArgs,
        path: &str,
        window: &Window,
        run: ProduceRun<'_>,
    ) -> anyhow::Result<ProduceFigures> {
        let ProduceRun {
            seconds,
            latency,
            client_seconds,
        } = run;
        let records = args.records as u64;
        if let Some(latency) = latency {
            ensure!(
                latency.count() == records,
                "{} of {records} {path} records acknowledged",
                latency.count()
            );
        }
        let (end, expected) = (self.log_end()?, window.log_end + records);
        ensure!(
            end == expected,
            "after the {path} producer the log ends at offset {end}, not {expected}"
        );
        let cpu = self.cpu(window, client_seconds)?;
        let (count, bytes) = self.batch_counters()?;
        let batches = (count - window.batches.0) as u64;
        ensure!(batches > 0, "the leader counted no {path} batch");
        Ok(ProduceFigures {
            records,
            first_offset: window.log_end,
            seconds,
            records_per_s: records as f64 / seconds,
            mb_per_s: (records as f64 * args.value_bytes as f64) / seconds / 1e6,
            latency: latency.map(LatencyRecorder::summary),
            batches: BatchFigures {
                count: batches,
                records_per_batch: records as f64 / batches as f64,
                bytes_per_batch: (bytes - window.batches.1) / batches as f64,
            },
            cpu,
        })
    }
}

/// What one producer's run measured.
struct ProduceRun<'a> {
    seconds: f64,
    /// `None`: the client reports no latencies.
    latency: Option<&'a LatencyRecorder>,
    client_seconds: f64,
}

fn produce_native(
    config: &ClientConfig,
    args: &KafkaBenchArgs,
    watch: &Watch,
) -> anyhow::Result<ProduceFigures> {
    let mut producer = Producer::new(config.clone());
    let value = vec![b'n'; args.value_bytes];
    let record = || Record {
        key: None,
        value: value.clone(),
        timestamp_ms: 0,
        headers: Vec::new(),
    };
    let mut sent_at = Vec::with_capacity(args.records + 1);
    // The warm-up record (connection, producer id), sequence 0, outside the window.
    sent_at.push(Instant::now());
    producer.send(record())?;
    producer.flush()?;
    take(&mut producer, &mut LatencyRecorder::new(), &sent_at)?;
    let window = watch.start()?;
    let mut latency = LatencyRecorder::new();
    let started = Instant::now();
    for _ in 0..args.records {
        sent_at.push(Instant::now());
        producer.send(record())?;
        take(&mut producer, &mut latency, &sent_at)?;
    }
    producer.flush()?;
    take(&mut producer, &mut latency, &sent_at)?;
    let seconds = started.elapsed().as_secs_f64();
    let run = ProduceRun {
        seconds,
        latency: Some(&latency),
        client_seconds: cpu::rusage_seconds(libc::RUSAGE_SELF) - window.own_seconds,
    };
    watch.produce_figures(args, "native", &window, run)
}

/// Records the latency of every record answered since the last call.
fn take(
    producer: &mut Producer,
    latency: &mut LatencyRecorder,
    sent_at: &[Instant],
) -> anyhow::Result<()> {
    let now = Instant::now();
    for ack in producer.take_acks() {
        ack.result.context("a native append was refused")?;
        latency.record(now - sent_at[ack.seq as usize]);
    }
    Ok(())
}

/// The settings of both Kafka producers (librdkafka's names), the same kind as the native
/// producer's: acks=all, idempotence, the same linger, no compression; a local queue that
/// holds a whole run. Batch sizes stay librdkafka's defaults (up to 10,000 records or 1 MB per
/// batch; the native producer's are 1,000 records or 256 KiB).
fn kafka_producer_settings(linger_ms: u64) -> Vec<String> {
    vec![
        "acks=all".to_string(),
        "enable.idempotence=true".to_string(),
        format!("linger.ms={linger_ms}"),
        "compression.codec=none".to_string(),
        "queue.buffering.max.messages=1000000".to_string(),
    ]
}

/// confluent-kafka's producer with the settings given as `name=value` arguments. First a
/// warm-up record (connection, metadata, producer id), then "ready" on stdout, and on a line
/// from stdin the measured run: one `produce()` per record of pre-built bytes (no key, like
/// the native records), delivery reports served every 1,000 records (and whenever the local
/// queue is full). Prints the seconds from the first produce to the last delivery and the CPU
/// seconds of the process over them (every thread: librdkafka's too), then every record's
/// latency in microseconds (librdkafka's own: from produce() to its acknowledgement).
const KAFKA_PRODUCER: &str = r#"
import sys, time
from confluent_kafka import Producer
brokers, topic, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
settings = dict(s.split("=", 1) for s in sys.argv[5:])
p = Producer({"bootstrap.servers": brokers, **settings})
value = b"k" * size
latencies = []
failed = []
def delivered(err, msg):
    if err is None:
        latencies.append(msg.latency())
    else:
        failed.append(str(err))
p.produce(topic, value, partition=0, on_delivery=delivered)
assert p.flush(30) == 0 and not failed, "the warm-up record was not delivered: %s" % failed
latencies.clear()
print("ready", flush=True)
sys.stdin.readline()
produce, poll = p.produce, p.poll
cpu = time.process_time()
start = time.perf_counter()
for i in range(n):
    while True:
        try:
            produce(topic, value, partition=0, on_delivery=delivered)
            break
        except BufferError:
            poll(0.001)
    if i % 1000 == 999:
        poll(0)
assert p.flush(120) == 0, "undelivered records"
seconds = time.perf_counter() - start
cpu = time.process_time() - cpu
assert not failed, failed[:3]
out = sys.stdout
out.write("%f %f\n" % (seconds, cpu))
out.write("".join("%d\n" % int(l * 1e6) for l in latencies))
"#;

fn produce_confluent(
    brokers: &str,
    args: &KafkaBenchArgs,
    watch: &Watch,
) -> anyhow::Result<ProduceFigures> {
    let mut child = Command::new("python3")
        .args(["-c", KAFKA_PRODUCER, brokers, CLUSTER])
        .arg(args.records.to_string())
        .arg(args.value_bytes.to_string())
        .args(kafka_producer_settings(args.linger_ms))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running python3 (with confluent-kafka: pip install confluent-kafka)")?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut ready = String::new();
    stdout.read_line(&mut ready)?;
    let window = match ready.trim() {
        "ready" => watch.start(),
        _ => Err(anyhow::anyhow!(
            "the confluent-kafka producer did not start"
        )),
    };
    let window = window.inspect_err(|_| {
        let _ = child.kill();
        let _ = child.wait();
    })?;
    // Its stdin closes when this end is dropped: the line (or the end) starts the run.
    let _ = child.stdin.take().expect("piped").write_all(b"go\n");
    let mut text = String::new();
    stdout
        .read_to_string(&mut text)
        .context("producer output")?;
    let status = child.wait()?;
    ensure!(
        status.success(),
        "the confluent-kafka producer failed: {status}"
    );
    let mut lines = text.lines();
    let first = lines.next().context("no output from the producer")?;
    let (seconds, cpu_seconds) = first
        .split_once(' ')
        .and_then(|(s, c)| Some((s.parse::<f64>().ok()?, c.parse::<f64>().ok()?)))
        .with_context(|| format!("the producer's seconds and CPU seconds, not {first:?}"))?;
    let mut latency = LatencyRecorder::new();
    for line in lines {
        let us: u64 = line.parse().context("a latency line")?;
        latency.record(Duration::from_micros(us));
    }
    let run = ProduceRun {
        seconds,
        latency: Some(&latency),
        client_seconds: cpu_seconds,
    };
    watch.produce_figures(args, "confluent-kafka", &window, run)
}

/// kcat -P with the Kafka producers' settings, sending N lines of --value-bytes (no key) from
/// a file. kcat reports no latency; its seconds and CPU seconds are its run's less those of a
/// one-record run before it (process start, connection, metadata, producer id, one ack).
fn produce_kcat(
    brokers: &str,
    args: &KafkaBenchArgs,
    dir: &Path,
    watch: &Watch,
) -> anyhow::Result<ProduceFigures> {
    let write_input = |name: &str, records: usize| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        let mut file = BufWriter::new(std::fs::File::create(&path).context("kcat's input")?);
        let mut line = vec![b'c'; args.value_bytes];
        line.push(b'\n');
        for _ in 0..records {
            file.write_all(&line)?;
        }
        file.flush()?;
        Ok(path)
    };
    let (one, all) = (
        write_input("kcat-warm-up", 1)?,
        write_input("kcat-records", args.records)?,
    );
    let startup = run_kcat_producer(brokers, args, &one)?;
    let window = watch.start()?;
    let run = run_kcat_producer(brokers, args, &all)?;
    let run = ProduceRun {
        seconds: less_startup(run.elapsed, startup.elapsed).as_secs_f64(),
        latency: None,
        // Like its seconds: less the start-up run's, never below zero (a tiny run).
        client_seconds: (run.cpu_seconds - startup.cpu_seconds).max(0.0),
    };
    watch.produce_figures(args, "kcat -P", &window, run)
}

fn run_kcat_producer(
    brokers: &str,
    args: &KafkaBenchArgs,
    input: &Path,
) -> anyhow::Result<KcatRun> {
    let mut kcat = Command::new("kcat");
    kcat.args(["-b", brokers, "-t", CLUSTER, "-p", "0", "-P", "-q"]);
    for setting in kafka_producer_settings(args.linger_ms) {
        kcat.args(["-X", &setting]);
    }
    let cpu_before = cpu::rusage_seconds(libc::RUSAGE_CHILDREN);
    let started = Instant::now();
    let status = kcat
        .arg("-l")
        .arg(input)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .context("running kcat -P (apt-get install kcat)")?;
    let elapsed = started.elapsed();
    ensure!(status.success(), "kcat -P failed: {status}");
    Ok(KcatRun {
        elapsed,
        cpu_seconds: cpu::rusage_seconds(libc::RUSAGE_CHILDREN) - cpu_before,
    })
}

fn consume_native(
    config: &ClientConfig,
    what: &str,
    from: u64,
    count: u64,
    watch: &Watch,
) -> anyhow::Result<ConsumeFigures> {
    let window = watch.start()?;
    let started = Instant::now();
    let mut sub = Subscription::open(config.clone(), StartFrom::Offset(from))?;
    let mut read = 0u64;
    while read < count {
        let Some(record) = sub.next_record(Some(Duration::from_secs(10)))? else {
            bail!("{what}: no record within 10 s after {read}");
        };
        // The first batch may start before `from`; from there on every offset once, in order.
        if record.offset >= from {
            ensure!(
                record.offset == from + read,
                "{what}: offset {} after {read} records from {from}",
                record.offset
            );
            read += 1;
        }
    }
    let elapsed = started.elapsed();
    let client_seconds = cpu::rusage_seconds(libc::RUSAGE_SELF) - window.own_seconds;
    Ok(ConsumeFigures {
        what: what.to_string(),
        records: count,
        seconds: elapsed.as_secs_f64(),
        records_per_s: count as f64 / elapsed.as_secs_f64(),
        startup_seconds: 0.0,
        cpu: watch.cpu(&window, client_seconds)?,
    })
}

/// A kcat run's time less its start-up's; the whole run when it was no longer than the
/// start-up (a tiny run: nothing left to subtract from).
fn less_startup(run: Duration, startup: Duration) -> Duration {
    run.checked_sub(startup)
        .filter(|left| !left.is_zero())
        .unwrap_or(run)
}

/// One kcat process's run.
struct KcatRun {
    elapsed: Duration,
    /// Its CPU seconds (every thread).
    cpu_seconds: f64,
}

/// Reads `count` records from `from` with kcat, checking it printed exactly their offsets.
fn run_kcat(brokers: &str, from: u64, count: u64) -> anyhow::Result<KcatRun> {
    let cpu_before = cpu::rusage_seconds(libc::RUSAGE_CHILDREN);
    let started = Instant::now();
    let out = Command::new("kcat")
        .args(["-b", brokers, "-t", CLUSTER, "-p", "0", "-C", "-q", "-e"])
        .args(["-o", &from.to_string(), "-c", &count.to_string()])
        .args(["-f", "%o\n"])
        .stderr(Stdio::inherit())
        .output()
        .context("running kcat (apt-get install kcat)")?;
    let elapsed = started.elapsed();
    let cpu_seconds = cpu::rusage_seconds(libc::RUSAGE_CHILDREN) - cpu_before;
    if !out.status.success() {
        bail!("kcat failed: {}", out.status);
    }
    // Every record once, in order: the offsets printed are exactly from..from + count.
    let text = String::from_utf8_lossy(&out.stdout);
    let offsets: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    ensure!(
        offsets.iter().copied().eq(from..from + count),
        "kcat read {} records, not offsets {from}..{}",
        offsets.len(),
        from + count
    );
    Ok(KcatRun {
        elapsed,
        cpu_seconds,
    })
}

fn consume_kcat(
    brokers: &str,
    what: &str,
    from: u64,
    count: u64,
    startup: &KcatRun,
    watch: &Watch,
) -> anyhow::Result<ConsumeFigures> {
    let window = watch.start()?;
    let run = run_kcat(brokers, from, count).with_context(|| what.to_string())?;
    let seconds = less_startup(run.elapsed, startup.elapsed).as_secs_f64();
    let client_seconds = (run.cpu_seconds - startup.cpu_seconds).max(0.0);
    Ok(ConsumeFigures {
        what: what.to_string(),
        records: count,
        seconds,
        records_per_s: count as f64 / seconds,
        startup_seconds: startup.elapsed.as_secs_f64(),
        cpu: watch.cpu(&window, client_seconds)?,
    })
}

fn render_text(r: &KafkaReport) -> String {
    let mut out = Vec::new();
    let _ = writeln!(
        out,
        "raftline bench kafka: {} records of {} bytes per producer, linger {} ms, acks=all (quorum), idempotent\n",
        r.records, r.value_bytes, r.linger_ms
    );
    let _ = writeln!(
        out,
        "{:<34} {:>12} {:>8} {:>10} {:>10} {:>14} {:>12}",
        "produce", "records/s", "MB/s", "p50 ms", "p99 ms", "records/batch", "bytes/batch"
    );
    let produces = [
        ("native Producer", &r.native_produce),
        ("confluent-kafka (librdkafka)", &r.kafka_produce),
        ("kcat -P (librdkafka, no Python)", &r.kcat_produce),
    ];
    for (name, p) in produces {
        let ms = |f: fn(&LatencySummary) -> f64| {
            p.latency
                .as_ref()
                .map_or("-".to_string(), |l| format!("{:.2}", f(l) / 1000.0))
        };
        let _ = writeln!(
            out,
            "{:<34} {:>12.0} {:>8.1} {:>10} {:>10} {:>14.0} {:>12.0}",
            name,
            p.records_per_s,
            p.mb_per_s,
            ms(|l| l.us_p50),
            ms(|l| l.us_p99),
            p.batches.records_per_batch,
            p.batches.bytes_per_batch,
        );
    }
    let _ = writeln!(
        out,
        "\n{:<34} {:>12} {:>8} {:>12}",
        "consume", "records/s", "s", "start-up s"
    );
    for c in &r.consume {
        let _ = writeln!(
            out,
            "{:<34} {:>12.0} {:>8.2} {:>12.3}",
            c.what, c.records_per_s, c.seconds, c.startup_seconds
        );
    }
    let _ = writeln!(
        out,
        "(kcat's start-up, a one-record read in this run, is subtracted from its runs)"
    );
    let _ = writeln!(
        out,
        "\n{:<34} {:>8} {:>8} {:>8} {:>8} {:>8} {:>14}",
        "CPU seconds (leader: node *)",
        "client",
        "node 1",
        "node 2",
        "node 3",
        "nodes",
        "client µs/rec"
    );
    let cpus = produces
        .iter()
        .map(|(name, p)| (*name, &p.cpu))
        .chain(r.consume.iter().map(|c| (c.what.as_str(), &c.cpu)));
    for (name, cpu) in cpus {
        let _ = write!(out, "{:<34} {:>8.2}", name, cpu.client_seconds);
        for (i, s) in cpu.node_seconds.iter().enumerate() {
            let star = if i as u64 + 1 == r.leader { "*" } else { " " };
            let _ = write!(out, " {:>7.2}{star}", s);
        }
        let _ = writeln!(
            out,
            " {:>7.2} {:>14.2}",
            cpu.nodes_seconds(),
            cpu.client_seconds / r.records as f64 * 1e6
        );
    }
    if r.leader_changed {
        let _ = writeln!(
            out,
            "\nWARNING: the leader changed during the run (an election): its figures are not comparable"
        );
    }
    let _ = writeln!(
        out,
        "\nKafka/native: produce {:.2} (kcat -P {:.2}), consume {:.2} (goal: both >= 0.80): {}",
        r.produce_ratio,
        r.kcat_produce_ratio,
        r.consume_ratio,
        if r.goal_holds {
            "holds"
        } else {
            "does not hold"
        }
    );
    String::from_utf8(out).expect("text")
}
