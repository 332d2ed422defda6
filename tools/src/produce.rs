//! `raftline produce`: append records (stdin lines, or generated ones) and print their offsets.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use raftline_log::Record;
use raftline_netio::client::{Producer, RecordAck};
use raftline_netio::client_proto::AckMode;

use crate::cluster_args::ClusterArgs;

/// The long `--help` of `raftline produce`.
pub const LONG_ABOUT: &str = "Append records to the cluster's log through its leader and print \
the offset each one got.\n\n\
Without --generate, every line of standard input is one record (the line without its newline is \
the value) and one offset is printed per line as it is acknowledged; lines typed at a terminal \
are sent at once, piped input is batched. With --generate N, N records of --size bytes are sent \
as fast as the window allows and a summary (offsets, records/s) is printed.\n\n\
Delivery is exactly once: the producer is idempotent (it takes a producer id from the cluster and \
every batch carries it with its sequence), so when the leader fails while an append is \
unanswered, the client resends it to the new leader, which stores it once and answers with the \
original offsets; an acknowledged record is never lost (with the default --ack quorum).";

/// Flags of `raftline produce`.
#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Send N generated records instead of reading standard input.
    #[arg(long, value_name = "N")]
    pub generate: Option<u64>,
    /// Size of each generated record's value, in bytes.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 100,
        requires = "generate"
    )]
    pub size: usize,
    /// Key given to every record (none by default).
    #[arg(long)]
    pub key: Option<String>,
    /// When the cluster acknowledges a record: quorum = durable on a majority of the voters
    /// (survives any minority of crashes), leader = durable on the leader only, none = accepted
    /// by the leader before any disk write.
    #[arg(long, default_value_t = AckMode::Quorum, value_name = "quorum|leader|none")]
    pub ack: AckMode,
    /// Batches in flight at once (pipelining window).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Most records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Most bytes of record data per batch.
    #[arg(long, default_value_t = 256 * 1024)]
    pub batch_bytes: usize,
    /// Longest a record waits for its batch to fill, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

/// Runs `raftline produce`.
pub fn run(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.window > 0, "--window must be at least 1");
    anyhow::ensure!(args.batch_records > 0, "--batch-records must be at least 1");
    let mut config = args.cluster.client_config()?;
    config.ack = args.ack;
    config.window_appends = args.window;
    config.batch_records_max = args.batch_records;
    config.batch_bytes_max = args.batch_bytes;
    config.linger = std::time::Duration::from_millis(args.linger_ms);
    let mut producer = Producer::new(config);
    let key = args.key.map(String::into_bytes);
    let refused = match args.generate {
        Some(n) => generate(&mut producer, n, args.size, key)?,
        None => from_stdin(&mut producer, key)?,
    };
    if refused > 0 {
        eprintln!("error: {refused} record(s) were refused by the cluster (see above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn record(key: &Option<Vec<u8>>, value: Vec<u8>) -> Record {
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Record {
        key: key.clone(),
        value,
        timestamp_ms,
        headers: vec![],
    }
}

/// Sends stdin lines; prints one offset per line in input order. Returns the refused count.
fn from_stdin(producer: &mut Producer, key: Option<Vec<u8>>) -> anyhow::Result<u64> {
    // Our own buffer, so we can see whether more input is already waiting.
    let mut input = BufReader::with_capacity(64 << 10, std::io::stdin());
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut printer = OffsetPrinter::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .context("reading standard input")?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        producer.send(record(&key, line.clone()))?;
        // Nothing more to read right now (a person typing): send and confirm this line at once.
        if input.buffer().is_empty() {
            producer.flush()?;
        } else {
            producer.poll()?;
        }
        printer.print(producer.take_acks(), &mut out)?;
    }
    producer.flush()?;
    printer.print(producer.take_acks(), &mut out)?;
    out.flush()?;
    Ok(printer.refused)
}

/// Prints acknowledgements in sequence order (they may arrive batch by batch out of order).
#[derive(Default)]
struct OffsetPrinter {
    next_seq: u64,
    waiting: std::collections::BTreeMap<u64, RecordAck>,
    refused: u64,
}

impl OffsetPrinter {
    fn print(&mut self, acks: Vec<RecordAck>, out: &mut impl Write) -> anyhow::Result<()> {
        self.waiting.extend(acks.into_iter().map(|a| (a.seq, a)));
        while let Some(ack) = self.waiting.remove(&self.next_seq) {
            self.next_seq += 1;
            match ack.result {
                Ok(offset) => writeln!(out, "{offset}")?,
                Err(e) => {
                    self.refused += 1;
                    eprintln!(
                        "error: record {} (input line {}) refused: {e}",
                        ack.seq,
                        ack.seq + 1
                    );
                }
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// Sends `n` generated records of `size` bytes; prints a summary. Returns the refused count.
fn generate(
    producer: &mut Producer,
    n: u64,
    size: usize,
    key: Option<Vec<u8>>,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut refused = 0u64;
    let mut first = u64::MAX;
    let mut last = 0u64;
    let mut tally = |acks: Vec<RecordAck>| {
        for ack in acks {
            match ack.result {
                Ok(offset) => {
                    first = first.min(offset);
                    last = last.max(offset);
                }
                Err(e) => {
                    refused += 1;
                    if refused <= 10 {
                        eprintln!("error: record {} refused: {e}", ack.seq);
                    }
                }
            }
        }
    };
    for seq in 0..n {
        producer.send(record(&key, generated_value(seq, size)))?;
        tally(producer.take_acks());
    }
    producer.flush()?;
    tally(producer.take_acks());
    let secs = started.elapsed().as_secs_f64();
    let acked = n - refused;
    if acked > 0 {
        println!(
            "produced {acked} records of {size} bytes, offsets {first}..={last}, in {secs:.3} s: \
             {:.0} records/s, {:.1} MB/s",
            acked as f64 / secs,
            (acked as f64 * size as f64) / secs / 1e6
        );
    }
    Ok(refused)
}

/// A value of exactly `size` bytes that starts with the record's sequence number (readable in
/// `raftline tail`).
fn generated_value(seq: u64, size: usize) -> Vec<u8> {
    let mut value = format!("record-{seq:010}").into_bytes();
    value.resize(size, b'.');
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_have_the_asked_size_and_say_their_number() {
        assert_eq!(
            generated_value(7, 30),
            b"record-0000000007.............".to_vec()
        );
        assert_eq!(generated_value(7, 3), b"rec".to_vec());
    }

    #[test]
    fn offsets_are_printed_in_input_order_whatever_order_batches_are_answered_in() {
        let mut printer = OffsetPrinter::default();
        let mut out = Vec::new();
        let ack = |seq, offset| RecordAck {
            seq,
            result: Ok(offset),
        };
        printer.print(vec![ack(2, 12)], &mut out).unwrap();
        assert!(out.is_empty());
        printer
            .print(vec![ack(0, 10), ack(1, 11)], &mut out)
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "10\n11\n12\n");
    }
}
