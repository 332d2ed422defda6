//! `raftline bench kafka`: the Kafka path beside the native one on the same local 3-node
//! cluster in the same run. Produce with acks=all (quorum) through a real Kafka client
//! (confluent-kafka, librdkafka, from Python) and through the native `Producer`, both batching
//! with the same linger; consume the Kafka-produced and the native-produced records through
//! kcat and through the native `Subscription` (a Kafka consumer reading native batches pays
//! their conversion into RecordBatch v2: the four reads show what it costs).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use raftline_log::Record;
use raftline_netio::client::{ClientConfig, Producer, Subscription};
use raftline_netio::client_proto::{AckMode, StartFrom};
use serde::Serialize;

use crate::latency::{LatencyRecorder, LatencySummary};
use crate::local_cluster::{self, LocalCluster, RunDir, KAFKA_PORT_OFFSET, NODES};

/// The long `--help` of `raftline bench kafka`.
pub const LONG_ABOUT: &str = "Measure the Kafka path beside the native one.\n\n\
Starts a local 3-node cluster with Kafka listeners (data in a temporary directory under --dir), \
then, in the same run: (1) the native Producer appends N records of --value-bytes with \
acks=quorum, batching with --linger-ms; (2) a confluent-kafka (librdkafka) producer in Python \
sends N records of the same size with acks=all and the same linger; (3) kcat and the native \
Subscription each read the native-produced and the Kafka-produced records. Prints records/s, \
MB/s and per-record produce latency (send to acknowledgement) p50/p99 for each path, and the \
Kafka/native ratios. Needs python3 with confluent-kafka and kcat on the PATH.\n\n\
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
    /// From the first send to the last acknowledgement.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Megabytes (10^6) of values per second.
    pub mb_per_s: f64,
    /// Send-to-acknowledgement latency of each record.
    pub latency: LatencySummary,
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
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct KafkaReport {
    /// Records per producer and value size.
    pub records: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Linger of both producers.
    pub linger_ms: u64,
    /// The native producer.
    pub native_produce: ProduceFigures,
    /// The Kafka producer.
    pub kafka_produce: ProduceFigures,
    /// kcat and the native subscription over native and Kafka records.
    pub consume: Vec<ConsumeFigures>,
    /// Kafka produce records/s over native's.
    pub produce_ratio: f64,
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
    let mut cluster = LocalCluster::start_with_kafka(
        run_dir.path(),
        base,
        CLUSTER,
        &args.server_args,
        Some(kafka_base),
    )?;
    let result = measure(&args, &mut cluster, base, kafka_base);
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
    base: u16,
    kafka_base: u16,
) -> anyhow::Result<KafkaReport> {
    cluster.wait_for_leader()?;
    let mut config = local_cluster::client_config(base, CLUSTER);
    config.ack = AckMode::Quorum;
    config.linger = Duration::from_millis(args.linger_ms);
    let brokers = (1..=NODES)
        .map(|id| local_cluster::kafka_addr(kafka_base, id).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let n = args.records as u64;
    let native_produce = produce_native(&config, args)?;
    let kafka_produce = produce_kafka(&brokers, args)?;
    // Native records hold offsets [0, n), Kafka records [n, 2n).
    let kcat_startup = run_kcat(&brokers, n, 1)?;
    let consume = vec![
        consume_native(&config, "native subscription, native records", 0, n)?,
        consume_native(&config, "native subscription, Kafka records", n, n)?,
        consume_kcat(&brokers, "kcat, Kafka records", n, n, kcat_startup)?,
        consume_kcat(
            &brokers,
            "kcat, native records (converted)",
            0,
            n,
            kcat_startup,
        )?,
    ];
    let produce_ratio = kafka_produce.records_per_s / native_produce.records_per_s;
    let consume_ratio = consume[2].records_per_s / consume[0].records_per_s;
    Ok(KafkaReport {
        records: args.records,
        value_bytes: args.value_bytes,
        linger_ms: args.linger_ms,
        native_produce,
        kafka_produce,
        consume,
        produce_ratio,
        consume_ratio,
        goal_holds: produce_ratio >= 0.8 && consume_ratio >= 0.8,
    })
}

fn produce_native(config: &ClientConfig, args: &KafkaBenchArgs) -> anyhow::Result<ProduceFigures> {
    let mut producer = Producer::new(config.clone());
    let value = vec![b'n'; args.value_bytes];
    let mut sent_at = Vec::with_capacity(args.records);
    let mut latency = LatencyRecorder::new();
    let started = Instant::now();
    for _ in 0..args.records {
        sent_at.push(Instant::now());
        producer.send(Record {
            key: None,
            value: value.clone(),
            timestamp_ms: 0,
            headers: Vec::new(),
        })?;
        take(&mut producer, &mut latency, &sent_at)?;
    }
    producer.flush()?;
    take(&mut producer, &mut latency, &sent_at)?;
    produce_figures(args, "native", started.elapsed().as_secs_f64(), &latency)
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

/// A produce path's figures, once every one of its records was acknowledged.
fn produce_figures(
    args: &KafkaBenchArgs,
    path: &str,
    seconds: f64,
    latency: &LatencyRecorder,
) -> anyhow::Result<ProduceFigures> {
    let records = latency.count();
    ensure!(
        records == args.records as u64,
        "{records} of {} {path} records acknowledged",
        args.records
    );
    Ok(ProduceFigures {
        records,
        seconds,
        records_per_s: records as f64 / seconds,
        mb_per_s: (records as f64 * args.value_bytes as f64) / seconds / 1e6,
        latency: latency.summary(),
    })
}

/// confluent-kafka's producer: acks=all, the linger given, idempotence off (the native producer
/// is at-least-once too); prints the seconds from the first produce to the last delivery and
/// every record's latency in microseconds, one per line.
const KAFKA_PRODUCER: &str = r#"
import sys, time
from confluent_kafka import Producer
brokers, topic, n, size, linger = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
p = Producer({"bootstrap.servers": brokers, "acks": "all", "linger.ms": linger,
              "enable.idempotence": False, "queue.buffering.max.messages": 1000000})
value = b"k" * size
sent = [0.0] * n
latencies = []
failed = []
def delivered(err, msg):
    if err is not None:
        failed.append(str(err))
    else:
        latencies.append(time.perf_counter() - sent[int(msg.key())])
start = time.perf_counter()
for i in range(n):
    sent[i] = time.perf_counter()
    while True:
        try:
            p.produce(topic, key=b"%d" % i, value=value, on_delivery=delivered)
            break
        except BufferError:
            p.poll(0.001)
    p.poll(0)
assert p.flush(120) == 0, "undelivered records"
seconds = time.perf_counter() - start
assert not failed, failed[:3]
out = sys.stdout
out.write("%f\n" % seconds)
out.write("".join("%d\n" % int(l * 1e6) for l in latencies))
"#;

fn produce_kafka(brokers: &str, args: &KafkaBenchArgs) -> anyhow::Result<ProduceFigures> {
    let out = Command::new("python3")
        .args(["-c", KAFKA_PRODUCER, brokers, CLUSTER])
        .arg(args.records.to_string())
        .arg(args.value_bytes.to_string())
        .arg(args.linger_ms.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("running python3 (with confluent-kafka: pip install confluent-kafka)")?;
    if !out.status.success() {
        bail!("the confluent-kafka producer failed: {}", out.status);
    }
    let text = String::from_utf8(out.stdout).context("producer output")?;
    let mut lines = text.lines();
    let seconds: f64 = lines
        .next()
        .context("no output from the producer")?
        .parse()
        .context("the producer's seconds")?;
    let mut latency = LatencyRecorder::new();
    for line in lines {
        let us: u64 = line.parse().context("a latency line")?;
        latency.record(Duration::from_micros(us));
    }
    produce_figures(args, "Kafka", seconds, &latency)
}

fn consume_native(
    config: &ClientConfig,
    what: &str,
    from: u64,
    count: u64,
) -> anyhow::Result<ConsumeFigures> {
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
    Ok(consume_figures(
        what,
        count,
        started.elapsed(),
        Duration::ZERO,
    ))
}

/// Reads `count` records from `from` with kcat; returns how long it ran.
fn run_kcat(brokers: &str, from: u64, count: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = Command::new("kcat")
        .args(["-b", brokers, "-t", CLUSTER, "-p", "0", "-C", "-q", "-e"])
        .args(["-o", &from.to_string(), "-c", &count.to_string()])
        .args(["-f", "%o\n"])
        .stderr(Stdio::inherit())
        .output()
        .context("running kcat (apt-get install kcat)")?;
    let elapsed = started.elapsed();
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
    Ok(elapsed)
}

fn consume_kcat(
    brokers: &str,
    what: &str,
    from: u64,
    count: u64,
    startup: Duration,
) -> anyhow::Result<ConsumeFigures> {
    let elapsed = run_kcat(brokers, from, count).with_context(|| what.to_string())?;
    Ok(consume_figures(
        what,
        count,
        elapsed.saturating_sub(startup),
        startup,
    ))
}

fn consume_figures(
    what: &str,
    records: u64,
    elapsed: Duration,
    startup: Duration,
) -> ConsumeFigures {
    let seconds = elapsed.as_secs_f64();
    ConsumeFigures {
        what: what.to_string(),
        records,
        seconds,
        records_per_s: records as f64 / seconds,
        startup_seconds: startup.as_secs_f64(),
    }
}

fn render_text(r: &KafkaReport) -> String {
    let mut out = Vec::new();
    let _ = writeln!(
        out,
        "raftline bench kafka: {} records of {} bytes per producer, linger {} ms, acks=all (quorum)\n",
        r.records, r.value_bytes, r.linger_ms
    );
    let _ = writeln!(
        out,
        "{:<34} {:>12} {:>8} {:>10} {:>10}",
        "produce", "records/s", "MB/s", "p50 ms", "p99 ms"
    );
    for (name, p) in [
        ("native Producer", &r.native_produce),
        ("confluent-kafka (librdkafka)", &r.kafka_produce),
    ] {
        let _ = writeln!(
            out,
            "{:<34} {:>12.0} {:>8.1} {:>10.2} {:>10.2}",
            name,
            p.records_per_s,
            p.mb_per_s,
            p.latency.us_p50 / 1000.0,
            p.latency.us_p99 / 1000.0
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
        "(kcat's start-up, a one-record read in this run, is subtracted from its reads)"
    );
    let _ = writeln!(
        out,
        "\nKafka/native: produce {:.2}, consume {:.2} (goal: both >= 0.80): {}",
        r.produce_ratio,
        r.consume_ratio,
        if r.goal_holds {
            "holds"
        } else {
            "does not hold"
        }
    );
    String::from_utf8(out).expect("text")
}
